"""Policies that turn one observation into an action chunk: retrieval (kNN over CLASS embeddings) and diffusion.

    policy = load_policy("runs/class", kind="retrieval")
    policy.reset()
    chunk = policy.predict_action_chunk({"agentview": img, "joint_pos": q})   # (H, D) np.float32, robot units
Every policy has `action_names`, `action_kind`, `joint_names`, `control_rate_hz`, `n_action_steps`.
"""
from __future__ import annotations

import os

from class_ros.errors import ClassRosError

POLICY_KINDS = ("retrieval", "diffusion")


def load_policy(run_dir: str | os.PathLike, kind: str = "retrieval", device: str = "cpu"):
    """Load a trained policy from its run directory (`retrieval`: a pre-training run with an index)."""
    if kind == "retrieval":
        from class_ros.policy.retrieval import RetrievalPolicy
        return RetrievalPolicy.load(run_dir, device=device)
    if kind == "diffusion":
        from class_ros.policy.diffusion import DiffusionPolicy  # lazily: it pulls in diffusers
        return DiffusionPolicy.load(run_dir, device)
    raise ClassRosError(f"policy kind {kind!r} is not one of {POLICY_KINDS}.")
