"""`class-ros sim-demos`: record scripted demonstrations in the built-in MuJoCo arm world as rosbag2.

Usage:
    class-ros sim-demos --task lift --episodes 50 --camera random --storage mcap --out bags/ [--seed 0]
        [--cameras agentview wrist]

Each kept episode becomes one bag, `OUT/episode_0000`, ..., holding what `ros2 bag record` on the
sim graph would have recorded, stamped from simulation time (starting at `EPOCH_NS`, one hour apart
per episode):
    /camera/image_raw                      sensor_msgs/Image rgb8, frame_id `agentview`, 30 Hz
    /wrist_camera/image_raw                the same, frame_id `wrist`, with `--cameras agentview wrist`
    /joint_states                          sensor_msgs/JointState (JOINT_NAMES; position, velocity,
                                           effort), 100 Hz
    /forward_position_controller/commands  std_msgs/Float64MultiArray, 6 arm targets (rad), 10 Hz
    /gripper_controller/commands           std_msgs/Float64MultiArray, 1 value (0 open .. 1 closed), 10 Hz
A command follows the observation it was computed from by one physics step (2 ms), as it would leave
a fast policy node; the sim applies it from that moment. Only successful expert episodes are kept
unless `--keep-failed`; OUT/sim_demos.json records how many were tried.
"""
from __future__ import annotations

import argparse
import functools
import shutil
from pathlib import Path

import numpy as np

from class_ros.data import outputs
from class_ros.errors import ClassRosError
from class_ros.sim.cameras import CAMERA_TOPICS  # camera -> raw topic; its frame_id is the camera name
from training.workers import add_workers_argument, ordered_results, resolve_workers

JOINT_STATES_TOPIC = "/joint_states"
ARM_COMMAND_TOPIC = "/forward_position_controller/commands"
GRIPPER_COMMAND_TOPIC = "/gripper_controller/commands"
CAMERA_RATE_HZ = 30.0
JOINT_STATE_RATE_HZ = 100.0
EPOCH_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z: bags carry realistic wall-clock stamps
EPISODE_SPACING_NS = 3600 * 10**9
STORAGES = ("mcap", "sqlite3")
DEMO_STREAM = 0  # seed stream of demonstrations (evaluation uses another, so scenes differ)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI arguments of `class-ros sim-demos`."""
    parser.add_argument("--task", default="lift", help="lift | push | pick_place (default lift)")
    parser.add_argument("--episodes", type=int, default=50, help="successful episodes to record (default 50)")
    parser.add_argument("--camera", default="random", help="fixed | random | moving | heldout (default random)")
    parser.add_argument("--storage", default="mcap", choices=STORAGES, help="rosbag2 storage (default mcap)")
    parser.add_argument("--out", required=True, help="folder for the bags (created; must hold no episode_* yet)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the episodes (default 0)")
    parser.add_argument("--image-size", type=int, nargs="+", default=[96], metavar="PX",
                        help="image height [width] in pixels (default 96)")
    parser.add_argument("--cameras", nargs="+", default=["agentview"], metavar="CAM",
                        help="cameras to record: agentview and/or wrist (eye-in-hand) (default agentview)")
    parser.add_argument("--keep-failed", action="store_true", help="also keep episodes the expert failed")
    add_workers_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Parse-and-call for the CLI."""
    size = args.image_size * 2 if len(args.image_size) == 1 else args.image_size
    summary = record_demos(args.task, args.episodes, args.camera, args.storage, args.out, seed=args.seed,
                           image_size=tuple(size[:2]), keep_failed=args.keep_failed,
                           workers=resolve_workers(args.workers), cameras=tuple(args.cameras))
    print(f"sim-demos: {summary['episodes_kept']} {args.task} episodes written to {summary['out']} "
          f"(expert success {summary['expert_successes']}/{summary['episodes_tried']} = "
          f"{summary['expert_success_rate']:.0%}; summary in {summary['summary_path']})")
    return 0


def record_demos(task: str, episodes: int, camera: str, storage: str, out, seed: int = 0,
                 image_size=(96, 96), keep_failed: bool = False, max_attempts: int | None = None,
                 progress: bool = True, workers: int = 1, cameras=("agentview",)) -> dict:
    """Record `episodes` expert episodes as rosbag2 folders under `out`; returns a summary dict.

    Tries run in order of their index (seed and start time follow from it) over `workers` processes, each
    with its own env and renderer; they are kept in that order, so any `workers` writes the same bags.
    """
    from tqdm import tqdm

    from class_ros.sim.cameras import check_cameras, check_mode
    from class_ros.sim.env import episode_seed
    from class_ros.sim.tasks import check_task

    check_task(task)
    check_mode(camera)
    cameras = check_cameras(cameras)
    if storage not in STORAGES:
        raise ClassRosError(f"unknown bag storage {storage!r}; use mcap or sqlite3.")
    if episodes < 1:
        raise ClassRosError(f"--episodes must be at least 1, got {episodes}.")
    size = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(int(s) for s in image_size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClassRosError(f"--out {out} is a file; pass a folder for the bags.")
    existing = sorted(out.glob("episode_*")) if out.is_dir() else []
    if existing:
        raise ClassRosError(f"{out} already holds {existing[0].name}; choose an empty --out folder or remove it.")
    out.mkdir(parents=True, exist_ok=True)
    # Bags are written under .partial and moved into place when complete: never half-written bags.
    partial = out / ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    max_attempts = max_attempts or 2 * episodes + 10
    recorder = functools.partial(_Recorder, task, camera, size, storage, seed, partial, cameras)

    kept, tried, successes, seeds, lengths = [], 0, 0, [], []
    bar = tqdm(total=episodes, desc=f"sim-demos {task}", unit="ep", disable=not progress)
    try:
        with ordered_results(recorder, range(max_attempts), min(workers, max_attempts)) as results:
            for index, ok, steps in results:
                assert index == tried
                tried += 1
                successes += ok
                tmp = partial / _try_name(index)
                if ok or keep_failed:
                    name = f"episode_{len(kept):04d}"
                    _move_bag(tmp, out / name)
                    kept.append(name)
                    seeds.append(episode_seed(seed, index, DEMO_STREAM))
                    lengths.append(steps)
                    bar.update(1)
                else:
                    shutil.rmtree(tmp)
                bar.set_postfix(success=f"{successes}/{tried}")
                if len(kept) == episodes:
                    break
    finally:
        bar.close()
        shutil.rmtree(partial, ignore_errors=True)

    summary = {
        "task": task, "camera": camera, "storage": storage, "out": str(out), "seed": seed,
        "image_size": list(size), "cameras": list(cameras), "episodes_requested": episodes, "episodes_kept": len(kept),
        "episodes_tried": tried, "expert_successes": successes,
        "expert_success_rate": successes / tried if tried else 0.0, "keep_failed": keep_failed,
        "bags": kept, "episode_seeds": seeds, "episode_control_steps": lengths,
        "topics": [CAMERA_TOPICS[c] for c in cameras] + [JOINT_STATES_TOPIC, ARM_COMMAND_TOPIC, GRIPPER_COMMAND_TOPIC],
    }
    summary_path = out / "sim_demos.json"
    outputs.write_json(summary_path, summary, indent=2)
    summary["summary_path"] = str(summary_path)
    if len(kept) < episodes:
        print(f"sim-demos: warning: only {len(kept)} of {episodes} episodes succeeded in {tried} tries.")
    return summary


def _try_name(index: int) -> str:
    return f"try_{index:05d}"


class _Recorder:
    """One process's env; called with a try index, records that try's bag under `partial`."""

    def __init__(self, task, camera, size, storage, seed, partial, cameras):
        from class_ros.sim.env import ArmEnv

        self.env = ArmEnv(task, camera=camera, image_size=size, render_images=False, cameras=cameras)
        self.storage, self.seed, self.partial = storage, seed, partial

    def __call__(self, index: int) -> tuple[int, bool, int]:
        from class_ros.sim.env import episode_seed

        ok, steps = record_episode(self.env, episode_seed(self.seed, index, DEMO_STREAM),
                                   self.partial / _try_name(index), self.storage,
                                   EPOCH_NS + index * EPISODE_SPACING_NS)
        return index, ok, steps

    def close(self) -> None:
        self.env.close()


def _move_bag(src: Path, dst: Path) -> None:
    """Move a finished bag folder to `dst`, renaming its storage file as if it had been recorded there.

    The storage file takes its folder's name (rosbags' Writer), and which episode number a try becomes
    is known only once the tries before it are in: the file and its two mentions in metadata.yaml are
    renamed, so the bag equals one recorded under its final name, byte for byte.
    """
    meta = src / "metadata.yaml"
    text = meta.read_text()
    for f in list(src.iterdir()):
        if f.stem == src.name:
            new = f.with_name(dst.name + f.suffix)
            f.rename(new)
            text = text.replace(f.name, new.name)
    meta.write_text(text)  # still inside .partial: nobody reads it yet
    outputs.move_into_place(src, dst)  # a bag appears whole or not at all


@functools.cache
def _typestore():
    """One typestore per process: rosbags generates its serialisers lazily, once per store."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


