"""Windows of observations and action chunks that never cross an episode boundary.

For a frame t of an episode [s, e): the observation window is frames t-To+1 .. t (the first frame
repeated before s) and the action chunk is a[t : t+H] (the last action repeated from e on) -
diffusion_policy's padding convention.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from class_ros.data.schema import ACTION
from class_ros.data.store import EpisodeStore


def _bounds(episode_ends: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ends = np.asarray(episode_ends, dtype=np.int64)
    ep = np.searchsorted(ends, frames, side="right")
    if np.any(ep >= len(ends)) or np.any(frames < 0):
        raise IndexError(f"frame index out of range [0, {ends[-1] if len(ends) else 0})")
    starts = np.concatenate([[0], ends[:-1]])
    return starts[ep], ends[ep]


def action_chunk_indices(episode_ends: np.ndarray, frames: np.ndarray, horizon: int) -> np.ndarray:
    """(N, H) global frame indices of the action chunk after each frame, clamped to its episode's last frame."""
    frames = np.asarray(frames, dtype=np.int64)
    _, end = _bounds(episode_ends, frames)
    return np.minimum(frames[:, None] + np.arange(horizon)[None, :], end[:, None] - 1)


def obs_window_indices(episode_ends: np.ndarray, frames: np.ndarray, obs_horizon: int) -> np.ndarray:
    """(N, To) global frame indices of the observation window ending at each frame, clamped to its episode's first."""
    frames = np.asarray(frames, dtype=np.int64)
    start, _ = _bounds(episode_ends, frames)
    return np.maximum(frames[:, None] + np.arange(-obs_horizon + 1, 1)[None, :], start[:, None])


@dataclass
class WindowSampler:
    """Observation windows (B, To, ...) and action chunks (B, H, D) for batches of frame indices."""

    store: EpisodeStore
    obs_horizon: int = 1
    pred_horizon: int = 16

    def __post_init__(self):
        if self.obs_horizon < 1 or self.pred_horizon < 1:
            raise ValueError(f"obs_horizon and pred_horizon must be >= 1, got {self.obs_horizon}, {self.pred_horizon}")

    def __len__(self) -> int:
        return self.store.n_frames

    def sample(self, frames: np.ndarray, obs_keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """{obs key: (B, To, ...), 'action': (B, H, D)} for the given global frame indices."""
        frames = np.asarray(frames, dtype=np.int64)
        ends = self.store.episode_ends
        obs_idx = obs_window_indices(ends, frames, self.obs_horizon)  # (B, To)
        act_idx = action_chunk_indices(ends, frames, self.pred_horizon)  # (B, H)
        keys = obs_keys if obs_keys is not None else [k for k in self.store.keys if k != ACTION]
        out = {k: self.store.read(k, obs_idx) for k in keys}
        out[ACTION] = self.store.read(ACTION, act_idx)
        return out

    def all_action_chunks(self) -> np.ndarray:
        """(N, H, D) every action chunk of the dataset, for the similarity step."""
        return self.store.action_chunks(self.pred_horizon)
