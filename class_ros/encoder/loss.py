"""Soft InfoNCE (docs/method.md section 2): contrastive loss whose positives are weighted by action similarity."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def soft_infonce(z: torch.Tensor, weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """z: (B, E) embeddings (normalised here), weights: (B, B) >= 0 -> scalar loss.

    loss = -mean over rows i with sum_j W_ij > 0 of  sum_j W_ij log p_ij / sum_j W_ij,
    log p_ij = s_ij - logsumexp_{k != i} s_ik,  s = z z^T / temperature. The diagonal never counts.
    """
    B = z.shape[0]  # batch
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # AMP features: the softmax needs full precision
    z = F.normalize(z, dim=1)
    eye = torch.eye(B, dtype=torch.bool, device=z.device)
    s = (z @ z.T / temperature).masked_fill(eye, float("-inf"))  # self excluded from the denominator
    log_p = (s - torch.logsumexp(s, dim=1, keepdim=True)).masked_fill(eye, 0.0)  # avoid 0 * -inf
    w = weights.to(device=z.device, dtype=z.dtype).masked_fill(eye, 0.0)
    row_w = w.sum(dim=1)
    valid = row_w > 0
    if not bool(valid.any()):
        return (z * 0.0).sum()  # zero, but still attached to the graph so backward() works
    per_row = (w * log_p).sum(dim=1)[valid] / row_w[valid]
    return -per_row.mean()


def gather_embeddings(z: torch.Tensor) -> torch.Tensor:
    """(B, E) on each rank -> (R*B, E) on every rank, in rank order; gradients flow through this rank's rows only."""
    import torch.distributed as dist

    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, z.detach().contiguous())
    parts[dist.get_rank()] = z  # the local rows keep their graph
    return torch.cat(parts, dim=0)
