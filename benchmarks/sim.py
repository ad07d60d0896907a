"""Built-in MuJoCo arm world speed: control steps per second for physics only, render only, full env steps
and sim-demos recording.

Usage:
    python benchmarks/sim.py [--task lift] [--steps 300] [--image-size 96] [--out benchmarks/results/sim.json]

One control step = 0.1 s of simulated time at the 10 Hz control rate (50 physics steps at 2 ms).
- physics:  env.advance(0.1) with the expert's targets (servo ticks + MuJoCo steps, no rendering)
- render:   env.render() of the agentview camera (shadows off)
- env step: env.step(action) = physics + one render, what evaluation runs
- record:   one control step of `sim-demos` (physics, 3 renders at 30 Hz, 10 joint states, bag writes)
Target (issue 4): env steps >= 100/s on 2 cores. Reference peer (ENVIRONMENT.md, measured on this kind
of machine earlier, not in this run): robosuite 1.5 Panda Lift, about 18 ms of physics and controller
per 20 Hz step without rendering.
"""
import argparse
import sys
import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_line  # noqa: E402 - after the path set-up
from class_ros.data.outputs import write_json  # noqa: E402 - after the path set-up

TARGET_STEPS_PER_S = 100.0
ROBOSUITE_PHYSICS_S_PER_STEP = 0.018  # documented, per 20 Hz step (0.05 s simulated)


def expert_actions(task, n, seed=0):
    """(n, 7) expert actions over consecutive episodes, so the benchmark moves like real use."""
    from class_ros.sim.env import ArmEnv
    from class_ros.sim.expert import make_expert

    out = []
    with ArmEnv(task, render_images=False) as env:
        while len(out) < n:
            env.reset(seed + len(out))
            expert, done = make_expert(task, np.random.default_rng(len(out))), False
            while not done and len(out) < n:
                a = expert.act(env)
                out.append(a)
                _, _, done, _ = env.step(a)
    return np.stack(out)


def rate(fn, n):
    """Calls per second of fn(i) over i < n."""
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="lift")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--out", default="benchmarks/results/sim.json")
    args = ap.parse_args()
    print(cpu_line(), flush=True)
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco  # noqa: F401
    except ImportError:
        print("sim benchmark: mujoco is not installed on this machine; skipped.")
        return
    from class_ros.sim.env import ArmEnv
    from training.sim_demos import record_demos

    n = args.steps
    size = (args.image_size, args.image_size)
    actions = expert_actions(args.task, n)
    results = {}
    with ArmEnv(args.task, camera="moving", image_size=size) as env:
        env.reset(0)
        env.render()  # create the GL context outside the timing

        def physics(i):
            env.set_targets(actions[i])
            env.advance(0.1)
        results["physics_steps_per_s"] = rate(physics, n)
        results["render_per_s"] = rate(lambda i: env.render(), n)
        env.reset(0)
        results["env_steps_per_s"] = rate(lambda i: env.step(actions[i]), n)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = record_demos(args.task, 5, "random", "mcap", Path(tmp) / "bags", image_size=size, progress=False)
        seconds = time.perf_counter() - t0
    results["record_control_steps_per_s"] = sum(summary["episode_control_steps"]) / seconds
    results["record_s_per_episode"] = seconds / summary["episodes_tried"]

    robosuite_rate = 1.0 / (2 * ROBOSUITE_PHYSICS_S_PER_STEP)  # two 20 Hz steps per 0.1 s control step
    print(f"sim benchmark: task {args.task}, {size[0]}x{size[1]} images, {n} control steps of 0.1 s "
          f"(timings on a shared machine: contended numbers are lower bounds)")
    print(f"  physics only   {results['physics_steps_per_s']:8.0f} steps/s   "
          f"x{results['physics_steps_per_s'] / robosuite_rate:.1f} robosuite physics (documented, not this run)")
    print(f"  render only    {results['render_per_s']:8.0f} frames/s")
    print(f"  full env step  {results['env_steps_per_s']:8.0f} steps/s   "
          f"x{results['env_steps_per_s'] / TARGET_STEPS_PER_S:.1f} the 100 steps/s target")
    print(f"  sim-demos      {results['record_control_steps_per_s']:8.0f} control steps/s "
          f"({results['record_s_per_episode']:.2f} s per episode)")
    results.update(task=args.task, image_size=list(size), steps=n, target_steps_per_s=TARGET_STEPS_PER_S,
                   ratio_env_vs_target=results["env_steps_per_s"] / TARGET_STEPS_PER_S,
                   ratio_physics_vs_robosuite_documented=results["physics_steps_per_s"] / robosuite_rate)
    out = Path(args.out)
    write_json(out, results, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
