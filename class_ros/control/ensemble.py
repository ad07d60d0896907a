"""Turning action chunks into one target per control tick.

A chunk is H targets due at `stamp + k * dt` (stamp = the observation time it was computed from).
Steps whose period is over when the chunk arrives are dropped. Between steps the target is held
(step k from its due time until step k+1 is due, as the demonstrations were recorded) or, with
`interpolate=True`, interpolated linearly. Overlapping chunks are blended
(temporal ensembling): each live chunk contributes its target for time t with weight
`exp(-decay * k)`, where k (in steps, fractional) is how far into its own future that chunk had
to predict. With decay > 0 newer chunks weigh more, 0 is a plain mean, < 0 favours older chunks
(ACT's choice). Blending is what removes the jump at a chunk boundary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from class_ros.errors import ClassRosError


@dataclass
class Chunk:
    """H timed targets: points (H, D), point k due at stamp + k * dt."""

    stamp: float  # s, observation time
    dt: float  # s between points
    points: np.ndarray  # (H, D)
    interpolate: bool = False

    @property
    def end(self) -> float:
        """The last time this chunk has a target for."""
        return self.stamp + (len(self.points) - (1 if self.interpolate else 0)) * self.dt

    def at(self, t: float) -> tuple[np.ndarray, float] | None:
        """(target at time t, fractional step index k) or None outside [stamp, end]."""
        k = (t - self.stamp) / self.dt
        last = len(self.points) - 1
        if k < -1e-9 or t > self.end + 1e-9:
            return None
        k = max(k, 0.0)
        if not self.interpolate:
            return self.points[min(int(np.floor(k + 1e-9)), last)].copy(), k
        k = min(k, float(last))
        if last == 0:
            return self.points[0].copy(), 0.0
        i = min(int(np.floor(k)), last - 1)
        frac = k - i
        return (1 - frac) * self.points[i] + frac * self.points[i + 1], k


class ChunkEnsembler:
    """Keeps the live chunks and blends their targets for any time t."""

    def __init__(self, decay: float = 0.0, max_chunks: int = 16, interpolate: bool = False):
        if not np.isfinite(decay):
            raise ClassRosError(f"the ensembling decay must be a finite number, got {decay}.")
        if max_chunks < 1:
            raise ClassRosError(f"max_chunks must be at least 1, got {max_chunks}.")
        self.decay = float(decay)
        self.interpolate = bool(interpolate)
        self.max_chunks = int(max_chunks)
        self.chunks: list[Chunk] = []
        self.dropped_steps = 0  # steps that were already due when their chunk arrived

    def clear(self) -> None:
        """Forget every chunk (watchdog trip, e-stop)."""
        self.chunks.clear()

    def add(self, stamp: float, dt: float, points: np.ndarray, now: float) -> int:
        """Add a chunk (H, D) computed from the observation at `stamp`; returns how many steps are still ahead."""
        points = np.asarray(points, dtype=np.float64)
        assert points.ndim == 2 and len(points) > 0 and dt > 0
        # A step is late once the next step is due (held) or once it is due (interpolated): target(t)
        # only reads a chunk at t >= now, so late steps are never executed.
        due = stamp + dt * (np.arange(len(points)) + (0 if self.interpolate else 1))
        late = int(np.sum(due < now - 1e-9))
        self.dropped_steps += late
        if late == len(points):
            return 0
        if self.chunks and self.chunks[-1].points.shape[1] != points.shape[1]:
            self.chunks.clear()  # a different action layout never blends with the old one
        self.chunks.append(Chunk(float(stamp), float(dt), points, self.interpolate))
        self.chunks = self.chunks[-self.max_chunks:]
        return len(points) - late

    def target(self, t: float) -> np.ndarray | None:
        """The blended target (D,) for time t, or None when no live chunk covers t."""
        self.chunks = [c for c in self.chunks if c.end >= t - 1e-9]
        hits = [h for h in (c.at(t) for c in self.chunks) if h is not None]
        if not hits:
            return None
        ks = np.array([k for _, k in hits])
        w = np.exp(-self.decay * (ks - ks.min()))  # relative to the newest, so weights never underflow to 0
        return np.tensordot(w / w.sum(), np.stack([v for v, _ in hits]), axes=1)

    def newest_stamp(self) -> float | None:
        """Observation stamp of the newest live chunk."""
        return self.chunks[-1].stamp if self.chunks else None
