"""Exact top-quantile DTW positives without an N x N matrix (docs/method.md section 1).

Of all unordered pairs i < j, the k = floor(quantile * N(N-1)/2) with the smallest DTW distance are
positives; their weight is linear in rank: 1.0 for the closest, 0.0 for the k-th. Everything else and
the diagonal weigh 0. Tie rule: pairs are ranked by (distance, i, j) with i < j, so among equal
distances the pair with the smaller first index (then second index) ranks first; a pair tied with the
k-th distance but later in that order is left out.

How it stays exact while skipping work it can prove useless:
  1. a threshold is estimated from a random sample of pairs, a little above the quantile so that,
     with high confidence, at least k pairs fall below it;
  2. rows are processed in blocks (memory O(block * N) plus the kept pairs); row i meets the others
     as lane-major tiles; a pair is skipped when its box bound exceeds the threshold: the summed
     squared distances of B's points to the bounding box of A's values (LB_Keogh with an unlimited
     window: every B_t is matched to some A_s, which lies in the box). Survivors are packed into
     full tiles for the kernel, which abandons a tile once every lane's DP row minimum exceeds the
     threshold (costs are non-negative, so a row minimum bounds the final distance);
  3. if fewer than k pairs came in under the threshold, it was too tight: loosen it and recompute
     (rare; `Positives.passes` records how many passes ran). Otherwise every pair that can be among
     the k smallest was kept, and sorting them by (distance, i, j) gives the exact answer.
On smooth demonstration-like chunks the box bound alone rules out about 90% of the pairs at the
2.5% quantile. device="cuda" follows the same plan with the GPU kernels (corner bound and
abandoning) and ranks and assembles the CSR on the device.

Usage:
    pos = dtw_positives(chunks, quantile=0.025)     # chunks: (N, T, D)
    w = pos.batch_weights(batch_ids)                # (B, B) float32
    pos.save("positives.npz"); pos = Positives.load("positives.npz")
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from numba import njit, parallel_chunksize

from class_ros.errors import ClassRosError
from class_ros.similarity.dtw import check_sequences
from class_ros.similarity.kernels import LANES, PARALLEL_CHUNK, candidate_rows, pad_dims, rows_vs_cols, to_lanes

FORMAT = "class_ros.positives.v1"
BLOCK_ELEMENTS = 1 << 23  # rows per block * N: a 32 MB float32 scratch of candidate distances
CONFIDENCE_Z = 4.0  # standard errors of margin when picking the sample threshold


# ---------------------------------------------------------------- the result
@dataclass
class Positives:
    """Symmetric CSR of positive pairs: row i holds its positive partners j (sorted), distance and weight."""

    indptr: np.ndarray  # (N+1,) int64
    indices: np.ndarray  # (nnz,) int32
    distance: np.ndarray  # (nnz,) float32
    weight: np.ndarray  # (nnz,) float32
    quantile: float = 0.0
    threshold: float = float("inf")  # distance of the k-th (last kept) pair; inf when k = 0
    passes: int = 0  # full passes over the pairs (1 unless the sampled threshold was too tight)

    @property
    def n(self) -> int:
        """Number of samples N."""
        return len(self.indptr) - 1

    @property
    def n_pairs(self) -> int:
        """Number of positive unordered pairs k."""
        return len(self.indices) // 2

    def batch_weights(self, idx) -> np.ndarray:
        """(B,) sample ids -> (B, B) float32 dense weights (repeats allowed; the diagonal is 0)."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise IndexError(f"sample ids must lie in [0, {self.n}), got range [{idx.min()}, {idx.max()}].")
        return _batch_weights(self.indptr, self.indices, self.weight, idx)

    def dense(self) -> np.ndarray:
        """(N, N) float32 weight matrix; only for small N (tests, inspection)."""
        return self.batch_weights(np.arange(self.n))

    def save(self, path: str | os.PathLike, dataset_fingerprint: str = "") -> Path:
        """Write a .npz (no pickle) atomically, with the fingerprint of its dataset; returns the path."""
        return save_npz(path, kind="exact", format=FORMAT, indptr=self.indptr, indices=self.indices,
                        distance=self.distance, weight=self.weight, quantile=self.quantile,
                        threshold=self.threshold, passes=self.passes, dataset_fingerprint=dataset_fingerprint)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Positives":
        """Read a file written by `save`."""
        data = load_npz(path)
        if str(data.get("kind")) != "exact":
            raise ClassRosError(f"{path} holds {str(data.get('kind'))!r} weights, not exact positives; "
                                "open it with class_ros.similarity.open_weights.")
        try:
            pos = cls(indptr=data["indptr"].astype(np.int64), indices=data["indices"].astype(np.int32),
                      distance=data["distance"].astype(np.float32), weight=data["weight"].astype(np.float32),
                      quantile=float(data["quantile"]), threshold=float(data["threshold"]),
                      passes=int(data["passes"]))
        except KeyError as err:
            raise ClassRosError(f"{path} lacks the field {err}; recompute it with `class-ros dtw`.") from err
        nnz = len(pos.indices)
        if (pos.indptr.ndim != 1 or len(pos.indptr) < 1 or pos.indptr[0] != 0 or pos.indptr[-1] != nnz
                or np.any(np.diff(pos.indptr) < 0) or len(pos.distance) != nnz or len(pos.weight) != nnz
                or (nnz and (pos.indices.min() < 0 or pos.indices.max() >= pos.n))):
            raise ClassRosError(f"{path} is not a consistent positives file; recompute it with `class-ros dtw`.")
        return pos


