"""Dynamic Time Warping between action chunks: squared-Euclidean local cost, no window, no square root.

    dtw(A, B) = C[T-1][T-1],  C[s][t] = |A_s - B_t|^2 + min(C[s-1][t], C[s][t-1], C[s-1][t-1])

(METHOD.md section 1; equals `aeon.distances.dtw_distance` on (D, T) arrays.)

The CPU kernel is built for throughput on many short sequences (T ~ 16, D ~ 10): one sequence is
compared against LANES others at once, held lane-major (T, D, LANES) so every inner loop runs over
lanes and vectorises, and the local cost reuses precomputed norms: |a|^2 + |b|^2 - 2 a.b.
All arithmetic is float32 and every lane does exactly the same operations, so a pair's distance does
not depend on which lane or call computed it (the positives search relies on that for exact ties).

Usage:
    d = dtw_distance(a, b)              # a, b: (T, D)
    m = pairwise_dtw(x)                 # x: (N, T, D) -> (N, N) float32
    m = pairwise_dtw(x, y, device="cuda")
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

LANES = 32  # pairs computed side by side: two AVX-512 registers of float32
MAX_ABS = 1e15  # beyond this the float32 squared norms overflow
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)


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


# ---------------------------------------------------------------- numba kernels
@njit(cache=True)
def squared_norms(x):
    """(N, T, D) float32 -> (N, T) float32 |x_t|^2, summed in the same order as the kernel's dot products."""
    n, T, D = x.shape
    out = np.empty((n, T), np.float32)
    for i in range(n):
        for s in range(T):
            acc = _ZERO
            for d in range(D):
                acc += x[i, s, d] * x[i, s, d]
            out[i, s] = acc
    return out


@njit(cache=True, inline="always")
def _local_cost(xa, na, xb, nb):
    """|a - b|^2 as na + nb - 2 a.b, clamped at 0; the exact arithmetic every kernel lane uses."""
    acc = _ZERO
    for d in range(xa.shape[0]):
        acc += xa[d] * xb[d]
    c = na + nb - _TWO * acc
    return c if c > _ZERO else _ZERO


@njit(cache=True)
def dtw_tile(xi, ni, ty, tn, thr, cost, prev, cur, out):
    """DTW of xi (T, D) against the LANES sequences of one tile: ty (D, T, LANES), norms tn (T, LANES).

    Writes out (LANES,). Abandons the whole tile (out = inf) once every lane's DP row minimum exceeds
    thr: costs are non-negative, so a row minimum is a lower bound of the final distance.
    cost, prev, cur: (T * LANES,) float32 scratch. Loops run over the flat (t, lane) axis so they are
    long enough to vectorise; the DP's dependence on t - 1 sits exactly LANES elements back.
    """
    T, D = xi.shape
    TL = T * LANES
    tyf = ty.reshape(D, TL)
    tnf = tn.reshape(TL)
    for s in range(T):
        a = xi[s, 0]
        for k in range(TL):
            cost[k] = a * tyf[0, k]
        for d in range(1, D):
            a = xi[s, d]
            for k in range(TL):
                cost[k] += a * tyf[d, k]
        nis = ni[s]
        for k in range(TL):
            c = nis + tnf[k] - _TWO * cost[k]
            cost[k] = c if c > _ZERO else _ZERO
        if s == 0:
            for k in range(LANES):
                cur[k] = cost[k]
            for k in range(LANES, TL):
                cur[k] = cost[k] + cur[k - LANES]
        else:
            for k in range(LANES):
                cur[k] = cost[k] + prev[k]
            for k in range(LANES, TL):
                cur[k] = cost[k] + min(prev[k], prev[k - LANES], cur[k - LANES])
        if thr < _INF:
            lowest = _INF
            for k in range(TL):
                lowest = min(lowest, cur[k])
            if lowest > thr:
                for lane in range(LANES):
                    out[lane] = _INF
                return
        prev, cur = cur, prev
    for lane in range(LANES):
        out[lane] = prev[TL - LANES + lane]


@njit(cache=True)
def to_lanes(y, yn):
    """(M, T, D), (M, T) -> lane-major tiles (ceil(M/LANES), D, T, LANES) and norms (tiles, T, LANES), zero-padded."""
    M, T, D = y.shape
    tiles = (M + LANES - 1) // LANES
    ty = np.zeros((tiles, D, T, LANES), np.float32)
    tn = np.zeros((tiles, T, LANES), np.float32)
    for j in range(M):
        b, lane = j // LANES, j % LANES
        for t in range(T):
            tn[b, t, lane] = yn[j, t]
            for d in range(D):
                ty[b, d, t, lane] = y[j, t, d]
    return ty, tn


@njit(cache=True)
def balanced_row(r, n):
    """Row visited at step r of n: 0, n-1, 1, n-2, ... so that static halves of a triangle get equal work."""
    r = np.int64(r)  # prange indices are unsigned; keep the arithmetic signed
    return r // 2 if r % 2 == 0 else np.int64(n) - 1 - r // 2


@njit(cache=True, parallel=True)
def _pairwise_cpu(x, xn, ty, tn, out, symmetric):
    N, T, _ = x.shape
    M = out.shape[1]
    tiles = ty.shape[0]
    for r in prange(N):
        i = balanced_row(r, N) if symmetric else np.int64(r)
        cost = np.empty(T * LANES, np.float32)
        prev = np.empty(T * LANES, np.float32)
        cur = np.empty(T * LANES, np.float32)
        res = np.empty(LANES, np.float32)
        first = i // LANES if symmetric else 0  # symmetric: only tiles holding some j >= i
        for b in range(first, tiles):
            dtw_tile(x[i], xn[i], ty[b], tn[b], _INF, cost, prev, cur, res)
            for lane in range(LANES):
                j = b * LANES + lane
                if j < M:
                    out[i, j] = res[lane]
    if symmetric:
        for i in prange(N):
            out[i, i] = _ZERO
            for j in range(i):
                out[i, j] = out[j, i]


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
        from class_ros.similarity.dtw_torch import pairwise_torch
        return pairwise_torch(xs, None if y is None else ys, device=device)
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda[:n]', got {device!r}.")
    out = np.empty((len(xs), len(ys)), np.float32)
    if out.size == 0:
        return out
    xn = squared_norms(xs)
    yn = xn if y is None else squared_norms(ys)
    ty, tn = to_lanes(ys, yn)
    _pairwise_cpu(xs, xn, ty, tn, out, y is None)
    return out
