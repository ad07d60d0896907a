"""`class-ros evaluate`: run a policy in the built-in simulator (directly, no ROS) and score it.

Usage:
    class-ros evaluate --run RUN --policy retrieval|diffusion --task lift --camera heldout \
        --episodes 50 --seed 0 [--out eval.json] [--video 3] [--device cpu] [--workers N] [--ros]

Each episode resets the env with its own seed (the evaluation seed stream, so scenes differ from
`sim-demos` scenes with the same --seed), asks the policy for an action chunk (H, 7) and executes its
first `policy.n_action_steps` actions (8 when the policy does not say), until success or the task's
time limit. Writes a JSON with the success rate and its 95% Wilson interval, per-episode success and
completion times, and an mp4 of the first `--video` episodes; prints one summary line.
`evaluate_policy` takes any object with `reset()` and `predict_action_chunk(obs) -> (H, 7)`.

Direct evaluation spreads the episodes over `--workers` env processes (default: one per core), each
with its own MuJoCo renderer, while this process runs the policy: whenever envs report a fresh
observation it answers them (on CUDA all of them in one forward pass) and sends each chunk straight
back, so the policy's work overlaps the other envs' simulation. An episode's result depends only on
its seed, so any --workers gives the serial run's JSON.

`--ros` runs the same episodes (same seeds, so results compare episode by episode) through the ROS 2
graph instead: sim_node plays the robot in its own process, camera_node -> embedding_node ->
policy_node -> arm_command_node (safety filter, ensembling) command it over DDS in real time
(class_ros.nodes.closed_loop.run_closed_loop). No video; the JSON adds the loop's latency.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import numpy as np

from class_ros.data import outputs
from class_ros.errors import ClassRosError
from class_ros.policy import POLICY_KINDS
from training.workers import add_workers_argument, resolve_workers

DEFAULT_ACTION_STEPS = 8
EVAL_STREAM = 1  # seed stream of evaluation episodes (sim-demos uses 0)
VIDEO_MIN_SIDE = 288  # videos are upscaled (nearest) so 96x96 frames are watchable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of `class-ros evaluate`."""
    parser.add_argument("--run", required=True, help="run directory of the policy")
    parser.add_argument("--policy", default="retrieval", choices=POLICY_KINDS,
                        help="policy kind (default retrieval)")
    parser.add_argument("--task", default="lift", help="lift | push | pick_place (default lift)")
    parser.add_argument("--camera", default="fixed", help="fixed | random | heldout | moving (default fixed)")
    parser.add_argument("--episodes", type=int, default=50, help="episodes (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the episodes (default 0)")
    parser.add_argument("--out", default=None, help="result JSON (default RUN/eval/<policy>_<task>_<camera>.json)")
    parser.add_argument("--video", type=int, default=2, metavar="N", help="episodes in the mp4 (default 2; 0: none)")
    parser.add_argument("--device", default="cpu", help="torch device of the policy (default cpu)")
    parser.add_argument("--image-size", type=int, default=96, help="camera image size in pixels (default 96)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="evaluate an unfinished run (training killed or stopped) with its last checkpoint")
    add_workers_argument(parser)
    parser.add_argument("--ros", action="store_true",
                        help="run the episodes through the ROS 2 graph with sim_node (real nodes, real time)")


def run(args: argparse.Namespace) -> int:
    """Parse-and-call for the CLI."""
    from class_ros.policy import load_policy
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise ClassRosError(f"run directory {run_dir} does not exist; pass the folder a training step wrote.")
    name = f"{args.policy}_{args.task}_{args.camera}{'_ros' if args.ros else ''}.json"
    out = Path(args.out) if args.out else run_dir / "eval" / name
    outputs.check_file_target(out)  # before the episodes, not after them
    if args.ros:
        result = evaluate_through_ros(run_dir, args.policy, args.task, args.camera, args.episodes, args.seed,
                                      args.device)
        outputs.write_json(out, result, indent=2)
        print(f"evaluate: {args.policy} on {args.task}/{args.camera} through ROS: {summary_line(result)}, loop "
              f"latency p50 {result['latency_p50_ms']:.1f} ms / p99 {result['latency_p99_ms']:.1f} ms; wrote {out}")
        return 0
    workers = resolve_workers(args.workers)
    policy = load_policy(run_dir, kind=args.policy, device=args.device, allow_partial=args.allow_partial)
    if args.allow_partial:
        from class_ros.data.rundir import RunDir
        note = RunDir.open(run_dir).check_finished(allow_partial=True)
        if note:
            print(f"evaluate: warning: {note}")
    video = out.with_suffix(".mp4") if args.video > 0 else None
    result = evaluate_policy(policy, task=args.task, camera=args.camera, episodes=args.episodes, seed=args.seed,
                             image_size=(args.image_size, args.image_size), video_path=video,
                             video_episodes=args.video, workers=workers)
    result.update(run=str(run_dir), policy=args.policy)
    outputs.write_json(out, result, indent=2)
    print(f"evaluate: {args.policy} on {args.task}/{args.camera}: {summary_line(result)}; wrote {out}"
          + (f" and {video}" if video else ""))
    return 0


def evaluate_through_ros(run_dir, policy: str, task: str, camera: str, episodes: int, seed: int,
                         device: str = "cpu") -> dict:
    """The episodes `evaluate_policy` would run (same seeds), through the ROS graph; the same result keys."""
    from class_ros.nodes.closed_loop import run_closed_loop
    from class_ros.sim.env import episode_seed
    from class_ros.sim.stats import wilson_interval

    if episodes < 1:
        raise ClassRosError(f"--episodes must be at least 1, got {episodes}.")
    seeds = [episode_seed(seed, i, EVAL_STREAM) for i in range(episodes)]
    node_params = {"policy_node": {"device": device}, "embedding_node": {"device": device}}
    res = run_closed_loop(run_dir, task, camera, seeds=seeds, policy=policy, node_params=node_params)
    lo, hi = wilson_interval(res["successes"], episodes)
    per_episode = [e["success"] for e in res["episodes"]]
    return {**res, "episodes": episodes, "seed": seed, "ci_low": lo, "ci_high": hi, "ci95": [lo, hi],
            "episode_success": per_episode, "episode_seeds": seeds, "episode_details": res["episodes"],
            "run": str(run_dir), "through": "ros"}


def summary_line(result: dict) -> str:
    """`success 17/20 = 85% (95% CI 64-95%)` for an evaluation result."""
    return (f"success {result['successes']}/{result['episodes']} = {result['success_rate']:.0%} "
            f"(95% CI {result['ci_low']:.0%}-{result['ci_high']:.0%})")


def evaluate_policy(policy, task: str = "lift", camera: str = "fixed", episodes: int = 50, seed: int = 0, *,
                    n_action_steps: int | None = None, image_size=(96, 96), video_path=None,
                    video_episodes: int = 2, env=None, progress: bool = True, workers: int = 1,
                    batch: bool | None = None) -> dict:
    """Run `policy` for `episodes` episodes of `task` under `camera`; returns the result dict.

    `policy` needs `reset()` and `predict_action_chunk(obs) -> (H, 7)` absolute targets. `env` lets a
    caller pass its own ArmEnv (it is not closed here); otherwise one is made and closed.
    `workers` > 1 runs that many envs in worker processes (class_ros.sim.pool.EnvPool) while this process
    queries the policy, if it has `new_episode_state()` and `predict_action_chunks(observations, states)`
    (the retrieval, diffusion and oracle policies do; others run in one env). Every episode depends on its
    seed alone, so the result equals the serial one. `batch`: one forward pass for all live envs (default: on CUDA only;
    on CPUs batched float arithmetic rounds differently from one observation at a time, and the result
    would no longer equal the serial one to the bit).
    """
    from tqdm import tqdm

    from class_ros.sim.cameras import check_mode
    from class_ros.sim.env import episode_seed
    from class_ros.sim.stats import wilson_interval
    from class_ros.sim.tasks import check_task

    if episodes < 1:
        raise ClassRosError(f"--episodes must be at least 1, got {episodes}.")
    if workers < 1:
        raise ClassRosError(f"--workers must be at least 1, got {workers}.")
    steps_per_chunk = int(n_action_steps or getattr(policy, "n_action_steps", None) or DEFAULT_ACTION_STEPS)
    if env is not None:
        task, camera = env.task, env.camera_mode
    check_task(task)
    check_mode(camera)
    cameras = policy_cameras(policy)
    video_episodes = min(video_episodes, episodes) if video_path else 0
    seeds = [episode_seed(seed, i, EVAL_STREAM) for i in range(episodes)]
    bar = tqdm(total=episodes, desc=f"evaluate {task}/{camera}", unit="ep", disable=not progress)
    try:
        batchable = hasattr(policy, "predict_action_chunks") and hasattr(policy, "new_episode_state")
        if env is None and workers > 1 and episodes > 1 and batchable:
            if batch is None:
                batch = str(getattr(policy, "device", "cpu")).startswith("cuda")
            runs, control_rate = _episodes_in_pool(policy, task, camera, cameras, seeds, steps_per_chunk,
                                                   image_size, video_episodes, min(workers, episodes), batch, bar)
        else:
            runs, control_rate = _episodes_in_env(policy, task, camera, cameras, seeds, steps_per_chunk,
                                                  image_size, video_episodes, env, bar)
    finally:
        bar.close()

    per_episode = [r.info["success"] for r in runs]
    times = [round(r.sim_time, 3) if r.info["success"] else None for r in runs]
    successes = int(sum(per_episode))
    lo, hi = wilson_interval(successes, episodes)
    done_times = [t for t in times if t is not None]
    result = {
        "task": task, "camera": camera, "episodes": episodes, "seed": seed, "successes": successes,
        "success_rate": successes / episodes, "ci_low": lo, "ci_high": hi, "ci95": [lo, hi],
        "episode_success": per_episode, "completion_time_s": times,
        "mean_completion_time_s": float(np.mean(done_times)) if done_times else None,
        "episode_steps": [r.steps for r in runs], "episode_seeds": seeds, "n_action_steps": steps_per_chunk,
        "video": None,
    }
    frames = [f for r in runs[:video_episodes] for f in r.frames]
    if frames:
        result["video"] = str(write_video(frames, video_path, fps=control_rate))
    return result


def policy_cameras(policy) -> tuple[str, ...]:
    """The sim cameras `policy` looks through (its encoder's image keys); agentview for a state-only policy."""
    encoder = getattr(policy, "encoder", None)
    keys = tuple(encoder.config.image_keys) if encoder is not None else ()
    from class_ros.sim.cameras import CAMERA_NAMES
    unknown = [k for k in keys if k not in CAMERA_NAMES]
    if unknown:
        raise ClassRosError(f"the policy looks through cameras {unknown}, which the sim does not have "
                            f"(it has {', '.join(CAMERA_NAMES)}); evaluate it on data of its own robot.")
    return keys or ("agentview",)


def _checked_chunk(chunk) -> np.ndarray:
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] != 7 or len(chunk) == 0:
        raise ClassRosError(f"the policy returned an action chunk of shape {chunk.shape}; "
                            "the sim needs (H, 7) joint targets + gripper.")
    return chunk


