"""LARS: SGD with momentum whose step for each weight matrix is scaled by eta * |w| / |g + wd w|.

Biases and normalisation parameters (1-D tensors) get neither weight decay nor the trust ratio, as in
the usual LARS recipe for contrastive pre-training.
"""
from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """update = g + wd*w; update *= eta*|w|/|update| (2-D+ params); v = momentum*v + update; w -= lr*v."""

    def __init__(self, params, lr: float, weight_decay: float = 1e-6, momentum: float = 0.9, eta: float = 0.001):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(f"invalid LARS settings lr={lr} weight_decay={weight_decay} momentum={momentum} eta={eta}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # Multi-tensor (_foreach) ops: a handful of kernel launches per group instead of ~10 per
            # parameter, which is what bounds a ResNet-18 step on a GPU at contrastive batch sizes.
            updates = [p.grad.clone() for p in params]
            matrices = [i for i, p in enumerate(params) if p.ndim > 1]
            if matrices:
                w = [params[i] for i in matrices]
                u = [updates[i] for i in matrices]
                torch._foreach_add_(u, w, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(w))
                u_norm = torch.stack(torch._foreach_norm(u))
                # A zero norm (fresh zero weights or no gradient) falls back to the plain step.
                trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm,
                                    torch.ones_like(w_norm))
                torch._foreach_mul_(u, list(trust.to(u[0].dtype).unbind()))
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, updates)
            torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss
