"""Key names and the dataset metadata record shared by every step that reads or writes a dataset.

Keys follow the store layout: `obs/<name>` for observations, `action` for the action array.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from class_ros.config import config_from_dict
from class_ros.errors import ClassRosError

FORMAT_VERSION = 1

OBS_PREFIX = "obs/"
ACTION = "action"
EPISODE_ENDS = "meta/episode_ends"

# Action kinds a dataset can declare; the execution side refuses a run whose kind it cannot send.
ACTION_KINDS = (
    "joint_position",  # absolute joint-position targets (+ gripper), what ros2_control arms take
    "ee_pose",  # end-effector position (3) + 6D rotation (6) + gripper (1), robomimic's layout
    "ee_delta",  # end-effector deltas (robomimic OSC_POSE)
    "other",
)

KEY_KINDS = ("image", "low_dim")


def obs_key(name: str) -> str:
    """`obs/<name>` for an observation name."""
    return OBS_PREFIX + name


@dataclass
class KeySchema:
    """What one stored key holds: dtype, per-frame shape and kind (image or low_dim)."""

    dtype: str
    shape: tuple[int, ...]
    kind: str = "low_dim"

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if self.kind not in KEY_KINDS:
            raise ClassRosError(f"key kind {self.kind!r} is not one of {KEY_KINDS}.")
        if self.kind == "image" and (self.dtype != "uint8" or len(self.shape) != 3 or self.shape[2] != 3):
            raise ClassRosError(f"image keys must be uint8 (H, W, 3), got {self.dtype} {self.shape}.")


@dataclass
class DatasetMeta:
    """Dataset-wide metadata, stored as JSON in the store's root attributes."""

    control_rate_hz: float
    action_names: list[str]
    action_kind: str = "joint_position"
    keys: dict[str, KeySchema] = field(default_factory=dict)  # every stored key except meta/*
    source: str = ""
    rot6d_dims: list[int] = field(default_factory=list)  # action dims holding a 6D rotation
    joint_names: list[str] = field(default_factory=list)  # names of the proprio joint-position dims
    extra: dict = field(default_factory=dict)  # e.g. robomimic env_args, converter settings
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        self.keys = {k: v if isinstance(v, KeySchema) else KeySchema(**v) for k, v in self.keys.items()}
        if not self.control_rate_hz > 0:
            raise ClassRosError(f"control_rate_hz must be positive, got {self.control_rate_hz}.")
        if self.action_kind not in ACTION_KINDS:
            raise ClassRosError(f"action_kind {self.action_kind!r} is not one of {ACTION_KINDS}.")
        if ACTION in self.keys and self.keys[ACTION].shape != (len(self.action_names),):
            raise ClassRosError(
                f"action has shape {self.keys[ACTION].shape} but {len(self.action_names)} action_names were given.")
        for k in self.keys:
            if k != ACTION and not k.startswith(OBS_PREFIX):
                raise ClassRosError(f"key {k!r} must be 'action' or start with 'obs/'.")

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def image_keys(self) -> list[str]:
        return sorted(k for k, s in self.keys.items() if s.kind == "image")

    @property
    def low_dim_keys(self) -> list[str]:
        return sorted(k for k, s in self.keys.items() if s.kind == "low_dim" and k != ACTION)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["keys"] = {k: {"dtype": s.dtype, "shape": list(s.shape), "kind": s.kind} for k, s in self.keys.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetMeta":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise ClassRosError(
                f"dataset format version {version} is not supported (this class_ros reads version {FORMAT_VERSION}).")
        return config_from_dict(cls, d, "dataset metadata")
