"""Field paths into deserialised messages of any type: `data`, `pose.pose.position`, `points[0].positions`.

A path resolves to a number, a numeric array, or a message whose fields are all numbers (a Point, a
Quaternion, a Vector3); each becomes a flat float vector. Joint positions are picked by joint name
(`JointState.name` or `JointTrajectory.joint_names`), never by index.
"""
from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from class_ros.errors import ClassRosError

_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]")


def _fields(msg) -> list[str]:
    return [f.name for f in dataclasses.fields(msg) if not f.name.startswith("__")]


@functools.lru_cache(maxsize=256)  # the same few paths are resolved for every message of a bag
def _parse(path: str) -> tuple[str | int, ...]:
    steps = []
    for part in path.split("."):
        found = _STEP.findall(part)
        if not found or "".join(n or f"[{i}]" for n, i in found) != part:
            raise ClassRosError(f"field path {path!r} is malformed; write it like 'pose.pose.position' or "
                                "'points[0].positions'.")
        steps += [n if n else int(i) for n, i in found]
    return tuple(steps)


class MissingValue(Exception):
    """The message holds no value at this path this time (an empty list), not a mapping error."""


def resolve(msg, path: str, topic: str = ""):
    """The value at `path` inside `msg`; a ClassRosError names the fields that do exist."""
    value = msg
    for step in _parse(path):
        if isinstance(step, int):
            if not isinstance(value, (list, tuple, np.ndarray)):
                raise ClassRosError(f"field path {path!r} on topic {topic} indexes [{step}] into a non-list.")
            if not -len(value) <= step < len(value):
                raise MissingValue(path)
            value = value[step]
        else:
            if not dataclasses.is_dataclass(value) or step not in _fields(value):
                have = _fields(value) if dataclasses.is_dataclass(value) else []
                kind = getattr(msg, "__msgtype__", type(msg).__name__)
                raise ClassRosError(f"topic {topic} ({kind}) has no field {step!r} in path {path!r}; "
                                    f"fields there: {', '.join(have) or 'none'}.")
            value = getattr(value, step)
    return value


def vector(value, path: str, topic: str = "") -> tuple[np.ndarray, list[str]]:
    """A resolved value -> (flat float64 vector, one name per element)."""
    if isinstance(value, (bool, int, float, np.number, np.bool_)):
        return np.array([float(value)]), [path]
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        flat = value.astype(np.float64).reshape(-1)
        return flat, [f"{path}[{i}]" for i in range(len(flat))]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, bool)) for v in value):
        return np.asarray(value, dtype=np.float64), [f"{path}[{i}]" for i in range(len(value))]
    if dataclasses.is_dataclass(value):
        names = _fields(value)
        parts = [getattr(value, n) for n in names]
        if names and all(isinstance(p, (int, float, bool, np.number)) for p in parts):
            return np.asarray(parts, dtype=np.float64), [f"{path}.{n}" for n in names]
        raise ClassRosError(f"field {path!r} on topic {topic} is a {value.__msgtype__} with non-numeric or nested "
                            f"fields ({', '.join(names)}); name the numeric fields, e.g. '{path}.{names[0]}'.")
    raise ClassRosError(f"field {path!r} on topic {topic} is not numeric ({type(value).__name__}); "
                        "point the path at numbers, e.g. 'data' or 'pose.pose.position'.")


def extract(msg, paths: list[str], topic: str = "") -> tuple[np.ndarray, list[str]]:
    """Concatenate the vectors at `paths` -> ((D,) float64, D names). Raises MissingValue for an empty list."""
    parts = [vector(resolve(msg, p, topic), p, topic) for p in paths]
    return np.concatenate([p[0] for p in parts]), [n for p in parts for n in p[1]]


def default_joint_field(msg) -> str:
    """JointState -> 'position'; JointTrajectory -> 'points[0].positions' (the first point)."""
    return "points[0].positions" if hasattr(msg, "joint_names") else "position"


def joint_values(msg, path: str, topic: str = "") -> dict[str, float]:
    """{joint name: value} for the joints this message carries, read from `path` in the message's name order."""
    if hasattr(msg, "joint_names"):
        names = list(msg.joint_names)
    elif hasattr(msg, "name"):
        names = list(msg.name)
    else:
        kind = getattr(msg, "__msgtype__", type(msg).__name__)
        raise ClassRosError(f"topic {topic} ({kind}) has no joint names (JointState.name or "
                            "JointTrajectory.joint_names); use 'field' instead of 'joints'.")
    try:
        values, _ = vector(resolve(msg, path, topic), path, topic)
    except MissingValue:
        return {}
    if len(values) < len(names):  # e.g. a JointState carrying only velocities: no positions this time
        return {}
    return dict(zip(names, values.tolist()))
