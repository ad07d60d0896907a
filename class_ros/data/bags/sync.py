"""Synchronisation: a regular frame grid per episode, and as-of sampling of every key on it.

Each output frame at time t takes, for every key, the latest message stamped at or before t (never a
later one). A key made of several channels (a JointState key: one channel per joint name, so arm and
gripper may come from different publishers) is as old as its oldest channel. A frame is dropped when
any key has no message yet (`missing:<key>`) or its sample is older than the key's `max_age_s`
(`stale:<key>`).

"At or before t" allows `SAME_TIME_NS` (1 us) of rounding: a 15 Hz stream stamped in whole nanoseconds
and a 15 Hz frame grid can disagree by a nanosecond, and a frame must not then take the previous image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NS = 1_000_000_000
SAME_TIME_NS = 1_000  # stamps this close are the same instant (rounding), not a future message


@dataclass
class Track:
    """One channel of a key: sorted message times (N,) int64 ns and values (N, D) (or message ordinals (N,))."""

    times: np.ndarray
    values: np.ndarray

    @staticmethod
    def sorted(times, values) -> "Track":
        times = np.asarray(times, dtype=np.int64)
        order = np.argsort(times, kind="stable")  # header stamps may arrive out of receive order
        return Track(times[order], np.asarray(values)[order])


@dataclass
class Sampled:
    """A key sampled on a frame grid of T frames."""

    values: np.ndarray  # (T, D) float64 for low-dim keys, (T,) int64 message ordinals for images
    age_s: np.ndarray  # (T,) age of the sample (the oldest channel), NaN where missing
    missing: np.ndarray  # (T,) bool: a channel had no message at or before t
    stale: np.ndarray  # (T,) bool: older than max_age_s


def sample(tracks: list[Track], t: np.ndarray, max_age_s: float) -> Sampled:
    """As-of sample of a key made of `tracks` (concatenated in order) at frame times `t` (T,) ns."""
    T = len(t)
    missing = np.zeros(T, bool)
    age_ns = np.zeros(T, np.int64)
    parts = []
    for track in tracks:
        idx = np.searchsorted(track.times, t + SAME_TIME_NS, side="right") - 1  # latest at or before t
        none = idx < 0
        idx = np.maximum(idx, 0)
        missing |= none
        age_ns = np.maximum(age_ns, np.where(none, 0, np.maximum(t - track.times[idx], 0)))
        vals = track.values[idx]
        parts.append(vals if vals.ndim > 1 else vals[:, None])
    values = np.concatenate(parts, axis=1)
    if len(tracks) == 1 and tracks[0].values.ndim == 1:
        values = values[:, 0]
    age = np.where(missing, np.nan, age_ns / NS)
    stale = ~missing & (age_ns > round(max_age_s * NS))
    return Sampled(values, age, missing, stale)


def frame_grid(ref_times: np.ndarray, start: int, end: int, rate_hz: float) -> np.ndarray:
    """(T,) int64 frame times every 1/rate_hz from the first to the last reference message in [start, end]."""
    inside = ref_times[(ref_times >= start) & (ref_times <= end)]
    if len(inside) == 0:
        return np.zeros(0, np.int64)
    step = NS / rate_hz
    n = int(np.floor((inside[-1] - inside[0]) / step + 1e-9)) + 1
    return inside[0] + np.round(np.arange(n) * step).astype(np.int64)


def split_windows(ref_times: np.ndarray, marker_times: np.ndarray | None = None,
                  marker_values: np.ndarray | None = None, gap_s: float | None = None) -> list[tuple[int, int]]:
    """Episode windows [start, end] (ns, inclusive) inside one bag.

    Markers: a std_msgs/Bool `true` starts an episode and `false` ends it (data outside is not used);
    std_msgs/Empty messages (marker_values None) are boundaries. Then a pause in the reference topic
    longer than `gap_s` splits a window in two.
    """
    lo, hi = int(ref_times[0]), int(ref_times[-1])
    windows = [(lo, hi)]
    if marker_times is not None and len(marker_times):
        if marker_values is None:
            # A reference message exactly at a marker belongs to the episode the marker starts.
            cuts = [lo, *[int(m) for m in marker_times if lo < m <= hi], hi + 1]
            windows = [(a, b - 1) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        else:
            windows, start = [], None
            for t, on in zip(marker_times, marker_values):
                if on and start is None:
                    start = int(t)
                elif not on and start is not None:
                    windows.append((start, int(t)))
                    start = None
            if start is not None:
                windows.append((start, hi))
    if gap_s is not None:
        split = []
        for a, b in windows:
            inside = ref_times[(ref_times >= a) & (ref_times <= b)]
            gaps = np.flatnonzero(np.diff(inside) > gap_s * NS)
            edges = [a, *[x for g in gaps for x in (int(inside[g]), int(inside[g + 1]))], b]
            split += [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]
        windows = split
    return windows