class _BagTopics:
    """A rosbag2 writer with the sim topics (an image topic per camera) and the message constructors they need."""

    def __init__(self, path: Path, storage: str, cameras=("agentview",)):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.ts = _typestore()
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.writer.open()
        add = lambda topic, msgtype: self.writer.add_connection(topic, msgtype, typestore=self.ts)  # noqa: E731
        self.images = {cam: add(CAMERA_TOPICS[cam], "sensor_msgs/msg/Image") for cam in cameras}
        self.joints = add(JOINT_STATES_TOPIC, "sensor_msgs/msg/JointState")
        self.arm = add(ARM_COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray")
        self.gripper = add(GRIPPER_COMMAND_TOPIC, "std_msgs/msg/Float64MultiArray")
        t = self.ts.types
        self._Header, self._Time = t["std_msgs/msg/Header"], t["builtin_interfaces/msg/Time"]
        self._Image, self._JointState = t["sensor_msgs/msg/Image"], t["sensor_msgs/msg/JointState"]
        self._F64, self._Layout = t["std_msgs/msg/Float64MultiArray"], t["std_msgs/msg/MultiArrayLayout"]

    def _write(self, conn, stamp_ns: int, msg) -> None:
        self.writer.write(conn, stamp_ns, self.ts.serialize_cdr(msg, msg.__msgtype__))

    def _header(self, stamp_ns: int, frame_id: str):
        return self._Header(stamp=self._Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)

    def write_image(self, stamp_ns: int, img: np.ndarray, camera: str = "agentview") -> None:
        h, w, _ = img.shape
        msg = self._Image(header=self._header(stamp_ns, camera), height=h, width=w, encoding="rgb8",
                          is_bigendian=0, step=w * 3, data=np.ascontiguousarray(img).reshape(-1))
        self._write(self.images[camera], stamp_ns, msg)

    def write_joint_state(self, stamp_ns: int, names: list[str], pos, vel, effort) -> None:
        msg = self._JointState(header=self._header(stamp_ns, ""), name=names,
                               position=np.asarray(pos, np.float64), velocity=np.asarray(vel, np.float64),
                               effort=np.asarray(effort, np.float64))
        self._write(self.joints, stamp_ns, msg)

    def write_commands(self, stamp_ns: int, action: np.ndarray) -> None:
        layout = self._Layout(dim=[], data_offset=0)
        self._write(self.arm, stamp_ns, self._F64(layout=layout, data=np.asarray(action[:6], np.float64)))
        self._write(self.gripper, stamp_ns, self._F64(layout=layout, data=np.asarray(action[6:7], np.float64)))

    def close(self) -> None:
        self.writer.close()


def record_episode(env, ep_seed: int, path: Path, storage: str, start_ns: int) -> tuple[bool, int]:
    """Run one expert episode in `env`, writing its bag to `path`; returns (success, control steps)."""
    from class_ros.sim.expert import make_expert
    from class_ros.sim.robot import JOINT_NAMES

    env.reset(ep_seed)
    expert = make_expert(env.task, np.random.default_rng([ep_seed, 1]))
    dt = env.model.opt.timestep
    # The timeline in whole physics steps: every event of the episode happens on one.
    per_control = int(round(1.0 / (env.control_rate_hz * dt)))
    per_joint_state = int(round(1.0 / (JOINT_STATE_RATE_HZ * dt)))
    camera_period = 1.0 / (CAMERA_RATE_HZ * dt)  # not whole: frames land on the next physics step
    stamp = lambda step: start_ns + int(round(step * dt * 1e9))  # noqa: E731
    names = list(JOINT_NAMES)
    bag = _BagTopics(path, storage, env.cameras)
    try:
        step, frame, pending = 0, 0, None
        while True:
            if step == int(np.ceil(frame * camera_period - 1e-9)):
                for cam in env.cameras:
                    bag.write_image(stamp(step), env.render(cam), cam)
                frame += 1
            if step % per_joint_state == 0:
                effort = np.append(env.data.actuator_force[:6], env.data.actuator_force[6])
                bag.write_joint_state(stamp(step), names, env.joint_positions(), env.joint_velocities(), effort)
            if pending is not None:  # the command computed one physics step ago arrives now
                env.set_targets(pending)
                bag.write_commands(stamp(step), pending)
                pending = None
            if step % per_control == 0:
                env.steps = step // per_control
                env.success = env.success or env.check_success()
                if env.success or env.steps >= env.max_steps:
                    break
                pending = expert.act(env)
            next_step = min(int(np.ceil(frame * camera_period - 1e-9)),
                            (step // per_joint_state + 1) * per_joint_state,
                            step + 1 if pending is not None else (step // per_control + 1) * per_control)
            env.advance((next_step - step) * dt)
            step = next_step
    finally:
        bag.close()
    return bool(env.success), env.steps
