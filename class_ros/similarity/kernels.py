"""The numba DTW kernels, all in one file: numba's on-disk cache only notices changes to the file a
function lives in, so kernels that inline one another must share it.

Layout: one sequence x_i (T, D') meets LANES others held lane-major, ty (D', T, LANES), so every
inner loop runs over lanes and vectorises; no Python and no per-pair loop inside. Feature dims are
consumed 4 per pass (pad_dims appends zero dims), so the running local cost is loaded and stored
once per 4 dims. The local cost is the direct sum of squared differences (see dtw.py for why).
Every lane does the same float32 operations, so a pair's distance does not depend on which lane or
call computed it, and the corner bound below reuses the kernel's own arithmetic exactly.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

LANES = 48  # pairs computed side by side: three AVX-512 registers of float32 (measured best of 32, 48, 64)
# Rows per parallel work item: small items are shared out dynamically, so a core slowed by other
# processes does not leave the other one idle at the end.
PARALLEL_CHUNK = 4
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)


def pad_dims(x: np.ndarray) -> np.ndarray:
    """(..., D) float32 -> (..., D4) with zero dims appended up to a multiple of 4 (they add exact zeros)."""
    D = x.shape[-1]
    D4 = -(-D // 4) * 4
    if D4 == D:
        return np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((*x.shape[:-1], D4), np.float32)
    out[..., :D] = x
    return out


@njit(cache=True, inline="always")
def local_cost(a, b):
    """|a - b|^2 of two (D4,) float32 vectors, in the kernel's exact summation order."""
    acc = _ZERO
    for d in range(0, a.shape[0], 4):
        e0, e1, e2, e3 = a[d] - b[d], a[d + 1] - b[d + 1], a[d + 2] - b[d + 2], a[d + 3] - b[d + 3]
        g = ((e0 * e0 + e1 * e1) + e2 * e2) + e3 * e3
        acc = g if d == 0 else acc + g
    return acc


@njit(cache=True)
def dtw_tile(xi, ty, thr, buf, out):
    """DTW of xi (T, D4) against the LANES sequences of one tile ty (D4, T, LANES); writes out (LANES,).

    buf: (3T + 1, LANES) float32 scratch: rows [0, T) the local costs of DP row s, [T, 2T) and
    [2T, 3T) the DP rows s-1 and s (alternating), row 3T a per-lane running minimum. One buffer
    with constant-width rows lets the compiler vectorise the DP over lanes.
    Abandons the tile (out = inf) once every lane's DP row minimum exceeds thr: costs are
    non-negative, so a row minimum is a lower bound of the final distance.
    """
    T, D = xi.shape
    TL = T * LANES
    tyf = ty.reshape(D, TL)
    cost = buf[:T].reshape(TL)
    low = 3 * T
    for s in range(T):
        for d in range(0, D, 4):
            a0, a1, a2, a3 = xi[s, d], xi[s, d + 1], xi[s, d + 2], xi[s, d + 3]
            if d == 0:
                for k in range(TL):
                    e0, e1, e2, e3 = a0 - tyf[d, k], a1 - tyf[d + 1, k], a2 - tyf[d + 2, k], a3 - tyf[d + 3, k]
                    cost[k] = ((e0 * e0 + e1 * e1) + e2 * e2) + e3 * e3
            else:
                for k in range(TL):
                    e0, e1, e2, e3 = a0 - tyf[d, k], a1 - tyf[d + 1, k], a2 - tyf[d + 2, k], a3 - tyf[d + 3, k]
                    cost[k] += ((e0 * e0 + e1 * e1) + e2 * e2) + e3 * e3
        po = T if s % 2 == 1 else 2 * T  # previous DP row
        co = 2 * T if s % 2 == 1 else T  # current DP row
        if s == 0:
            for lane in range(LANES):
                buf[co, lane] = buf[0, lane]
            for t in range(1, T):
                for lane in range(LANES):
                    buf[co + t, lane] = buf[t, lane] + buf[co + t - 1, lane]
        else:
            for lane in range(LANES):
                buf[co, lane] = buf[0, lane] + buf[po, lane]
            for t in range(1, T):
                for lane in range(LANES):
                    best = min(buf[po + t, lane], buf[po + t - 1, lane], buf[co + t - 1, lane])
                    buf[co + t, lane] = buf[t, lane] + best
        if thr < _INF:
            for lane in range(LANES):
                buf[low, lane] = buf[co, lane]
            for t in range(1, T):
                for lane in range(LANES):
                    buf[low, lane] = min(buf[low, lane], buf[co + t, lane])
            lowest = _INF
            for lane in range(LANES):
                lowest = min(lowest, buf[low, lane])
            if lowest > thr:
                for lane in range(LANES):
                    out[lane] = _INF
                return
    last = (2 * T if (T - 1) % 2 == 1 else T) + T - 1
    for lane in range(LANES):
        out[lane] = buf[last, lane]


