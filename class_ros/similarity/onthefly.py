"""On-the-fly positives for datasets too large even for the exact pair list.

Each training batch gets its B x B DTW distances computed on the spot; a distance d becomes a weight
through the global distance distribution, estimated once from S random pairs:

    rank(d) ~ P * F(d),  F(d) = fraction of sampled pairs with distance < d,  P = N(N-1)/2
    weight(d) = max(0, 1 - rank(d) / (k - 1)),  k = floor(quantile * P)

which is the exact linear-in-rank weight with the true rank replaced by its sample estimate.

Tolerance: a weight's error is the sampling error of F at that distance, divided by the quantile.
For a pair whose true CDF value is f <= quantile its standard error is sqrt(f (1 - f) / S) / quantile
<= 1 / sqrt(quantile * S) (about 0.0045 for quantile 0.025, S = 2M); `tolerance()` returns four
standard errors, which bounds every weight of a batch in practice (tested against the exact mode).
The diagonal and repeated ids weigh 0 as in the exact mode; a positive near the cut-off can come out
as 0 (and vice versa) within that tolerance.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from class_ros.errors import ClassRosError
from class_ros.similarity.dtw import check_sequences, pairwise_dtw
from class_ros.similarity.positives import (check_quantile, load_npz, n_positive_pairs, sample_distances,
                                            save_npz)

FORMAT = "class_ros.onthefly.v1"
KEEP_FACTOR = 2.0  # keep sampled distances up to twice the quantile: enough for every non-zero weight


class OnTheFlyWeights:
    """`.batch_weights(idx)` by DTW on the batch's chunks, mapped through a sampled distance CDF."""

    def __init__(self, chunks: np.ndarray, quantile: float, low: np.ndarray, n_sampled: int,
                 device: str = "cpu"):
        self.chunks = check_sequences(chunks, "chunks")  # (N, H, D) normalised
        self.quantile = check_quantile(quantile)
        self.low = np.sort(np.asarray(low, dtype=np.float32))  # smallest sampled distances, sorted
        self.n_sampled = int(n_sampled)  # S
        self.device = device
        N = len(self.chunks)
        self.n_total = N * (N - 1) // 2  # P
        self.k = n_positive_pairs(N, self.quantile)

    @property
    def n(self) -> int:
        """Number of samples N."""
        return len(self.chunks)

    @classmethod
    def fit(cls, chunks, quantile: float = 0.025, *, n_samples: int = 2_000_000, seed: int = 0,
            device: str = "cpu") -> "OnTheFlyWeights":
        """Estimate the distance CDF of (N, H, D) chunks from about `n_samples` random pairs."""
        x = check_sequences(chunks, "chunks")
        q = check_quantile(quantile)
        if len(x) < 2:
            return cls(x, q, np.zeros(0, np.float32), 1, device)
        sample = sample_distances(x, n_samples, np.random.default_rng(seed)).reshape(-1)
        keep = min(len(sample), int(math.ceil(KEEP_FACTOR * q * len(sample))) + 1)
        low = np.partition(sample, keep - 1)[:keep] if keep < len(sample) else sample
        return cls(x, q, low, len(sample), device)

    def tolerance(self) -> float:
        """Documented bound on |weight - exact weight|: four standard errors at the quantile."""
        if self.quantile == 0:
            return 0.0
        return 4.0 / math.sqrt(self.quantile * self.n_sampled)

    def weights_for(self, dist: np.ndarray) -> np.ndarray:
        """Distances (any shape) -> weights in [0, 1] (float32) through the sampled CDF."""
        if self.k == 0:
            return np.zeros(np.shape(dist), np.float32)
        below = np.searchsorted(self.low, np.asarray(dist, np.float32), side="left")  # sampled pairs < d
        rank = below * (self.n_total / self.n_sampled)
        if self.k == 1:
            return (rank < 0.5).astype(np.float32)
        return np.clip(1.0 - rank / (self.k - 1), 0.0, 1.0).astype(np.float32)

    def batch_weights(self, idx) -> np.ndarray:
        """(B,) sample ids -> (B, B) float32 weights; the diagonal and repeated ids weigh 0."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"sample ids must lie in [0, {self.n}), got range [{idx.min()}, {idx.max()}].")
        batch = self.chunks[idx]
        w = self.weights_for(pairwise_dtw(batch, device=self.device))
        w[idx[:, None] == idx[None, :]] = 0.0
        return w

    def save(self, path: str | os.PathLike, dataset_fingerprint: str = "") -> Path:
        """Write the kind marker, quantile and sampled CDF (not the chunks) as .npz, atomically."""
        N, H, D = self.chunks.shape
        return save_npz(path, kind="onthefly", format=FORMAT, quantile=self.quantile, low=self.low,
                        n_sampled=self.n_sampled, n=N, horizon=H, dim=D, dataset_fingerprint=dataset_fingerprint)

    @classmethod
    def load(cls, path: str | os.PathLike, chunks, device: str = "cpu") -> "OnTheFlyWeights":
        """Read a file written by `save`; `chunks` are the dataset's normalised (N, H, D) chunks."""
        data = load_npz(path)
        if str(data.get("kind")) != "onthefly":
            raise ClassRosError(f"{path} does not hold on-the-fly weights (kind {str(data.get('kind'))!r}).")
        if chunks is None:
            raise ClassRosError(f"{path} holds on-the-fly weights, which need the dataset's normalised action "
                                "chunks: pass chunks=normalized_chunks(store, horizon).")
        chunks = np.asarray(chunks)
        try:
            n, H, D = int(data["n"]), int(data["horizon"]), int(data["dim"])
            quantile, low, n_sampled = float(data["quantile"]), data["low"], int(data["n_sampled"])
        except KeyError as err:
            raise ClassRosError(f"{path} lacks the field {err}; recompute it with `class-ros dtw`.") from err
        if chunks.shape != (n, H, D):
            raise ClassRosError(f"{path} was computed for {n} chunks of shape ({H}, {D}), but the chunks given "
                                f"have shape {chunks.shape}; recompute it for this dataset and horizon.")
        return cls(chunks, quantile, low, n_sampled, device)
