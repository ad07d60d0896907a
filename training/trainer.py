"""What pre-training and fine-tuning share: distributed set-up, normalisers, the run directory, the seeded
step loop, checkpointing and the summary. `training/pretrain.py` and `training/finetune.py` keep only
what differs (the model, the batch and the loss).

    rank, world, local_rank = dist_setup()
    run = open_run(out, "encoder", cfg, store, rank=rank, world=world, resume=False, extra={...},
                   on_create=lambda run: run.save_normalizers(normalizers))
    ckpt = Checkpointing(run, "encoder", module, optimizer, scheduler, ema, out, rank)
    start = ckpt.resume(device) if resume else 0
    losses, seconds = run_steps(one_step, ckpt, seed=cfg.seed, rank=rank, start=start, steps=steps, ...)
    finish(run, "pretrain", summarize(out, steps, losses, seconds, world, device), rank, world)
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from class_ros.errors import ClassRosError


def dist_setup() -> tuple[int, int, int]:
    """(rank, world, local_rank) from torchrun's environment; initialises the process group when world > 1."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def default_device(local_rank: int) -> str:
    """This process's GPU under torchrun, else the CPU."""
    import torch
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def fit_normalizers(store, proprio_keys: list[str]) -> dict:
    """Min-max normalisers of the actions and of each proprio key."""
    from class_ros.data.normalizer import MinMaxNormalizer
    from class_ros.data.schema import ACTION, obs_key

    norms = {ACTION: MinMaxNormalizer.fit(np.asarray(store.array(ACTION)))}
    for name in proprio_keys:
        norms[name] = MinMaxNormalizer.fit(np.asarray(store.array(obs_key(name))))
    return norms


def preload_if_small(store, keys: list[str], limit_bytes: int = 4 << 30) -> None:
    """Hold `keys` in memory when they fit, so sampling never reads the disk."""
    n_bytes = sum(int(np.prod(store.meta.keys[k].shape)) * np.dtype(store.meta.keys[k].dtype).itemsize
                  for k in keys) * store.n_frames
    if n_bytes < limit_bytes:
        store.load(keys)


def open_run(out, kind: str, cfg, store, *, rank: int, world: int, resume: bool, extra: dict,
             lineage: dict | None = None, on_create: Callable | None = None):
    """The run directory: rank 0 creates it (then `on_create(run)`) or opens it to resume; the others wait
    for rank 0, then open it. `lineage`: what the manifest records the run was made from, besides the dataset."""
    import torch.distributed as dist

    from class_ros.data.rundir import RunDir

    run = None
    if rank == 0:
        if resume:
            run = RunDir.open(out, kind, store=store, config=cfg)
            if not run.has_train_state():
                raise ClassRosError(f"{out} has no train_state to resume from; start it without --resume.")
        else:
            run = RunDir.create(out, kind, cfg, store, extra=extra, lineage=lineage)
            if on_create is not None:
                on_create(run)
    if world > 1:
        dist.barrier()
        if rank != 0:
            run = RunDir.open(out, kind)
    return run


def ema_state_dict(module, ema) -> dict:
    """The module's state dict with the EMA shadow parameters in place of the raw ones."""
    sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for (name, _), shadow in zip(module.named_parameters(), ema.shadow_params):
        sd[name] = shadow.detach().clone()
    return sd


class Checkpointing:
    """Resume, TensorBoard scalars and checkpoint saves around a training loop.

    `weights` names the safetensors file in the RunDir; only rank 0 writes.
    """

    def __init__(self, run, weights: str, module, optimizer, scheduler, ema, out, rank: int):
        self.run, self.weights, self.module = run, weights, module
        self.optimizer, self.scheduler, self.ema, self.rank = optimizer, scheduler, ema, rank
        self.writer = None
        if rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(out) / "tb"))
            except ImportError:
                pass  # tensorboard is optional; the summary still has the numbers

    def resume(self, device) -> int:
        """Load the train state (raw weights included); returns the step to continue from."""
        start = self.run.load_train_state(device=device, model=self.module, optimizer=self.optimizer,
                                          scheduler=self.scheduler, ema=self.ema)
        self.ema.to(device)
        return start

    def scalars(self, step: int, **values) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def save(self, step: int, final: bool = False) -> None:
        """Checkpoint `step`: the train state first (resuming needs only it, see rundir.py), then the weights;
        `final` (the last step) marks the run complete."""
        if self.rank == 0:
            self.run.save_train_state(step, model=self.module, optimizer=self.optimizer, scheduler=self.scheduler,
                                      ema=self.ema)
            self.run.save_weights(self.weights, {"ema": ema_state_dict(self.module, self.ema),
                                                 "raw": self.module.state_dict()}, metadata={"step": step})
            if final:
                self.run.finish(step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def run_steps(one_step: Callable, ckpt: Checkpointing, *, seed: int, rank: int, start: int, steps: int,
              stop_after: int | None, save_every: int, desc: str, progress: bool,
              lr_group: int = 0) -> tuple[list[float], float]:
    """Steps start..end of the seeded optimisation loop, checkpointed every `save_every` and at the end.

    `one_step(step, rng) -> (loss to back-propagate, loss value, {scalar name: value})`. Batches and noise
    are seeded from (seed, rank, step), so a resumed run draws what it would have drawn. Returns the
    loss values of this call and its seconds.
    """
    import torch
    from tqdm import tqdm

    optimizer, scheduler, ema, module = ckpt.optimizer, ckpt.scheduler, ckpt.ema, ckpt.module
    end = steps if stop_after is None else min(steps, start + stop_after)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(start, end), desc=desc, disable=not progress or rank != 0, initial=start, total=steps)
    for step in bar:
        rng = np.random.default_rng([seed, rank, step])
        torch.manual_seed(seed * 1_000_003 + rank * 7919 + step)
        loss, value, scalars = one_step(step, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        ema.step(module.parameters())
        losses.append(value)
        ckpt.scalars(step, loss=value, lr=scheduler.get_last_lr()[lr_group], **scalars)
        bar.set_postfix(loss=f"{value:.4f}")
        if (step + 1) % save_every == 0 and step + 1 < end:
            ckpt.save(step + 1)
    seconds = time.perf_counter() - t0
    ckpt.save(end, final=end == steps)
    ckpt.close()
    return losses, seconds


def summarize(out, steps: int, losses: list[float], seconds: float, world: int, device, **extra) -> dict:
    """The summary both steps return: steps, first and last loss (mean of the last tenth), time."""
    done = len(losses)
    tail = losses[-max(1, done // 10):] if losses else []
    return {"run": str(out), "steps": steps, "steps_this_call": done, "world_size": world,
            "loss_first": losses[0] if losses else None, "loss_last": float(np.mean(tail)) if tail else None,
            "seconds": seconds, "device": str(device), **extra}


def finish(run, step_name: str, summary: dict, rank: int, world: int) -> dict:
    """Record the summary in the run's manifest.json (rank 0) and wait for every rank; returns the summary."""
    if rank == 0:
        run.update_meta(**{f"{step_name}_summary": summary})
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    return summary


def print_summary(step_name: str, summary: dict, speed_key: str, unit: str) -> None:
    """Rank 0 prints this call's losses and speed, and where the run is."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if summary["steps_this_call"]:
        print(f"{step_name}: {summary['steps']} steps, loss {summary['loss_first']:.4f} -> "
              f"{summary['loss_last']:.4f}, {summary[speed_key]:.1f} {unit}")
    print(f"{step_name}: wrote run {summary['run']}")
