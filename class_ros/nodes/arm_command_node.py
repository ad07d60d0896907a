"""arm_command_node: action chunks in, a steady and safe command stream for a ros2_control arm out.

Usage (venv install; with a ROS 2 distro use `ros2 launch class_ros policy.launch.py`):
    arm_command_node --ros-args --params-file config/policy.yaml --params-file config/robots/sim_arm.yaml

The node only validates messages, feeds them to class_ros.control.ArmStateMachine (the rules for
following, holding, e-stop, tracking faults and re-anchoring) and publishes what it decides, every
control tick, so the arm never goes silent once it has a measured state. Every joint command obeys
the velocity, acceleration and position limits (class_ros.control.safety). `~/reset_estop` clears the
e-stop and tracking faults and re-anchors at the measured state. Inputs it cannot use are dropped and
counted per reason on /diagnostics; an exception in a callback is logged once and counted. Parameters
are read once, into the frozen `ArmCommandParams`, and are read-only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from class_ros.control import (ArmStateMachine, ChunkEnsembler, EePoseLimits, EePoseSafetyFilter, JointLimits,
                               JointSafetyFilter, Watchdog)
from class_ros.control.rotation import matrix_to_quaternion, matrix_to_rot6d, quaternion_to_matrix, rot6d_to_matrix
from class_ros.nodes.common import (CallbackGuard, RateMeter, declare_params, key_values, now_sec, param, percentiles,
                                    require, run_node, stamp_to_sec)

INTERFACES = ("forward_position", "joint_trajectory")
KINDS = ("joint_position", "ee_pose")
EE_NAMES = ["x", "y", "z", "r0", "r1", "r2", "r3", "r4", "r5"]


@dataclass(frozen=True)
class ArmCommandParams:
    """Every parameter of arm_command_node, read once at start (lists become tuples)."""

    action_kind: str = param("joint_position", "joint_position or ee_pose")
    joints: tuple = param(("",), "arm joint names, in command order")
    gripper_joint: str = param("gripper", "gripper name in joint_states and the last action dim; empty for none")
    command_interface: str = param("forward_position", "forward_position (Float64MultiArray) or joint_trajectory")
    command_topic: str = param("/forward_position_controller/commands", "forward position controller command topic")
    trajectory_topic: str = param("/joint_trajectory_controller/joint_trajectory", "joint trajectory controller topic")
    gripper_topic: str = param("/gripper_controller/commands", "gripper command topic (Float64MultiArray, 1 value)")
    ee_command_topic: str = param("/cartesian_controller/target_pose", "PoseStamped target topic for ee_pose actions")
    ee_state_topic: str = param("/cartesian_controller/current_pose", "PoseStamped measured pose for ee_pose actions")
    ee_frame: str = param("base_link", "frame_id of the PoseStamped commands")
    joint_states_topic: str = param("/joint_states", "measured joint states")
    camera_topic: str = param("/camera/image_raw", "camera whose header stamps the watchdog checks; empty to not watch")
    diagnostics_topic: str = param("/diagnostics", "where the camera node's decode errors are read and ours published")
    rate_hz: float = param(50.0, "command rate (Hz)")
    max_age: float = param(0.2, "joint states / camera older than this (s) -> hold")
    max_future: float = param(0.05, "stamps further ahead of this node's clock (s) are a clock-skew fault -> hold")
    chunk_timeout: float = param(0.5, "no chunk for this long (s) -> hold")
    ensemble_decay: float = param(0.1, "temporal ensembling weight exp(-decay * k), k = steps into a chunk")
    interpolate: bool = param(False, "interpolate between chunk steps (false: hold each step for its period)")
    lower: tuple = param((0.0,), "position lower limits (joints, then gripper)")
    upper: tuple = param((0.0,), "position upper limits (joints, then gripper)")
    margin: tuple = param((0.02,), "distance kept from the position limits (one or per joint)")
    max_velocity: tuple = param((1.0,), "per joint or one value (units/s)")
    max_acceleration: tuple = param((10.0,), "per joint or one value (units/s^2)")
    max_step: tuple = param((0.2,), "|measured - command| beyond this latches a tracking fault (per joint or one)")
    workspace_min: tuple = param((-1.0, -1.0, 0.0), "ee_pose workspace box min (m)")
    workspace_max: tuple = param((1.0, 1.0, 1.0), "ee_pose workspace box max (m)")
    max_translation: float = param(0.01, "ee_pose max translation per step (m)")
    max_rotation: float = param(0.05, "ee_pose max rotation per step (rad)")
    gripper_max_step: float = param(0.1, "ee_pose gripper max change per step")

    def __post_init__(self):
        require(self.action_kind in KINDS, f"action_kind must be one of {KINDS}, got {self.action_kind!r}.")
        require(self.command_interface in INTERFACES,
                f"command_interface must be one of {INTERFACES}, got {self.command_interface!r}.")
        require(self.rate_hz > 0, f"rate_hz must be positive, got {self.rate_hz}.")
        if self.action_kind == "joint_position":
            j = list(self.joints)
            require(len(j) > 0 and all(j) and len(set(j)) == len(j),
                    f"joints must be a list of distinct non-empty joint names, got {j}.")
            require(self.gripper_joint not in j, "gripper_joint must not also be listed in joints.")
        else:
            require(bool(self.gripper_joint), "ee_pose actions end with a gripper value; set gripper_joint.")

    @property
    def action_names(self) -> list[str]:
        """Names of the action dims, in order."""
        grip = [self.gripper_joint] if self.gripper_joint else []
        return list(self.joints) + grip if self.action_kind == "joint_position" else EE_NAMES + grip


class ArmCommandNode(Node):
    """Chunks -> ensembled, safety-filtered commands at the control rate, with watchdog, e-stop and faults."""

    def __init__(self, **kwargs):
        super().__init__("arm_command_node", **kwargs)
        self.p = p = declare_params(self, ArmCommandParams)
        self.kind, self.dt, self.has_gripper = p.action_kind, 1.0 / p.rate_hz, bool(p.gripper_joint)
        self.joints, self.action_names = list(p.joints), p.action_names
        if self.kind == "joint_position":
            self.filter = JointSafetyFilter(JointLimits(
                names=self.action_names, lower=p.lower, upper=p.upper, max_velocity=p.max_velocity,
                max_acceleration=p.max_acceleration, max_step=p.max_step, margin=p.margin), self.dt)
        else:
            self.filter = EePoseSafetyFilter(EePoseLimits(p.workspace_min, p.workspace_max, p.max_translation,
                                                          p.max_rotation, gripper_max_step=p.gripper_max_step))
        self.sm = ArmStateMachine(self.filter, Watchdog(p.max_age, p.chunk_timeout, bool(p.camera_topic),
                                                        p.max_future),
                                  ChunkEnsembler(decay=p.ensemble_decay, interpolate=p.interpolate),
                                  self.action_names)
        self.guard = CallbackGuard(self)
        self.latency: list[float] = []  # s, observation stamp -> first command that used the chunk
        self.rates = {k: RateMeter() for k in ("command", "chunk", "joint_state", "camera")}
        self.sent = 0  # commands published
        self.silent_ticks = 0  # ticks after the first command that published nothing (must stay 0)
        self.camera_decode_errors = 0  # the camera node's count, as last read from /diagnostics
        self._last_tick, self.tick_gap_max = None, 0.0  # s, longest time between two ticks since the last report

        g = self.guard.wrap
        self.create_subscription(JointTrajectory, "~/action_chunk", g("action_chunk", self._on_chunk), 10)
        self.create_subscription(Bool, "~/estop", g("estop", self._on_estop), 10)
        self.create_service(Trigger, "~/reset_estop", self._on_reset)
        if self.kind == "joint_position":
            self.create_subscription(JointState, p.joint_states_topic, g("joint_states", self._on_joint_state),
                                     qos_profile_sensor_data)
            if p.command_interface == "forward_position":
                self.cmd_pub = self.create_publisher(Float64MultiArray, p.command_topic, 10)
            else:
                self.cmd_pub = self.create_publisher(JointTrajectory, p.trajectory_topic, 10)
        else:
            self.create_subscription(PoseStamped, p.ee_state_topic, g("ee_state", self._on_ee_state),
                                     qos_profile_sensor_data)
            self.cmd_pub = self.create_publisher(PoseStamped, p.ee_command_topic, 10)
        self.gripper_pub = self.create_publisher(Float64MultiArray, p.gripper_topic, 10) if self.has_gripper \
            else None
        if p.camera_topic:
            self.create_subscription(Image, p.camera_topic, g("camera", self._on_camera), qos_profile_sensor_data)
            self.create_subscription(DiagnosticArray, p.diagnostics_topic, g("diagnostics", self._on_diagnostics), 10)
        self.latency_pub = self.create_publisher(Float64, "~/latency", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, p.diagnostics_topic, 10)
        self.create_timer(self.dt, self._tick)
        self.create_timer(1.0, g("diagnostics_timer", self._publish_diagnostics))
        self.get_logger().info(f"commanding {self.action_names} at {p.rate_hz} Hz ({self.kind})")

    # --- inputs (validate and store; the timer does the work) -------------------------------------------
    def _drop(self, reason: str, detail: str) -> None:
        self.sm.drop(reason)
        self.get_logger().warning(f"dropped a message: {detail}", throttle_duration_sec=5.0)

    def _on_joint_state(self, msg: JointState) -> None:
        names = list(msg.name)
        if len(set(names)) != len(names):
            return self._drop("joint_state_duplicate_names", f"joint_states names a joint twice: {names}")
        if len(msg.position) != len(names):
            return self._drop("joint_state_length", f"joint_states has {len(msg.position)} positions for "
                                                    f"{len(names)} names")
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.joints if n not in index]
        if missing:
            return self._drop("joint_state_missing_joints", f"joint_states lacks {missing}")
        q = [msg.position[index[n]] for n in self.joints]
        if self.has_gripper:
            g = self.p.gripper_joint
            last = self.filter.last_command
            q.append(msg.position[index[g]] if g in index else (last[-1] if last is not None else 0.0))
        why = self.sm.joint_state(stamp_to_sec(msg.header.stamp), q, now_sec(self))
        if why:
            return self.get_logger().warning(f"dropped a joint state: {why}", throttle_duration_sec=5.0)
        self.rates["joint_state"].tick()

    def _on_ee_state(self, msg: PoseStamped) -> None:
        o, pos = msg.pose.orientation, msg.pose.position
        quat = np.array([o.x, o.y, o.z, o.w])
        if not (np.all(np.isfinite(quat)) and np.linalg.norm(quat) > 1e-6):
            return self._drop("ee_state_bad_orientation", "the measured pose has no valid orientation")
        last = self.filter.last_command
        grip = last[-1] if last is not None else 0.0
        pose = np.concatenate([[pos.x, pos.y, pos.z], matrix_to_rot6d(quaternion_to_matrix(quat)), [grip]])
        if not self.sm.joint_state(stamp_to_sec(msg.header.stamp), pose, now_sec(self)):
            self.rates["joint_state"].tick()

    def _on_camera(self, msg: Image) -> None:
        if not self.sm.camera(stamp_to_sec(msg.header.stamp)):
            self.rates["camera"].tick()

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        # The camera node counts frames it could not decode; a rising count explains a silent camera.
        for status in msg.status:
            if status.hardware_id != "camera":
                continue
            values = {kv.key: kv.value for kv in status.values}
            count = int(values.get("decode_errors", "0"))
            if count > self.camera_decode_errors:
                self.sm.camera_undecodable(now_sec(self), f"{values.get('last_decode_error', '?')} "
                                                          f"({count} dropped)")
            self.camera_decode_errors = count

    def _on_chunk(self, msg: JointTrajectory) -> None:
        if list(msg.joint_names) != self.action_names:
            return self._drop("chunk_joint_names", f"chunk joint names {list(msg.joint_names)} are not "
                                                   f"{self.action_names}")
        lengths = {len(pt.positions) for pt in msg.points}
        if not msg.points or lengths != {len(self.action_names)}:
            return self._drop("chunk_shape", f"chunk points have {sorted(lengths)} values, expected "
                                             f"{len(self.action_names)}")
        points = np.asarray([pt.positions for pt in msg.points], dtype=np.float64)
        t = np.array([stamp_to_sec(pt.time_from_start) for pt in msg.points])
        dt = float(t[1] - t[0]) if len(t) > 1 else self.dt
        if len(t) > 1 and not np.all(np.diff(t) > 0):
            return self._drop("chunk_bad_time", "chunk time_from_start is not increasing")
        why = self.sm.chunk(stamp_to_sec(msg.header.stamp) + float(t[0]), dt, points, now_sec(self))
        if why:
            return self.get_logger().warning(f"rejected an action chunk: {why}", throttle_duration_sec=2.0)
        self.rates["chunk"].tick()

    def _on_estop(self, msg: Bool) -> None:
        if msg.data and self.sm.trigger_estop():
            self.get_logger().error("e-stop latched: holding position until ~/reset_estop is called")

    def _on_reset(self, request, response):
        try:
            response.success, response.message = self.sm.reset(now_sec(self))
        except Exception as err:  # noqa: BLE001 - the service must answer
            response.success, response.message = False, f"reset failed: {err}"
        # Two call sites: rclpy refuses one logging call site used at two severities (ValueError).
        if response.success:
            self.get_logger().info(response.message)
        else:
            self.get_logger().warning(response.message)
        return response

    # --- the control tick -------------------------------------------------------------------------------
    def _tick(self) -> None:
        t = time.monotonic()
        if self._last_tick is not None:
            self.tick_gap_max = max(self.tick_gap_max, t - self._last_tick)  # how late the timer ran
        self._last_tick = t
        try:
            d = self.sm.tick(now_sec(self))
        except Exception as err:  # noqa: BLE001 - never silent: keep sending the last command
            self.guard.record("tick", err)
            last = self.filter.last_command
            if last is not None:
                self._publish(last)
            else:
                self.silent_ticks += 1
            return
        if d.command is None:
            self.silent_ticks += self.sm.anchored  # never, by the rules: once anchored every tick commands
            return  # nothing safe to command before the first measurement
        if d.reanchor:
            self.get_logger().warning(f"re-anchored at the measured state ({d.reanchor})")
        if d.mode == "tracking_fault" and d.reanchor:
            self.get_logger().error(d.reasons[0])
        self._publish(d.command)
        if d.latency is not None:
            self.latency.append(d.latency)
            del self.latency[:-2000]
            self.latency_pub.publish(Float64(data=d.latency))

    def _publish(self, cmd: np.ndarray) -> None:
        n_arm = len(cmd) - (1 if self.has_gripper else 0)
        if self.kind == "ee_pose":
            msg = PoseStamped()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.p.ee_frame
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in cmd[:3])
            q = matrix_to_quaternion(rot6d_to_matrix(cmd[3:9]))
            o = msg.pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in q)
            self.cmd_pub.publish(msg)
        elif self.p.command_interface == "forward_position":
            self.cmd_pub.publish(Float64MultiArray(data=[float(v) for v in cmd[:n_arm]]))
        else:
            msg = JointTrajectory(joint_names=self.joints)
            point = JointTrajectoryPoint(positions=[float(v) for v in cmd[:n_arm]])
            point.time_from_start.nanosec = int(self.dt * 1e9)
            msg.points = [point]
            self.cmd_pub.publish(msg)
        if self.gripper_pub is not None:
            self.gripper_pub.publish(Float64MultiArray(data=[float(cmd[-1])]))
        self.sent += 1
        self.rates["command"].tick()

    def _publish_diagnostics(self) -> None:
        sm, d = self.sm, self.sm.last
        p50, p99 = percentiles(self.latency[-200:])
        level = DiagnosticStatus.ERROR if d.mode in ("estop", "tracking_fault") else \
            DiagnosticStatus.WARN if d.reasons else DiagnosticStatus.OK
        values = {f"{k}_rate_hz": m.rate() for k, m in self.rates.items()}
        values.update({"mode": d.mode, "latency_p50_ms": p50 * 1e3, "latency_p99_ms": p99 * 1e3, "estop": sm.estop,
                       "tracking_fault": sm.fault or "none", "tracking_faults": sm.tracking_faults,
                       "holding": d.mode != "following", "dropped_steps": sm.ensembler.dropped_steps,
                       "commands_sent": self.sent, "hold_ticks": sm.hold_ticks,
                       "tick_gap_max_ms": self.tick_gap_max * 1e3, "silent_ticks": self.silent_ticks,
                       "rejected_chunks": sum(v for k, v in sm.dropped.items() if k.startswith("chunk_")),
                       "reanchors": sum(sm.reanchors.values())})
        values.update({f"reanchors_{k.replace(' ', '_')}": v for k, v in sm.reanchors.items()})
        values.update({f"clamped_{k}": v for k, v in self.filter.counts.items() if k != "rejected"})
        values["rejected_targets"] = self.filter.counts["rejected"]
        values.update({f"dropped_{k}": v for k, v in sm.dropped.items()})
        values.update({f"callback_error {k}": v for k, v in self.guard.counts.items()})
        self.tick_gap_max = 0.0
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: safety", hardware_id="arm",
                                  message="; ".join(d.reasons) or "following the policy", values=key_values(values))
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def main(args=None) -> int:
    """Entry point `arm_command_node`."""
    return run_node(ArmCommandNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
