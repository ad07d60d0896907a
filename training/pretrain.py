"""CLASS pre-training: the visual encoder learns with soft InfoNCE on DTW action-sequence positives.

Usage:
    class-ros pretrain --dataset data/sim --positives data/sim/positives.npz --out runs/class
    class-ros pretrain ... --config training/configs/pretrain_gpu.yaml       # ResNet-18, LARS, B=160
    class-ros pretrain ... --resume                                          # continue runs/class
    torchrun --nproc_per_node 4 -m training.pretrain --dataset ... --out ...  # DDP, one GPU per process

Each step draws B uniformly random frames per process, gathers the frame ids of all processes, and
computes the loss on the whole gathered batch with its (R*B, R*B) positive weights, so positives across
processes count; each process back-propagates through its own rows (the loss is scaled by R because DDP
averages gradients). The run directory gets config.yaml, normalizer.json, encoder.safetensors (EMA and
raw weights), train_state/ and TensorBoard scalars under tb/.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from class_ros.config import DictConfig
from class_ros.encoder.config import EncoderConfig
from class_ros.errors import ClassRosError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
OPTIMIZERS = ("adamw", "lars")


@dataclass
class PretrainConfig(DictConfig):
    """Pre-training settings; YAML files in training/configs/ hold these keys (encoder: as a mapping)."""

    config_name = "pretrain"

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 64  # per process
    steps: int = 0  # optimisation steps; 0 = derived from `epochs`
    epochs: float = 50.0  # passes over the dataset when steps == 0
    optimizer: str = "adamw"  # "adamw" or "lars"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 500  # capped at 5 epochs, as docs/method.md says
    temperature: float = 0.05
    ema_power: float = 0.75
    dist_horizon: int = 16  # action-chunk length of the positives and of the retrieval chunks
    seed: int = 0
    amp: bool = True  # bfloat16 autocast, CUDA only
    save_every: int = 500  # steps between checkpoints (one is always written at the end)
    # Draw half of each batch as anchors and half as one DTW positive of each (exact positives only).
    # Uniform batches of 64 from a few thousand frames hold ~1-2 positives per row, too weak a signal
    # for a short CPU run; large batches (the paper's) do not need it.
    positive_pairs: bool = False

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        if self.optimizer not in OPTIMIZERS:
            raise ClassRosError(f"optimizer {self.optimizer!r} is not one of {OPTIMIZERS}.")
        for name in ("batch_size", "dist_horizon", "save_every"):
            if getattr(self, name) < 1:
                raise ClassRosError(f"pretrain {name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_size < 2:
            raise ClassRosError("pretrain batch_size must be at least 2 (the loss contrasts samples).")
        if self.steps < 0 or self.epochs <= 0 or self.lr <= 0 or self.temperature <= 0 or self.warmup_steps < 0:
            raise ClassRosError("pretrain steps, warmup_steps must be >= 0 and epochs, lr, temperature positive; "
                                f"got steps={self.steps} epochs={self.epochs} lr={self.lr} "
                                f"temperature={self.temperature} warmup_steps={self.warmup_steps}.")


def default_config_path() -> Path:
    """The GPU preset on a CUDA machine, else the CPU preset."""
    import torch
    return CONFIG_DIR / ("pretrain_gpu.yaml" if torch.cuda.is_available() else "pretrain_cpu.yaml")


# ------------------------------------------------------------------------------------------ helpers
def open_positives(positives, store, horizon: int):
    """An object with .batch_weights(idx) -> (B, B): a path for class_ros.similarity, or such an object."""
    if hasattr(positives, "batch_weights"):
        return positives
    from class_ros.similarity import normalized_chunks, open_weights
    if not Path(positives).exists():
        raise ClassRosError(f"positives {positives} do not exist; compute them with `class-ros dtw`.")
    return open_weights(positives, chunks=normalized_chunks(store, horizon), dataset_fingerprint=store.fingerprint())


def positives_lineage(positives) -> dict:
    """What the run manifest records of the positives it was trained with (a file: its path and sha256)."""
    if hasattr(positives, "batch_weights"):
        return {}
    from class_ros.data import outputs
    return {"positives": str(positives), "positives_sha256": outputs.sha256_file(positives)}


def check_positives(weights, n_frames: int) -> None:
    """Refuse positives computed for a different number of frames."""
    n = getattr(weights, "n", None)  # Positives and OnTheFlyWeights both say how many samples they cover
    if n is not None and int(n) != n_frames:
        raise ClassRosError(f"the positives cover {n} samples but the dataset has {n_frames} frames; recompute "
                            "them with `class-ros dtw` on this dataset.")
    probe = np.asarray(weights.batch_weights(np.array([0, n_frames - 1])))
    if probe.shape != (2, 2):
        raise ClassRosError(f"positives.batch_weights returned shape {probe.shape} for 2 samples; expected (2, 2).")


def batch_stats(w: np.ndarray) -> tuple[float, float]:
    """(fraction of rows with a positive, mean weight of the positive entries)."""
    w = w.copy()
    np.fill_diagonal(w, 0.0)
    pos = w[w > 0]
    return float((w.sum(1) > 0).mean()), float(pos.mean()) if pos.size else 0.0


def image_feature_module(encoder):
    """A module whose forward is encoder.image_features in training mode, so DDP can wrap it."""
    import torch

    class ImageFeatures(torch.nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, images):
            return self.enc.image_features(images, train=True)

    return ImageFeatures(encoder)


def sample_batch(rng: np.random.Generator, n: int, batch_size: int, positives=None) -> np.ndarray:
    """(batch_size,) frame ids: uniform, or with `positives` (CSR indptr/indices) anchors then one positive of
    each (a uniform frame for an anchor without positives)."""
    if positives is None or not hasattr(positives, "indptr"):
        return rng.choice(n, size=batch_size, replace=n < batch_size)
    anchors = rng.choice(n, size=(batch_size + 1) // 2, replace=n < (batch_size + 1) // 2)
    lo, hi = positives.indptr[anchors], positives.indptr[anchors + 1]
    pick = lo + np.floor(rng.random(len(anchors)) * np.maximum(hi - lo, 1)).astype(np.int64)
    partners = np.where(hi > lo, np.asarray(positives.indices)[np.minimum(pick, len(positives.indices) - 1)],
                        rng.integers(0, n, len(anchors)))
    return np.concatenate([anchors, partners])[:batch_size].astype(np.int64)


def contrastive_loss(model, images: dict, weights, temperature: float, amp: bool = True):
    """(loss to back-propagate, loss value) of one batch; under DDP the loss covers the gathered batch.

    Each rank back-propagates through its own rows only, and DDP averages gradients over ranks, so the
    loss is multiplied by the world size to give every rank the gradient of the one global loss.
    """
    import torch
    import torch.distributed as dist

    from class_ros.encoder.loss import gather_embeddings, soft_infonce

    on_cuda = next(iter(images.values())).is_cuda
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and amp):
        z = model(images)  # (B, E_img)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        z = gather_embeddings(z)  # (R*B, E_img)
    loss = soft_infonce(z, weights, temperature)
    return loss * world, float(loss.detach())


def build_optimizer(params, cfg: PretrainConfig):
    import torch
    from class_ros.encoder.lars import LARS

    if cfg.optimizer == "lars":
        return LARS(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# ------------------------------------------------------------------------------------------ the step
def pretrain(dataset, positives, out, config=None, *, resume: bool = False, init_weights=None,
             device: str | None = None, progress: bool = True, stop_after: int | None = None,
             diagnostics: bool = True) -> dict:
    """Pre-train a CLASS encoder on `dataset` with `positives` into run directory `out`; returns a summary.

    `positives`: a path for class_ros.similarity.open_weights, or an object with batch_weights(idx).
    `stop_after`: checkpoint and return after this many steps of this call (continue with resume=True).
    `diagnostics`: end with training/diagnostics.py's numbers (summary["diagnostics"]; {} without targets).
    """
    import torch
    import torch.distributed as dist
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from class_ros.data.rundir import RunDir
    from class_ros.data.schema import obs_key
    from class_ros.data.store import EpisodeStore
    from class_ros.encoder.model import ObservationEncoder, load_init_weights
    from training.trainer import (Checkpointing, default_device, dist_setup, finish, fit_normalizers, open_run,
                                  preload_if_small, run_steps, summarize)

    rank, world, local_rank = dist_setup()
    device = device or default_device(local_rank)
    on_cuda = str(device).startswith("cuda")
    if config is None:
        config = default_config_path()
    cfg = config if isinstance(config, PretrainConfig) else (
        PretrainConfig.from_dict(config) if isinstance(config, dict) else PretrainConfig.from_yaml(config))

    # Everything the user can get wrong is checked before the run directory is touched.
    if rank == 0 and not resume:
        RunDir.check_target(out, "encoder")  # an unusable --out fails now, not after minutes of loading
    store = EpisodeStore.open(dataset)
    if store.n_frames < 2:
        raise ClassRosError(f"{dataset} holds {store.n_frames} frames; pre-training needs at least 2.")
    cfg = dataclasses.replace(cfg, encoder=cfg.encoder.for_dataset(store.meta))
    if not cfg.encoder.image_keys:
        raise ClassRosError(f"{dataset} has no image observations; CLASS pre-trains a visual encoder and needs "
                            "at least one camera.")
    weights = open_positives(positives, store, cfg.dist_horizon)
    check_positives(weights, store.n_frames)
    normalizers = fit_normalizers(store, cfg.encoder.proprio_keys)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    encoder = ObservationEncoder(cfg.encoder)
    encoder.set_proprio_normalizers(normalizers)
    if init_weights is not None:
        load_init_weights(encoder, init_weights)  # a bad file is refused here, before anything is written

    n = store.n_frames
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * n / (cfg.batch_size * world)))
    warmup = min(cfg.warmup_steps, math.ceil(5 * n / (cfg.batch_size * world)))
    cams = cfg.encoder.image_keys
    preload_if_small(store, [obs_key(c) for c in cams])
    run = open_run(out, "encoder", cfg, store, rank=rank, world=world, resume=resume,
                   extra={"world_size": world, "steps": steps}, lineage=positives_lineage(positives),
                   on_create=lambda run: run.save_normalizers(normalizers))

    encoder.to(device).use_channels_last()
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    model = image_feature_module(encoder)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[local_rank] if on_cuda else None)
    optimizer = build_optimizer(encoder.parameters(), cfg)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    ema = EMAModel(encoder.parameters(), power=cfg.ema_power, use_ema_warmup=True, foreach=True)
    ckpt = Checkpointing(run, "encoder", encoder, optimizer, scheduler, ema, out, rank)
    start = ckpt.resume(device) if resume else 0

    fracs = []

    def one_step(step, rng):
        idx = sample_batch(rng, n, cfg.batch_size, weights if cfg.positive_pairs else None)
        all_idx = idx
        if world > 1:  # every rank's frame ids: the loss covers the gathered batch
            parts = [torch.empty(cfg.batch_size, dtype=torch.int64, device=device) for _ in range(world)]
            dist.all_gather(parts, torch.as_tensor(idx, device=device))
            all_idx = torch.cat(parts).cpu().numpy()
        w = np.asarray(weights.batch_weights(all_idx), dtype=np.float32)  # (R*B, R*B)
        images = {c: torch.from_numpy(store.read(obs_key(c), idx)).to(device, non_blocking=True) for c in cams}
        loss, value = contrastive_loss(model, images, torch.from_numpy(w).to(device), cfg.temperature, cfg.amp)
        frac, mean_w = batch_stats(w)
        fracs.append(frac)
        return loss, value, {"rows_with_positives": frac, "mean_positive_weight": mean_w}

    losses, seconds = run_steps(one_step, ckpt, seed=cfg.seed, rank=rank, start=start, steps=steps,
                                stop_after=stop_after, save_every=cfg.save_every, desc="pretrain", progress=progress)
    done = len(losses)
    summary = summarize(out, steps, losses, seconds, world, device,
                        rows_with_positives=float(np.mean(fracs)) if fracs else None,
                        images_per_s=done * cfg.batch_size * world / seconds if done and seconds > 0 else None)
    if rank == 0 and diagnostics:  # what the EMA encoder holds, for the user to see why retrieval works or not
        from class_ros.encoder.model import load_encoder
        from training.diagnostics import diagnose
        encoder_now = load_encoder(run, device, allow_partial=True)  # a stopped run is diagnosed as it stands
        summary["diagnostics"] = diagnose(encoder_now, store, weights, cfg.dist_horizon, cfg.seed)
    return finish(run, "pretrain", summary, rank, world)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset store (from convert / sim-demos)")
    parser.add_argument("--positives", required=True, help="positives from `class-ros dtw` (.npz)")
    parser.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    parser.add_argument("--config", default=None,
                        help="YAML config (default: training/configs/pretrain_gpu.yaml with CUDA, else pretrain_cpu.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its train_state")
    parser.add_argument("--init-weights", default=None,
                        help="local weights file to start from (e.g. ImageNet ResNet-18, .safetensors or .pth)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from training.trainer import print_summary

    summary = pretrain(args.dataset, args.positives, args.out, args.config, resume=args.resume,
                       init_weights=args.init_weights, device=args.device)
    print_summary("pretrain", summary, "images_per_s", "img/s")
    if "diagnostics" in summary:
        from training.diagnostics import format_diagnostics
        print(format_diagnostics(summary["diagnostics"]))
    return 0


if __name__ == "__main__":  # torchrun -m training.pretrain ...
    import sys

    from class_ros.cli import entry
    entry(["pretrain", *sys.argv[1:]])
