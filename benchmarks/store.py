"""Dataset store speed: open time and random-batch read time on a 100k-frame dataset of 96x96 images.

Usage:
    python benchmarks/store.py [--frames 100000] [--batch 256] [--out benchmarks/results/store.json]

Target (issue 2): the store opens instantly and a random batch of 256 windows reads in well under 1 s.
The images are smooth synthetic scenes (they compress like camera frames, unlike white noise).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_line  # noqa: E402 - after the path set-up

from class_ros.data.sampler import WindowSampler
from class_ros.data.schema import ACTION, DatasetMeta, KeySchema, obs_key
from class_ros.data.store import EpisodeStore


def synthetic_episode(rng, n, size=96):
    yy, xx = np.mgrid[0:size, 0:size]
    phase = rng.uniform(0, 6.28)
    t = np.arange(n)[:, None, None]
    base = 127 + 60 * np.sin(xx[None] / 9.0 + t * 0.1 + phase) + 40 * np.cos(yy[None] / 13.0 - t * 0.05)
    img = np.repeat(base[..., None], 3, axis=-1) + rng.normal(0, 3, (n, size, size, 3))
    return {
        obs_key("agentview"): np.clip(img, 0, 255).astype(np.uint8),
        obs_key("joint_pos"): rng.normal(size=(n, 7)).astype(np.float32),
        ACTION: rng.normal(size=(n, 7)).astype(np.float32),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--episode-len", type=int, default=200)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default="benchmarks/results/store.json")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    rng = np.random.default_rng(0)
    meta = DatasetMeta(control_rate_hz=10, action_names=[f"a{i}" for i in range(7)],
                       keys={obs_key("agentview"): KeySchema("uint8", (96, 96, 3), "image"),
                             obs_key("joint_pos"): KeySchema("float32", (7,))})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ds"
        store = EpisodeStore.create(path, meta)
        template = synthetic_episode(rng, args.episode_len)
        t0 = time.perf_counter()
        for _ in range(args.frames // args.episode_len):
            store.append_episode(template)
        store.finish()
        write_s = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
        t0 = time.perf_counter()
        store = EpisodeStore.open(path)
        open_s = time.perf_counter() - t0
        sampler = WindowSampler(store, obs_horizon=2, pred_horizon=16)
        times = []
        for _ in range(5):
            idx = rng.integers(0, store.n_frames, args.batch)
            t0 = time.perf_counter()
            batch = sampler.sample(idx)
            times.append(time.perf_counter() - t0)
        assert batch[obs_key("agentview")].shape == (args.batch, 2, 96, 96, 3)
    result = {"frames": store.n_frames, "write_s": write_s, "disk_mb": size_mb, "open_s": open_s,
              "batch": args.batch, "batch_read_s_median": float(np.median(times)), "batch_read_s_max": max(times)}
    print(f"store: {result['frames']} frames, {size_mb:.0f} MB on disk, written in {write_s:.1f} s")
    print(f"store: open {open_s * 1000:.1f} ms; random batch of {args.batch} windows (To=2, H=16): "
          f"median {result['batch_read_s_median'] * 1000:.0f} ms, max {result['batch_read_s_max'] * 1000:.0f} ms "
          f"(target < 1000 ms)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
