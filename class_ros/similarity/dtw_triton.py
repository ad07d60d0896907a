"""DTW on a GPU with Triton: one GPU thread per pair, a block of BLOCK pairs per program.

A program takes one row sequence x_i and BLOCK column sequences y_j. It sweeps the DP column by
column (t outer, s inner) so each lane's y_j[t] is loaded once per column and x_i[s] is a broadcast
load; C[s-1][t] and C[s-1][t-1] travel in registers, the previous column C[.][t-1] lives in a small
per-program scratch (T, BLOCK) that stays in L1/L2. Local cost: direct |x_s - y_t|^2 (no expansion).
With a finite threshold a program stops once every lane's column minimum exceeds it (every path
crosses every column, and costs are non-negative), and skips at once if the corner bound says so.

Tested on CPU through Triton's interpreter (TRITON_INTERPRET=1); compiled for real only on a GPU.
Imports only torch, triton and numpy.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

BLOCK = 128  # pairs per program
ROWS_PER_LAUNCH = 128  # rows x all columns per launch; the scratch is ROWS * N * T floats


@triton.jit
def _dtw_rows_kernel(x_ptr, y_ptr, out_ptr, scratch_ptr, row0, M, thr,
                     T: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr, SKIP_LOWER: tl.constexpr):
    r = tl.program_id(0)
    cb = tl.program_id(1)
    n_cb = tl.num_programs(1)
    i = row0 + r
    lanes = tl.arange(0, BLOCK)
    j = cb * BLOCK + lanes
    live = j < M
    if SKIP_LOWER:  # positives: only pairs i < j
        live = live & (j > i)
    dd = tl.arange(0, DP)
    inf = float("inf")
    scratch = scratch_ptr + (r * n_cb + cb).to(tl.int64) * (T * BLOCK)
    ybase = y_ptr + j.to(tl.int64)[:, None] * (T * DP) + dd[None, :]
    xbase = x_ptr + i.to(tl.int64) * (T * DP) + dd

    # Corner bound: every path starts at (0, 0) and ends at (T-1, T-1).
    e0 = tl.load(xbase)[None, :] - tl.load(ybase, mask=live[:, None], other=0.0)
    e1 = tl.load(xbase + (T - 1) * DP)[None, :] - tl.load(ybase + (T - 1) * DP, mask=live[:, None], other=0.0)
    lb = tl.sum(e0 * e0, axis=1)
    if T > 1:
        lb = lb + tl.sum(e1 * e1, axis=1)
    lb = tl.where(live, lb, inf)
    t_end = tl.where(tl.min(lb, axis=0) * 0.99999 > thr, 0, T)

    for s in range(0, T):  # the previous column starts as "outside the matrix"
        tl.store(scratch + s * BLOCK + lanes, tl.full((BLOCK,), inf, tl.float32))
    last = tl.full((BLOCK,), inf, tl.float32)
    t = 0
    while t < t_end:
        yt = tl.load(ybase + t * DP, mask=live[:, None], other=0.0)  # (BLOCK, DP)
        up = tl.full((BLOCK,), inf, tl.float32)  # C[s-1][t]
        diag = tl.where(t == 0, 0.0, inf) + tl.zeros((BLOCK,), tl.float32)  # C[s-1][t-1]
        colmin = tl.full((BLOCK,), inf, tl.float32)
        for s in range(0, T):
            xs = tl.load(xbase + s * DP)  # (DP,) broadcast to every lane
            e = xs[None, :] - yt
            c = tl.sum(e * e, axis=1)
            left = tl.load(scratch + s * BLOCK + lanes)  # C[s][t-1]
            cur = c + tl.minimum(tl.minimum(left, up), diag)
            tl.store(scratch + s * BLOCK + lanes, cur)
            diag = left
            up = cur
            colmin = tl.minimum(colmin, cur)
        last = up  # C[T-1][t]
        colmin = tl.where(live, colmin, inf)
        t_end = tl.where(tl.min(colmin, axis=0) > thr, 0, t_end)
        t += 1
    done = t == T
    out = tl.where(done & live, last, inf)
    tl.store(out_ptr + r.to(tl.int64) * M + j, out, mask=j < M)


def _padded(x: np.ndarray, device) -> torch.Tensor:
    """(N, T, D) -> (N, T, DP) float32 tensor, DP the next power of two (zero dims add exact zeros)."""
    N, T, D = x.shape
    DP = 1 << (D - 1).bit_length()
    out = torch.zeros((N, T, DP), dtype=torch.float32, device=device)
    out[:, :, :D] = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
    return out


def _rows(xt, yt, row0: int, rows: int, thr: float, skip_lower: bool, scratch, out):
    M, T, DP = yt.shape
    grid = (rows, triton.cdiv(M, BLOCK))
    _dtw_rows_kernel[grid](xt, yt, out, scratch, row0, M, float(thr), T=T, DP=DP, BLOCK=BLOCK, SKIP_LOWER=skip_lower)


def pairwise_triton(x: np.ndarray, y: np.ndarray | None = None, *, device: str = "cuda") -> np.ndarray:
    """(N, T, D), (M, T, D) or None (= x) -> (N, M) float32 DTW distances."""
    dev = torch.device(device)
    xt = _padded(x, dev)
    yt = xt if y is None else _padded(y, dev)
    N, M, T = len(xt), len(yt), xt.shape[1]
    out = torch.empty((N, M), dtype=torch.float32, device=dev)
    rows = min(ROWS_PER_LAUNCH, max(N, 1))
    scratch = torch.empty(rows * triton.cdiv(M, BLOCK) * T * BLOCK, dtype=torch.float32, device=dev)
    for r0 in range(0, N, rows):
        R = min(rows, N - r0)
        _rows(xt, yt, r0, R, float("inf"), False, scratch, out[r0:r0 + R])
    if y is None:  # one float32 value on both sides and an exact zero diagonal
        upper = torch.triu(out, diagonal=1)
        out = upper + upper.T
    return out.cpu().numpy()


def collect_triton(x: np.ndarray, thr: float, *, device: str = "cuda", progress: bool = False):
    """Every pair i < j with DTW <= thr, as tensors on `device` (i int32, j int32, d float32) in (i, j) order."""
    dev = torch.device(device)
    xt = _padded(x, dev)
    N, T = len(xt), xt.shape[1]
    rows = min(ROWS_PER_LAUNCH, max(N - 1, 1))
    scratch = torch.empty(rows * triton.cdiv(N, BLOCK) * T * BLOCK, dtype=torch.float32, device=dev)
    out = torch.empty((rows, N), dtype=torch.float32, device=dev)
    found_i, found_j, found_d = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=N * (N - 1) // 2, desc="dtw (triton)", unit="pair", unit_scale=True)
    for r0 in range(0, N - 1, rows):
        R = min(rows, N - 1 - r0)
        _rows(xt, xt, r0, R, thr, True, scratch, out[:R])
        ii, jj = torch.nonzero(out[:R] <= thr, as_tuple=True)  # row-major: (i, j) order
        found_i.append((ii + r0).int())
        found_j.append(jj.int())
        found_d.append(out[:R][ii, jj])
        if bar is not None:
            bar.update(R * (N - 1 - r0) - R * (R - 1) // 2)
    if bar is not None:
        bar.close()
    return torch.cat(found_i), torch.cat(found_j), torch.cat(found_d)
