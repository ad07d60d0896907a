"""ObservationEncoder: cameras -> image features (the contrastive loss), + proprio -> observation feature (policies).

Build it from an EncoderConfig (stored under `encoder:` in a pre-training run's config.yaml), or load a
pre-training run's EMA encoder in one call:
    enc = load_encoder("runs/class")          # or a RunDir; eval mode, on the CPU
Inputs are raw: images (B, H, W, 3) uint8, proprio (B, d) float in robot units; the proprio min-max
normaliser is a buffer of the module (set by `set_proprio_normalizers`), so it travels with the weights.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from class_ros.encoder.augment import ImageAugment
from class_ros.encoder.backbones import VisionBackbone
from class_ros.encoder.config import EncoderConfig
from class_ros.errors import ClassRosError


class ObservationEncoder(nn.Module):
    """Multi-view encoder; `image_features` (B, E_img) feeds the loss, `forward` (B, F) feeds policies."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if not config.image_keys and not config.proprio_keys:
            raise ClassRosError("the encoder config names no cameras and no proprio keys; fill it with "
                                "EncoderConfig.for_dataset(meta).")
        self.config = config
        c = config
        # No cameras: a state-only encoder (the privileged-state ceilings of class_ros.sim.oracle).
        names = [] if not c.image_keys else ["shared"] if c.shared_backbone else list(c.image_keys)
        self.backbones = nn.ModuleDict({n: VisionBackbone(c.backbone, c.crop_size, c.num_keypoints, c.feature_dim,
                                                          c.small_width) for n in names})
        self.augment = ImageAugment(c.crop_size, c.noise_std)
        d = sum(c.proprio_dims)
        # x_norm = x * scale + offset; identity until the dataset's normaliser is set.
        self.register_buffer("proprio_scale", torch.ones(d))
        self.register_buffer("proprio_offset", torch.zeros(d))

    @property
    def image_dim(self) -> int:
        return self.config.feature_dim * len(self.config.image_keys)

    @property
    def out_dim(self) -> int:
        return self.image_dim + sum(self.config.proprio_dims)

    def use_channels_last(self) -> "ObservationEncoder":
        """NHWC memory for the image convolutions and their inputs: faster training on GPUs, and on CPUs too
        (the small encoder's training step +17% on 2 cores); saved weights are packed back (rundir.packed)."""
        self.to(memory_format=torch.channels_last)
        self.augment.channels_last = True
        return self

    def set_proprio_normalizers(self, normalizers: dict) -> None:
        """Use the MinMaxNormalizer of each proprio key (by name without "obs/") inside forward."""
        scale, offset = [], []
        for name, dim in zip(self.config.proprio_keys, self.config.proprio_dims):
            norm = normalizers[name]
            zero = norm.normalize(np.zeros(dim))
            scale.append(norm.normalize(np.ones(dim)) - zero)
            offset.append(zero)
        if scale:
            self.proprio_scale.copy_(torch.as_tensor(np.concatenate(scale)))
            self.proprio_offset.copy_(torch.as_tensor(np.concatenate(offset)))

    def image_features(self, images: dict[str, torch.Tensor], train: bool | None = None) -> torch.Tensor:
        """{camera: (B, H, W, 3) uint8} -> (B, E_img); augmented (random crop, noise) when training."""
        train = self.training if train is None else train
        feats = []
        for cam in self.config.image_keys:
            if cam not in images:
                raise ClassRosError(f"the observation has no camera {cam!r}; it has {sorted(images)}.")
            img = images[cam]
            if tuple(img.shape[1:]) != (*self.config.image_size, 3):
                raise ClassRosError(f"camera {cam!r} gives images of shape {tuple(img.shape[1:])}, but the encoder "
                                    f"was trained on {(*self.config.image_size, 3)}.")
            backbone = self.backbones["shared" if self.config.shared_backbone else cam]
            feats.append(backbone(self.augment(img, train)))
        return torch.cat(feats, dim=1)

    def proprio(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, d) the normalised proprio keys, concatenated."""
        parts = []
        for name in self.config.proprio_keys:
            if name not in obs:
                raise ClassRosError(f"the observation has no {name!r}; it has {sorted(obs)}.")
            parts.append(obs[name].float().reshape(obs[name].shape[0], -1))
        if not parts:
            return self.proprio_scale.new_zeros(0)
        return torch.cat(parts, dim=1) * self.proprio_scale + self.proprio_offset

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """{camera: (B, H, W, 3) uint8, proprio: (B, d)} -> (B, F) = image features, then normalised proprio."""
        if not self.config.image_keys:
            return self.proprio(obs)
        feats = self.image_features(obs)
        if not self.config.proprio_keys:
            return feats
        return torch.cat([feats, self.proprio(obs).to(feats.dtype)], dim=1)


def load_encoder(run, device: str = "cpu", allow_partial: bool = False) -> ObservationEncoder:
    """The EMA encoder of a pre-training run (a path or an open RunDir), in eval mode on `device`.

    An unfinished run (pre-training killed or stopped early) is refused unless `allow_partial`.
    """
    from class_ros.data.rundir import RunDir

    if not isinstance(run, RunDir):
        run = RunDir.open(run, "encoder")
    run.check_finished(allow_partial)
    if not run.has_weights("encoder"):
        raise ClassRosError(f"{run.path} has no encoder weights yet; finish `class-ros pretrain` first.")
    encoder = ObservationEncoder(EncoderConfig.from_dict(run.load_config()["encoder"]))
    try:
        encoder.load_state_dict(run.load_weights("encoder", device="cpu")["ema"])
    except RuntimeError as err:  # config.yaml no longer describes the saved weights (edited by hand?)
        first = str(err).strip().splitlines()[0]
        raise ClassRosError(f"{run.path}: the encoder in config.yaml does not match encoder.safetensors ({first}); "
                            "restore the run's config.yaml or retrain.") from err
    return encoder.to(device).eval()


def load_init_weights(encoder: ObservationEncoder, path: str | os.PathLike) -> int:
    """Initialise from a local weights file (safetensors, or a torch state dict); returns tensors loaded.

    Accepts a whole-encoder state dict, or a backbone one with torchvision ResNet-18 keys (e.g. ImageNet
    weights), which is loaded into every camera's trunk; BatchNorm running statistics are ignored.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ClassRosError(f"init weights file {path} does not exist.")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)  # weights_only: no code runs on load
    except Exception as err:
        raise ClassRosError(f"cannot read init weights {path} ({err}).") from err
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    loaded = 0
    own = encoder.state_dict()
    if any(k in own for k in sd):  # a whole-encoder file
        match = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        encoder.load_state_dict(match, strict=False)
        loaded = len(match)
    else:
        for backbone in encoder.backbones.values():
            target = getattr(backbone.trunk, "net", backbone.trunk)
            tsd = target.state_dict()
            match = {k: v for k, v in sd.items() if k in tsd and tsd[k].shape == v.shape}
            target.load_state_dict(match, strict=False)
            loaded += len(match)
    if loaded == 0:
        raise ClassRosError(f"no tensor in {path} matches the {encoder.config.backbone} encoder; check the file.")
    return loaded
