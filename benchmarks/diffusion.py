"""Diffusion Policy speed: inference latency per action chunk (p50/p99) and training steps/s.

Usage:
    python benchmarks/diffusion.py                  # CPU preset (small encoder, small U-Net)
    python benchmarks/diffusion.py --device cuda    # full-size model (ResNet-18 + U-Net 256/512/1024)
    python benchmarks/diffusion.py --quick          # fewer repeats
    python benchmarks/diffusion.py --threads 1      # CPU threads (1 wins on a busy 2-core machine)

Latency is `DiffusionPolicy.predict_action_chunk` on one 96x96 image + 7 joint positions: encoder
once, then the denoising loop, then unnormalisation, as the policy node runs it. Samplers: DDPM-16
(the peer: docs/method.md's 16 inference steps), DDIM-8 and DDIM-4; the ratio printed is DDPM-16 p50 /
this p50. On CUDA each sampler runs eager, replayed from a CUDA graph, and from a CUDA graph with a
bfloat16 U-Net (what DiffusionPolicy.load does on CUDA). Target (issue 7): under 20 ms per chunk at
16 steps on an H100. Training: `compute_loss` + backward + AdamW
on batches of 64 (bfloat16 autocast on CUDA), the trainer's EMA update excluded.

diffusers is imported when installed. Without it (the bare GPU machine) the noise schedule and the
DDPM/DDIM update are computed by `FallbackDDPM` / `FallbackDDIM` below, which reproduce diffusers'
arithmetic (test/test_diffusion_bench.py checks them against diffusers); the output says which ran.
Results go to benchmarks/results/diffusion[_cuda].json (or --out).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_line, time_steps  # noqa: E402 - after the path set-up
from class_ros.data.outputs import write_json  # noqa: E402 - after the path set-up

SAMPLERS = (("ddpm", 16), ("ddim", 8), ("ddim", 4))


# ------------------------------------------------------------------------------------------ no-diffusers fallback
class FallbackDDPM:
    """diffusers.DDPMScheduler's schedule and step (squaredcos_cap_v2, fixed_small variance, leading spacing)."""

    def __init__(self, num_train_timesteps: int = 16, beta_schedule: str = "squaredcos_cap_v2",
                 clip_sample: bool = True, prediction_type: str = "epsilon", **_ignored):
        import torch

        if beta_schedule != "squaredcos_cap_v2":
            raise ValueError(f"the fallback scheduler only knows squaredcos_cap_v2, not {beta_schedule}")
        self.config = SimpleNamespace(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                      clip_sample=clip_sample, prediction_type=prediction_type)

        def alpha_bar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        T = num_train_timesteps
        betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999) for i in range(T)]
        self.alphas_cumprod = torch.cumprod(1.0 - torch.tensor(betas, dtype=torch.float32), dim=0)
        self.timesteps = torch.arange(T - 1, -1, -1)
        self.num_inference_steps = T

    @classmethod
    def from_config(cls, config) -> "FallbackDDPM":
        return cls(**vars(config))

    def add_noise(self, x0, noise, t):
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def to_json_string(self) -> str:
        return json.dumps(vars(self.config))

    def set_timesteps(self, n: int, device=None) -> None:
        import torch

        ratio = self.config.num_train_timesteps // n
        self.num_inference_steps = n
        self.timesteps = torch.arange(n - 1, -1, -1, device=device) * ratio

    def _alphas(self, t: int):
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.alphas_cumprod.new_tensor(1.0)
        return a_t, a_prev

    def _clean(self, out, x, a_t):
        """(predicted clean chunk, predicted noise) from the model output."""
        if self.config.prediction_type == "epsilon":
            x0, eps = (x - (1 - a_t).sqrt() * out) / a_t.sqrt(), out
        else:
            x0 = out
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return (x0.clamp(-1, 1) if self.config.clip_sample else x0), eps

    def step(self, out, t, x, generator=None):
        import torch

        t = int(t)
        a_t, a_prev = self._alphas(t)
        alpha, beta = a_t / a_prev, 1 - a_t / a_prev  # this step's alpha_t and beta_t
        x0, _ = self._clean(out, x, a_t)
        mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0 + (alpha.sqrt() * (1 - a_prev) / (1 - a_t)) * x
        if t > 0:
            var = ((1 - a_prev) / (1 - a_t) * beta).clamp(min=1e-20)
            noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            mean = mean + var.sqrt() * noise
        return SimpleNamespace(prev_sample=mean)


