"""Train a Diffusion Policy, with the observation encoder initialised from a CLASS run or from scratch.

Usage:
    class-ros finetune --dataset data/sim --init runs/class --out runs/dp_class      # CLASS EMA encoder
    class-ros finetune --dataset data/sim --init none --out runs/dp_scratch          # random encoder
    class-ros finetune ... --config training/configs/finetune_gpu.yaml              # docs/method.md sizes
    class-ros finetune ... --resume                                                  # continue --out
    torchrun --nproc_per_node 4 -m training.finetune --dataset ... --init ... --out ...   # DDP

With --init RUN the encoder architecture and its EMA weights come from the CLASS run (its `encoder:`
config replaces this config's); the image backbones then train at `vision_lr`, the rest at `lr`. From
scratch the backbones train at `scratch_vision_lr`, for `scratch_epochs` when steps is 0. Each step
draws B uniformly random frames per process: the observation at the frame and the action chunk after
it. The run directory (kind "diffusion") gets config.yaml, normalizer.json, policy.safetensors (EMA
and raw), scheduler.json, train_state/ and TensorBoard scalars under tb/.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from class_ros.config import DictConfig
from class_ros.encoder.config import EncoderConfig
from class_ros.errors import ClassRosError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def _diffusion_config(d=None):
    from class_ros.policy.diffusion import DiffusionConfig
    if isinstance(d, DiffusionConfig):
        return d
    return DiffusionConfig.from_dict(d or {})


@dataclass
class FinetuneConfig(DictConfig):
    """Fine-tuning settings; YAML files in training/configs/finetune*.yaml hold these keys."""

    config_name = "finetune"

    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # used with --init none only
    diffusion: dict | object = field(default_factory=dict)  # DiffusionConfig (a mapping in YAML)
    init: str = "none"  # the CLASS run the encoder came from, or "none" (filled in by finetune())
    batch_size: int = 64  # per process
    steps: int = 0  # optimisation steps; 0 = derived from epochs / scratch_epochs
    epochs: float = 100.0  # passes over the dataset when initialised from a CLASS run
    scratch_epochs: float = 500.0  # passes over the dataset when trained from scratch
    lr: float = 1e-4  # U-Net (and everything that is not an image backbone)
    vision_lr: float = 1e-5  # image backbones initialised from a CLASS run
    scratch_vision_lr: float = 1e-4  # image backbones trained from scratch
    weight_decay: float = 1e-6
    warmup_steps: int = 500
    ema_power: float = 0.75
    seed: int = 0
    amp: bool = True  # bfloat16 autocast, CUDA only
    save_every: int = 1000  # steps between checkpoints (one is always written at the end)

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig.from_dict(self.encoder)
        self.diffusion = _diffusion_config(self.diffusion)
        if self.batch_size < 1 or self.save_every < 1 or self.steps < 0 or self.warmup_steps < 0:
            raise ClassRosError(f"finetune needs batch_size, save_every >= 1 and steps, warmup_steps >= 0; got "
                                f"batch_size={self.batch_size} save_every={self.save_every} steps={self.steps} "
                                f"warmup_steps={self.warmup_steps}.")
        if self.epochs <= 0 or self.scratch_epochs <= 0:
            raise ClassRosError(f"finetune epochs must be positive, got {self.epochs} and {self.scratch_epochs}.")
        if min(self.lr, self.vision_lr, self.scratch_vision_lr) < 0 or self.weight_decay < 0:
            raise ClassRosError("finetune learning rates and weight_decay must be >= 0.")

    @classmethod
    def coerce(cls, config) -> "FinetuneConfig":
        """A FinetuneConfig from itself, a dict, a YAML path, or None (the preset for this machine)."""
        if config is None:
            config = default_config_path()
        if isinstance(config, cls):
            return dataclasses.replace(config)
        if isinstance(config, dict):
            return cls.from_dict(config)
        return cls.from_yaml(config)


def default_config_path() -> Path:
    """The GPU preset on a CUDA machine, else the CPU preset."""
    import torch
    return CONFIG_DIR / ("finetune_gpu.yaml" if torch.cuda.is_available() else "finetune_cpu.yaml")


# ------------------------------------------------------------------------------------------ set-up
def _is_none(init) -> bool:
    return init is None or str(init).lower() == "none"


def resolve_config(cfg: FinetuneConfig, store, init) -> tuple[FinetuneConfig, dict | None]:
    """The config this run trains with, and the CLASS run's EMA encoder weights (None from scratch).

    With a CLASS run the encoder config is the run's own, and the dataset must hold its cameras and
    proprio keys with the same shapes.
    """
    from class_ros.data.schema import obs_key
    from class_ros.encoder.model import load_encoder

    if _is_none(init):
        return dataclasses.replace(cfg, encoder=cfg.encoder.for_dataset(store.meta), init="none"), None
    encoder = load_encoder(init)
    enc = encoder.config
    need = {c: (*enc.image_size, 3) for c in enc.image_keys}
    need.update({p: (d,) for p, d in zip(enc.proprio_keys, enc.proprio_dims)})
    for name, shape in need.items():
        have = store.meta.keys.get(obs_key(name))
        if have is None or tuple(have.shape) != shape:
            raise ClassRosError(f"the CLASS run {init} encodes {name!r} of shape {shape} but the dataset has "
                                f"{tuple(have.shape) if have else 'no such key'}; fine-tune on a matching dataset.")
    return dataclasses.replace(cfg, encoder=enc, init=str(Path(init).resolve())), encoder.state_dict()


def training_steps(cfg: FinetuneConfig, n_frames: int, world: int) -> tuple[int, int]:
    """(total steps, warm-up steps): warm-up capped at a tenth of the run so short runs still train."""
    epochs = cfg.epochs if cfg.init != "none" else cfg.scratch_epochs
    steps = cfg.steps or max(1, math.ceil(epochs * n_frames / (cfg.batch_size * world)))
    return steps, min(cfg.warmup_steps, steps // 10)


def read_batch(store, sampler, idx: np.ndarray, names: list[str], device) -> dict:
    """{obs name: (B, ...) tensor, "action": (B, H, D)} for frame ids `idx` (obs horizon 1)."""
    import torch

    from class_ros.data.schema import ACTION, obs_key

    data = sampler.sample(idx, obs_keys=[obs_key(n) for n in names])
    batch = {n: torch.from_numpy(np.ascontiguousarray(data[obs_key(n)][:, -1])) for n in names}
    batch[ACTION] = torch.from_numpy(np.asarray(data[ACTION], dtype=np.float32))
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------ the step
def finetune(dataset, init, out, config=None, *, resume: bool = False, device: str | None = None,
             progress: bool = True, stop_after: int | None = None) -> dict:
    """Train a Diffusion Policy on `dataset` into run directory `out`; `init` a CLASS run or None/"none".

    Returns a summary dict. `stop_after`: checkpoint and return after this many steps of this call.
    """
    import torch
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from class_ros.data.rundir import RunDir
    from class_ros.data.sampler import WindowSampler
    from class_ros.data.schema import ACTION, obs_key
    from class_ros.data.store import EpisodeStore
    from class_ros.policy.diffusion import WEIGHTS, DiffusionPolicy
    from training.trainer import (Checkpointing, default_device, dist_setup, finish, fit_normalizers, open_run,
                                  preload_if_small, run_steps, summarize)

    rank, world, local_rank = dist_setup()
    device = device or default_device(local_rank)
    on_cuda = str(device).startswith("cuda")

    # Everything the user can get wrong is checked before the run directory is touched.
    cfg = FinetuneConfig.coerce(config)
    if rank == 0 and not resume:
        RunDir.check_target(out, "diffusion")  # an unusable --out fails now, not after minutes of loading
    store = EpisodeStore.open(dataset)
    if store.n_frames < 1:
        raise ClassRosError(f"{dataset} holds no frames; record or convert demonstrations first.")
    cfg, init_weights = resolve_config(cfg, store, init)
    init_lineage = {} if init_weights is None else {"init": RunDir.open(cfg.init).reference()}
    steps, warmup = training_steps(cfg, store.n_frames, world)
    names = cfg.encoder.image_keys + cfg.encoder.proprio_keys
    preload_if_small(store, [obs_key(n) for n in names] + [ACTION])
    run = open_run(out, "diffusion", cfg, store, rank=rank, world=world, resume=resume,
                   extra={"world_size": world, "init": cfg.init, "steps": steps}, lineage=init_lineage,
                   on_create=lambda run: run.save_normalizers(fit_normalizers(store, cfg.encoder.proprio_keys)))

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    policy = DiffusionPolicy.from_run_config(run, yaml.safe_load(yaml.safe_dump(_config_dict(cfg))))
    if init_weights is not None:
        policy.encoder.load_state_dict(init_weights)  # CLASS EMA weights, its proprio normaliser included
    else:
        policy.encoder.set_proprio_normalizers(run.load_normalizers())
    if rank == 0 and not resume:
        policy.save_scheduler(run)
    policy.to(device)
    policy.encoder.use_channels_last()
    model = policy
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(policy, device_ids=[local_rank] if on_cuda else None)

    vision_lr = cfg.vision_lr if init_weights is not None else cfg.scratch_vision_lr
    optimizer = torch.optim.AdamW(policy.param_groups(cfg.lr, vision_lr), weight_decay=cfg.weight_decay)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    ema = EMAModel(policy.parameters(), power=cfg.ema_power, use_ema_warmup=True)
    ckpt = Checkpointing(run, WEIGHTS, policy, optimizer, scheduler, ema, out, rank)
    start = ckpt.resume(device) if resume else 0

    sampler = WindowSampler(store, obs_horizon=1, pred_horizon=cfg.diffusion.horizon)
    policy.train()

    def one_step(step, rng):
        idx = rng.integers(0, store.n_frames, size=cfg.batch_size)
        batch = read_batch(store, sampler, idx, names, device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and cfg.amp):
            loss = model(batch)
        return loss, float(loss.detach()), {}

    # The lr logged is param group 1: everything but the image backbones (group 0).
    losses, seconds = run_steps(one_step, ckpt, seed=cfg.seed, rank=rank, start=start, steps=steps,
                                stop_after=stop_after, save_every=cfg.save_every, desc="finetune", progress=progress,
                                lr_group=1)
    done = len(losses)
    summary = summarize(out, steps, losses, seconds, world, device, init=cfg.init,
                        steps_per_s=done / seconds if done and seconds > 0 else None)
    return finish(run, "finetune", summary, rank, world)


def _config_dict(cfg: FinetuneConfig) -> dict:
    from class_ros.data.rundir import config_to_dict
    return config_to_dict(cfg)


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset store (from convert / sim-demos)")
    parser.add_argument("--init", required=True,
                        help="CLASS run directory whose EMA encoder starts the policy, or 'none' to train from scratch")
    parser.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    parser.add_argument("--config", default=None,
                        help="YAML config (default: training/configs/finetune_gpu.yaml with CUDA, else finetune_cpu.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its train_state")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")


def run(args: argparse.Namespace) -> int:
    from training.trainer import print_summary

    summary = finetune(args.dataset, args.init, args.out, args.config, resume=args.resume, device=args.device)
    print_summary("finetune", summary, "steps_per_s", "steps/s")
    return 0


if __name__ == "__main__":  # torchrun -m training.finetune ...
    import sys

    from class_ros.cli import entry
    entry(["finetune", *sys.argv[1:]])