def _episodes_in_env(policy, task, camera, cameras, seeds, steps_per_chunk, image_size, video_episodes, env, bar):
    """The episodes one after another in one env; per episode the Steps of its end (frames: the whole video)."""
    from class_ros.sim.env import ArmEnv
    from class_ros.sim.pool import reset_episode, run_chunk

    own_env = env is None
    if own_env:
        env = ArmEnv(task, camera=camera, image_size=image_size, cameras=cameras)
    if not env.render_images:
        raise ClassRosError("evaluate_policy needs an ArmEnv that renders images (render_images=True).")
    runs = []
    try:
        for i, ep_seed in enumerate(seeds):
            video = i < video_episodes
            end = reset_episode(env, ep_seed, keep_frames=video)
            policy.reset()
            while not end.done:
                chunk = _checked_chunk(policy.predict_action_chunk(end.obs))
                step = run_chunk(env, chunk[:steps_per_chunk], keep_frames=video)
                end = dataclasses.replace(step, frames=end.frames + step.frames)
            runs.append(end)
            bar.update(1)
        return runs, env.control_rate_hz
    finally:
        if own_env:
            env.close()


def _episodes_in_pool(policy, task, camera, cameras, seeds, steps_per_chunk, image_size, video_episodes, workers,
                      batch, bar):
    """The episodes spread over `workers` envs in worker processes. Whenever envs report a fresh observation,
    the policy answers them (one forward pass for all of them with `batch`, else one by one) and each chunk
    goes straight back, so the policy's work overlaps the other envs' simulation."""
    from class_ros.sim.pool import EnvPool

    runs: list = [None] * len(seeds)
    live: dict[int, list] = {}  # slot -> [episode, its frames so far, its policy state]
    queue = iter(range(len(seeds)))

    def start(pool, slot):
        i = next(queue, None)
        if i is not None:
            live[slot] = [i, [], policy.new_episode_state()]
            pool.send(slot, "reset", seeds[i], keep_frames=i < video_episodes)

    with EnvPool(workers, task, camera, image_size, cameras) as pool, _one_torch_thread(not batch):
        for slot in range(workers):
            start(pool, slot)
        while live:
            fresh = []
            for slot, step in pool.results():
                i, frames, _ = live[slot]
                frames += step.frames
                if step.done:
                    runs[i] = dataclasses.replace(step, frames=live.pop(slot)[1])
                    bar.update(1)
                    start(pool, slot)
                else:
                    fresh.append((slot, step.obs))
            for group in [fresh] if batch and fresh else [[f] for f in fresh]:
                chunks = policy.predict_action_chunks([obs for _, obs in group], [live[s][2] for s, _ in group])
                for (slot, _), chunk in zip(group, chunks):
                    pool.send(slot, "run", _checked_chunk(chunk)[:steps_per_chunk],
                              keep_frames=live[slot][0] < video_episodes)
        return runs, pool.control_rate_hz


@contextlib.contextmanager
def _one_torch_thread(enabled: bool):
    """One torch thread inside (restored after): beside sim workers on every core, torch's own threads spin
    against them (chunks 10x slower measured on a busy 2-core machine)."""
    if not enabled or "torch" not in sys.modules:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_video(frames: list[np.ndarray], path, fps: float) -> Path:
    """Write RGB frames (H, W, 3) uint8 as an mp4 (upscaled to be watchable), atomically."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = frames[0].shape
    scale = max(1, int(np.ceil(VIDEO_MIN_SIDE / min(h, w))))
    with outputs.replacing(path) as tmp:  # the temporary name keeps .mp4: it tells OpenCV the container
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w * scale, h * scale))
        if not writer.isOpened():
            raise ClassRosError(f"OpenCV cannot write an mp4 at {path}; check the folder is writable.")
        try:
            for f in frames:
                big = cv2.resize(f, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
                writer.write(cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
    return path
