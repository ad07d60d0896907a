"""Diffusion Policy (docs/method.md section 4): an observation encoder conditions a 1D U-Net that denoises an
action chunk, trained with diffusers' DDPM noise schedule and sampled with DDPM or DDIM.

A diffusion run directory (class_ros.data.rundir.RunDir, kind "diffusion") holds:
    config.yaml          the fine-tuning config: `encoder:` (EncoderConfig), `diffusion:` (DiffusionConfig), training
    normalizer.json      action and proprio min-max normalisers
    policy.safetensors   "ema/..." and "raw/..." weights of the whole policy (encoder + U-Net)
    scheduler.json       the diffusers noise-scheduler config the policy was trained with

Usage:
    policy = DiffusionPolicy.load("runs/dp", device="cpu")            # or class_ros.policy.load_policy
    policy.reset()
    chunk = policy.predict_action_chunk({"agentview": img, "joint_pos": q})   # (H, D) np.float32
    policy.set_sampler("ddim", 4)                                      # fewer denoising steps
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from class_ros.config import DictConfig
from class_ros.encoder.config import EncoderConfig
from class_ros.encoder.model import ObservationEncoder
from class_ros.data.schema import ACTION
from class_ros.errors import ClassRosError
from class_ros.policy.unet import ConditionalUnet1D, UNetConfig

WEIGHTS = "policy"  # policy.safetensors
SCHEDULER_FILE = "scheduler.json"
SAMPLERS = ("ddpm", "ddim")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclass
class DiffusionConfig(DictConfig):
    """The denoiser and its noise schedule; defaults are docs/method.md's (16-step chunks, 16 DDPM steps)."""

    config_name = "diffusion"

    horizon: int = 16  # action chunk length H predicted per observation
    n_action_steps: int = 8  # steps of each chunk executed before the next prediction
    num_train_timesteps: int = 16
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # the U-Net predicts the noise ("sample": the clean chunk)
    clip_sample: bool = True  # clip the predicted clean chunk to the normalised range [-1, 1]
    sampler: str = "ddpm"  # inference: "ddpm" or "ddim"
    num_inference_steps: int = 16  # DDIM may use fewer than num_train_timesteps
    unet: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self):
        if isinstance(self.unet, dict):
            self.unet = UNetConfig.from_dict(self.unet)
        if self.horizon < 1 or not 1 <= self.n_action_steps <= self.horizon:
            raise ClassRosError(f"diffusion needs horizon >= 1 and 1 <= n_action_steps <= horizon; got horizon="
                                f"{self.horizon}, n_action_steps={self.n_action_steps}.")
        if self.horizon % self.unet.horizon_multiple:
            raise ClassRosError(f"diffusion horizon {self.horizon} must be a multiple of "
                                f"{self.unet.horizon_multiple} for a U-Net with {len(self.unet.down_dims)} levels; "
                                "change horizon or unet.down_dims.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ClassRosError(f"prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}.")
        check_sampler(self.sampler, self.num_inference_steps, self.num_train_timesteps)



def check_sampler(sampler: str, steps: int, train_steps: int) -> None:
    """Refuse an unknown sampler or a step count outside 1..train_steps."""
    if sampler not in SAMPLERS:
        raise ClassRosError(f"sampler {sampler!r} is not one of {SAMPLERS}.")
    if train_steps < 1 or not 1 <= steps <= train_steps:
        raise ClassRosError(f"num_inference_steps must be between 1 and num_train_timesteps ({train_steps}), "
                            f"got {steps}.")


def make_noise_scheduler(cfg: DiffusionConfig):
    """The diffusers DDPMScheduler that adds training noise (and defines the schedule samplers follow)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         clip_sample=cfg.clip_sample, prediction_type=cfg.prediction_type)


def make_sampler(noise_scheduler, kind: str):
    """A DDPM or DDIM scheduler sharing the training scheduler's noise schedule."""
    from diffusers import DDIMScheduler, DDPMScheduler

    return (DDPMScheduler if kind == "ddpm" else DDIMScheduler).from_config(noise_scheduler.config)


