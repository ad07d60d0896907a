"""sim_node: the built-in MuJoCo arm world behind the topics a real ros2_control arm has.

Usage:
    sim_node --ros-args --params-file config/sim.yaml -p task:=lift -p camera:=random

Publishes /joint_states (100 Hz), /camera/image_raw (rgb8, 30 Hz; with `cameras: [agentview, wrist]`
also the eye-in-hand /wrist_camera/image_raw, same stamps), ~/success (std_msgs/Bool, latched for the
episode) and optionally /clock; takes /forward_position_controller/commands (6 arm joint
targets), /gripper_controller/commands (1 value, 0 open .. 1 closed) and
/joint_trajectory_controller/joint_trajectory. `~/reset` (std_srvs/Trigger) starts a new episode from
the `seed` parameter. Physics advances in real time, one joint-state period per tick.

A reset teleports the world, but a controller keeps sending the pose it held before (arm_command_node
holds its last command under e-stop). So after `~/reset` the sim ignores commands until they agree
with the new start pose within `RESET_AGREEMENT` - that is, until the controller has re-anchored at the
measured state (arm_command_node's `~/reset_estop`); it logs once per reset when it is waiting.

All MuJoCo work (physics, rendering, resets) happens in one thread owned by the node: an EGL
context belongs to the thread that made it current, and executors run callbacks on any thread.
ROS callbacks only hand commands and reset requests to that thread.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
import time

import numpy as np
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from class_ros.errors import ClassRosError
from class_ros.nodes.common import LATCHED, declare_params, param, require, run_node

RESET_AGREEMENT = 0.05  # rad (gripper: 0..1 units): a command this close to the start pose is "re-anchored"


@dataclass(frozen=True)
class SimParams:
    """sim_node's parameters, read once at start-up; only `seed` may change while it runs (read at ~/reset)."""

    task: str = param("lift", "sim task: lift, push or pick_place")
    camera: str = param("fixed", "camera mode: fixed, random, moving or heldout")
    image_size: tuple[int, ...] = param([96, 96], "rendered image (height, width)")
    seed: int = param(0, "seed of the next ~/reset (and of the first episode)", read_only=False)
    joint_state_rate_hz: float = param(100.0, "physics tick and /joint_states rate")
    camera_rate_hz: float = param(30.0, "/camera/image_raw rate")
    publish_clock: bool = param(False, "publish the sim time on /clock")
    frame_id: str = param("agentview", "agentview camera frame_id (the wrist camera's is `wrist`)")
    cameras: tuple[str, ...] = param(["agentview"], "cameras to publish: agentview (/camera/image_raw) and/or "
                                                    "wrist (/wrist_camera/image_raw, eye-in-hand)")

    def __post_init__(self):
        require(self.joint_state_rate_hz > 0 and self.camera_rate_hz > 0,
                f"joint_state_rate_hz and camera_rate_hz must be positive, got {self.joint_state_rate_hz} and "
                f"{self.camera_rate_hz}.")
        require(len(self.image_size) == 2, f"image_size must be [height, width], got {list(self.image_size)}.")
        from class_ros.sim.cameras import check_cameras
        check_cameras(self.cameras)


class SimNode(Node):
    """Steps an ArmEnv in real time and exposes it through ros2_control-style topics."""

    def __init__(self, **kwargs):
        super().__init__("sim_node", **kwargs)
        from class_ros.sim import robot

        self.p = p = declare_params(self, SimParams)
        self.names = list(robot.JOINT_NAMES)
        self.dt = 1.0 / p.joint_state_rate_hz
        self.episode = 0
        self.success = False
        self.seed = int(p.seed)
        self._lock = threading.Lock()
        self._targets: dict[int, float] = {}  # joint index -> pending target, applied by the sim thread
        self._reset_request: int | None = None
        self._await_anchor = False  # after ~/reset: ignore commands until they agree with the start pose
        self.ignored_after_reset = 0  # commands dropped that way since the last reset
        self._reset_done = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None

        self.js_pub = self.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        from class_ros.sim.cameras import CAMERA_TOPICS
        self.img_pubs = {cam: self.create_publisher(Image, CAMERA_TOPICS[cam], qos_profile_sensor_data)
                         for cam in p.cameras}
        self.success_pub = self.create_publisher(Bool, "~/success", LATCHED)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if p.publish_clock else None
        self.create_subscription(Float64MultiArray, "/forward_position_controller/commands", self._on_arm, 10)
        self.create_subscription(Float64MultiArray, "/gripper_controller/commands", self._on_gripper, 10)
        self.create_subscription(JointTrajectory, "/joint_trajectory_controller/joint_trajectory", self._on_traj, 10)
        self.create_service(Trigger, "~/reset", self._on_reset)
        self.create_timer(0.1, self._publish_success)
        self._thread = threading.Thread(target=self._loop, name="mujoco", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=60.0) or self._error is not None:
            self._stop.set()
            raise ClassRosError(f"the MuJoCo sim failed to start: {self._error}")
        self.get_logger().info(f"sim '{p.task}' with a {p.camera} camera, seed {p.seed}, publishing {list(p.cameras)}")

    # --- commands ---------------------------------------------------------------------------------
    def _set(self, index: slice, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            self.get_logger().warning("ignoring a command with NaN values", throttle_duration_sec=2.0)
            return
        with self._lock:
            for i, v in zip(range(7)[index], values):
                self._targets[i] = float(v)

    def _on_arm(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 6:
            self.get_logger().warning(f"arm commands need 6 values, got {len(msg.data)}", throttle_duration_sec=2.0)
            return
        self._set(slice(0, 6), msg.data)

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        if len(msg.data) != 1:
            self.get_logger().warning(f"gripper commands need 1 value, got {len(msg.data)}", throttle_duration_sec=2.0)
            return
        self._set(slice(6, 7), msg.data)

    def _on_traj(self, msg: JointTrajectory) -> None:
        if not msg.points:
            return
        index = {n: i for i, n in enumerate(self.names)}
        if any(n not in index for n in msg.joint_names) or len(msg.points[0].positions) != len(msg.joint_names):
            self.get_logger().warning(f"unknown joints in trajectory {list(msg.joint_names)}", throttle_duration_sec=2.0)
            return
        for name, value in zip(msg.joint_names, msg.points[0].positions):
            self._set(slice(index[name], index[name] + 1), [value])

    def _on_reset(self, request, response):
        seed = int(self.get_parameter("seed").value)
        self._reset_done.clear()
        with self._lock:
            self._reset_request = seed
        if not self._reset_done.wait(timeout=30.0):
            response.success, response.message = False, "the sim thread did not reset in 30 s"
            return response
        response.success, response.message = True, f"episode {self.episode} started (seed {seed})"
        return response

    # --- the sim thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        from class_ros.sim.env import ArmEnv
        try:
            self.env = ArmEnv(task=self.p.task, camera=self.p.camera, image_size=tuple(self.p.image_size),
                              seed=self.seed, cameras=self.p.cameras)
            self._start_episode(self.seed)
            self.env.render()  # create the renderer (and its GL context) in this thread
        except BaseException as err:  # noqa: BLE001 - reported by the constructor
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        cam_period = 1.0 / self.p.camera_rate_hz
        next_tick = next_frame = time.monotonic()
        try:
            while not self._stop.is_set() and self.context.ok():
                now = time.monotonic()
                if now >= next_frame:
                    self._camera()
                    next_frame = max(next_frame + cam_period, now)
                if now >= next_tick:
                    self._apply_requests()
                    self._physics()
                    # Behind by more than a few ticks (a busy machine): drop them rather than race.
                    next_tick = max(next_tick + self.dt, now - 3 * self.dt)
                time.sleep(max(0.0, min(next_tick, next_frame) - time.monotonic()))
        except Exception:  # noqa: BLE001 - publishing fails once Ctrl-C has shut the context down
            if self.context.ok() and not self._stop.is_set():
                raise
        finally:
            self.env.close()  # the renderer's GL context goes with the thread that owns it

    def _apply_requests(self) -> None:
        with self._lock:
            targets, self._targets = self._targets, {}
            seed, self._reset_request = self._reset_request, None
        if seed is not None:
            self._start_episode(seed)
            self._await_anchor, self.ignored_after_reset = True, 0
            self._reset_done.set()
            return
        if targets:
            new = self.current_targets.copy()
            for i, v in targets.items():
                new[i] = v
            if self._await_anchor:
                if np.max(np.abs(new - self.current_targets)) > RESET_AGREEMENT:
                    if self.ignored_after_reset == 0:
                        self.get_logger().info(
                            "after ~/reset: ignoring commands away from the new start pose until the controller "
                            "re-anchors at the measured state (arm_command_node: ~/reset_estop)")
                    self.ignored_after_reset += 1
                    return
                self._await_anchor = False
            self.current_targets = new
            self.env.set_targets(new)

    def _start_episode(self, seed: int) -> None:
        """New episode from `seed`; the targets start at the new start pose."""
        self.seed = seed
        self.env.reset(seed=seed)
        self.current_targets = self.env.joint_positions()
        self.env.set_targets(self.current_targets)
        self.success = False
        self.episode += 1

    # --- physics and sensors ------------------------------------------------------------------------
    def _physics(self) -> None:
        self.env.advance(self.dt)
        self.success = self.success or self.env.check_success()
        msg = JointState(name=self.names)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.position = [float(v) for v in self.env.joint_positions()]
        msg.velocity = [float(v) for v in self.env.joint_velocities()]
        self.js_pub.publish(msg)
        if self.clock_pub is not None:
            t = int(self.env.sim_time * 1e9)
            clock = Clock()
            clock.clock.sec, clock.clock.nanosec = t // 10**9, t % 10**9
            self.clock_pub.publish(clock)

    def _camera(self) -> None:
        stamp = self.get_clock().now().to_msg()  # the exposure time: before rendering
        for cam, pub in self.img_pubs.items():  # every camera's frame of this instant carries the same stamp
            img = self.env.render(cam)
            h, w, _ = img.shape
            msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=img.tobytes())
            msg.header.stamp = stamp
            msg.header.frame_id = self.p.frame_id if cam == "agentview" else cam
            pub.publish(msg)

    def _publish_success(self) -> None:
        self.success_pub.publish(Bool(data=bool(self.success)))

    def destroy_node(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)
        return super().destroy_node()


def main(args=None) -> int:
    """Entry point `sim_node`."""
    return run_node(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
