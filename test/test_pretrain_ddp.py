"""DDP on 2 gloo CPU processes: the loss and gradients equal one process's on the same gathered batch."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from test_pretrain import positives_of, synthetic, tiny_config

B = 8  # per rank
DETERMINISTIC = dict(crop_size=32, noise_std=0.0)  # full-size crop, no noise: augmentation is the identity


def _worker(rank: int, world: int, tmp: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from class_ros.encoder.model import ObservationEncoder
    from training.pretrain import contrastive_loss, image_feature_module, pretrain

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    store, positives = _data(tmp)
    cfg = tiny_config(encoder=DETERMINISTIC, batch_size=B, steps=2)

    # (a) one step of the DDP mechanism on a fixed batch: rank r holds rows [r*B, (r+1)*B).
    torch.manual_seed(0)
    encoder = ObservationEncoder(cfg.encoder.for_dataset(store.meta))
    model = DistributedDataParallel(image_feature_module(encoder))
    all_idx = _batch_with_positives(positives, world * B)
    images = {"cam": torch.from_numpy(store.read("obs/cam", all_idx[rank * B:(rank + 1) * B]))}
    loss, value = contrastive_loss(model, images, torch.from_numpy(positives.batch_weights(all_idx)), 0.05)
    loss.backward()
    grads = np.concatenate([p.grad.flatten().numpy() for p in encoder.parameters()])

    # (b) the real training function under torchrun-like settings.
    summary = pretrain(f"{tmp}/data", positives, f"{tmp}/run", cfg, progress=False)
    np.savez(f"{tmp}/rank{rank}.npz", loss=value, grads=grads, loss_first=summary["loss_first"])
    dist.destroy_process_group()


def _batch_with_positives(positives, size: int) -> np.ndarray:
    """Frame ids, each frame followed by its strongest positive, so the loss has work to do."""
    idx: list[int] = []
    for i in range(positives.n):
        j = int(positives.w[i].argmax())
        if positives.w[i, j] > 0 and i not in idx and j not in idx and len(idx) + 2 <= size:
            idx += [i, j]
    return np.array(idx)


def _data(tmp):
    from pathlib import Path

    from class_ros.data.store import EpisodeStore
    path = Path(tmp)
    if not (path / "data" / "zarr.json").is_file():
        return synthetic(path, n_episodes=5, length=8)
    store = EpisodeStore.open(path / "data")
    return store, positives_of(store)


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    from class_ros.encoder.loss import soft_infonce
    from class_ros.encoder.model import ObservationEncoder
    from training.pretrain import contrastive_loss, image_feature_module

    store, positives = _data(str(tmp_path))  # written once here, read by the workers
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    cfg = tiny_config(encoder=DETERMINISTIC, batch_size=B, steps=2)

    # (a) one process, the whole gathered batch
    torch.manual_seed(0)
    encoder = ObservationEncoder(cfg.encoder.for_dataset(store.meta))
    all_idx = _batch_with_positives(positives, 2 * B)
    assert len(all_idx) == 2 * B
    images = {"cam": torch.from_numpy(store.read("obs/cam", all_idx))}
    loss, value = contrastive_loss(image_feature_module(encoder), images,
                                   torch.from_numpy(positives.batch_weights(all_idx)), 0.05)
    loss.backward()
    grads = np.concatenate([p.grad.flatten().numpy() for p in encoder.parameters()])
    assert np.abs(grads).max() > 0
    # DDP adds the same float32 terms in another order: each rank reduces its half of the batch, then the
    # halves are summed; a convolution's weight gradient is one reduction over batch x pixels. Rounding
    # errors of an n-term float32 sum grow like sqrt(n) * eps * (the terms' scale): the tolerance is that,
    # with n = 2B samples x the crop's pixels and the gradient's largest magnitude as the scale.
    n_terms = 2 * B * DETERMINISTIC["crop_size"] ** 2
    atol = np.sqrt(n_terms) * np.finfo(np.float32).eps * np.abs(grads).max()
    for r in ranks:
        assert float(r["loss"]) == pytest.approx(value, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(r["grads"], grads, rtol=1e-4, atol=atol)

    # (b) pretrain's first loss: each rank drew its own frames; the loss covers both ranks' frames.
    idx = np.concatenate([np.random.default_rng([cfg.seed, r, 0]).choice(store.n_frames, size=B, replace=False)
                          for r in range(2)])
    torch.manual_seed(cfg.seed)
    encoder = ObservationEncoder(cfg.encoder.for_dataset(store.meta))
    with torch.no_grad():
        z = encoder.image_features({"cam": torch.from_numpy(store.read("obs/cam", idx))}, train=True)
        want = soft_infonce(z, torch.from_numpy(positives.batch_weights(idx)), cfg.temperature).item()
    for r in ranks:
        assert float(r["loss_first"]) == pytest.approx(want, rel=1e-5, abs=1e-6)