class DiffusionPolicy(nn.Module):
    """Observation encoder + conditional U-Net; `forward(batch)` is the training loss (so DDP can wrap it)."""

    def __init__(self, encoder_config: EncoderConfig, config: DiffusionConfig, action_normalizer,
                 info: dict, noise_scheduler=None):
        super().__init__()
        self.config = config
        self.encoder = ObservationEncoder(encoder_config)
        action_dim = action_normalizer.dim
        self.unet = ConditionalUnet1D(action_dim, self.encoder.out_dim, config.unet)
        self.action_normalizer = action_normalizer
        self.noise_scheduler = noise_scheduler or make_noise_scheduler(config)
        self.action_names = list(info.get("action_names") or [f"a{i}" for i in range(action_dim)])
        self.action_kind = info.get("action_kind", "other")
        self.joint_names = list(info.get("joint_names") or [])
        self.control_rate_hz = float(info.get("control_rate_hz", 10.0))
        self.n_action_steps = config.n_action_steps
        self.seed = 0
        self._graphs: dict | None = None  # CUDA graphs of the U-Net per input shape, when enabled
        self.inference_dtype = torch.float32  # the U-Net's weights; see set_inference_dtype
        self.set_sampler(config.sampler, config.num_inference_steps)
        self.reset()

    # ---------------------------------------------------------------- inference
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_sampler(self, kind: str, num_inference_steps: int) -> None:
        """Sample with "ddpm" or "ddim" in this many denoising steps."""
        check_sampler(kind, num_inference_steps, self.noise_scheduler.config.num_train_timesteps)
        self.sampler = make_sampler(self.noise_scheduler, kind)
        self.sampler_kind, self.num_inference_steps = kind, int(num_inference_steps)

    def reset(self) -> None:
        """Start a new episode: the sampling noise restarts from the policy's seed (reproducible rollouts)."""
        self._generator = self.new_episode_state()

    def new_episode_state(self) -> torch.Generator:
        """What one episode's sampling depends on besides its observations: a fresh noise generator."""
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def use_cuda_graph(self, enabled: bool = True) -> None:
        """On CUDA, replay the whole inference (encoder, every U-Net call and scheduler step) from one
        captured CUDA graph per input shape and sampler: one launch instead of hundreds.

        The initial noise still comes from the policy's generator (so DDIM gives the same chunks as
        eager sampling); DDPM's per-step noise inside the graph comes from torch's default CUDA
        generator. A graph holds the weights' addresses: re-enable after moving the policy.
        """
        self._graphs = {} if enabled else None

    def set_inference_dtype(self, dtype: torch.dtype) -> None:
        """Keep the U-Net's weights in `dtype` (float32 or bfloat16) for sampling; the encoder and the
        scheduler arithmetic stay float32.

        bfloat16 halves the weight bytes each denoising step reads: with the CUDA graph, full-size DDPM-16
        goes from 21.7 to 16.9 ms per chunk on an H200. Chunks move by a few hundredths of a robot unit on
        trained policies (test_diffusion), up to 0.12 on a random-weight full-size one whose chunks span 3
        (benchmarks/diffusion.py prints it). A bfloat16 policy samples but does not train.
        """
        if dtype not in (torch.float32, torch.bfloat16):
            raise ClassRosError(f"inference dtype must be torch.float32 or torch.bfloat16, not {dtype}.")
        self.unet.to(dtype)
        self.inference_dtype = dtype
        if self._graphs is not None:
            self._graphs = {}  # captured graphs read the old weights

    def _graphed_inference(self, batch: dict[str, torch.Tensor]):
        """The captured graph for this batch's shapes and the current sampler, or None to run eagerly."""
        if self._graphs is None or self.device.type != "cuda":
            return None
        key = (tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(batch.items())), self.sampler_kind,
               self.num_inference_steps)
        if key not in self._graphs:
            try:
                self._graphs[key] = _GraphedInference(self, batch)
            except RuntimeError as err:  # a driver, build or scheduler that cannot be captured: run eagerly
                warnings.warn(f"CUDA graph capture failed ({str(err).splitlines()[0]}); the diffusion policy "
                              "samples eagerly.")
                self._graphs = None
                return None
        return self._graphs[key]

    def _initial_noise(self, cond: torch.Tensor, generator) -> torch.Tensor:
        """(B, H, D) Gaussian noise the denoising starts from; `generator` may be a list of one per row."""
        B = cond.shape[0]  # batch
        shape = (self.config.horizon, self.action_normalizer.dim)
        if isinstance(generator, list):  # each row from its own episode's generator, as if sampled alone
            return torch.cat([torch.randn((1, *shape), generator=g, device=cond.device, dtype=cond.dtype)
                              for g in generator])
        return torch.randn((B, *shape), generator=generator, device=cond.device, dtype=cond.dtype)

    def _denoise_loop(self, x: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None,
                      timesteps: list[int], t_tensors: list[torch.Tensor]) -> torch.Tensor:
        """From noise x (B, H, D): one U-Net call and one scheduler step per timestep -> normalised chunks."""
        dt = self.inference_dtype
        for t, t_dev in zip(timesteps, t_tensors):
            eps = self.unet(x.to(dt), t_dev, cond.to(dt)).float()
            x = self.sampler.step(eps, t, x, generator=generator).prev_sample
        return x

    def _timesteps(self, device: torch.device) -> tuple[list[int], list[torch.Tensor]]:
        """The sampler's timesteps as host ints (the scheduler looks them up each step, which must not
        sync the device) and as scalar tensors on `device` for the U-Net."""
        self.sampler.set_timesteps(self.num_inference_steps, device="cpu")
        timesteps = [int(t) for t in self.sampler.timesteps]
        return timesteps, [torch.tensor(t, device=device) for t in timesteps]

    @torch.no_grad()
    def sample_normalized(self, cond: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, F) observation features -> (B, H, D) action chunks in the normalised [-1, 1] space
        (`generator`: one torch.Generator, a list of one per row, or None)."""
        timesteps, t_tensors = self._timesteps(cond.device)
        return self._denoise_loop(self._initial_noise(cond, generator), cond, generator, timesteps, t_tensors)

    @torch.no_grad()
    def predict_action_chunk(self, obs: dict) -> np.ndarray:
        """One observation {camera: (H, W, 3) uint8, proprio: (d,)} -> (H, D) unnormalised np.float32 chunk."""
        if self._generator.device != self.device:  # moved with .to() since the last reset
            self.reset()
        return self.predict_action_chunks([obs], [self._generator])[0]

    @torch.no_grad()
    def predict_action_chunks(self, observations: list[dict], generators: list[torch.Generator]) -> np.ndarray:
        """B observations (one per episode, each with its episode's generator from new_episode_state) ->
        (B, H, D) unnormalised np.float32 chunks, in one forward pass.

        Each row draws its noise from its own generator, so a chunk depends on its episode alone; batched
        float arithmetic still rounds differently from B=1 (about 1e-6 on CPUs).
        """
        assert len(observations) == len(generators) >= 1
        was_training = self.training
        self.eval()
        try:
            singles = [self._to_batch(obs) for obs in observations]
            batch = {k: torch.cat([b[k] for b in singles]) for k in singles[0]}
            graphed = self._graphed_inference(batch)
            if graphed is not None:
                chunks = graphed(batch, generators)  # (B, H, D)
            else:
                cond = self.encoder(batch)  # (B, F)
                gen = generators[0] if len(generators) == 1 else list(generators)
                chunks = self.sample_normalized(cond, gen)  # (B, H, D)
        finally:
            self.train(was_training)
        out = self.action_normalizer.unnormalize(chunks.double().cpu().numpy())
        return np.asarray(out, dtype=np.float32)

    def _to_batch(self, obs: dict) -> dict[str, torch.Tensor]:
        """Observation dict without batch axis -> tensors with a batch axis of 1 on the policy's device."""
        cfg = self.encoder.config
        batch = {}
        for cam in cfg.image_keys:
            if cam not in obs:
                raise ClassRosError(f"the observation has no camera {cam!r}; it has {sorted(obs)}.")
            img = np.asarray(obs[cam])
            if img.dtype != np.uint8 or img.ndim != 3:
                raise ClassRosError(f"camera {cam!r} must be an (H, W, 3) uint8 image, got {img.dtype} {img.shape}.")
            batch[cam] = torch.from_numpy(np.ascontiguousarray(img))[None].to(self.device)
        for name, dim in zip(cfg.proprio_keys, cfg.proprio_dims):
            if name not in obs:
                raise ClassRosError(f"the observation has no {name!r}; it has {sorted(obs)}.")
            q = np.asarray(obs[name], dtype=np.float32).reshape(-1)
            if q.shape != (dim,) or not np.isfinite(q).all():
                raise ClassRosError(f"observation {name!r} must be {dim} finite numbers, got {q.shape} {q}.")
            batch[name] = torch.from_numpy(q)[None].to(self.device)
        return batch

    # ---------------------------------------------------------------- training
    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Denoising MSE of a batch {camera: (B, H, W, 3) uint8, proprio: (B, d), "action": (B, H, D) robot units}."""
        actions = batch[ACTION]
        B, H, D = actions.shape  # batch, chunk length, action dims
        if self.inference_dtype != torch.float32:
            raise ClassRosError(f"this policy's U-Net was cast to {self.inference_dtype} for sampling and cannot "
                                "train; load the run again (DiffusionPolicy.from_run_config) to fine-tune it.")
        if H != self.config.horizon:
            raise ClassRosError(f"training chunks have {H} steps but the policy predicts {self.config.horizon}.")
        x0 = self.action_normalizer.normalize(actions.float())  # (B, H, D) in [-1, 1]
        cond = self.encoder(batch)  # (B, F)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (B,), device=x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        pred = self.unet(noisy, t, cond)
        target = noise if self.config.prediction_type == "epsilon" else x0
        return F.mse_loss(pred.float(), target)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.compute_loss(batch)

    def param_groups(self, lr: float, vision_lr: float) -> list[dict]:
        """Optimizer groups: the image backbones at `vision_lr`, everything else at `lr`."""
        vision = list(self.encoder.backbones.parameters())
        ids = {id(p) for p in vision}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": vision, "lr": vision_lr, "name": "vision"}, {"params": rest, "lr": lr, "name": "rest"}]

    # ---------------------------------------------------------------- run directory
    @classmethod
    def from_run_config(cls, run, config: dict | None = None) -> "DiffusionPolicy":
        """An untrained policy shaped as a diffusion run's config, normalisers and scheduler say."""
        from diffusers import DDPMScheduler

        cfg = config if config is not None else run.load_config()
        if "encoder" not in cfg or "diffusion" not in cfg:
            raise ClassRosError(f"{run.path} config.yaml has no encoder/diffusion sections; is it a diffusion run?")
        norms = run.load_normalizers()
        if ACTION not in norms:
            raise ClassRosError(f"{run.path} has no action normaliser; the run is damaged.")
        scheduler = None
        if (run.path / SCHEDULER_FILE).is_file():
            scheduler = DDPMScheduler.from_config(json.loads(run.read_checked(run.path / SCHEDULER_FILE)))
        return cls(EncoderConfig.from_dict(cfg["encoder"]), DiffusionConfig.from_dict(cfg["diffusion"]),
                   norms[ACTION], run.meta, scheduler)

    def save_scheduler(self, run) -> None:
        """Write scheduler.json (the diffusers config of the training noise schedule) into the run."""
        from class_ros.data import outputs

        path = run.path / SCHEDULER_FILE
        outputs.write_text(path, self.noise_scheduler.to_json_string())
        run.record_file(path)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str = "cpu",
             inference_dtype: torch.dtype | None = None, allow_partial: bool = False) -> "DiffusionPolicy":
        """The trained policy (EMA weights) of a diffusion run, ready for predict_action_chunk.

        On CUDA it samples from a CUDA graph with a bfloat16 U-Net (inference_dtype=None picks bfloat16
        there, float32 on CPUs): full size DDPM-16 in under 20 ms per chunk (benchmarks/diffusion.py).
        """
        from class_ros.data.rundir import RunDir

        run = RunDir.open(run_dir, kind="diffusion")
        run.check_finished(allow_partial)
        if not run.has_weights(WEIGHTS):
            raise ClassRosError(f"{run_dir} has no {WEIGHTS}.safetensors yet; train it with `class-ros finetune`.")
        policy = cls.from_run_config(run)
        groups = run.load_weights(WEIGHTS)
        try:
            policy.load_state_dict(groups["ema"])
        except (KeyError, RuntimeError) as err:
            raise ClassRosError(f"{run_dir} weights do not fit its config ({str(err).splitlines()[0]}); "
                                "the run is damaged or from another version.") from err
        policy.to(device).eval()
        on_cuda = policy.device.type == "cuda"
        policy.set_inference_dtype(inference_dtype or (torch.bfloat16 if on_cuda else torch.float32))
        policy.use_cuda_graph(on_cuda)  # one launch per chunk instead of hundreds
        policy.reset()
        return policy


