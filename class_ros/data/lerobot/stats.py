"""The statistics LeRobot keeps per episode (meta/episodes `stats/...` columns) and for the dataset (meta/stats.json).

Per feature: min, max, mean, std, count and the quantiles q01, q10, q50, q90, q99, per dimension. Cameras
are summarised per channel on the 0..1 scale, shape (3, 1, 1), over evenly spaced frames of the episode
(about T^0.75 of T, at least 100) subsampled to about 150 pixels on their long side, as LeRobot does;
their count is the number of frames used. Dataset statistics combine the episodes' by LeRobot's rule:
count-weighted means (the variance by the parallel formula) and count-weighted means of the quantiles.
"""
from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of (N, d) values per dimension (min and max keep x's dtype)."""
    assert x.ndim == 2 and len(x), x.shape
    wide = x.astype(np.float64)
    out = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": wide.mean(axis=0), "std": wide.std(axis=0),
           "count": np.array([len(x)])}
    for name, q in QUANTILES.items():
        out[name] = np.quantile(wide, q, axis=0)
    return out


def image_sample(n_frames: int) -> np.ndarray:
    """Indices of the evenly spaced frames an episode's camera statistics use."""
    n = n_frames if n_frames <= 100 else max(100, min(int(n_frames ** 0.75), 10_000))
    return np.unique(np.round(np.linspace(0, n_frames - 1, n)).astype(np.int64))


def thumbnail(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> every k-th pixel so the long side is about 150 (images up to 300 pixels are kept whole)."""
    side = max(img.shape[:2])
    k = side // 150 if side > 300 else 1
    return img[::k, ::k].copy()  # a copy: a view would keep the whole block of frames it came from alive


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of (n, H, W, 3) uint8 frames on the 0..1 scale, each (3, 1, 1); count = n.

    Computed from each channel's 256-bin histogram: the same numbers as over the pixels themselves
    (np.quantile's linear interpolation included), without sorting millions of values.
    """
    assert frames.dtype == np.uint8 and frames.shape[-1] == 3, (frames.dtype, frames.shape)
    levels = np.arange(256, dtype=np.float64)
    per_channel = []
    for c in range(3):
        counts = np.bincount(frames[..., c].reshape(-1), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = (counts * levels).sum() / n
        cum = np.cumsum(counts)

        def ranked(i: float) -> float:  # the i-th smallest pixel value (0-based)
            return float(np.searchsorted(cum, i, side="right"))

        stat = {"min": ranked(0), "max": ranked(n - 1), "mean": mean,
                "std": np.sqrt((counts * (levels - mean) ** 2).sum() / n)}
        for name, q in QUANTILES.items():
            pos = q * (n - 1)
            lo = np.floor(pos)
            stat[name] = ranked(lo) + (pos - lo) * (ranked(min(lo + 1, n - 1)) - ranked(lo))
        per_channel.append(stat)
    out = {k: np.array([s[k] for s in per_channel]).reshape(3, 1, 1) / 255.0 for k in per_channel[0]}
    return {**out, "count": np.array([len(frames)])}


def aggregate(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feature's dataset statistics from its per-episode statistics."""
    counts = np.array([int(s["count"][0]) for s in episodes], dtype=np.float64)
    total = counts.sum()
    shape = (-1,) + (1,) * (np.ndim(episodes[0]["mean"]))
    w = (counts / total).reshape(shape)
    means = np.stack([s["mean"] for s in episodes])
    mean = (w * means).sum(axis=0)
    var = (w * (np.stack([s["std"] for s in episodes]) ** 2 + (means - mean) ** 2)).sum(axis=0)
    out = {"min": np.min(np.stack([s["min"] for s in episodes]), axis=0),
           "max": np.max(np.stack([s["max"] for s in episodes]), axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    for name in QUANTILES:
        out[name] = (w * np.stack([s[name] for s in episodes])).sum(axis=0)
    return out


def to_json(stats: dict[str, np.ndarray]) -> dict[str, list]:
    """numpy arrays -> nested lists, for JSON and parquet."""
    return {k: np.asarray(v).tolist() for k, v in stats.items()}
