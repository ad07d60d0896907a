"""Evaluation speed with `--workers`: episodes per second of direct evaluation, serial against N sim workers.

Usage:
    python benchmarks/rollouts.py [--workers N] [--episodes 8] [--device cpu] [--policy diffusion|retrieval]
        [--out benchmarks/results/rollouts.json]

The default policy is a Diffusion Policy of the CPU fine-tuning config's shape (finetune_cpu.yaml: the
small encoder and the 2.6M U-Net, DDPM-16) with untrained weights: the work per chunk is the real one.
`--policy retrieval`: the small CPU encoder and a flat faiss index of random rows, cheap per chunk, so
the simulation dominates, as in the demo's evaluation. Untrained policies run every `lift` episode to
its 10 s limit, so both runs do the same work (100 env steps per episode). `--device cuda` puts the
policy on the GPU (all fresh observations in one forward pass, so results may differ in the last bits);
on the CPU both runs must give the same results (checked). Target (issue 19): about 1.8x on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def untrained_policy(device: str):
    """A DiffusionPolicy shaped as finetune_cpu.yaml says, for the sim's lift observations."""
    import numpy as np
    import torch

    from class_ros.config import read_yaml_mapping
    from class_ros.data.normalizer import MinMaxNormalizer
    from class_ros.encoder.config import EncoderConfig
    from class_ros.policy.diffusion import DiffusionConfig, DiffusionPolicy
    from class_ros.sim import robot

    cfg = read_yaml_mapping(REPO / "training/configs/finetune_cpu.yaml", "training")
    torch.manual_seed(0)
    enc = EncoderConfig.from_dict({**cfg["encoder"], "image_keys": ["agentview"], "proprio_keys": ["joint_pos"],
                                   "proprio_dims": [7], "image_size": [96, 96]})
    norm = MinMaxNormalizer.fit(np.stack([robot.JOINT_LOWER, robot.JOINT_UPPER]))
    policy = DiffusionPolicy(enc, DiffusionConfig.from_dict(cfg["diffusion"]), norm, {"control_rate_hz": 10.0})
    return policy.to(device).eval()


def untrained_retrieval(n_rows: int = 5000):
    """A RetrievalPolicy over the small CPU encoder (pretrain_cpu.yaml shapes, untrained) and a flat faiss
    index of `n_rows` random rows whose chunks hold the arm near its home pose: a cheap policy, so the
    simulation dominates, as in the demo's evaluation."""
    import numpy as np
    import torch

    from class_ros.config import read_yaml_mapping
    from class_ros.encoder.config import EncoderConfig
    from class_ros.encoder.model import ObservationEncoder
    from class_ros.policy.retrieval import RetrievalConfig, RetrievalPolicy, build_faiss_index, normalize_rows
    from class_ros.sim import robot

    cfg = read_yaml_mapping(REPO / "training/configs/pretrain_cpu.yaml", "training")
    torch.manual_seed(0)
    enc = ObservationEncoder(EncoderConfig.from_dict({**cfg["encoder"], "image_keys": ["agentview"],
                                                      "proprio_keys": ["joint_pos"], "proprio_dims": [7],
                                                      "image_size": [96, 96]}))
    rng = np.random.default_rng(0)
    rows = normalize_rows(rng.standard_normal((n_rows, enc.out_dim)))
    chunks = (robot.HOME + rng.normal(0, 0.05, (n_rows, 16, 7))).astype(np.float32)
    config = RetrievalConfig(k=16)
    index, _ = build_faiss_index(rows, config)
    return RetrievalPolicy(enc, index, chunks, np.arange(n_rows), config, {"control_rate_hz": 10.0})


def main(argv: list[str] | None = None) -> int:
    from class_ros.sim.pool import available_cores

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--policy", choices=("diffusion", "retrieval"), default="diffusion")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rollouts.json"))
    args = ap.parse_args(argv)

    import os
    os.environ.setdefault("MUJOCO_GL", "egl")
    from training.evaluate import evaluate_policy

    if args.device == "cpu":
        import torch
        torch.set_num_threads(1)  # as `class-ros evaluate --workers` sets it on CPUs: the workers take the cores
    rows, results = {}, {}
    for workers in (1, args.workers):
        policy = untrained_policy(args.device) if args.policy == "diffusion" else untrained_retrieval()
        t0 = time.perf_counter()
        res = evaluate_policy(policy, "lift", "fixed", episodes=args.episodes, seed=0, progress=False,
                              workers=workers)
        seconds = time.perf_counter() - t0
        rows[workers] = {"seconds": round(seconds, 2), "episodes_per_s": round(args.episodes / seconds, 3),
                         "env_steps_per_s": round(sum(res["episode_steps"]) / seconds, 1)}
        results[workers] = {k: v for k, v in res.items() if k != "video"}
        print(f"rollouts: workers {workers}: {args.episodes} episodes in {seconds:.1f} s "
              f"({rows[workers]['env_steps_per_s']:.0f} env steps/s, {args.policy} policy on {args.device})",
              flush=True)
    same = results[1] == results[args.workers]
    speedup = rows[1]["seconds"] / rows[args.workers]["seconds"]
    print(f"rollouts: {args.workers} workers are {speedup:.2f}x the serial speed (target about 1.8x on 2 cores); "
          f"results {'identical' if same else 'DIFFERENT'} to the serial run's")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cores": available_cores(), "device": args.device, "policy": args.policy,
                               "episodes": args.episodes,
                               "runs": rows, "speedup": round(speedup, 3), "identical": same}, indent=2))
    print(f"rollouts: wrote {out}")
    return 0 if same or args.device != "cpu" else 1


if __name__ == "__main__":
    sys.exit(main())
