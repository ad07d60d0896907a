"""A retrieval run in the built-in sim's layout, made in seconds, for tests that start the ROS graph.

The dataset is synthetic (random frames, a slow sweep of the joints away from HOME), so the run says
nothing about task skill; it has the sim's keys, joint names and action kind, so every node accepts it
and the sim arm visibly follows its chunks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SWEEP = 0.3  # rad (gripper units) the actions move away from HOME over an episode


def make_sim_layout_run(out: Path, n_episodes: int = 3, length: int = 24, cameras=("agentview",)) -> Path:
    """Dataset, exact DTW positives, 1 pre-training step and a k=1 index under `out`; returns the run dir."""
    from class_ros.data.schema import DatasetMeta, KeySchema
    from class_ros.data.store import EpisodeStore
    from class_ros.encoder.config import EncoderConfig
    from class_ros.sim.robot import HOME, JOINT_NAMES
    from training.dtw import compute_positives
    from training.index import build_index
    from training.pretrain import PretrainConfig, pretrain

    rng = np.random.default_rng(0)
    names = list(JOINT_NAMES)
    meta = DatasetMeta(control_rate_hz=10.0, action_names=names, action_kind="joint_position",
                       keys={**{f"obs/{c}": KeySchema("uint8", (96, 96, 3), "image") for c in cameras},
                             "obs/joint_pos": KeySchema("float32", (7,), "low_dim"),
                             "action": KeySchema("float32", (7,), "low_dim")},
                       joint_names=names, source="synthetic")
    with EpisodeStore.build(out / "dataset", overwrite=True, lineage={"synthetic": "test/tiny_run.py"}) as b:
        store = b.create(meta)
        for _ in range(n_episodes):
            ramp = np.linspace(0.0, SWEEP, length + 1)[:, None] * np.sign(rng.normal(size=7))[None]
            q = (HOME[None] + ramp).astype(np.float32)
            store.append_episode({**{f"obs/{c}": rng.integers(0, 256, (length, 96, 96, 3), dtype=np.uint8)
                                     for c in cameras}, "obs/joint_pos": q[:-1], "action": q[1:]})
    compute_positives(out / "dataset", out / "positives.npz", horizon=8, quantile=0.05, verbose=False)
    cfg = PretrainConfig(encoder=EncoderConfig(small_width=8, crop_size=88, num_keypoints=8, feature_dim=16),
                         batch_size=16, steps=1, warmup_steps=1, dist_horizon=8, save_every=1000)
    pretrain(out / "dataset", out / "positives.npz", out / "run", cfg, device="cpu", progress=False)
    build_index(out / "run", out / "dataset", k=1, progress=False)
    return out / "run"
