"""benchmarks/diffusion.py's no-diffusers schedulers reproduce diffusers' DDPM/DDIM, so GPU timings taken
without diffusers time the same arithmetic; and the benchmark's measuring functions return sane rows."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from class_ros.policy import diffusion
from class_ros.policy.diffusion import DiffusionConfig

spec = importlib.util.spec_from_file_location("bench_diffusion", Path(__file__).parents[1] / "benchmarks" / "diffusion.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_fallback_schedule_and_noise_match_diffusers(prediction_type):
    cfg = DiffusionConfig(prediction_type=prediction_type)
    ours, theirs = bench.fallback_make_noise_scheduler(cfg), diffusion.make_noise_scheduler(cfg)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, rtol=0, atol=1e-7)
    x0, noise, t = torch.randn(5, 16, 7), torch.randn(5, 16, 7), torch.tensor([0, 3, 7, 11, 15])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("kind, steps", [("ddpm", 16), ("ddpm", 8), ("ddim", 8), ("ddim", 4), ("ddim", 16)])
def test_fallback_sampling_loop_matches_diffusers(kind, steps, prediction_type):
    cfg = DiffusionConfig(prediction_type=prediction_type)
    samplers = [bench.fallback_make_sampler(bench.fallback_make_noise_scheduler(cfg), kind),
                diffusion.make_sampler(diffusion.make_noise_scheduler(cfg), kind)]
    w = torch.randn(7, 7) * 0.3  # a fixed "model" whose output depends on x and t
    results = []
    for sampler in samplers:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 16, 7, generator=g) * 1.5
        sampler.set_timesteps(steps)
        ts = [int(t) for t in sampler.timesteps]
        for t in sampler.timesteps:
            out = torch.tanh(x @ w) * (1 + int(t) / 16)
            x = sampler.step(out, t, x, generator=g).prev_sample
        results.append((ts, x))
    assert results[0][0] == results[1][0]
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)


def test_benchmark_rows_on_cpu():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        policy = bench.build_policy(full=False, device="cpu")
        row = bench.latency(policy, "ddim", 4, repeats=3, warmup=1)
        speed = bench.train_speed(policy, "cpu", batch=4, steps=1, warmup=0)
    finally:
        torch.set_num_threads(n)
    assert row["sampler"] == "DDIM-4" and 0 < row["p50_ms"] <= row["p99_ms"]
    assert speed["steps_per_s"] > 0 and not policy.training
    assert np.isfinite(row["p99_ms"])