def save_npz(path: str | os.PathLike, **fields) -> Path:
    """np.savez through class_ros.data.outputs: readers never see half a file."""
    from class_ros.data import outputs
    path = Path(path)
    with outputs.replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in fields.items()})
    return path


def load_npz(path: str | os.PathLike) -> dict:
    """All arrays of a .npz (allow_pickle=False) as a dict; one ClassRosError if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ClassRosError(f"{path} does not exist; compute it with `class-ros dtw --out {path}`.")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as err:  # zipfile, format and pickle refusals all mean the same thing here
        raise ClassRosError(f"{path} is not a readable .npz weights file ({err}).") from err


@njit(cache=True)
def _batch_weights(indptr, indices, weight, idx):
    """Walk each batch row's partners once and look each up in a map id -> batch positions.

    Measured 7x faster than binary-searching every batch id in every row (whose dependent,
    unpredictable loads dominate): the partner lists are short and read sequentially.
    """
    B = len(idx)
    out = np.zeros((B, B), np.float32)
    first = np.full(len(indptr) - 1, -1, np.int64)  # id -> first batch position holding it
    nxt = np.full(B, -1, np.int64)  # batch position -> next position with the same id (repeats)
    for b in range(B - 1, -1, -1):
        nxt[b] = first[idx[b]]
        first[idx[b]] = b
    for a in range(B):
        for q in range(indptr[idx[a]], indptr[idx[a] + 1]):
            p = first[indices[q]]
            while p >= 0:
                out[a, p] = weight[q]
                p = nxt[p]
    return out


# ---------------------------------------------------------------- kernels
@njit(cache=True)
def _build_csr(n, pi, pj, pd, pw):
    """Symmetric CSR from ranked pairs (pi < pj); each row's partners end up sorted by index."""
    counts = np.zeros(n + 1, np.int64)
    for p in range(len(pi)):
        counts[pi[p] + 1] += 1
        counts[pj[p] + 1] += 1
    indptr = np.cumsum(counts)
    nnz = indptr[n]
    indices = np.empty(nnz, np.int32)
    distance = np.empty(nnz, np.float32)
    weight = np.empty(nnz, np.float32)
    fill = indptr[:n].copy()
    for p in range(len(pi)):
        a, b = pi[p], pj[p]
        qa, qb = fill[a], fill[b]
        indices[qa], distance[qa], weight[qa] = b, pd[p], pw[p]
        indices[qb], distance[qb], weight[qb] = a, pd[p], pw[p]
        fill[a] += 1
        fill[b] += 1
    for a in range(n):
        lo, hi = indptr[a], indptr[a + 1]
        if hi - lo > 1:
            order = np.argsort(indices[lo:hi])
            indices[lo:hi] = indices[lo:hi][order]
            distance[lo:hi] = distance[lo:hi][order]
            weight[lo:hi] = weight[lo:hi][order]
    return indptr, indices, distance, weight


