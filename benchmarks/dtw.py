"""DTW engine speed: pairwise throughput against dtaidistance and aeon, dtw_positives time and memory.

Usage:
    python benchmarks/dtw.py                       # N = 2000 pairwise; positives at N = 10k, 20k, 50k
    python benchmarks/dtw.py --quick               # smaller sizes, for a smoke run
    python benchmarks/dtw.py --device cuda --n 200000   # GPU: positives at N = 200k (torch + numba only)

Targets (issue 3): pairwise_dtw at N = 2000, T = 16, D = 10 at least 10x dtaidistance's parallel
distance_matrix_fast on 2 cores; dtw_positives at N = 50k, quantile 0.025 under 5 minutes and 2 GB
peak RSS; on one H100, N = 200k under 60 s.

Data: action chunks cut like `normalized_chunks` does from synthetic demonstrations (smooth random
trajectories of 200 steps in D dims, min-max normalised to [-1, 1]), because pruning depends on the
data and demonstrations are smooth. `--data walk` uses independent random walks instead, where the
corner bound prunes almost nothing (a worst case for the positives search).
Each positives size runs in its own subprocess so its peak RSS (getrusage ru_maxrss) is its own.
Results are printed and written to JSON (default benchmarks/results/dtw.json).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_line  # noqa: E402 - after the path set-up
from class_ros.data.outputs import write_json  # noqa: E402 - after the path set-up


def demo_chunks(n: int, T: int = 16, D: int = 10, seed: int = 0, episode_len: int = 200) -> np.ndarray:
    """(n, T, D) float32 chunks of smooth synthetic demonstrations, normalised to [-1, 1] per dim."""
    rng = np.random.default_rng(seed)
    episodes = -(-n // episode_len)
    t = np.linspace(0, 1, episode_len)[None, :, None, None]
    amp = rng.uniform(0.2, 1.0, (episodes, 1, D, 3))
    freq = rng.uniform(0.3, 2.0, (episodes, 1, D, 3))
    phase = rng.uniform(0, 2 * np.pi, (episodes, 1, D, 3))
    traj = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(-1)  # (E, L, D)
    traj += rng.normal(0, 0.01, traj.shape)
    idx = np.minimum(np.arange(episode_len)[:, None] + np.arange(T)[None, :], episode_len - 1)  # (L, T)
    chunks = traj[:, idx].reshape(-1, T, D)[:n]
    lo, hi = chunks.min((0, 1)), chunks.max((0, 1))
    return ((chunks - lo) / (hi - lo) * 2 - 1).astype(np.float32)


def walk_chunks(n: int, T: int = 16, D: int = 10, seed: int = 0) -> np.ndarray:
    """(n, T, D) independent random walks scaled to [-1, 1]."""
    x = np.cumsum(np.random.default_rng(seed).normal(size=(n, T, D)), axis=1)
    return (x / np.abs(x).max()).astype(np.float32)


def make_data(kind: str, n: int, seed: int = 0) -> np.ndarray:
    return demo_chunks(n, seed=seed) if kind == "demo" else walk_chunks(n, seed=seed)


def best_of(fn, repeats: int = 3) -> tuple[float, float]:
    """Best wall time and best process CPU time (all threads) over `repeats` calls.

    CPU time is the contention-robust figure on a shared machine: pairs per CPU-second does not
    drop when other processes take the cores, wall-clock pairs/s does.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def bench_pairwise(n: int, data: str, repeats: int) -> dict:
    """pairs/s of ours, dtaidistance (parallel C) and aeon on the same (n, 16, 10) chunks."""
    from aeon.distances import dtw_pairwise_distance
    from dtaidistance import dtw_ndim

    from class_ros.similarity.dtw import pairwise_dtw
    x = make_data(data, n)
    pairs = n * (n - 1) // 2
    x64 = x.astype(np.float64)
    ours = pairwise_dtw(x[:64])  # compile / load the numba cache before timing
    results, per_cpu = {}, {}
    runs = {"ours": lambda: pairwise_dtw(x),
            "dtaidistance": lambda: dtw_ndim.distance_matrix_fast(x64, parallel=True),
            "aeon": lambda: dtw_pairwise_distance(x64.transpose(0, 2, 1))}
    for name, fn in runs.items():
        wall, cpu = best_of(fn, repeats if name != "aeon" else 1)
        results[name], per_cpu[name] = pairs / wall, pairs / cpu
    ours = pairwise_dtw(x)
    dtai = dtw_ndim.distance_matrix_fast(x64, parallel=True)
    aeon = dtw_pairwise_distance(x64.transpose(0, 2, 1))
    iu = np.triu_indices(n, 1)
    agree = {
        "max_rel_diff_vs_aeon": float(np.max(np.abs(ours[iu] - aeon[iu]) / np.maximum(aeon[iu], 1e-12))),
        "max_rel_diff_vs_dtaidistance_squared": float(
            np.max(np.abs(ours[iu] - dtai[iu] ** 2) / np.maximum(dtai[iu] ** 2, 1e-12))),
    }
    return {"n": n, "T": 16, "D": 10, "pairs": pairs, "pairs_per_s": results, "pairs_per_cpu_s": per_cpu,
            "ratio_vs_dtaidistance": results["ours"] / results["dtaidistance"],
            "ratio_vs_aeon": results["ours"] / results["aeon"],
            "cpu_ratio_vs_dtaidistance": per_cpu["ours"] / per_cpu["dtaidistance"],
            "cpu_ratio_vs_aeon": per_cpu["ours"] / per_cpu["aeon"], **agree}


