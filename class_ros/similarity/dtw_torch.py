"""DTW on a GPU with torch: many pairs at once, the DP swept one anti-diagonal at a time.

Cells on an anti-diagonal s + t = k depend only on diagonals k-1 and k-2, so each of the 2T-1 steps
is a few elementwise ops over (pairs, T): the local costs of that diagonal, |a_s - b_(k-s)|^2 in the
direct form (as the CPU kernel, for the same precision), then the min-plus update. No (P, T, T) cost
tensor is ever held. The same code runs on CPU tensors, which is how the tests check it without a GPU.
On CUDA with triton installed, `pairwise_gpu` / `collect_gpu` use the faster one-thread-per-pair
Triton kernel (dtw_triton.py) instead; `positives_csr` ranks and builds the CSR on the device too.
Nothing here imports zarr, faiss, aeon or dtaidistance: the GPU benchmark needs only torch and numpy.
"""
from __future__ import annotations

import numpy as np

PAIRS_PER_STEP = 1 << 19  # pairs per wavefront call: their gathered (P, T, D) operands dominate memory


def use_triton(device) -> bool:
    """Triton kernels on CUDA when triton is installed (it ships with torch's CUDA wheels);
    CLASS_ROS_DTW_GPU=torch forces the pure-torch wavefront."""
    import os
    if not str(device).startswith("cuda") or os.environ.get("CLASS_ROS_DTW_GPU") == "torch":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def pairwise_gpu(x: np.ndarray, y: np.ndarray | None = None, *, device: str = "cuda") -> np.ndarray:
    """pairwise_dtw on a GPU: the Triton kernel, or the torch wavefront without triton."""
    _device(device)
    if use_triton(device):
        from class_ros.similarity.dtw_triton import pairwise_triton
        return pairwise_triton(x, y, device=device)
    return pairwise_torch(x, y, device=device)


def collect_gpu(x: np.ndarray, thr: float, *, device: str = "cuda", progress: bool = False):
    """Pairs i < j with DTW <= thr on a GPU: tensors (i int32, j int32, d float32) in (i, j) order."""
    _device(device)
    if use_triton(device):
        from class_ros.similarity.dtw_triton import collect_triton
        return collect_triton(x, thr, device=device, progress=progress)
    return collect_torch(x, thr, device=device, progress=progress)


def _device(device: str):
    import torch
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        from class_ros.errors import ClassRosError
        raise ClassRosError(f"device {device!r} was requested but torch sees no CUDA GPU; use --device cpu.")
    return torch.device(device)


def wavefront(a, b):
    """(P, T, D), (P, U, D) tensors -> (P,) DTW distances of a[p] vs b[p], sweeping anti-diagonals."""
    import torch
    P, T, _ = a.shape
    U = b.shape[1]
    s = torch.arange(T, device=a.device)
    inf_col = torch.full((P, 1), float("inf"), device=a.device, dtype=a.dtype)
    prev2 = prev1 = None
    for k in range(T + U - 1):
        t = k - s
        valid = (t >= 0) & (t < U)
        c = ((a - b[:, t.clamp(0, U - 1)]) ** 2).sum(-1)  # (P, T): cost of cell (s, k - s)
        if k == 0:
            cur = c
        else:
            best = torch.minimum(prev1, torch.cat([inf_col, prev1[:, :-1]], dim=1))  # C[s][t-1], C[s-1][t]
            if prev2 is not None:
                best = torch.minimum(best, torch.cat([inf_col, prev2[:, :-1]], dim=1))  # C[s-1][t-1]
            cur = c + best
        cur = torch.where(valid, cur, torch.full_like(cur, float("inf")))
        prev2, prev1 = prev1, cur
    return prev1[:, T - 1]


def pair_dtw(a, b):
    """(P, T, D), (P, U, D) tensors -> (P,) DTW distances of a[p] vs b[p], in chunks of PAIRS_PER_STEP."""
    import torch
    out = [wavefront(a[p:p + PAIRS_PER_STEP], b[p:p + PAIRS_PER_STEP]) for p in range(0, len(a), PAIRS_PER_STEP)]
    return torch.cat(out) if out else torch.zeros(0, device=a.device)


