"""Dataclass configs built from dicts and YAML files, with one clear error for unknown keys or bad files.

One rule for every config: unknown keys are refused with a sentence naming them and the valid ones;
settings saved by an older class_ros load through an explicit migration where they load at all.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from class_ros.errors import ClassRosError


def config_from_dict(cls, d: dict, what: str):
    """`cls(**d)`, refusing keys that are not fields of the dataclass `cls` (named `what` in the error)."""
    if not isinstance(d, dict):
        raise ClassRosError(f"the {what} config must be a mapping of settings, got {type(d).__name__}.")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ClassRosError(f"unknown {what} config keys {sorted(unknown)}; valid keys are {sorted(names)}.")
    return cls(**d)


class DictConfig:
    """Mixin for a dataclass config: `from_dict` refuses unknown keys, `from_yaml` reads a YAML mapping.

    `config_name` names the config in error messages ("unknown pretrain config keys [...]").
    """

    config_name = "config"

    @classmethod
    def from_dict(cls, d: dict):
        return config_from_dict(cls, d, cls.config_name)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike):
        return cls.from_dict(read_yaml_mapping(path, cls.config_name))


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
