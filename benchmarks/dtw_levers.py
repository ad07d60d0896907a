"""What the DTW positives teach, per choice of what DTW compares: the object distance within positive pairs.

Usage:
    python benchmarks/dtw_levers.py [--task lift] [--episodes 80] [--horizons 16,24,32]
                                    [--quantiles 0.025,0.01] [--compare joints,ee_pose]

Retrieval grasps where the retrieved demonstration's object was, and the contrastive loss can make an
embedding no better than its positives: pairs of frames whose objects lie far apart teach the encoder
to confuse them. So before anything is trained, this measures each way of choosing positives on the
scripted demonstrations `class-ros sim-demos` records (the same scenes and seeds, no rendering):
    compare    joints: the absolute joint targets (what the sim arm's actions are);
               ee_pose: the same targets through forward kinematics - grip position (m), 6D rotation
               (halved, as docs/method.md 1 says) and gripper - each dimension min-max normalised
    horizon    the chunk length H the DTW aligns
    quantile   the fraction of all pairs kept
and reports, over the positive pairs of DIFFERENT episodes (pairs within one episode share its object,
so they say nothing about it): their share of all positives, the mean object distance, the share within
2 cm (about what a grasp tolerates), and the object distance of each frame's closest positive (what a
perfect encoder would retrieve), beside random pairs. Minutes on 2 cores; no training.
Results go to benchmarks/results/dtw_levers.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_line  # noqa: E402 - after the path set-up
from class_ros.data.outputs import write_json  # noqa: E402

GRASP_CM = 2.0


def ee_pose_chunks(chunks: np.ndarray) -> np.ndarray:
    """(N, H, 7) sim-arm joint targets -> (N, H, 10) grip position, 6D rotation, gripper (forward kinematics)."""
    from class_ros.control.rotation import matrix_to_rot6d
    from class_ros.sim.env import ArmEnv
    from class_ros.sim.kinematics import ArmKinematics

    flat = chunks.reshape(-1, chunks.shape[-1]).astype(np.float64)
    out = np.empty((len(flat), 10))
    with ArmEnv("lift", render_images=False) as env:
        kin = ArmKinematics(env.model)
        for i, q in enumerate(flat):
            pos, rot = kin.forward(q[:6])
            out[i, :3], out[i, 3:9], out[i, 9] = pos, matrix_to_rot6d(rot), q[6]
    return out.reshape(chunks.shape[0], chunks.shape[1], 10)


def normalise(chunks: np.ndarray, rot_dims=()) -> np.ndarray:
    """Min-max to [-1, 1] per dimension over all frames, rotation dims halved (as the pipeline does)."""
    flat = chunks.reshape(-1, chunks.shape[-1])
    lo, hi = flat.min(0), flat.max(0)
    x = 2.0 * (chunks - lo) / np.maximum(hi - lo, 1e-9) - 1.0
    x[..., list(rot_dims)] /= 2.0
    return np.ascontiguousarray(x, dtype=np.float32)


def pair_stats(pos, cube: np.ndarray, episode: np.ndarray, seed: int = 0) -> dict:
    """Object distances (cm) over the cross-episode positive pairs, their closest one per frame, random pairs."""
    indptr, indices, dist = np.asarray(pos.indptr), np.asarray(pos.indices), np.asarray(pos.distance)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    cross = episode[rows] != episode[indices]
    r, c, d = rows[cross], indices[cross], dist[cross]
    cm = np.linalg.norm(cube[r] - cube[c], axis=1) * 100.0
    # The closest (smallest DTW distance) cross-episode positive of each frame that has one.
    order = np.lexsort((d, r))
    first = order[np.r_[True, r[order][1:] != r[order][:-1]]] if len(order) else order
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(cube), 20000), rng.integers(0, len(cube), 20000)
    keep = episode[a] != episode[b]
    rand = np.linalg.norm(cube[a[keep]] - cube[b[keep]], axis=1) * 100.0
    return {"pairs": int(len(rows)), "cross_episode_share": float(cross.mean()) if len(rows) else 0.0,
            "mean_cm": float(cm.mean()) if len(cm) else float("nan"),
            "within_2cm": float((cm < GRASP_CM).mean()) if len(cm) else float("nan"),
            "closest_median_cm": float(np.median(cm[first])) if len(first) else float("nan"),
            "frames_with_one": float(len(first) / len(cube)), "random_mean_cm": float(rand.mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="lift")
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0, help="the sim-demos seed (the demo's: 0)")
    parser.add_argument("--horizons", default="16,24,32")
    parser.add_argument("--quantiles", default="0.025,0.01")
    parser.add_argument("--compare", default="joints,ee_pose", help="comma list of joints, ee_pose")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dtw_levers.json"))
    args = parser.parse_args()
    from class_ros.sim.oracle import expert_demos
    from class_ros.similarity.positives import dtw_positives

    print(cpu_line(), flush=True)
    demos = expert_demos(args.task, args.episodes, seed=args.seed, progress=True)
    episode = np.repeat(np.arange(len(demos.episode_ends)), np.diff(np.r_[0, demos.episode_ends]))
    cube = demos.state[:, :3].astype(np.float64)
    rows = []
    for horizon in [int(h) for h in args.horizons.split(",")]:
        joints = demos.chunks(horizon)
        variants = {"joints": lambda: normalise(joints),
                    "ee_pose": lambda: normalise(ee_pose_chunks(joints), rot_dims=range(3, 9))}
        for compare in args.compare.split(","):
            chunks = variants[compare]()
            for quantile in [float(q) for q in args.quantiles.split(",")]:
                start = time.perf_counter()
                pos = dtw_positives(chunks, quantile, progress=False)
                row = {"compare": compare, "horizon": horizon, "quantile": quantile,
                       "seconds": time.perf_counter() - start, **pair_stats(pos, cube, episode)}
                rows.append(row)
                print(f"{compare:8s} H={horizon:2d} q={quantile:<6g} cross-episode {row['cross_episode_share']:.0%} "
                      f"of {row['pairs']} pairs: object {row['mean_cm']:.2f} cm apart (random "
                      f"{row['random_mean_cm']:.2f}), {row['within_2cm']:.0%} within {GRASP_CM:g} cm; closest "
                      f"positive median {row['closest_median_cm']:.2f} cm ({row['frames_with_one']:.0%} of frames "
                      f"have one); {row['seconds']:.0f} s", flush=True)
    write_json(Path(args.out), {"cpu": cpu_line(), "task": args.task, "episodes": args.episodes,
                                "frames": int(len(cube)), "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
