"""Per-dimension min-max normalisation to [-1, 1], safe on constant dimensions, saved as JSON."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from class_ros.errors import ClassRosError

EPS = 1e-6


@dataclass
class MinMaxNormalizer:
    """x_norm = (x - min) / (max - min) * 2 - 1; a constant dimension maps to 0 and back to its value."""

    min: np.ndarray  # (D,)
    max: np.ndarray  # (D,)

    def __post_init__(self):
        self.min = np.asarray(self.min, dtype=np.float64)
        self.max = np.asarray(self.max, dtype=np.float64)
        if self.min.shape != self.max.shape or self.min.ndim != 1:
            raise ClassRosError(f"normaliser min/max must be equal 1-D shapes, got {self.min.shape} and {self.max.shape}.")
        if not (np.isfinite(self.min).all() and np.isfinite(self.max).all()) or np.any(self.max < self.min):
            raise ClassRosError("normaliser statistics are not finite or have max < min.")

    @classmethod
    def fit(cls, x: np.ndarray) -> "MinMaxNormalizer":
        """Statistics over all leading axes of x (..., D)."""
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1, x.shape[-1])
        if len(flat) == 0:
            raise ClassRosError("cannot fit a normaliser on an empty array.")
        if not np.isfinite(flat).all():
            raise ClassRosError("cannot fit a normaliser: the data holds NaN or inf.")
        return cls(flat.min(axis=0), flat.max(axis=0))

    @property
    def dim(self) -> int:
        return len(self.min)

    def _scale(self) -> tuple[np.ndarray, np.ndarray]:
        span = self.max - self.min
        const = span < EPS
        scale = np.where(const, 0.0, 2.0 / np.where(const, 1.0, span))
        offset = np.where(const, 0.0, -1.0 - self.min * scale)
        return scale, offset

    def normalize(self, x):
        """(..., D) -> (..., D) in [-1, 1]; numpy or torch in, same type out."""
        scale, offset = self._scale()
        self._check(x)
        return x * _like(scale, x) + _like(offset, x)

    def unnormalize(self, y):
        """Inverse of normalize; constant dimensions return their constant."""
        span = self.max - self.min
        const = span < EPS
        self._check(y)
        half = np.where(const, 0.0, span / 2.0)
        mid = np.where(const, self.min, (self.max + self.min) / 2.0)
        return y * _like(half, y) + _like(mid, y)

    def _check(self, x) -> None:
        if x.shape[-1] != self.dim:
            raise ClassRosError(f"normaliser expects last dimension {self.dim}, got shape {tuple(x.shape)}.")

    def to_dict(self) -> dict:
        return {"type": "minmax", "min": self.min.tolist(), "max": self.max.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "MinMaxNormalizer":
        if d.get("type") != "minmax":
            raise ClassRosError(f"unknown normaliser type {d.get('type')!r}.")
        return cls(np.array(d["min"]), np.array(d["max"]))

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically."""
        from class_ros.data import outputs
        outputs.write_json(path, self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MinMaxNormalizer":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError) as err:
            raise ClassRosError(f"cannot read normaliser {path}: {err}.") from err


def _like(v: np.ndarray, x):
    """v as the same array type, dtype and device as x."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return v.astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float64)
    import torch  # only when called with a tensor
    return torch.as_tensor(v, dtype=x.dtype, device=x.device)
