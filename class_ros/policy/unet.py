"""The 1D conditional U-Net that predicts the noise on an action chunk (Diffusion Policy's denoiser).

It convolves over the time axis of a chunk (B, H, D). Every residual block is conditioned by FiLM
(a per-channel scale and bias) on one vector: a sinusoidal embedding of the diffusion step joined
with the observation feature. Each level but the last halves the time axis, so H must be divisible
by 2 ** (levels - 1).

Usage:
    cfg = UNetConfig()                       # docs/method.md: 256/512/1024, kernel 5, 8 groups, step emb 256
    net = ConditionalUnet1D(action_dim=7, cond_dim=64, config=UNetConfig.cpu())
    eps = net(noisy_chunk, timesteps, obs_feature)   # (B, H, D), (B,), (B, C) -> (B, H, D)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from class_ros.config import DictConfig
from class_ros.errors import ClassRosError


@dataclass
class UNetConfig(DictConfig):
    """Sizes of the U-Net; `UNetConfig()` is the paper's model, `UNetConfig.cpu()` a small one for 2 cores."""

    config_name = "unet"

    down_dims: list[int] = field(default_factory=lambda: [256, 512, 1024])
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 256

    def __post_init__(self):
        self.down_dims = [int(d) for d in self.down_dims]
        if not self.down_dims or any(d < 1 for d in self.down_dims):
            raise ClassRosError(f"unet down_dims must be a non-empty list of positive ints, got {self.down_dims}.")
        if self.n_groups < 1 or any(d % self.n_groups for d in self.down_dims):
            raise ClassRosError(f"unet n_groups={self.n_groups} must divide every down_dim {self.down_dims} "
                                "(GroupNorm needs whole groups).")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ClassRosError(f"unet kernel_size must be a positive odd number, got {self.kernel_size}.")
        if self.step_embed_dim < 2 or self.step_embed_dim % 2:
            raise ClassRosError(f"unet step_embed_dim must be a positive even number, got {self.step_embed_dim}.")

    @classmethod
    def cpu(cls) -> "UNetConfig":
        """A model small enough to train in minutes on 2 CPU cores."""
        return cls(down_dims=[48, 96, 192], kernel_size=5, n_groups=8, step_embed_dim=64)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def horizon_multiple(self) -> int:
        """Chunk lengths must be a multiple of this (one halving per level but the last)."""
        return 2 ** (len(self.down_dims) - 1)


class SinusoidalStepEmbedding(nn.Module):
    """Diffusion step t (B,) -> (B, dim): sin/cos at geometrically spaced frequencies."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs.float()[None, :]  # (B, dim/2), float32 even in a bf16 U-Net
        return torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.freqs.dtype)


class SeqConv1d(nn.Conv1d):
    """nn.Conv1d that, at inference, runs as one matrix product over the unfolded chunk.

    The U-Net sees one observation and a chunk of 4-16 steps per call. There cuDNN re-lays out every
    weight (NCHW -> NHWC) on each call, about half the GPU time of a full-size U-Net, while a product of
    the (B*T, C_in*k) windows with the (C_out, C_in*k) weight reads each weight once. Same numbers
    (test_unet_gemm_convolution_equals_conv1d); training (autograd on) keeps the library convolution,
    which is faster for large batches on CPUs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        (k,), (s,), (p,) = self.kernel_size, self.stride, self.padding
        windows = F.pad(x, (p, p)).unfold(2, k, s)  # (B, C_in, T_out, k)
        B, C, T, _ = windows.shape  # batch, input channels, output length
        cols = windows.permute(0, 2, 1, 3).reshape(B * T, C * k)
        y = F.linear(cols, self.weight.reshape(self.out_channels, C * k), self.bias)  # (B*T, C_out)
        return y.view(B, T, self.out_channels).transpose(1, 2)


class ConvBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, length preserved."""

    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__()
        self.net = nn.Sequential(SeqConv1d(c_in, c_out, kernel, padding=kernel // 2),
                                 nn.GroupNorm(groups, c_out), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FiLMResBlock(nn.Module):
    """Two conv blocks with a FiLM scale/bias from the conditioning vector between them, plus a skip."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.block1 = ConvBlock(c_in, c_out, kernel, groups)
        self.block2 = ConvBlock(c_out, c_out, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = SeqConv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)  # (B, C, T)
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # (B, C, 1) each
        h = self.block2(h * (1 + scale) + bias)  # 1 + scale: an untrained FiLM starts near identity
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noise predictor eps(x_t, t, obs): (B, H, D), (B,) or scalar, (B, C) -> (B, H, D)."""

    def __init__(self, action_dim: int, cond_dim: int, config: UNetConfig | None = None):
        super().__init__()
        cfg = config or UNetConfig()
        self.config = cfg
        k, g, e = cfg.kernel_size, cfg.n_groups, cfg.step_embed_dim
        self.step_embed = nn.Sequential(SinusoidalStepEmbedding(e), nn.Linear(e, 4 * e), nn.Mish(),
                                        nn.Linear(4 * e, e))
        c = e + cond_dim  # FiLM input: step embedding joined with the observation feature
        dims = [action_dim, *cfg.down_dims]
        n = len(cfg.down_dims)

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == n - 1
            self.down.append(nn.ModuleList([
                FiLMResBlock(c_in, c_out, c, k, g), FiLMResBlock(c_out, c_out, c, k, g),
                nn.Identity() if last else SeqConv1d(c_out, c_out, 3, stride=2, padding=1)]))
        mid = cfg.down_dims[-1]
        self.mid = nn.ModuleList([FiLMResBlock(mid, mid, c, k, g), FiLMResBlock(mid, mid, c, k, g)])
        self.up = nn.ModuleList()
        ups = list(zip(cfg.down_dims[1:], cfg.down_dims[:-1]))[::-1]  # (deeper, shallower) pairs
        for c_deep, c_out in ups:
            # upsample the deeper features, then join the skip of the same length from the way down
            self.up.append(nn.ModuleList([
                nn.ConvTranspose1d(c_deep, c_deep, 4, stride=2, padding=1),
                FiLMResBlock(c_deep + c_out, c_out, c, k, g), FiLMResBlock(c_out, c_out, c, k, g)]))
        self.head = nn.Sequential(ConvBlock(cfg.down_dims[0], cfg.down_dims[0], k, g),
                                  SeqConv1d(cfg.down_dims[0], action_dim, 1))

    def check_horizon(self, horizon: int) -> None:
        """Raise ClassRosError if a chunk of this length cannot be halved at every level."""
        m = self.config.horizon_multiple
        if horizon < m or horizon % m:
            raise ClassRosError(f"a chunk of {horizon} steps cannot pass a U-Net with {len(self.config.down_dims)} "
                                f"levels: the horizon must be a multiple of {m}; change horizon or down_dims.")

    def forward(self, sample: torch.Tensor, timestep, cond: torch.Tensor) -> torch.Tensor:
        B, H, D = sample.shape  # batch, chunk length, action dims
        self.check_horizon(H)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(B) if t.ndim == 0 else t
        film = torch.cat([self.step_embed(t), cond], dim=-1)  # (B, E + C)

        x = sample.transpose(1, 2)  # (B, D, H): convolve over time
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, film), film)
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, film)
        for (upsample, res1, res2), skip in zip(self.up, reversed(skips[:-1])):
            x = upsample(x)  # (B, C_deep, 2T)
            x = res2(res1(torch.cat([x, skip], dim=1), film), film)
        return self.head(x).transpose(1, 2)  # (B, H, D)
