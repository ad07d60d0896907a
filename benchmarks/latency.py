"""Latency of the ROS graph: camera frame stamp -> command publication, and image decode + preprocess.

Usage:
    python benchmarks/latency.py [--run-dir RUN] [--frames 500] [--skip-graph]

Without --run-dir a small retrieval run is trained first (sim demos -> convert -> DTW -> pretrain ->
index, about a minute on 2 cores). The graph runs with the MuJoCo sim node, the retrieval policy on
the CPU, once in one process (MultiThreadedExecutor) and once as one process per node. Targets:
p99 under 50 ms single-process; decode + preprocess of a 640x480 rgb8 frame under 2 ms. Results are
printed as ratios against those targets and written to benchmarks/results/latency.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from class_ros.data.outputs import write_json  # noqa: E402 - after the path set-up

TARGET_P99_MS = 50.0
TARGET_DECODE_MS = 2.0


def bench_decode(n: int = 300) -> dict:
    """Time decode_image + preprocess of a 640x480 rgb8 frame to 96x96."""
    from class_ros.data.images import decode_image, preprocess

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8).tobytes()
    for _ in range(20):  # warm caches and cv2's thread pool
        preprocess(decode_image("rgb8", 480, 640, 640 * 3, frame), (96, 96))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        preprocess(decode_image("rgb8", 480, 640, 640 * 3, frame), (96, 96))
        times.append((time.perf_counter() - t) * 1e3)
    p50, p99 = np.percentile(times, [50, 99])
    return {"decode_preprocess_p50_ms": float(p50), "decode_preprocess_p99_ms": float(p99)}


def build_small_run(out: Path, episodes: int = 10, steps: int = 150) -> Path:
    """A small retrieval run on `lift` demos: the same steps as `class-ros demo`."""
    from training.convert import convert_bags
    from training.demo import merged_config
    from training.dtw import compute_positives
    from training.index import build_index
    from training.pretrain import pretrain
    from training.sim_demos import record_demos

    record_demos("lift", episodes, "fixed", "mcap", out / "bags", seed=0, image_size=96, progress=False)
    convert_bags([out / "bags"], REPO / "config/mappings/sim.yaml", out / "dataset")
    compute_positives(out / "dataset", out / "positives.npz", horizon=16, quantile=0.025, device="cpu", mode="exact")
    cfg = merged_config({"base": "training/configs/pretrain_cpu.yaml",
                         "overrides": {"steps": steps, "batch_size": 32, "warmup_steps": 10, "save_every": 100000}})
    pretrain(out / "dataset", out / "positives.npz", out / "run", cfg, device="cpu", progress=False)
    build_index(out / "run", out / "dataset")
    return out / "run"


def bench_graph(run_dir: Path, frames: int, processes: bool) -> dict:
    """Latency samples from the sim + policy graph until `frames` chunks reached the arm."""
    from class_ros.nodes.closed_loop import run_closed_loop

    # One long episode with a chunk for every camera frame (replan_period 0), so there is one latency
    # sample per frame (30 Hz).
    seconds = frames / 30.0 * 2.0 + 5.0  # frames are dropped (best-effort QoS) when the CPUs are busy
    res = run_closed_loop(run_dir, task="lift", camera="fixed", episodes=1, seed=0, processes=processes,
                          episode_seconds=seconds, node_params={"policy_node": {"replan_period": 0.0}})
    lat = np.array(res["latency_ms"][:frames])
    return {"frames": int(len(lat)), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mode": res["mode"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default=None, help="a retrieval run (default: train a small one first)")
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--skip-graph", action="store_true", help="only the decode benchmark")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 101))

    results = {"machine": f"{os.cpu_count()} CPUs (timings are contended when other work runs)"}
    results["decode"] = bench_decode()
    d = results["decode"]
    print(f"decode+preprocess 640x480 rgb8 -> 96x96: p50 {d['decode_preprocess_p50_ms']:.2f} ms, "
          f"p99 {d['decode_preprocess_p99_ms']:.2f} ms  (p50 / target {TARGET_DECODE_MS} ms = "
          f"{d['decode_preprocess_p50_ms'] / TARGET_DECODE_MS:.2f})")
    if not args.skip_graph:
        with tempfile.TemporaryDirectory(prefix="latency_bench_") as tmp:
            run_dir = Path(args.run_dir) if args.run_dir else build_small_run(Path(tmp))
            for processes in (False, True):
                r = bench_graph(run_dir, args.frames, processes)
                results["multi_process" if processes else "single_process"] = r
                print(f"camera stamp -> command, {r['mode']}: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms over "
                      f"{r['frames']} frames  (p99 / target {TARGET_P99_MS} ms = {r['p99_ms'] / TARGET_P99_MS:.2f})")
            s, m = results["single_process"], results["multi_process"]
            print(f"multi-process / single-process p50: {m['p50_ms'] / s['p50_ms']:.2f}x")
    out = Path(args.out)
    write_json(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
