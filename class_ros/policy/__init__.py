"""Policies that turn one observation into an action chunk: retrieval (kNN over CLASS embeddings) and diffusion.

    policy = load_policy("runs/class", kind="retrieval")
    policy.reset()
    chunk = policy.predict_action_chunk({"agentview": img, "joint_pos": q})   # (H, D) np.float32, robot units

Every policy satisfies the `Policy` protocol below; `POLICY_KINDS` names the kinds `load_policy` knows.
Both kinds also answer several episodes at once (what `evaluate --workers` uses; optional for others):
`new_episode_state()` -> what one episode's chunks depend on besides its observations, and
`predict_action_chunks(observations, states) -> (B, H, D)`, one forward pass for all of them.
"""
from __future__ import annotations

import importlib
import os
from typing import Protocol, runtime_checkable

import numpy as np

from class_ros.errors import ClassRosError

# kind -> (module, class); imported on first use, so naming the kinds costs nothing (diffusion pulls in diffusers).
_CLASSES = {"retrieval": ("class_ros.policy.retrieval", "RetrievalPolicy"),
            "diffusion": ("class_ros.policy.diffusion", "DiffusionPolicy")}
POLICY_KINDS = tuple(_CLASSES)


@runtime_checkable
class Policy(Protocol):
    """What the evaluation loop and the ROS nodes rely on, whatever the kind."""

    action_names: list[str]  # (D,) names of the action dimensions, in order
    action_kind: str  # "joint_position", "ee_pose" or "other"
    joint_names: list[str]  # the proprio joints, in the order of the proprio key
    control_rate_hz: float  # rate of the chunk's steps
    n_action_steps: int  # steps of each chunk executed before the next prediction

    def reset(self) -> None:
        """Start of an episode: forget any state carried between predictions."""

    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """{camera: (H, W, 3) uint8, proprio key: (d,)} -> (H, D) float32 chunk in robot units."""


def load_policy(run_dir: str | os.PathLike, kind: str = "retrieval", device: str = "cpu", *,
                allow_partial: bool = False) -> Policy:
    """Load a trained policy from its run directory (`retrieval`: a pre-training run with an index).

    An unfinished run (training killed or stopped early) is refused unless `allow_partial`.
    """
    if kind not in _CLASSES:
        raise ClassRosError(f"policy kind {kind!r} is not one of {POLICY_KINDS}.")
    module, name = _CLASSES[kind]
    return getattr(importlib.import_module(module), name).load(run_dir, device=device, allow_partial=allow_partial)
