"""LeRobot feature names <-> class_ros dataset keys (the mapping docs/pipeline.md documents).

    observation.images.<cam>   <->  obs/<cam>        (H, W, 3) uint8, a camera (mp4 video in LeRobot)
    observation.image          ->   obs/image        (older single-camera datasets)
    observation.state          <->  obs/joint_pos    (d,) float32, the proprio key; its names -> joint_names
    observation.<name>         <->  obs/<name>       (d,) float32, any other low-dim observation
    action                     <->  action           (D,) float32; its names -> action_names

An import keeps each key's original LeRobot name in the dataset metadata, so an export of an imported
dataset writes the names it came with (observation.image stays observation.image).
"""
from __future__ import annotations

from class_ros.data.schema import ACTION, OBS_PREFIX

CODEBASE_VERSION = "v3.0"  # what export writes; import also reads v2.1
IMAGES_PREFIX = "observation.images."
SINGLE_IMAGE = "observation.image"
STATE = "observation.state"
OBSERVATION_PREFIX = "observation."
PROPRIO = "joint_pos"  # our name for the joint-position proprio key (the sim's and the mappings')
# Columns every LeRobot dataset has; they index frames and are not observations.
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
EXTRA = "lerobot"  # the DatasetMeta.extra entry an import writes


def store_key(feature: str) -> str | None:
    """Our dataset key for a LeRobot feature name, or None when the name follows no convention we map."""
    if feature == ACTION:
        return ACTION
    if feature.startswith(IMAGES_PREFIX) and len(feature) > len(IMAGES_PREFIX):
        return OBS_PREFIX + feature[len(IMAGES_PREFIX):]
    if feature == SINGLE_IMAGE:
        return OBS_PREFIX + "image"
    if feature == STATE:
        return OBS_PREFIX + PROPRIO
    if feature.startswith(OBSERVATION_PREFIX) and len(feature) > len(OBSERVATION_PREFIX):
        return OBS_PREFIX + feature[len(OBSERVATION_PREFIX):]
    return None


def lerobot_feature(key: str, kind: str) -> str:
    """The LeRobot feature name for one of our keys by the convention (`kind` is "image" or "low_dim")."""
    if key == ACTION:
        return ACTION
    name = key[len(OBS_PREFIX):]
    if kind == "image":
        return IMAGES_PREFIX + name
    return STATE if name == PROPRIO else OBSERVATION_PREFIX + name


def flat_names(names, dim: int) -> list[str] | None:
    """LeRobot's per-dimension names as one list: a list, or a dict of lists ({"motors": [...]}) joined in order."""
    if isinstance(names, dict) and all(isinstance(v, list) for v in names.values()):
        names = [n for v in names.values() for n in v]
    if isinstance(names, list) and len(names) == dim and all(isinstance(n, str) for n in names):
        return list(names)
    return None