# ---------------------------------------------------------------- the search
def n_positive_pairs(n: int, quantile: float) -> int:
    """k = floor(quantile * N(N-1)/2), computed exactly (0.025 means 1/40, not its binary neighbour)."""
    return math.floor(Fraction(repr(float(quantile))) * (n * (n - 1) // 2))


def check_quantile(quantile: float) -> float:
    """Raise ValueError unless 0 <= quantile <= 1."""
    q = float(quantile)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must lie in [0, 1], got {quantile}.")
    return q


def sample_distances(x: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(R, C) DTW distances of random pairs: R random rows, each against C random other samples.

    Rows of C columns keep the kernel's lanes full; i != j always. x: (N, T, D) float32, N >= 2.
    """
    N = len(x)
    x = pad_dims(x)
    per_row = -(-n_pairs // N)  # columns needed when every row is used
    C = int(min(N - 1, max(8 * LANES, -(-per_row // LANES) * LANES)))
    R = int(max(1, min(N, n_pairs // C)))
    rows = rng.choice(N, size=R, replace=False) if R < N else np.arange(N)
    cols = rng.integers(0, N - 1, size=(R, C))
    cols += cols >= rows[:, None]  # skip the diagonal, uniform over the other N-1
    out = np.empty((R, C), np.float32)
    with parallel_chunksize(PARALLEL_CHUNK):
        rows_vs_cols(x, rows.astype(np.int64), cols.astype(np.int64), out)
    return out


def _threshold_from_sample(sample: np.ndarray, quantile: float, inflate: float = 1.0) -> float:
    """A distance below which, with CONFIDENCE_Z standard errors to spare, >= quantile of all pairs lie.

    The standard error comes from the spread of the per-row fractions, which accounts for the rows
    being sampled as clusters.
    """
    flat = np.sort(sample.reshape(-1))
    R = sample.shape[0]
    level = quantile * inflate
    while level < 1.0:
        thr = flat[min(len(flat) - 1, int(math.ceil(level * len(flat))))]
        frac = (sample <= thr).mean(axis=1)
        se = frac.std(ddof=1) / math.sqrt(R) if R > 1 else 1.0
        if frac.mean() - CONFIDENCE_Z * se >= quantile:
            return float(thr)
        level = level * 1.05 + 1.0 / len(flat)
    return float("inf")


class _Grow:
    """Append-only (i, j, d) columns with amortised doubling."""

    def __init__(self, capacity: int):
        capacity = max(1024, int(capacity))
        self.i = np.empty(capacity, np.int32)
        self.j = np.empty(capacity, np.int32)
        self.d = np.empty(capacity, np.float32)
        self.n = 0

    def extend(self, i, j, d) -> None:
        need = self.n + len(d)
        if need > len(self.d):
            cap = max(need, 2 * len(self.d))
            for name in ("i", "j", "d"):
                old = getattr(self, name)
                new = np.empty(cap, old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        self.i[self.n:need], self.j[self.n:need], self.d[self.n:need] = i, j, d
        self.n = need


def _collect(x, thr: float, expected: int, progress: bool, desc: str) -> _Grow:
    """Every pair i < j with dtw <= thr, in (i, j) order. x: (N, T, D4)."""
    N = len(x)
    rows_per_block = int(min(max(LANES, BLOCK_ELEMENTS // max(N, 1)), max(N - 1, 1)))
    out = np.empty((rows_per_block, N), np.float32)
    ty = to_lanes(x)  # (tiles, D4, T, LANES): every sequence once more, lane-major
    found = _Grow(expected)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=N * (N - 1) // 2, desc=desc, unit="pair", unit_scale=True)
    thr32 = np.float32(thr)
    for row0 in range(0, N - 1, rows_per_block):
        R = min(rows_per_block, N - 1 - row0)
        with parallel_chunksize(PARALLEL_CHUNK):
            candidate_rows(x, ty, row0, thr32, out[:R])
        r, j = np.nonzero(out[:R] <= thr32)  # row-major: (i, j) order
        found.extend(r + row0, j, out[:R][r, j])
        if bar is not None:
            bar.update(R * (N - 1 - row0) - R * (R - 1) // 2)  # pairs (i, j > i) of rows row0 .. row0+R-1
    if bar is not None:
        bar.close()
    return found


def dtw_positives(x, quantile: float = 0.025, *, device: str = "cpu", sample_pairs: int = 500_000,
                  seed: int = 0, progress: bool = False, initial_threshold: float | None = None) -> Positives:
    """(N, T, D) chunks -> exact top-`quantile` DTW pairs with linear-in-rank weights, as a symmetric CSR.

    sample_pairs: pairs sampled to set the pruning threshold (all pairs are computed when N(N-1)/2
    is not larger); initial_threshold overrides the sampled one (tests use it to force a loosening).
    """
    xs = check_sequences(x, "x")
    q = check_quantile(quantile)
    N = len(xs)
    P = N * (N - 1) // 2
    k = n_positive_pairs(N, q)
    empty = Positives(np.zeros(N + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                      np.zeros(0, np.float32), q, float("inf"), 0)
    if k == 0:
        return empty
    use_cuda = str(device).startswith("cuda")
    if not use_cuda and device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda[:n]', got {device!r}.")
    x4 = pad_dims(xs)
    rng = np.random.default_rng(seed)
    sample = None
    if initial_threshold is not None:
        thr = float(initial_threshold)
    elif P <= sample_pairs:
        thr = float("inf")
    else:
        sample = sample_distances(xs, sample_pairs, rng)
        thr = _threshold_from_sample(sample, k / P)
    passes, inflate = 0, 1.0
    while True:
        passes += 1
        if use_cuda:
            from class_ros.similarity.dtw_torch import collect_gpu
            found = collect_gpu(xs, thr, device=device, progress=progress)  # tensors on the GPU
            count = len(found[2])
        else:
            expected = k if not math.isfinite(thr) else int(1.1 * k) + 1024
            found = _collect(x4, thr, min(expected, P), progress, f"dtw pass {passes}")
            count = found.n
        if count >= k:
            break
        # The threshold was too tight: loosen it and redo the pass (all pairs, for simplicity).
        assert math.isfinite(thr), "an infinite threshold keeps every pair"
        inflate *= 2.0
        if sample is None:
            sample = sample_distances(xs, sample_pairs, rng)
        thr = max(_threshold_from_sample(sample, k / P, inflate), 2.0 * max(thr, 0.0) + 1e-12)
        del found
    if use_cuda:
        from class_ros.similarity.dtw_torch import positives_csr
        indptr, indices, distance, weight, last = positives_csr(*found, k, N)
        return Positives(indptr, indices, distance, weight, q, last, passes)
    # Stable sort by distance keeps the (i, j) order of the pass among equal distances: rank by (d, i, j).
    order = np.argsort(found.d[: found.n], kind="stable")[:k]
    pi, pj, pd = found.i[order], found.j[order], found.d[order]
    del found, order
    pw = (1.0 - np.arange(k, dtype=np.float64) / (k - 1)).astype(np.float32) if k > 1 else np.ones(1, np.float32)
    indptr, indices, distance, weight = _build_csr(N, pi, pj, pd, pw)
    return Positives(indptr, indices, distance, weight, q, float(pd[-1]), passes)
