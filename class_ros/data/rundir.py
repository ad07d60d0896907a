"""Run directories: the one on-disk layout shared by encoder (CLASS) runs and diffusion runs.

Layout:

    RUN/
      manifest.json        the class_ros output manifest (class_ros.data.outputs): kind, format version,
                           complete (false until the last step is saved), the step of the last checkpoint,
                           lineage (dataset fingerprint, positives, init run), action/joint names, control rate,
                           and the size + sha256 of every file (so truncation and edits are caught on load)
      config.yaml          the run's dataclass config as YAML (checksummed like the weights)
      normalizer.json      {"action": {...}, "<proprio name>": {...}} min-max normalisers
      <name>.safetensors   weights; groups such as "ema" and "raw" are stored as "ema/<param>", "raw/<param>"
      train_state/         state-<step>.safetensors: model, optimizer, scheduler, EMA and step in ONE file
                           (the plain values ride in its metadata), named by the manifest (for --resume)

A run is written in place (it must survive a kill and be resumed), so completeness is the manifest's `complete`:
`check_finished` refuses an unfinished run (index, evaluate, finetune --init) unless partial use is asked for.
Each file is written atomically through class_ros.data.outputs and then recorded in the manifest; a checkpoint
writes its train state under a new name first, then the manifest (the commit), then the weights, so a kill at any
point leaves a train state whose step and tensors belong together. Weights replaced in place are named in the
manifest as its `next` version before the rename, so a kill on either side of it leaves a file it accepts.
Nothing is pickled.

Usage (an encoder run; a diffusion run uses kind="diffusion" and its own weights name):
    run = RunDir.create("runs/class", "encoder", config=cfg, store=store)
    run.save_normalizers({"action": act_norm, "joint_pos": q_norm})
    run.save_weights("encoder", {"ema": ema_model.state_dict(), "raw": model.state_dict()})
    run.save_train_state(step, model=model, optimizer=opt, scheduler=sched, ema=ema)   # then save_weights
    run.finish(step)                                                 # the last step: the run is complete
    run = RunDir.open("runs/class", kind="encoder", store=store)   # refuses a different dataset
    run.check_finished()                                             # refuses an unfinished run
    weights = run.load_weights("encoder")["ema"]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml

from class_ros.data import outputs
from class_ros.data.normalizer import MinMaxNormalizer
from class_ros.errors import ClassRosError

RUN_FORMAT_VERSION = 2  # 2: manifest.json with `complete`, checksummed config, one-file train state
RUN_KINDS = ("encoder", "diffusion")
META = outputs.MANIFEST
CONFIG = "config.yaml"
NORMALIZER = "normalizer.json"
TRAIN_STATE = "train_state"
_TENSOR_REF = "__tensor__"
_RESUME = {"encoder": "class-ros pretrain ... --resume", "diffusion": "class-ros finetune ... --resume"}


def config_to_dict(config: Any) -> dict:
    """A dataclass (nested allowed) or a dict as a plain dict of YAML-safe values."""
    d = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    # A YAML round trip turns tuples into lists, so compare and store the round-tripped form.
    return yaml.safe_load(yaml.safe_dump(d))


def _never_checkpointed(path: Path) -> bool:
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("step") is None and not meta.get("complete")


# ------------------------------------------------------------------------------------------ nested state
def packed(t) -> Any:
    """A CPU copy of tensor `t` in plain contiguous memory, as safetensors stores it (training keeps the image
    convolutions' weights channels-last)."""
    import torch
    return t.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def split_tensors(obj: Any, prefix: str = "") -> tuple[Any, dict]:
    """Replace every torch tensor inside nested dicts/lists by a reference; returns (json-able tree, tensors)."""
    import torch
    tensors: dict = {}

    def walk(x, key):
        if isinstance(x, torch.Tensor):
            tensors[key] = packed(x)
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
               overwrite: bool = False, extra: dict | None = None, lineage: dict | None = None) -> "RunDir":
        """Start a new run: writes manifest.json (from the dataset `store`, an EpisodeStore) and config.yaml.

        `overwrite` replaces only a run of the same kind (never another folder); `lineage` adds to what the
        manifest records the run was made from (the dataset's fingerprint is always there).
        """
        if kind not in RUN_KINDS:
            raise ClassRosError(f"run kind {kind!r} is not one of {RUN_KINDS}.")
        path = Path(path)
        cls.check_target(path, kind, overwrite=overwrite)
        if path.is_dir() and any(path.iterdir()):
            shutil.rmtree(path)  # a run of this kind: overwritten, or one that died before its first checkpoint
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ClassRosError(f"cannot create the run directory {path} ({err.strerror}).") from None
        meta = {"format_version": RUN_FORMAT_VERSION, "kind": kind, "complete": False, "step": None,
                "run_id": uuid.uuid4().hex, "files": {}, "extra": dict(extra or {}), "lineage": dict(lineage or {})}
        if store is not None:
            meta["lineage"]["dataset_fingerprint"] = store.fingerprint()
            m = store.meta
            meta.update(dataset_fingerprint=store.fingerprint(), dataset_path=str(store.path),
                        n_frames=int(store.n_frames), action_names=list(m.action_names), action_kind=m.action_kind,
                        joint_names=list(m.joint_names), control_rate_hz=float(m.control_rate_hz),
                        rot6d_dims=list(m.rot6d_dims), image_keys=list(m.image_keys),
                        low_dim_keys=list(m.low_dim_keys))
        run = cls(path, meta)
        outputs.write_text(path / CONFIG, yaml.safe_dump(config_to_dict(config), sort_keys=False))
        run.record_file(path / CONFIG)
        return run

    @staticmethod
    def check_target(path: str | os.PathLike, kind: str, overwrite: bool = False) -> None:
        """Refuse (before any work) an --out that `create` may not use: a file, a foreign folder, a run to keep."""
        path = Path(path)
        outputs.check_target(path, kind, overwrite=True)  # a file, a foreign folder, another kind: refused
        # A run that failed before its first checkpoint holds nothing to resume: it may be started again.
        if path.is_dir() and any(path.iterdir()) and not overwrite and not _never_checkpointed(path):
            raise ClassRosError(f"{path} already exists (a run of kind {kind}); choose another --out, pass --resume "
                                "to continue it, or delete it.")

    @classmethod
    def open(cls, path: str | os.PathLike, kind: str | None = None, *, store=None, config: Any = None) -> "RunDir":
        """Open a run, refusing a wrong kind or format version, and (if given) a different dataset or config."""
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            old = (" (its meta.json says an older class_ros made it; retrain it)"
                   if (path / "meta.json").is_file() else "")
            raise ClassRosError(f"{path} is not a class_ros run directory (no {META}){old}; train one with "
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

    @property
    def step(self) -> int | None:
        """The step of the last checkpoint (None before the first)."""
        return self.meta.get("step")

    def reference(self) -> dict:
        """How another output names this run in its lineage: run id, kind, path, step and weights checksums."""
        weights = {k: v["sha256"] for k, v in self.meta.get("files", {}).items() if k.endswith(".safetensors")
                   and not k.startswith(TRAIN_STATE)}
        return {"run_id": self.meta.get("run_id"), "kind": self.kind, "path": str(self.path), "step": self.step,
                "weights_sha256": weights}

    def finish(self, step: int) -> None:
        """Mark the run complete at `step` (its last); readers refuse it before this unless told otherwise."""
        self.update_meta(complete=True, step=int(step))

    def check_finished(self, allow_partial: bool = False) -> str | None:
        """Refuse an unfinished run (a killed or stopped training) unless `allow_partial`; returns a note then."""
        if self.meta.get("complete"):
            return None
        step, total = self.step, self.meta.get("extra", {}).get("steps")
        of = f" of {total}" if total else ""
        if step is None:
            raise ClassRosError(f"{self.path} is a run that has not saved its first checkpoint yet; let it train, "
                                f"or continue it with `{_RESUME[self.kind]}`.")
        if not allow_partial:
            raise ClassRosError(f"{self.path} is an unfinished run (stopped at step {step}{of}); continue it with "
                                f"`{_RESUME[self.kind]}`, or pass --allow-partial to use its step-{step} weights.")
        return f"{self.path} is an unfinished run: using its checkpoint of step {step}{of}"

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
            d = yaml.safe_load(self.read_checked(self.path / CONFIG))
        except yaml.YAMLError as err:
            raise ClassRosError(f"cannot read {self.path / CONFIG} ({err}); the run is damaged.") from err
        if not isinstance(d, dict):
            raise ClassRosError(f"{self.path / CONFIG} does not hold a mapping; the run is damaged.")
        return d

    def update_meta(self, **fields) -> None:
        """Add or change manifest fields (atomically)."""
        self.meta.update(fields)
        self._write_meta()

    def _write_meta(self) -> None:
        outputs.write_json(self.path / META, self.meta, sort_keys=True)

    def save_normalizers(self, normalizers: dict[str, MinMaxNormalizer]) -> None:
        """normalizer.json: one min-max normaliser per name ("action", proprio names without obs/)."""
        outputs.write_json(self.path / NORMALIZER, {k: n.to_dict() for k, n in normalizers.items()}, indent=None)
        self.record_file(self.path / NORMALIZER)

    def load_normalizers(self) -> dict[str, MinMaxNormalizer]:
        """normalizer.json back as {name: MinMaxNormalizer}, refusing an altered file like the weights."""
        try:
            d = json.loads(self.read_checked(self.path / NORMALIZER))
        except json.JSONDecodeError as err:
            raise ClassRosError(f"cannot read {self.path / NORMALIZER} ({err}); the run is damaged.") from err
        return {k: MinMaxNormalizer.from_dict(v) for k, v in d.items()}

    # ---------------------------------------------------------------- weights
    def save_weights(self, name: str, groups: dict[str, dict], metadata: dict | None = None) -> Path:
        """Write `<name>.safetensors` holding each group's state dict under "<group>/<param>"; returns its path."""
        from safetensors.torch import save

        flat = {f"{g}/{k}": packed(v) for g, sd in groups.items() for k, v in sd.items()}
        path = self.path / f"{name}.safetensors"
        data = save(flat, metadata={k: str(v) for k, v in (metadata or {}).items()})
        record = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        files = self.meta.setdefault("files", {})
        rel = path.relative_to(self.path).as_posix()
        if rel in files:  # replacing: the manifest names the new version first, so a kill between the file's
            files[rel] = {**files[rel], "next": record}  # rename and the manifest's leaves a readable one
            self._write_meta()
        outputs.write_bytes(path, data)
        files[rel] = record
        self._write_meta()
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

    def record_file(self, path: Path, write: bool = True) -> None:
        """Record a file's size and sha256 in the manifest (call after writing any file of the run)."""
        self.meta.setdefault("files", {})[path.relative_to(self.path).as_posix()] = {
            "bytes": path.stat().st_size, "sha256": outputs.sha256_file(path)}
        if write:
            self._write_meta()

    def read_checked(self, path: Path) -> bytes:
        """The bytes of a recorded file, refusing a missing, truncated or altered one."""
        rel = path.relative_to(self.path).as_posix()
        record = self.meta.get("files", {}).get(rel)
        if not path.is_file() or record is None:
            raise ClassRosError(f"{path} is missing from the run; train or resume the run to write it.")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if any(len(data) == r["bytes"] and digest == r["sha256"] for r in (record, record.get("next", record))):
            return data  # the recorded version, or the one a save was replacing it with
        if len(data) != record["bytes"]:
            raise ClassRosError(f"{path} is truncated ({len(data)} of {record['bytes']} bytes); the run is damaged, "
                                "retrain or restore it.")
        raise ClassRosError(f"{path} does not match its recorded checksum; the run is damaged, retrain or "
                            "restore it.")

    # ---------------------------------------------------------------- train state (for --resume)
    def save_train_state(self, step: int, **states) -> None:
        """train_state/: `step` plus objects with state_dict() (model, optimizer, scheduler, EMA) or plain values.

        One file under a new name, then the manifest naming it (the commit), then the old file goes: a kill at
        any moment leaves the manifest naming a whole train state whose step and tensors were saved together.
        """
        from safetensors.torch import save

        tree = {k: (v.state_dict() if hasattr(v, "state_dict") else v) for k, v in states.items()}
        tree["step"] = int(step)
        skeleton, tensors = split_tensors(tree)
        folder = self.path / TRAIN_STATE
        folder.mkdir(exist_ok=True)
        path = folder / f"state-{int(step):09d}.safetensors"
        outputs.write_bytes(path, save(tensors, metadata={"state": json.dumps(skeleton)}))
        files = self.meta.setdefault("files", {})
        for rel in [r for r in files if r.startswith(f"{TRAIN_STATE}/")]:
            del files[rel]
        self.record_file(path, write=False)
        self.update_meta(train_state=path.relative_to(self.path).as_posix(), step=int(step))
        for old in folder.iterdir():  # earlier states, and one a kill left before its commit
            if old != path:
                old.unlink(missing_ok=True)

    def has_train_state(self) -> bool:
        return bool(self.meta.get("train_state")) and (self.path / self.meta["train_state"]).is_file()

    def _train_state(self, device: str = "cpu") -> tuple[Any, dict]:
        from safetensors.torch import load

        if not self.meta.get("train_state"):
            raise ClassRosError(f"{self.path} has no train_state to resume from; start it without --resume.")
        path = self.path / self.meta["train_state"]
        data = self.read_checked(path)
        try:
            tensors = {k: v.to(device) for k, v in load(data).items()}
            # The plain values live in the file's JSON header: 8 bytes of length, then the header.
            header = json.loads(data[8: 8 + int.from_bytes(data[:8], "little")])
            skeleton = json.loads(header["__metadata__"]["state"])
        except Exception as err:
            raise ClassRosError(f"{path} holds a damaged train state ({err}); start a new run.") from err
        return skeleton, tensors

    def load_train_state(self, device: str = "cpu", **targets) -> int:
        """Restore objects passed as keyword arguments (load_state_dict) and return the saved step."""
        skeleton, tensors = self._train_state(device)
        tree = join_tensors(skeleton, tensors)
        for key, obj in targets.items():
            if key not in tree:
                raise ClassRosError(f"{self.path / TRAIN_STATE} holds no {key!r} state; it was written by a "
                                    "different trainer.")
            obj.load_state_dict(tree[key])
        return int(tree["step"])

    def train_state_values(self) -> dict:
        """The plain (non-tensor) values saved with the train state, e.g. {"step": 120, "rng_seed": 3}."""
        skeleton, _ = self._train_state()
        return {k: v for k, v in skeleton["__dict__"] if not isinstance(v, dict)}
