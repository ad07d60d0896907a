"""A tiny synthetic dataset with a known latent state, for the encoder, policy and run-directory tests.

Each episode moves a red square at constant speed towards a fixed goal; the image also holds an
episode-specific background colour and a distractor square (nuisances the encoder must learn to
ignore). The action is the next position, so the action chunk of a frame depends on the square's
position alone: DTW positives are frames with the square in a similar place, whatever the background.
"""
from __future__ import annotations

import os

import numpy as np

GOAL = np.array([0.8, 0.8])


def make_latent_dataset(path: str | os.PathLike, n_episodes: int = 20, length: int = 20, size: int = 32,
                        seed: int = 0, speed: float = 0.015):
    """Write the dataset to `path` (obs/cam (size, size, 3) uint8, obs/state (2,), action (2,)); returns the store."""
    from class_ros.data.schema import DatasetMeta, KeySchema
    from class_ros.data.store import EpisodeStore

    rng = np.random.default_rng(seed)
    meta = DatasetMeta(control_rate_hz=10.0, action_names=["x", "y"], action_kind="other",
                       keys={"obs/cam": KeySchema("uint8", (size, size, 3), "image"),
                             "obs/state": KeySchema("float32", (2,), "low_dim"),
                             "action": KeySchema("float32", (2,), "low_dim")},
                       joint_names=["x", "y"], source="synthetic")
    half = max(2, size // 10)
    with EpisodeStore.build(path, overwrite=True, lineage={"synthetic": {"n_episodes": n_episodes, "seed": seed}}) as b:
        store = b.create(meta)
        _write_episodes(store, rng, n_episodes, length, size, half, speed)
    return EpisodeStore.open(path)


def _write_episodes(store, rng, n_episodes: int, length: int, size: int, half: int, speed: float) -> None:
    for _ in range(n_episodes):
        pos = rng.uniform(0.1, 0.6, size=2)
        background = rng.integers(0, 256, size=3)
        distractor = (rng.integers(half, size - half, size=2), rng.integers(0, 256, size=3))
        states = []
        for _ in range(length + 1):
            states.append(pos.copy())
            step = GOAL - pos
            dist = np.linalg.norm(step)
            pos = GOAL.copy() if dist <= speed else pos + step / dist * speed
        states = np.array(states)
        images = np.empty((length, size, size, 3), np.uint8)
        for t in range(length):
            img = np.empty((size, size, 3), np.float32)
            img[:] = background
            dy, dx = distractor[0]
            img[dy - half:dy + half, dx - half:dx + half] = distractor[1]
            cy, cx = (states[t] * (size - 1)).round().astype(int)
            img[max(0, cy - half):cy + half, max(0, cx - half):cx + half] = (255, 0, 0)
            img += rng.normal(0, 8, size=img.shape)
            images[t] = np.clip(img, 0, 255).astype(np.uint8)
        store.append_episode({"obs/cam": images, "obs/state": states[:-1].astype(np.float32),
                              "action": states[1:].astype(np.float32)})