@njit(cache=True)
def put_lane(ty, lane, seq):
    """Write one (T, D4) sequence into lane `lane` of a (D4, T, LANES) tile."""
    T, D = seq.shape
    for d in range(D):
        for t in range(T):
            ty[d, t, lane] = seq[t, d]


@njit(cache=True)
def to_lanes(y):
    """(M, T, D4) -> lane-major tiles (ceil(M / LANES), D4, T, LANES), zero-padded."""
    M, T, D = y.shape
    ty = np.zeros(((M + LANES - 1) // LANES, D, T, LANES), np.float32)
    for j in range(M):
        put_lane(ty[j // LANES], j % LANES, y[j])
    return ty


@njit(cache=True)
def balanced_row(r, n):
    """Row visited at step r of n: 0, n-1, 1, n-2, ... so that static halves of a triangle get equal work."""
    r = np.int64(r)  # prange indices are unsigned; keep the arithmetic signed
    return r // 2 if r % 2 == 0 else np.int64(n) - 1 - r // 2


@njit(cache=True, parallel=True)
def pairwise_rows(x, ty, out, symmetric):
    N, T, _ = x.shape
    M = out.shape[1]
    for r in prange(N):
        i = balanced_row(r, N) if symmetric else np.int64(r)
        buf = np.zeros((3 * T + 1, LANES), np.float32)
        res = np.empty(LANES, np.float32)
        first = i // LANES if symmetric else 0  # symmetric: only tiles holding some j >= i
        for b in range(first, ty.shape[0]):
            dtw_tile(x[i], ty[b], _INF, buf, res)
            for lane in range(LANES):
                j = b * LANES + lane
                if j < M:
                    out[i, j] = res[lane]
    if symmetric:
        for i in prange(N):
            out[i, i] = _ZERO
            for j in range(i):
                out[i, j] = out[j, i]


# ---------------------------------------------------------------- positives search
@njit(cache=True)
def tile_bound(xi, ty):
    """Smallest corner lower bound over a tile's lanes: every warping path starts at (0, 0) and ends
    at (T-1, T-1), so dtw >= cost(0, 0) + cost(T-1, T-1), summed exactly as the kernel sums."""
    T = xi.shape[0]
    lowest = _INF
    for lane in range(LANES):
        lb = local_cost(xi[0], ty[:, 0, lane])
        if T > 1:
            lb = lb + local_cost(xi[T - 1], ty[:, T - 1, lane])
        lowest = min(lowest, lb)
    return lowest


@njit(cache=True, parallel=True)
def candidate_rows(x, ty, row0, thr, out):
    """out[r, j] = dtw(i, j), i = row0 + r, for j > i when it is <= thr, else inf.

    x: (N, T, D4); ty: the same sequences as lane-major tiles (to_lanes); out: (R, N) float32.
    A tile is skipped when none of its lanes can come under thr by the corner bound, and abandoned
    inside the kernel once all its DP row minima exceed thr.
    """
    N, T, D = x.shape
    for r in prange(out.shape[0]):
        i = row0 + np.int64(r)
        buf = np.zeros((3 * T + 1, LANES), np.float32)
        res = np.empty(LANES, np.float32)
        orow = out[r]
        orow[:] = _INF
        for b in range((i + 1) // LANES, ty.shape[0]):
            if thr < _INF and tile_bound(x[i], ty[b]) > thr:
                continue
            dtw_tile(x[i], ty[b], thr, buf, res)
            for lane in range(LANES):
                j = b * LANES + lane
                if i < j < N and res[lane] <= thr:
                    orow[j] = res[lane]


@njit(cache=True, parallel=True)
def rows_vs_cols(x, rows, cols, out):
    """out[r, c] = dtw(rows[r], cols[r, c]); x (N, T, D4), rows (R,), cols (R, C), out (R, C) float32."""
    N, T, D = x.shape
    C = cols.shape[1]
    for r in prange(len(rows)):
        ty = np.zeros((D, T, LANES), np.float32)
        buf = np.zeros((3 * T + 1, LANES), np.float32)
        res = np.empty(LANES, np.float32)
        for c0 in range(0, C, LANES):
            n = min(LANES, C - c0)
            for lane in range(n):
                put_lane(ty, lane, x[cols[r, c0 + lane]])
            dtw_tile(x[rows[r]], ty, _INF, buf, res)
            for lane in range(n):
                out[r, c0 + lane] = res[lane]
