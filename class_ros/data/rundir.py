"""Run directories: the one on-disk layout shared by encoder (CLASS) runs and diffusion runs.

Layout:

    RUN/
      meta.json            format version, run kind, dataset fingerprint, action/joint names, control rate,
                           and the size + sha256 of every weights file (so truncation is caught on load)
      config.yaml          the run's dataclass config as YAML
      normalizer.json      {"action": {...}, "<proprio name>": {...}} min-max normalisers
      <name>.safetensors   weights; groups such as "ema" and "raw" are stored as "ema/<param>", "raw/<param>"
      train_state/         state.safetensors + state.json: optimizer, scheduler, EMA, step (for --resume)

Every file is written atomically (temp file in the same folder, then os.replace). Nothing is pickled.

Usage (an encoder run; a diffusion run uses kind="diffusion" and its own weights name):
    run = RunDir.create("runs/class", "encoder", config=cfg, store=store)
    run.save_normalizers({"action": act_norm, "joint_pos": q_norm})
    run.save_weights("encoder", {"ema": ema_model.state_dict(), "raw": model.state_dict()})
    run.save_train_state(step, optimizer=opt, scheduler=sched, ema=ema)
    run = RunDir.open("runs/class", kind="encoder", store=store)   # refuses a different dataset
    weights = run.load_weights("encoder")["ema"]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from class_ros.data.normalizer import MinMaxNormalizer
from class_ros.errors import ClassRosError

RUN_FORMAT_VERSION = 1
RUN_KINDS = ("encoder", "diffusion")
META = "meta.json"
CONFIG = "config.yaml"
NORMALIZER = "normalizer.json"
TRAIN_STATE = "train_state"
_TENSOR_REF = "__tensor__"


# ------------------------------------------------------------------------------------------ atomic writes
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so a reader sees the old file or the complete new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of atomic_write_bytes (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_to_dict(config: Any) -> dict:
    """A dataclass (nested allowed) or a dict as a plain dict of YAML-safe values."""
    d = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    # A YAML round trip turns tuples into lists, so compare and store the round-tripped form.
    return yaml.safe_load(yaml.safe_dump(d))


# ------------------------------------------------------------------------------------------ nested state
def split_tensors(obj: Any, prefix: str = "") -> tuple[Any, dict]:
    """Replace every torch tensor inside nested dicts/lists by a reference; returns (json-able tree, tensors)."""
    import torch
    tensors: dict = {}

    def walk(x, key):
        if isinstance(x, torch.Tensor):
            tensors[key] = x.detach().cpu().clone()
            return {_TENSOR_REF: key}
        if isinstance(x, dict):
            return {"__dict__": [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")] for i, (k, v) in enumerate(x.items())]}
        if isinstance(x, (list, tuple)):
            return {"__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(x)], "tuple": isinstance(x, tuple)}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise ClassRosError(f"cannot store a value of type {type(x).__name__} in train_state without pickle.")

    return walk(obj, prefix or "s"), tensors


def join_tensors(tree: Any, tensors: dict) -> Any:
    """Inverse of split_tensors."""
    if isinstance(tree, dict):
        if _TENSOR_REF in tree:
            return tensors[tree[_TENSOR_REF]]
        if "__dict__" in tree:
            return {join_tensors(k, tensors): join_tensors(v, tensors) for k, v in tree["__dict__"]}
        if "__list__" in tree:
            items = [join_tensors(v, tensors) for v in tree["__list__"]]
            return tuple(items) if tree.get("tuple") else items
    return tree


# ------------------------------------------------------------------------------------------ the run directory
class RunDir:
    """One training run on disk; see the module docstring for the layout."""

    def __init__(self, path: str | os.PathLike, meta: dict):
        self.path = Path(path)
        self.meta = meta

    # ---------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path: str | os.PathLike, kind: str, config: Any, store=None, *,
               overwrite: bool = False, extra: dict | None = None) -> "RunDir":
        """Start a new run: writes meta.json (from the dataset `store`, an EpisodeStore) and config.yaml."""
        if kind not in RUN_KINDS:
            raise ClassRosError(f"run kind {kind!r} is not one of {RUN_KINDS}.")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ClassRosError(f"{path} is a file, not a run directory; choose another --out.")
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise ClassRosError(f"{path} already exists and is not empty; choose another --out, pass --resume "
                                    "to continue it, or delete it.")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": RUN_FORMAT_VERSION, "kind": kind, "files": {}, "extra": dict(extra or {})}
        if store is not None:
            m = store.meta
            meta.update(dataset_fingerprint=store.fingerprint(), dataset_path=str(store.path),
                        n_frames=int(store.n_frames), action_names=list(m.action_names), action_kind=m.action_kind,
                        joint_names=list(m.joint_names), control_rate_hz=float(m.control_rate_hz),
                        rot6d_dims=list(m.rot6d_dims), image_keys=list(m.image_keys),
                        low_dim_keys=list(m.low_dim_keys))
        run = cls(path, meta)
        atomic_write_text(path / CONFIG, yaml.safe_dump(config_to_dict(config), sort_keys=False))
        run._write_meta()
        return run

    @classmethod
    def open(cls, path: str | os.PathLike, kind: str | None = None, *, store=None, config: Any = None) -> "RunDir":
        """Open a run, refusing a wrong kind or format version, and (if given) a different dataset or config."""
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            raise ClassRosError(f"{path} is not a class_ros run directory (no {META}); train one with "
                                "`class-ros pretrain` or `class-ros finetune`.")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ClassRosError(f"{meta_path} is unreadable or truncated ({err}); the run is damaged.") from err
        if not isinstance(meta, dict) or meta.get("format_version") != RUN_FORMAT_VERSION:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise ClassRosError(f"{path} has run format version {version}, but this class_ros reads version "
                                f"{RUN_FORMAT_VERSION}; retrain the run with this version.")
        if kind is not None and meta.get("kind") != kind:
            raise ClassRosError(f"{path} is a {meta.get('kind')!r} run, but a {kind!r} run is needed here.")
        run = cls(path, meta)
        if store is not None:
            run.check_dataset(store)
        if config is not None:
            run.check_config(config)
        return run

    # ---------------------------------------------------------------- checks
    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def check_dataset(self, store) -> None:
        """Refuse a dataset whose fingerprint differs from the one this run was trained on."""
        want = self.meta.get("dataset_fingerprint")
        got = store.fingerprint()
        if want is not None and want != got:
            raise ClassRosError(f"{self.path} was trained on dataset {want} ({self.meta.get('dataset_path')}), but "
                                f"{store.path} is dataset {got}; use the run's own dataset or train a new run.")

    def check_config(self, config: Any, ignore: tuple[str, ...] = ()) -> None:
        """Refuse a config that differs from the stored one (top-level keys in `ignore` may differ)."""
        stored = {k: v for k, v in self.load_config().items() if k not in ignore}
        given = {k: v for k, v in config_to_dict(config).items() if k not in ignore}
        if stored != given:
            diff = sorted(k for k in set(stored) | set(given) if stored.get(k) != given.get(k))
            raise ClassRosError(f"the config differs from the one stored in {self.path / CONFIG} (keys {diff}); "
                                "resume with the same config or start a new run.")

    # ---------------------------------------------------------------- config, meta, normalisers
    def load_config(self) -> dict:
        """config.yaml as a dict (build the dataclass from it with its from_dict)."""
        try:
            d = yaml.safe_load((self.path / CONFIG).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise ClassRosError(f"cannot read {self.path / CONFIG} ({err}); the run is damaged.") from err
        if not isinstance(d, dict):
            raise ClassRosError(f"{self.path / CONFIG} does not hold a mapping; the run is damaged.")
        return d

    def update_meta(self, **fields) -> None:
        """Add or change meta.json fields (atomically)."""
        self.meta.update(fields)
        self._write_meta()

    def _write_meta(self) -> None:
        atomic_write_text(self.path / META, json.dumps(self.meta, indent=1, sort_keys=True))

    def save_normalizers(self, normalizers: dict[str, MinMaxNormalizer]) -> None:
        """normalizer.json: one min-max normaliser per name ("action", proprio names without obs/)."""
        atomic_write_text(self.path / NORMALIZER, json.dumps({k: n.to_dict() for k, n in normalizers.items()}))

    def load_normalizers(self) -> dict[str, MinMaxNormalizer]:
        try:
            d = json.loads((self.path / NORMALIZER).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ClassRosError(f"cannot read {self.path / NORMALIZER} ({err}); the run is damaged.") from err
        return {k: MinMaxNormalizer.from_dict(v) for k, v in d.items()}

    # ---------------------------------------------------------------- weights
    def save_weights(self, name: str, groups: dict[str, dict], metadata: dict | None = None) -> Path:
        """Write `<name>.safetensors` holding each group's state dict under "<group>/<param>"; returns its path."""
        from safetensors.torch import save

        flat = {f"{g}/{k}": v.detach().cpu().clone() for g, sd in groups.items() for k, v in sd.items()}
        path = self.path / f"{name}.safetensors"
        atomic_write_bytes(path, save(flat, metadata={k: str(v) for k, v in (metadata or {}).items()}))
        self.record_file(path)
        return path

    def has_weights(self, name: str) -> bool:
        return (self.path / f"{name}.safetensors").is_file()

    def load_weights(self, name: str, device: str = "cpu") -> dict[str, dict]:
        """{group: state dict} from `<name>.safetensors`, refusing a truncated or altered file."""
        from safetensors.torch import load

        path = self.path / f"{name}.safetensors"
        data = self.read_checked(path)
        try:
            flat = load(data)
        except Exception as err:  # safetensors raises its own error type for damaged headers
            raise ClassRosError(f"{path} is not a valid safetensors file ({err}); the run is damaged.") from err
        groups: dict[str, dict] = {}
        for key, value in flat.items():
            group, _, param = key.partition("/")
            groups.setdefault(group, {})[param] = value.to(device)
        return groups

    def record_file(self, path: Path) -> None:
        """Record a file's size and sha256 in meta.json (call after writing any file of the run)."""
        self.meta.setdefault("files", {})[path.relative_to(self.path).as_posix()] = {
            "bytes": path.stat().st_size, "sha256": _sha256(path)}
        self._write_meta()

    def read_checked(self, path: Path) -> bytes:
        """The bytes of a recorded file, refusing a missing, truncated or altered one."""
        rel = path.relative_to(self.path).as_posix()
        record = self.meta.get("files", {}).get(rel)
        if not path.is_file() or record is None:
            raise ClassRosError(f"{path} is missing from the run; train or resume the run to write it.")
        data = path.read_bytes()
        if len(data) != record["bytes"]:
            raise ClassRosError(f"{path} is truncated ({len(data)} of {record['bytes']} bytes); the run is damaged, "
                                "retrain or restore it.")
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise ClassRosError(f"{path} does not match its recorded checksum; the run is damaged, retrain or "
                                "restore it.")
        return data

    # ---------------------------------------------------------------- train state (for --resume)
    def save_train_state(self, step: int, **states) -> None:
        """train_state/: `step` plus any objects with state_dict() (optimizer, scheduler, EMA) or plain values."""
        from safetensors.torch import save

        tree = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in states.items()}
        tree["step"] = int(step)
        skeleton, tensors = split_tensors(tree)
        folder = self.path / TRAIN_STATE
        folder.mkdir(exist_ok=True)
        atomic_write_bytes(folder / "state.safetensors", save(tensors))
        self.record_file(folder / "state.safetensors")
        # Both files are checksummed in meta.json, so a crash between the writes is refused on load.
        atomic_write_text(folder / "state.json", json.dumps(skeleton))
        self.record_file(folder / "state.json")

    def has_train_state(self) -> bool:
        return (self.path / TRAIN_STATE / "state.json").is_file()

    def load_train_state(self, device: str = "cpu", **targets) -> int:
        """Restore objects passed as keyword arguments (load_state_dict) and return the saved step."""
        from safetensors.torch import load

        folder = self.path / TRAIN_STATE
        skeleton = json.loads(self.read_checked(folder / "state.json"))
        data = self.read_checked(folder / "state.safetensors")
        try:
            tensors = {k: v.to(device) for k, v in load(data).items()}
        except Exception as err:
            raise ClassRosError(f"{folder} holds a damaged train state ({err}); start a new run.") from err
        tree = join_tensors(skeleton, tensors)
        for key, obj in targets.items():
            if key not in tree:
                raise ClassRosError(f"{folder} holds no {key!r} state; it was written by a different trainer.")
            obj.load_state_dict(tree[key])
        return int(tree["step"])

    def train_state_values(self) -> dict:
        """The plain (non-tensor) values saved with the train state, e.g. {"step": 120, "rng_seed": 3}."""
        skeleton = json.loads(self.read_checked(self.path / TRAIN_STATE / "state.json"))
        return {k: v for k, v in skeleton["__dict__"] if not isinstance(v, dict)}
