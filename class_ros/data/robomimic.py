"""robomimic / MimicGen HDF5 -> dataset store.

robomimic layout (what this reads):

    data/                      attribute env_args: JSON (env name, controller, control_freq, ...)
      demo_0/actions           (T, D) float
      demo_0/obs/<key>         (T, H, W, 3) uint8 images, or (T, d) / (T,) numbers
      demo_1/...
    mask/<filter>              (M,) demo names of a split, e.g. "train", "valid"

Demos are imported in numeric order (demo_2 before demo_10). Everything is checked before the first
write, and a failure while writing removes the half-made dataset, so an import either completes or
leaves nothing. Object, string and opaque (possibly pickled) datasets are refused: no pickle, ever.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from class_ros.data.outputs import check_target
from class_ros.data.schema import ACTION, OBS_PREFIX, DatasetMeta, KeySchema, obs_key
from class_ros.errors import ClassRosError

DEFAULT_RATE_HZ = 20.0  # robosuite's default control_freq, when env_args does not say
EE_DELTA_NAMES = ["dx", "dy", "dz", "drx", "dry", "drz", "gripper"]


@dataclass
class DemoPlan:
    """One demo to import: its name and length."""

    name: str
    length: int


def _demo_number(name: str) -> int:
    m = re.fullmatch(r"demo_(\d+)", name)
    return int(m.group(1)) if m else -1


def _decode(value) -> str:
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def _check_dtype(ds, where: str) -> None:
    kind = ds.dtype.kind
    if kind in "OVSUa" or ds.dtype.names is not None:
        raise ClassRosError(f"{where} has dtype {ds.dtype}, which may hold pickled objects or text; only numeric "
                            "arrays are imported (no pickle).")
    if kind not in "biuf":
        raise ClassRosError(f"{where} has dtype {ds.dtype}; only numeric arrays are imported.")


def _env_args(data) -> dict:
    raw = data.attrs.get("env_args")
    if raw is None:
        return {}
    try:
        parsed = json.loads(_decode(raw))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ClassRosError(f"data.attrs['env_args'] is not JSON ({err}); robomimic stores it as a JSON string.")
    if not isinstance(parsed, dict):
        raise ClassRosError("data.attrs['env_args'] must be a JSON object.")
    return parsed


def _action_layout(env_args: dict, dim: int) -> tuple[str, list[str], list[int]]:
    """(action_kind, action_names, rot6d_dims) from the controller named in env_args."""
    kwargs = env_args.get("env_kwargs", {}) if isinstance(env_args.get("env_kwargs"), dict) else {}
    ctrl = kwargs.get("controller_configs", {})
    if isinstance(ctrl, dict) and "body_parts" in ctrl:  # robosuite 1.5 composite controller
        ctrl = ctrl.get("body_parts", {}).get("right", ctrl)
    ctrl = ctrl if isinstance(ctrl, dict) else {}
    kind_name = str(ctrl.get("type", "")).upper()
    delta = ctrl.get("control_delta", True)
    if kind_name.startswith("OSC") and delta and dim == 7:
        return "ee_delta", list(EE_DELTA_NAMES), []
    if dim == 10 and kind_name.startswith("OSC") and not delta:  # position (3) + 6D rotation (6) + gripper
        names = ["x", "y", "z", *[f"rot6d_{i}" for i in range(6)], "gripper"]
        return "ee_pose", names, list(range(3, 9))
    if kind_name == "JOINT_POSITION":
        return "joint_position", [f"joint_{i}" for i in range(dim)], []
    return "other", [f"a{i}" for i in range(dim)], []


def plan_import(f, obs_keys: list[str] | None, filter_key: str | None, path: str):
    """Check the file's layout, dtypes and lengths; return (demos, obs key schemas, action dim, env_args)."""
    if "data" not in f or not hasattr(f["data"], "keys"):
        top = ", ".join(list(f.keys())[:4]) or "nothing"
        raise ClassRosError(f"{path} is not a robomimic file: it has no 'data' group of demo_N/obs and "
                            f"demo_N/actions (its top level holds {top}); convert it to the robomimic layout first.")
    data = f["data"]
    demos = sorted((k for k in data.keys() if _demo_number(k) >= 0), key=_demo_number)
    if not demos:
        raise ClassRosError(f"{path}: the 'data' group holds no demo_N groups.")
    if filter_key is not None:
        masks = list(f["mask"].keys()) if "mask" in f else []
        if filter_key not in masks:
            raise ClassRosError(f"{path} has no filter key {filter_key!r} (mask/ holds {masks or 'nothing'}).")
        mask = f["mask"][filter_key]
        _check_dtype_mask(mask, f"mask/{filter_key}")
        wanted = {_decode(x) for x in mask[()]}
        unknown = sorted(wanted - set(demos))
        if unknown:
            raise ClassRosError(f"mask/{filter_key} names demos that are not in data/: {unknown[:3]}.")
        demos = [d for d in demos if d in wanted]
        if not demos:
            raise ClassRosError(f"mask/{filter_key} selects no demos.")

    first = data[demos[0]]
    if "obs" not in first or "actions" not in first:
        raise ClassRosError(f"{path}: data/{demos[0]} needs 'obs' and 'actions'.")
    available = sorted(first["obs"].keys())
    keys = obs_keys or available
    missing = [k for k in keys if k not in available]
    if missing:
        raise ClassRosError(f"{path}: obs keys {missing} are not in data/{demos[0]}/obs (it has {available}).")

    schemas: dict[str, KeySchema] = {}
    for k in keys:
        ds = first["obs"][k]
        _check_dtype(ds, f"data/{demos[0]}/obs/{k}")
        if ds.ndim == 4 and ds.shape[-1] == 3 and ds.dtype == np.uint8:
            schemas[obs_key(k)] = KeySchema("uint8", ds.shape[1:], "image")
        elif ds.ndim in (1, 2):
            schemas[obs_key(k)] = KeySchema("float32", (ds.shape[1] if ds.ndim == 2 else 1,), "low_dim")
        else:
            raise ClassRosError(f"data/{demos[0]}/obs/{k} has shape {ds.shape}; expected (T, H, W, 3) uint8 images "
                                "or (T, d) numbers.")
    act = first["actions"]
    if act.ndim != 2:
        raise ClassRosError(f"data/{demos[0]}/actions has shape {act.shape}; expected (T, D).")
    dim = act.shape[1]

    plans = []
    for name in demos:
        demo = data[name]
        if "obs" not in demo or "actions" not in demo:
            raise ClassRosError(f"{path}: data/{name} needs 'obs' and 'actions'.")
        actions = demo["actions"]
        _check_dtype(actions, f"data/{name}/actions")
        if actions.ndim != 2 or actions.shape[1] != dim or actions.shape[0] == 0:
            raise ClassRosError(f"data/{name}/actions has shape {actions.shape}; the first demo's is (T, {dim}).")
        for k in keys:
            if k not in demo["obs"]:
                raise ClassRosError(f"data/{name}/obs has no key {k!r}.")
            ds = demo["obs"][k]
            _check_dtype(ds, f"data/{name}/obs/{k}")
            schema = schemas[obs_key(k)]
            per_frame = ds.shape[1:] if ds.ndim > 1 else (1,)
            if per_frame != schema.shape or ds.shape[0] != actions.shape[0]:
                raise ClassRosError(f"data/{name}/obs/{k} has shape {ds.shape}, but the demo has "
                                    f"{actions.shape[0]} actions and the first demo's frames are {schema.shape}.")
        plans.append(DemoPlan(name, int(actions.shape[0])))
    return plans, schemas, dim, _env_args(data)


