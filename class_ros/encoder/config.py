"""EncoderConfig: everything needed to rebuild an ObservationEncoder, stored in a run's config.yaml.

The diffusion trainer builds the same encoder from a CLASS run with
    cfg = EncoderConfig.from_dict(RunDir.open(run).load_config()["encoder"])
    enc = ObservationEncoder(cfg); enc.load_state_dict(RunDir.open(run).load_weights("encoder")["ema"])
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from class_ros.config import DictConfig
from class_ros.errors import ClassRosError

BACKBONES = ("small", "resnet18")


@dataclass
class EncoderConfig(DictConfig):
    """The observation encoder: one backbone per camera (or shared) + spatial-softmax head, then proprio."""

    config_name = "encoder"

    backbone: str = "small"  # "small": CPU-sized conv net; "resnet18": torchvision ResNet-18 with GroupNorm
    image_keys: list[str] = field(default_factory=list)  # camera names without "obs/"; [] = all of the dataset's
    proprio_keys: list[str] = field(default_factory=list)  # low-dim names without "obs/"; [] = all of the dataset's
    proprio_dims: list[int] = field(default_factory=list)  # width of each proprio key (filled from the dataset)
    image_size: list[int] = field(default_factory=lambda: [96, 96])  # input (H, W), filled from the dataset
    crop_size: int = 84  # random crop in training, centre crop at evaluation
    shared_backbone: bool = False  # one backbone for every camera instead of one each
    num_keypoints: int = 32  # spatial-softmax keypoints per view (2 numbers each)
    feature_dim: int = 64  # image feature per view after the keypoint head's linear layer
    small_width: int = 32  # channel width of the small backbone's first layer
    noise_std: float = 5.0  # Gaussian pixel noise in training, on the 0-255 scale

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ClassRosError(f"encoder backbone {self.backbone!r} is not one of {BACKBONES}.")
        self.image_size = [int(s) for s in self.image_size]
        if len(self.image_size) != 2:
            raise ClassRosError(f"encoder image_size must be [H, W], got {self.image_size}.")
        if not 8 <= self.crop_size <= min(self.image_size):
            raise ClassRosError(f"encoder crop_size {self.crop_size} must be between 8 and the image size "
                                f"{self.image_size}.")
        if len(self.proprio_dims) not in (0, len(self.proprio_keys)):
            raise ClassRosError(f"encoder proprio_dims {self.proprio_dims} must give one width per proprio key "
                                f"{self.proprio_keys}.")
        for name in ("num_keypoints", "feature_dim", "small_width"):
            if getattr(self, name) < 1:
                raise ClassRosError(f"encoder {name} must be positive, got {getattr(self, name)}.")
        if self.noise_std < 0:
            raise ClassRosError(f"encoder noise_std must be >= 0, got {self.noise_std}.")

    def for_dataset(self, meta) -> "EncoderConfig":
        """A copy with cameras, proprio keys/widths and image size filled in from a DatasetMeta."""
        from class_ros.data.schema import OBS_PREFIX, obs_key

        cams = self.image_keys or [k[len(OBS_PREFIX):] for k in meta.image_keys]
        props = self.proprio_keys or [k[len(OBS_PREFIX):] for k in meta.low_dim_keys]
        for name in cams + props:
            if obs_key(name) not in meta.keys:
                raise ClassRosError(f"the encoder needs observation {name!r} but the dataset has "
                                    f"{sorted(meta.keys)}.")
        if not cams and not props:
            raise ClassRosError("the dataset has no observations; the encoder needs a camera or a proprio key.")
        sizes = {tuple(meta.keys[obs_key(c)].shape[:2]) for c in cams}
        if len(sizes) > 1:
            raise ClassRosError(f"all cameras must share one image size, got {sorted(sizes)}; resize them when "
                                "converting.")
        size = list(sizes.pop()) if sizes else list(self.image_size)  # no cameras: a state-only encoder
        return dataclasses.replace(self, image_keys=cams, proprio_keys=props,
                                   proprio_dims=[int(meta.keys[obs_key(p)].shape[0]) for p in props],
                                   image_size=size, crop_size=min(self.crop_size, *size))
