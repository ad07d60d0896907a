"""Action-sequence similarity (docs/method.md section 1): DTW between action chunks and the positive pairs.

    chunks = normalized_chunks(store, horizon=16)       # (N, H, D) in [-1, 1], rot6d dims halved
    pos = dtw_positives(chunks, quantile=0.025)         # exact, see positives.py
    weights = open_weights("positives.npz", chunks)     # exact or on-the-fly, same .batch_weights(idx)

Heavy modules (numba kernels, torch) load on first use so `import class_ros.similarity` stays cheap.
"""
from __future__ import annotations

import os

import numpy as np

from class_ros.data.schema import ACTION
from class_ros.errors import ClassRosError

__all__ = ["dtw_distance", "pairwise_dtw", "dtw_positives", "Positives", "OnTheFlyWeights",
           "open_weights", "normalized_chunks"]


def __getattr__(name: str):
    if name in ("dtw_distance", "pairwise_dtw"):
        from class_ros.similarity import dtw
        return getattr(dtw, name)
    if name in ("dtw_positives", "Positives"):
        from class_ros.similarity import positives
        return getattr(positives, name)
    if name == "OnTheFlyWeights":
        from class_ros.similarity.onthefly import OnTheFlyWeights
        return OnTheFlyWeights
    raise AttributeError(f"module 'class_ros.similarity' has no attribute {name!r}")


def open_weights(path: str | os.PathLike, chunks=None, *, device: str = "cpu",
                 dataset_fingerprint: str | None = None):
    """A positives .npz -> an object with .batch_weights(idx) -> (B, B) float32 and .n.

    Exact files give a `Positives`; on-the-fly files need the dataset's normalised chunks (N, H, D).
    With `dataset_fingerprint` (EpisodeStore.fingerprint()), positives made from another dataset are refused.
    """
    from class_ros.similarity.onthefly import OnTheFlyWeights
    from class_ros.similarity.positives import Positives, load_npz
    data = load_npz(path)
    kind = str(data.get("kind", ""))
    if dataset_fingerprint is not None and kind in ("exact", "onthefly"):
        made_from = str(data.get("dataset_fingerprint", ""))
        if made_from != dataset_fingerprint:
            was = f"dataset {made_from}" if made_from else "a dataset it does not name (an older class_ros)"
            raise ClassRosError(f"{path} was computed from {was}, not from this dataset ({dataset_fingerprint}); "
                                "recompute it with `class-ros dtw` on this dataset.")
    if kind == "exact":
        pos = Positives.load(path)
        if chunks is not None and len(chunks) != pos.n:
            raise ClassRosError(f"{path} holds positives for {pos.n} samples but the dataset has {len(chunks)}; "
                                "recompute them with `class-ros dtw` for this dataset.")
        return pos
    if kind == "onthefly":
        return OnTheFlyWeights.load(path, chunks, device=device)
    raise ClassRosError(f"{path} is not a class_ros positives file (kind {kind!r}); compute one with `class-ros dtw`.")


def normalized_chunks(store, horizon: int) -> np.ndarray:
    """(N, H, D) float32: every action chunk of an EpisodeStore, min-max normalised to [-1, 1] per
    dimension (the policy's normaliser), with the 6D-rotation dims halved (docs/method.md section 1)."""
    from class_ros.data.normalizer import MinMaxNormalizer
    if int(horizon) < 1:
        raise ClassRosError(f"the DTW horizon must be at least 1, got {horizon}.")
    if store.n_frames == 0:
        raise ClassRosError(f"{store.path} holds no frames; record or convert some episodes first.")
    actions = np.asarray(store.load([ACTION]).array(ACTION), dtype=np.float32)  # load(): one clear read error
    norm = MinMaxNormalizer.fit(actions)
    chunks = store.action_chunks(int(horizon))  # (N, H, D)
    chunks = np.asarray(norm.normalize(chunks.astype(np.float64)), dtype=np.float32)
    rot = list(store.meta.rot6d_dims)
    if rot:
        if min(rot) < 0 or max(rot) >= chunks.shape[-1]:
            raise ClassRosError(f"rot6d_dims {rot} do not fit the {chunks.shape[-1]} action dims of {store.path}.")
        chunks[..., rot] /= 2.0
    return np.ascontiguousarray(chunks)