def positives_child(n: int, quantile: float, device: str, data: str) -> dict:
    """Runs inside a fresh process: dtw_positives on n chunks; wall time and this process's peak RSS."""
    from class_ros.similarity.positives import dtw_positives
    x = make_data(data, n)
    dtw_positives(x[:300], quantile, device=device, sample_pairs=2000)  # JIT / kernel warm-up (sampling too), not timed
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    pos = dtw_positives(x, quantile, device=device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, n, 160) for _ in range(200)]
    pos.batch_weights(batches[0])
    t1 = time.perf_counter()
    for idx in batches:
        pos.batch_weights(idx)
    batch_us = (time.perf_counter() - t1) / len(batches) * 1e6
    return {"n": n, "quantile": quantile, "device": device, "data": data, "seconds": wall, "cpu_seconds": cpu,
            "pairs_per_s": n * (n - 1) / 2 / wall, "peak_rss_mb": peak, "rss_before_mb": rss_before,
            "positive_pairs": pos.n_pairs, "threshold": pos.threshold, "passes": pos.passes,
            "batch_weights_us_b160": batch_us}


def bench_positives(n: int, quantile: float, device: str, data: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--quantile", str(quantile), "--device", device,
           "--data", data]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    if done.returncode != 0:
        return {"n": n, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (pairwise N=1000, positives 5k, 10k)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU positives run only")
    ap.add_argument("--n", type=int, nargs="+", help="positives sizes (default 10000 20000 50000; cuda 200000)")
    ap.add_argument("--pairwise-n", type=int, default=2000)
    ap.add_argument("--quantile", type=float, default=0.025)
    ap.add_argument("--data", choices=("demo", "walk"), default="demo")
    ap.add_argument("--out", default=None, help="JSON results (default benchmarks/results/dtw[_cuda].json)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(positives_child(args.child, args.quantile, args.device, args.data)))
        return 0
    print(cpu_line(), flush=True)
    cuda = args.device.startswith("cuda")
    sizes = args.n or ([200_000] if cuda else [5_000, 10_000] if args.quick else [10_000, 20_000, 50_000])
    out = Path(args.out or REPO / "benchmarks" / "results" / ("dtw_cuda.json" if cuda else "dtw.json"))
    report = {"machine": f"{os.cpu_count()} CPUs", "device": args.device, "data": args.data}
    if cuda:
        import torch

        from class_ros.similarity.dtw import pairwise_dtw
        from class_ros.similarity.dtw_torch import use_triton
        report["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        report["gpu_kernel"] = "triton" if use_triton(args.device) else "torch wavefront"
        n = args.pairwise_n * 5
        x = make_data(args.data, n)
        pairwise_dtw(x[:256], device=args.device)  # compile
        torch.cuda.synchronize()
        wall, _ = best_of(lambda: pairwise_dtw(x, device=args.device), 2)
        report["gpu_pairwise"] = {"n": n, "pairs_per_s": n * n / wall}  # the full N x N is computed
        print(f"GPU pairwise ({report['gpu']}, {report['gpu_kernel']}): N = {n}, {n * n / wall / 1e6:.1f} M pairs/s "
              "(incl. the N x N copy to the host)", flush=True)
    else:
        n = 1000 if args.quick else args.pairwise_n
        print(f"pairwise DTW, N = {n}, T = 16, D = 10 (float32 ours, float64 peers), both cores:", flush=True)
        pw = bench_pairwise(n, args.data, repeats=1 if args.quick else 3)
        report["pairwise"] = pw
        for name, rate in pw["pairs_per_s"].items():
            cpu = pw["pairs_per_cpu_s"][name]
            print(f"  {name:<14} {rate / 1e6:8.3f} M pairs/s (wall)  ours / {name}: {pw['pairs_per_s']['ours'] / rate:5.1f}x"
                  f"   |  {cpu / 1e6:7.3f} M pairs/CPU-s  ours / {name}: {pw['pairs_per_cpu_s']['ours'] / cpu:5.1f}x")
        print(f"  agreement: max rel diff vs aeon {pw['max_rel_diff_vs_aeon']:.2e}, "
              f"vs dtaidistance^2 {pw['max_rel_diff_vs_dtaidistance_squared']:.2e}")
    print(f"dtw_positives, quantile {args.quantile}, T = 16, D = 10, {args.data} data, device {args.device}:", flush=True)
    report["positives"] = []
    for n in sizes:
        r = bench_positives(n, args.quantile, args.device, args.data)
        report["positives"].append(r)
        if "error" in r:
            print(f"  N = {n:>7}: FAILED: {r['error']}")
        else:
            print(f"  N = {n:>7}: {r['seconds']:8.1f} s wall, {r['cpu_seconds']:8.1f} CPU-s  ({r['pairs_per_s'] / 1e6:6.2f} M pairs/s)  peak RSS "
                  f"{r['peak_rss_mb']:7.0f} MB  ({r['positive_pairs']} pairs, threshold {r['threshold']:.4g}, "
                  f"{r['passes']} pass{'es' if r['passes'] > 1 else ''}); batch_weights(B=160) "
                  f"{r['batch_weights_us_b160']:.0f} us", flush=True)
    write_json(out, report, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