def _check_dtype_mask(ds, where: str) -> None:
    if ds.dtype.kind not in "SU" and not (ds.dtype.kind == "O" and _is_vlen_str(ds)):
        raise ClassRosError(f"{where} has dtype {ds.dtype}; a filter key lists demo names as strings.")


def _is_vlen_str(ds) -> bool:
    import h5py
    return h5py.check_string_dtype(ds.dtype) is not None


def import_robomimic(file, out, obs_keys=None, filter_key=None, overwrite: bool = False) -> dict:
    """Import a robomimic HDF5 file into a new dataset store at `out`; returns a summary dict."""
    import h5py
    from tqdm import tqdm

    from class_ros.data.store import EpisodeStore

    path, out = Path(file), Path(out)
    if not path.is_file():
        raise ClassRosError(f"{path} does not exist.")
    check_target(out, "dataset", overwrite=overwrite)  # before reading: a foreign folder is never touched
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ClassRosError(f"{path} is not a readable HDF5 file ({err}).") from None
    with f:
        plans, schemas, dim, env_args = plan_import(f, obs_keys, filter_key, str(path))
        kind, names, rot6d = _action_layout(env_args, dim)
        kwargs = env_args.get("env_kwargs", {}) if isinstance(env_args.get("env_kwargs"), dict) else {}
        rate = float(kwargs.get("control_freq", DEFAULT_RATE_HZ))
        meta = DatasetMeta(control_rate_hz=rate, action_names=names, action_kind=kind,
                           keys={**schemas, ACTION: KeySchema("float32", (dim,), "low_dim")}, source="robomimic",
                           rot6d_dims=rot6d,
                           extra={"env_args": env_args, "robomimic_file": str(path), "filter_key": filter_key,
                                  "demos": [p.name for p in plans]})
        lineage = {"robomimic_file": str(path.resolve()), "bytes": path.stat().st_size, "filter_key": filter_key}
        # An import either completes or leaves nothing (and an old dataset at `out` stays until then).
        with EpisodeStore.build(out, overwrite=overwrite, lineage=lineage) as build:
            store = build.create(meta)
            for plan in tqdm(plans, desc="import-robomimic", unit="demo", leave=False):
                demo = f["data"][plan.name]
                episode = {ACTION: np.asarray(demo["actions"][()], dtype=np.float32)}
                for key in schemas:
                    values = np.asarray(demo["obs"][key.removeprefix(OBS_PREFIX)][()])
                    episode[key] = values.reshape(len(values), *schemas[key].shape)
                try:
                    store.append_episode(episode)
                except ClassRosError as err:
                    raise ClassRosError(f"data/{plan.name}: {err}") from None
    summary = {"out": str(out), "episodes": store.n_episodes, "frames": store.n_frames, "action_kind": kind,
               "keys": sorted(schemas), "filter_key": filter_key, "control_rate_hz": rate}
    print(f"import-robomimic: {store.n_episodes} demos, {store.n_frames} frames written to {out}")
    return summary
