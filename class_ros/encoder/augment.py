"""Batched image augmentation on the images' own device: random crop + Gaussian noise in training,
centre crop at evaluation, then ImageNet normalisation."""
from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageAugment(nn.Module):
    """(B, H, W, 3) uint8 -> (B, 3, c, c) float, normalised; channels-last memory when `channels_last`."""

    def __init__(self, crop_size: int, noise_std: float = 5.0):
        super().__init__()
        self.channels_last = False  # set by ObservationEncoder.use_channels_last (training)
        self.crop = crop_size
        self.noise_std = noise_std / 255.0
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        B, H, W, _ = images.shape  # batch, height, width, rgb
        c = self.crop
        if train:
            # One random offset per sample, applied with a single gather instead of a Python loop.
            oy = torch.randint(0, H - c + 1, (B,), device=images.device)
            ox = torch.randint(0, W - c + 1, (B,), device=images.device)
            ar = torch.arange(c, device=images.device)
            rows, cols = (oy[:, None] + ar)[:, :, None], (ox[:, None] + ar)[:, None, :]  # (B, c, 1), (B, 1, c)
            x = images[torch.arange(B, device=images.device)[:, None, None], rows, cols]  # (B, c, c, 3)
        else:
            top, left = (H - c) // 2, (W - c) // 2
            x = images[:, top:top + c, left:left + c]
        x = x.permute(0, 3, 1, 2)  # (B, 3, c, c), still NHWC in memory
        if not x.is_cuda:
            # NCHW memory on the CPU: randn_like on an NHWC-strided tensor took 39 ms per 64 crops against
            # 4.5 ms contiguous (a third of a small-encoder training step), and the CPU convolutions want NCHW.
            x = x.contiguous()
        x = x.float().div_(255.0)
        if train and self.noise_std > 0:
            x = x + torch.randn_like(x) * self.noise_std
        x = (x - self.mean) / self.std
        # The layout of the convolutions' weights: mixed layouts make DDP's gradient buckets mismatch.
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