def pairwise_torch(x: np.ndarray, y: np.ndarray | None = None, *, device: str = "cuda") -> np.ndarray:
    """(N, T, D), (M, T, D) or None (= x) float32 arrays -> (N, M) float32 DTW on `device`."""
    import torch
    dev = _device(device)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dev)
    yt = xt if y is None else torch.from_numpy(np.ascontiguousarray(y, np.float32)).to(dev)
    N, M = len(xt), len(yt)
    out = torch.empty((N, M), dtype=torch.float32, device=dev)
    rows = max(1, PAIRS_PER_STEP // max(M, 1))  # row block against all columns
    for i0 in range(0, N, rows):
        xi = xt[i0:i0 + rows]
        ii = torch.arange(len(xi), device=dev).repeat_interleave(M)
        jj = torch.arange(M, device=dev).repeat(len(xi))
        out[i0:i0 + len(xi)] = pair_dtw(xi[ii], yt[jj]).view(len(xi), M)
    if y is None:  # the same float32 value on both sides and an exact zero diagonal
        upper = torch.triu(out, diagonal=1)
        out = upper + upper.T
    return out.cpu().numpy()


def corner_bound(xi, xj):
    """(Bi, T, D), (Bj, T, D) -> (Bi, Bj) lower bound of DTW: the start and end cells' costs."""
    T = xi.shape[1]
    lb = 0.0
    for e in ([0, T - 1] if T > 1 else [0]):
        lb = lb + ((xi[:, None, e] - xj[None, :, e]) ** 2).sum(-1)
    return lb


def collect_torch(x: np.ndarray, thr: float, *, device: str = "cuda", progress: bool = False, block: int = 2048):
    """Every pair i < j with DTW <= thr, as tensors on `device` (i int32, j int32, d float32) in (i, j) order."""
    import torch
    dev = _device(device)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(dev)
    N = len(xt)
    thr_t = float(thr)
    # The bound sums in a different order than the DP, so give it a little slack.
    slack = 1.0 - 1e-5
    found_i, found_j, found_d = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=N * (N - 1) // 2, desc="dtw (torch)", unit="pair", unit_scale=True)
    for i0 in range(0, N - 1, block):
        i1 = min(N, i0 + block)
        for j0 in range(i0, N, block):
            j1 = min(N, j0 + block)
            lb = corner_bound(xt[i0:i1], xt[j0:j1])
            gi = torch.arange(i0, i1, device=dev)[:, None]
            gj = torch.arange(j0, j1, device=dev)[None, :]
            mask = (gj > gi) & (lb * slack <= thr_t)
            ii, jj = mask.nonzero(as_tuple=True)
            if len(ii):
                d = pair_dtw(xt[i0 + ii], xt[j0 + jj])
                keep = d <= thr_t
                found_i.append((ii[keep] + i0).int())
                found_j.append((jj[keep] + j0).int())
                found_d.append(d[keep].float())
            if bar is not None:
                bar.update(int(((gj > gi).sum()).item()))
    if bar is not None:
        bar.close()
    if not found_d:
        return (torch.zeros(0, dtype=torch.int32, device=dev), torch.zeros(0, dtype=torch.int32, device=dev),
                torch.zeros(0, dtype=torch.float32, device=dev))
    i, j, d = torch.cat(found_i), torch.cat(found_j), torch.cat(found_d)
    order = torch.argsort(i.long() * N + j.long())
    return i[order], j[order], d[order]


def positives_csr(i, j, d, k: int, n: int):
    """Candidate pairs (tensors, (i, j) order) -> the k best by (d, i, j) as a symmetric CSR, on their device.

    Returns numpy (indptr int64, indices int32, distance float32, weight float32) and the k-th distance.
    Written to keep device memory near 40 bytes per kept pair (N = 200k, quantile 0.025: 5e8 pairs).
    """
    import torch
    order = torch.sort(d, stable=True).indices[:k]  # stable: (i, j) order among equal distances
    pi, pj, pd = i[order], j[order], d[order]
    del order
    rows, cols = torch.cat([pi, pj]), torch.cat([pj, pi])  # entry e < k is pair e, entry k + e its mirror
    del pi, pj
    perm = torch.argsort(rows.long() * n + cols.long())  # keys are unique: row-major, columns sorted
    counts = torch.bincount(rows.long(), minlength=n)
    del rows
    indices = cols[perm].cpu().numpy()
    del cols
    rank = perm % k
    del perm
    distance = pd[rank].cpu().numpy()
    if k == 1:
        weight = np.ones(len(distance), np.float32)
    else:
        weight = (1.0 - rank.double() / (k - 1)).float().cpu().numpy()
    indptr = np.zeros(n + 1, np.int64)
    indptr[1:] = torch.cumsum(counts, 0).cpu().numpy()
    return indptr, indices.astype(np.int32, copy=False), distance, weight, float(pd[-1])
