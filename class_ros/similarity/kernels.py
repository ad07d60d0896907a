"""The numba DTW kernels, all in one file: numba's on-disk cache only notices changes to the file a
function lives in, so kernels that inline one another must share it.

Layout: one sequence x_i (T, D') meets LANES others held lane-major, ty (D', T, LANES), so every
inner loop runs over lanes and vectorises; no Python and no per-pair loop inside. Feature dims are
consumed 4 per pass (pad_dims appends zero dims), so the running local cost is loaded and stored
once per 4 dims. The local cost is the direct sum of squared differences (see dtw.py for why).
Every lane does the same float32 operations, so a pair's distance does not depend on which lane or
call computed it (exact ties stay exact).
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
# A computed bound may exceed the computed distance by float32 rounding (both are sums of a few
# hundred non-negative terms, each side off by at most ~1.5e-5 relative); prune only beyond this.
BOUND_SLACK = np.float32(1.0 - 1e-4)


@njit(cache=True)
def box_bound(lo, hi, ty, lb):
    """lb[lane] = sum over t of the squared distance from y_lane[t] to the box [lo, hi] (D4,).

    With the box spanning x_i's values, this is a lower bound of dtw(x_i, y_lane) (LB_Keogh with an
    unlimited window): every y_t is matched to some x_s on the path, and x_s lies in the box.
    ty: (D4, T, LANES) tile; lb: (LANES,) output.
    """
    D, T, _ = ty.shape
    for lane in range(LANES):
        lb[lane] = _ZERO
    for d in range(D):
        low, high = lo[d], hi[d]
        for t in range(T):
            for lane in range(LANES):
                y = ty[d, t, lane]
                e = max(low - y, y - high, _ZERO)
                lb[lane] += e * e


@njit(cache=True, parallel=True)
def candidate_rows(x, ty, row0, thr, out):
    """out[r, j] = dtw(i, j), i = row0 + r, for j > i when it is <= thr, else inf.

    x: (N, T, D4); ty: the same sequences as lane-major tiles (to_lanes); out: (R, N) float32.
    With a finite thr, each lane's box bound is checked first and only the survivors are packed into
    a tile of their own for the kernel, which also abandons a tile once all its DP row minima exceed
    thr. Without one, tiles go to the kernel as they are.
    """
    N, T, D = x.shape
    for r in prange(out.shape[0]):
        i = row0 + np.int64(r)
        buf = np.zeros((3 * T + 1, LANES), np.float32)
        res = np.empty(LANES, np.float32)
        lb = np.empty(LANES, np.float32)
        pend = np.zeros((D, T, LANES), np.float32)  # survivors waiting for a full tile
        pend_j = np.empty(LANES, np.int64)
        lo = np.empty(D, np.float32)
        hi = np.empty(D, np.float32)
        for d in range(D):
            lo[d], hi[d] = x[i, 0, d], x[i, 0, d]
            for s in range(1, T):
                lo[d] = min(lo[d], x[i, s, d])
                hi[d] = max(hi[d], x[i, s, d])
        orow = out[r]
        orow[:] = _INF
        fill = 0
        for b in range((i + 1) // LANES, ty.shape[0]):
            if thr == _INF:
                dtw_tile(x[i], ty[b], thr, buf, res)
                for lane in range(LANES):
                    j = b * LANES + lane
                    if i < j < N:
                        orow[j] = res[lane]
                continue
            box_bound(lo, hi, ty[b], lb)
            for lane in range(LANES):
                j = b * LANES + lane
                if i < j < N and lb[lane] * BOUND_SLACK <= thr:
                    for d in range(D):
                        for t in range(T):
                            pend[d, t, fill] = ty[b, d, t, lane]
                    pend_j[fill] = j
                    fill += 1
                    if fill == LANES:
                        dtw_tile(x[i], pend, thr, buf, res)
                        for k in range(LANES):
                            if res[k] <= thr:
                                orow[pend_j[k]] = res[k]
                        fill = 0
        if fill > 0:  # lanes past `fill` hold stale sequences: computed, then ignored
            dtw_tile(x[i], pend, thr, buf, res)
            for k in range(fill):
                if res[k] <= thr:
                    orow[pend_j[k]] = res[k]


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
