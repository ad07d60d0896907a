"""Image backbones with GroupNorm (batch statistics would couple the samples of a contrastive batch)
and the spatial-softmax keypoint head.

- `small`: 4 conv layers for CPUs, ~0.14 M parameters with the default head. Pre-training throughput
  (augment + forward + soft InfoNCE + backward + AdamW, batch 64, 96x96 -> 84x84 crops): about 390
  images per CPU-second single-threaded (ResNet-18: about 85, 4.6x less), which is 550-800 img/s
  measured on a lightly loaded 2-core machine. `python benchmarks/encoder.py` measures both.
- `resnet18`: torchvision's ResNet-18 built with GroupNorm(C/16, C) in place of every BatchNorm.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class SpatialSoftmax(nn.Module):
    """(B, C, h, w) -> (B, 2K): expected (x, y) in [-1, 1] of each of K learned keypoint maps."""

    def __init__(self, in_channels: int, num_keypoints: int, height: int, width: int):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(x).flatten(2)  # (B, K, h*w)
        attention = F.softmax(maps.float(), dim=-1)
        return (attention @ self.grid).flatten(1)  # (B, K, 2) -> (B, 2K)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // 16), channels)


class SmallTrunk(nn.Module):
    """Four strided convolutions: 84x84 -> 11x11 feature maps, about 20x cheaper than ResNet-18."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        layers, c_in = [], 3
        for c_out, k, s in ((w, 5, 2), (2 * w, 3, 2), (2 * w, 3, 1), (4 * w, 3, 2)):
            layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2, bias=False), _gn(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.net = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to layer4 (stride 32), GroupNorm everywhere; `net` keys match torchvision's for init weights."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None, norm_layer=_gn)
        del net.fc, net.avgpool  # the keypoint head replaces global pooling
        self.net = net
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))


class VisionBackbone(nn.Module):
    """(B, 3, c, c) normalised image -> (B, feature_dim): trunk, spatial softmax, linear."""

    def __init__(self, kind: str, crop_size: int, num_keypoints: int, feature_dim: int, small_width: int = 32):
        super().__init__()
        self.trunk = SmallTrunk(small_width) if kind == "small" else ResNet18Trunk()
        with torch.no_grad():
            h, w = self.trunk(torch.zeros(1, 3, crop_size, crop_size)).shape[-2:]
        self.pool = SpatialSoftmax(self.trunk.out_channels, num_keypoints, h, w)
        self.proj = nn.Linear(2 * num_keypoints, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(self.trunk(x)))