class _GraphedInference:
    """policy.encoder + the denoising loop captured once as a CUDA graph on static input buffers."""

    def __init__(self, policy: DiffusionPolicy, batch: dict[str, torch.Tensor]):
        self.inputs = {k: v.clone() for k, v in batch.items()}
        # t_tensors kept as an attribute: the graph reads their memory at every replay, so they must outlive it.
        timesteps, self.t_tensors = policy._timesteps(policy.device)  # made before capture
        with torch.no_grad():
            self.noise = policy._initial_noise(policy.encoder(self.inputs), None)

        def run() -> torch.Tensor:
            return policy._denoise_loop(self.noise, policy.encoder(self.inputs), None, timesteps, self.t_tensors)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():  # warm-up picks the kernels before capture
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the process (e.g. ROS callbacks) may use CUDA during the capture
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), torch.no_grad():
            self.out = run()

    def __call__(self, batch: dict[str, torch.Tensor], generator) -> torch.Tensor:
        """Replay on `batch`; the initial noise from `generator` (or a list of one per row)."""
        for k, v in batch.items():
            self.inputs[k].copy_(v)
        gens = generator if isinstance(generator, list) else [generator]
        self.noise.copy_(torch.cat([torch.randn((1, *self.noise.shape[1:]), generator=g, device=self.noise.device,
                                                dtype=self.noise.dtype) for g in gens]))
        self.graph.replay()
        return self.out.clone()  # the graph overwrites its output buffer on the next replay