class FallbackDDIM(FallbackDDPM):
    """diffusers.DDIMScheduler's deterministic step (eta 0, set_alpha_to_one) on the same schedule."""

    def step(self, out, t, x, generator=None):
        a_t, a_prev = self._alphas(int(t))
        x0, eps = self._clean(out, x, a_t)
        return SimpleNamespace(prev_sample=a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps)


def fallback_make_noise_scheduler(cfg) -> FallbackDDPM:
    """Stands in for class_ros.policy.diffusion.make_noise_scheduler."""
    return FallbackDDPM(cfg.num_train_timesteps, cfg.beta_schedule, cfg.clip_sample, cfg.prediction_type)


def fallback_make_sampler(noise_scheduler, kind: str) -> FallbackDDPM:
    """Stands in for class_ros.policy.diffusion.make_sampler."""
    return (FallbackDDPM if kind == "ddpm" else FallbackDDIM).from_config(noise_scheduler.config)


def use_fallback_schedulers() -> None:
    """Make class_ros.policy.diffusion build the fallback schedulers instead of diffusers' ones."""
    from class_ros.policy import diffusion

    diffusion.make_noise_scheduler = fallback_make_noise_scheduler
    diffusion.make_sampler = fallback_make_sampler


# ------------------------------------------------------------------------------------------ measuring
def build_policy(full: bool, device: str):
    """A randomly initialised policy of the CPU preset or the full (docs/method.md) size, 7 action dims."""
    import numpy as np
    import torch

    from class_ros.data.normalizer import MinMaxNormalizer
    from class_ros.encoder.config import EncoderConfig
    from class_ros.policy.diffusion import DiffusionConfig, DiffusionPolicy
    from class_ros.policy.unet import UNetConfig

    torch.manual_seed(0)
    enc = EncoderConfig(backbone="resnet18" if full else "small", image_keys=["agentview"],
                        proprio_keys=["joint_pos"], proprio_dims=[7], image_size=[96, 96], crop_size=84)
    cfg = DiffusionConfig(unet=UNetConfig() if full else UNetConfig.cpu())
    norm = MinMaxNormalizer(np.full(7, -1.5), np.full(7, 1.5))
    info = {"action_names": [f"j{i}" for i in range(7)], "action_kind": "joint_position", "control_rate_hz": 10.0}
    policy = DiffusionPolicy(enc, cfg, norm, info).to(device).eval()
    if device.startswith("cuda"):
        policy.encoder.to(memory_format=torch.channels_last)  # as training/finetune.py does on GPUs
    return policy


def latency(policy, kind: str, steps: int, repeats: int, warmup: int = 3) -> dict:
    """p50/p99 milliseconds of predict_action_chunk with one sampler."""
    import numpy as np

    rng = np.random.default_rng(0)
    obs = {"agentview": rng.integers(0, 256, (96, 96, 3), dtype=np.uint8),
           "joint_pos": rng.uniform(-1, 1, 7).astype(np.float32)}
    policy.set_sampler(kind, steps)
    policy.reset()
    for _ in range(warmup):
        policy.predict_action_chunk(obs)
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict_action_chunk(obs)  # ends with a copy to the host, so CUDA work is finished
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"sampler": f"{kind.upper()}-{steps}", "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "repeats": repeats}


