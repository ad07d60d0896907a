"""Dataclass configs built from dicts and YAML files, with one clear error for unknown keys or bad files."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from class_ros.errors import ClassRosError


def config_from_dict(cls, d: dict, what: str):
    """`cls(**d)`, refusing keys that are not fields of the dataclass `cls` (named `what` in the error)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ClassRosError(f"unknown {what} config keys {sorted(unknown)}; valid keys are {sorted(names)}.")
    return cls(**d)


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict:
    """The mapping a YAML config file holds, or a ClassRosError naming the file."""
    import yaml

    try:
        d = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ClassRosError(f"cannot read config {path} ({err}).") from err
    if not isinstance(d, dict):
        raise ClassRosError(f"config {path} must hold a mapping of {what} settings.")
    return d
