"""Dynamic Time Warping between action chunks: squared-Euclidean local cost, no window, no square root.

    dtw(A, B) = C[T-1][T-1],  C[s][t] = |A_s - B_t|^2 + min(C[s-1][t], C[s][t-1], C[s-1][t-1])

(docs/method.md section 1; equals `aeon.distances.dtw_distance` on (D, T) arrays.)

The CPU kernel (kernels.py) is built for throughput on many short sequences (T ~ 16, D ~ 10): one
sequence against LANES others at once, lane-major, so every inner loop vectorises across pairs; both
cores share the rows. `device="cuda"` uses the GPU kernels (dtw_triton.py, or dtw_torch.py).

Local cost: the direct sum of squared differences. The |a|^2 + |b|^2 - 2 a.b expansion was measured
no faster here once dims go 4 per pass, and in float32 it cancels catastrophically on close pairs
(3e-4 relative error on demonstration chunks, whose close pairs are exactly the positives); the
direct form stays within ~1e-6 of a float64 reference and gives exactly 0 on identical inputs.

Usage:
    d = dtw_distance(a, b)              # a, b: (T, D)
    m = pairwise_dtw(x)                 # x: (N, T, D) -> (N, N) float32
    m = pairwise_dtw(x, y, device="cuda")
"""
from __future__ import annotations

import numpy as np
from numba import njit, parallel_chunksize

from class_ros.similarity.kernels import PARALLEL_CHUNK, pad_dims, pairwise_rows, to_lanes

MAX_ABS = 1e15  # beyond this float32 squared distances can overflow


# ---------------------------------------------------------------- input checks
def check_sequences(x, name: str = "x", ndim: int = 3) -> np.ndarray:
    """Validate a (N, T, D) (or (T, D) with ndim=2) float array and return it as C-contiguous float32."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        want = "(N, T, D)" if ndim == 3 else "(T, D)"
        raise ValueError(f"{name} must be a {ndim}-D array {want}, got shape {arr.shape}.")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}.")
    if arr.shape[-2] == 0 or arr.shape[-1] == 0:
        raise ValueError(f"{name} has an empty time or feature axis: shape {arr.shape}.")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        kind = "NaN" if np.isnan(arr).any() else "inf"
        raise ValueError(f"{name} contains {kind} values; DTW needs finite inputs.")
    if arr.size and np.abs(arr).max() > MAX_ABS:
        raise ValueError(f"{name} has values above {MAX_ABS:g} in magnitude; normalise the data first.")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_pair(x: np.ndarray, y: np.ndarray, xname: str = "x", yname: str = "y") -> None:
    """Raise ValueError if the time lengths T or feature dims D of two sequence arrays differ."""
    if x.shape[-2] != y.shape[-2]:
        raise ValueError(f"{xname} and {yname} have different sequence lengths T: {x.shape[-2]} vs {y.shape[-2]}.")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"{xname} and {yname} have different feature dims D: {x.shape[-1]} vs {y.shape[-1]}.")


@njit(cache=True)
def _single_dtw64(a, b):
    """Reference one-pair DTW in float64 with the direct difference form."""
    T, D = a.shape
    U = b.shape[0]
    prev = np.empty(U)
    cur = np.empty(U)
    for s in range(T):
        for t in range(U):
            c = 0.0
            for d in range(D):
                diff = a[s, d] - b[t, d]
                c += diff * diff
            if s == 0 and t == 0:
                best = 0.0
            elif s == 0:
                best = cur[t - 1]
            elif t == 0:
                best = prev[0]
            else:
                best = min(prev[t], prev[t - 1], cur[t - 1])
            cur[t] = c + best
        prev, cur = cur, prev
    return prev[U - 1]


# ---------------------------------------------------------------- public API
def dtw_distance(a, b) -> float:
    """DTW distance between two (T, D) sequences (float64 arithmetic, direct |a - b|^2 local cost)."""
    a64 = check_sequences(a, "a", ndim=2).astype(np.float64)
    b64 = check_sequences(b, "b", ndim=2).astype(np.float64)
    check_pair(a64, b64, "a", "b")
    return float(_single_dtw64(a64, b64))


def pairwise_dtw(x, y=None, *, device: str = "cpu") -> np.ndarray:
    """(N, T, D), (M, T, D) or None (= x) -> (N, M) float32 DTW distances."""
    xs = check_sequences(x, "x")
    ys = xs if y is None else check_sequences(y, "y")
    check_pair(xs, ys)
    if str(device).startswith("cuda"):
        from class_ros.similarity.dtw_torch import pairwise_gpu
        return pairwise_gpu(xs, None if y is None else ys, device=device)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda[:n]', got {device!r}.")
    out = np.empty((len(xs), len(ys)), np.float32)
    if out.size == 0:
        return out
    x4 = pad_dims(xs)
    with parallel_chunksize(PARALLEL_CHUNK):
        pairwise_rows(x4, to_lanes(x4 if y is None else pad_dims(ys)), out, y is None)
    return out