def train_speed(policy, device: str, batch: int, steps: int, warmup: int = 2) -> dict:
    """Training steps/s: compute_loss + backward + AdamW (vision and rest groups)."""
    import torch

    from class_ros.data.schema import ACTION

    on_cuda = device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    data = {"agentview": torch.randint(0, 256, (batch, 96, 96, 3), dtype=torch.uint8, generator=g),
            "joint_pos": torch.rand(batch, 7, generator=g) * 2 - 1,
            ACTION: torch.rand(batch, policy.config.horizon, 7, generator=g) * 2 - 1}
    data = {k: v.to(device) for k, v in data.items()}
    opt = torch.optim.AdamW(policy.param_groups(1e-4, 1e-5), weight_decay=1e-6)
    policy.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            loss = policy.compute_loss(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds, _ = time_steps(step, steps, warmup, on_cuda)
    policy.eval()
    return {"batch": batch, "steps": steps, "amp": on_cuda, "steps_per_s": steps / seconds}


def run_model(name: str, full: bool, device: str, repeats: int, train_steps: int, graphs: bool) -> dict:
    """Latency of every sampler (eager, and CUDA-graphed on CUDA) and training speed of one model size."""
    policy = build_policy(full, device)
    n_params = sum(p.numel() for p in policy.unet.parameters())
    print(f"{name}: U-Net {n_params / 1e6:.1f}M parameters, encoder {policy.encoder.config.backbone}, device {device}")
    import torch

    rows = []
    modes = [("eager", False, torch.float32)]
    if graphs:
        modes += [("cuda graph", True, torch.float32), ("graph bf16", True, torch.bfloat16)]
    for label, graphed, dtype in modes:
        policy.set_inference_dtype(dtype)
        policy.use_cuda_graph(graphed)
        peer = None
        for kind, steps in SAMPLERS:
            r = latency(policy, kind, steps, repeats)
            peer = peer or r["p50_ms"]
            r.update(model=name, mode=label, speedup_vs_ddpm16=peer / r["p50_ms"])
            rows.append(r)
            print(f"  {label:<11} {r['sampler']:<8} p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms   "
                  f"DDPM-16 p50 / this = {r['speedup_vs_ddpm16']:.2f}x")
    if graphs:  # the graphed U-Net must give the eager result, bfloat16 nearly so: same seed, same chunk
        import numpy as np
        obs = {"agentview": np.zeros((96, 96, 3), np.uint8), "joint_pos": np.zeros(7, np.float32)}
        policy.set_sampler("ddim", 8)
        chunks = {}
        for label, graphed, dtype in modes:
            policy.set_inference_dtype(dtype)
            policy.use_cuda_graph(graphed)
            policy.reset()
            chunks[label] = policy.predict_action_chunk(obs)
        span = float(np.ptp(chunks["eager"]))  # chunk values span this range (robot units)
        for label, check in (("cuda graph", "graph_vs_eager_max_abs"), ("graph bf16", "bf16_vs_eager_max_abs")):
            diff = float(np.abs(chunks[label] - chunks["eager"]).max())
            print(f"  {label} vs eager: max |difference| {diff:.2e} (chunk values span {span:.2f})")
            rows.append({"model": name, "check": check, "value": diff, "span": span})
        policy.set_inference_dtype(torch.float32)
        policy.use_cuda_graph(False)
    training = train_speed(policy, device, 64, train_steps)
    training["model"] = name
    print(f"  training, batch 64{' (bf16 autocast)' if training['amp'] else ''}: {training['steps_per_s']:.2f} steps/s")
    del policy
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"latency": rows, "training": training}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is faster for small models on a busy machine)")
    parser.add_argument("--out", default=None, help="JSON results (default benchmarks/results/diffusion[_cuda].json)")
    args = parser.parse_args(argv)
    print(cpu_line(), flush=True)
    on_cuda = args.device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    if on_cuda and not torch.cuda.is_available():
        print("diffusion benchmark: --device cuda asked for but CUDA is not available; nothing measured.")
        return 1
    try:
        import diffusers
        backend = f"diffusers {diffusers.__version__}"
    except ImportError:
        use_fallback_schedulers()
        backend = "fallback DDPM/DDIM arithmetic (diffusers is not installed)"
    print(f"diffusion benchmark: torch {torch.__version__}, schedulers from {backend}; "
          f"{torch.cuda.get_device_name() if on_cuda else f'CPU, {torch.get_num_threads()} threads'}")

    results = {"machine": platform.node(), "torch": torch.__version__, "schedulers": backend,
               "device": torch.cuda.get_device_name() if on_cuda else "cpu", "models": {}}
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        repeats, train_steps = (30, 10) if args.quick else (100, 20)
        results["models"]["cpu_preset"] = run_model("CPU preset", False, args.device, repeats, train_steps, True)
        try:
            results["models"]["full"] = run_model("full size", True, args.device, repeats, train_steps, True)
        except ImportError as err:  # ResNet-18 comes from torchvision
            print(f"full size: not measured, {err}")
        full = [r for r in results["models"].get("full", {}).get("latency", [])
                if r.get("sampler") == "DDPM-16" and r.get("mode") == "graph bf16"]
        if full:  # what DiffusionPolicy.load gives on CUDA
            p50 = full[0]["p50_ms"]
            print(f"full size DDPM-16 as loaded on CUDA (graph, bf16 U-Net) p50 {p50:.2f} ms: "
                  f"{'meets' if p50 < 20 else 'MISSES'} the < 20 ms target")
            results["target_20ms_met"] = p50 < 20
    else:
        repeats, train_steps = (10, 3) if args.quick else (40, 10)
        results["models"]["cpu_preset"] = run_model("CPU preset", False, "cpu", repeats, train_steps, False)
    out = Path(args.out or REPO / "benchmarks" / "results" / f"diffusion{'_cuda' if on_cuda else ''}.json")
    write_json(out, results)
    print(f"diffusion benchmark: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
