"""arm_command_node: action chunks in, a steady and safe command stream for a ros2_control arm out.

Usage (venv install; with a ROS 2 distro use `ros2 launch class_ros policy.launch.py`):
    arm_command_node --ros-args --params-file config/policy.yaml --params-file config/robots/sim_arm.yaml

Every control tick it blends the live chunks (class_ros.control.ChunkEnsembler), passes the target
through the safety filter and publishes it. It holds the last safe position (and keeps publishing the
hold) when the watchdog trips or the e-stop is latched; `~/reset_estop` clears the e-stop and
re-anchors at the measured state. An e-stop or a silent policy discards the live chunks; stale
sensors only pause them. Safety parameters are read-only.
"""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from class_ros.control import (ChunkEnsembler, EePoseLimits, EePoseSafetyFilter, JointLimits, JointSafetyFilter,
                               Watchdog)
from class_ros.control.rotation import matrix_to_quaternion, matrix_to_rot6d, quaternion_to_matrix, rot6d_to_matrix
from class_ros.nodes.common import RateMeter, declare, key_values, now_sec, percentiles, require, run_node, \
    stamp_to_sec

INTERFACES = ("forward_position", "joint_trajectory")
KINDS = ("joint_position", "ee_pose")


class ArmCommandNode(Node):
    """Chunks -> ensembled, safety-filtered commands at the control rate, with watchdog and e-stop."""

    def __init__(self, **kwargs):
        super().__init__("arm_command_node", **kwargs)
        ro = True  # safety-relevant parameters cannot be changed while running
        p = {}
        p["action_kind"] = declare(self, "action_kind", "joint_position", "joint_position or ee_pose", ro)
        p["joints"] = declare(self, "joints", [""], "arm joint names, in command order", ro)
        p["gripper_joint"] = declare(self, "gripper_joint", "gripper",
                                     "gripper name in joint_states and the last action dim; empty for none", ro)
        p["command_interface"] = declare(self, "command_interface", "forward_position",
                                         "forward_position (Float64MultiArray) or joint_trajectory", ro)
        p["command_topic"] = declare(self, "command_topic", "/forward_position_controller/commands",
                                     "forward position controller command topic", ro)
        p["trajectory_topic"] = declare(self, "trajectory_topic", "/joint_trajectory_controller/joint_trajectory",
                                        "joint trajectory controller topic", ro)
        p["gripper_topic"] = declare(self, "gripper_topic", "/gripper_controller/commands",
                                     "gripper command topic (Float64MultiArray, 1 value)", ro)
        p["ee_command_topic"] = declare(self, "ee_command_topic", "/cartesian_controller/target_pose",
                                        "PoseStamped target topic for ee_pose actions", ro)
        p["ee_state_topic"] = declare(self, "ee_state_topic", "/cartesian_controller/current_pose",
                                      "PoseStamped measured end-effector pose for ee_pose actions", ro)
        p["ee_frame"] = declare(self, "ee_frame", "base_link", "frame_id of the PoseStamped commands", ro)
        p["joint_states_topic"] = declare(self, "joint_states_topic", "/joint_states", "measured joint states", ro)
        p["camera_topic"] = declare(self, "camera_topic", "/camera/image_raw",
                                    "camera whose header stamps the watchdog checks; empty to not watch", ro)
        p["rate_hz"] = declare(self, "rate_hz", 50.0, "command rate (Hz)", ro)
        p["max_age"] = declare(self, "max_age", 0.2, "joint states / camera older than this (s) -> hold", ro)
        p["chunk_timeout"] = declare(self, "chunk_timeout", 0.5, "no chunk for this long (s) -> hold", ro)
        p["ensemble_decay"] = declare(self, "ensemble_decay", 0.1,
                                      "temporal ensembling weight exp(-decay * k), k = steps into a chunk", ro)
        p["interpolate"] = declare(self, "interpolate", False,
                                   "interpolate between chunk steps (false: hold each step for its period)", ro)
        p["lower"] = declare(self, "lower", [0.0], "position lower limits (joints, then gripper)", ro)
        p["upper"] = declare(self, "upper", [0.0], "position upper limits (joints, then gripper)", ro)
        p["margin"] = declare(self, "margin", [0.02], "distance kept from the position limits (one or per joint)", ro)
        p["max_velocity"] = declare(self, "max_velocity", [1.0], "per joint or one value (units/s)", ro)
        p["max_acceleration"] = declare(self, "max_acceleration", [10.0], "per joint or one value (units/s^2)", ro)
        p["max_step"] = declare(self, "max_step", [0.2], "largest |command - measured| per joint", ro)
        p["workspace_min"] = declare(self, "workspace_min", [-1.0, -1.0, 0.0], "ee_pose workspace box min (m)", ro)
        p["workspace_max"] = declare(self, "workspace_max", [1.0, 1.0, 1.0], "ee_pose workspace box max (m)", ro)
        p["max_translation"] = declare(self, "max_translation", 0.01, "ee_pose max translation per step (m)", ro)
        p["max_rotation"] = declare(self, "max_rotation", 0.05, "ee_pose max rotation per step (rad)", ro)
        p["gripper_max_step"] = declare(self, "gripper_max_step", 0.1, "ee_pose gripper max change per step", ro)
        self.p = p
        self._validate_and_build()

        # State, written only by callbacks of this node's (mutually exclusive) default group.
        self.measured: np.ndarray | None = None  # joint mode: joints (+ gripper); ee mode: (10,)
        self.joint_state_stamp = self.camera_stamp = self.chunk_received = None
        self.estop = False
        self.hold_reasons: list[str] = []
        self.latency: list[float] = []  # s, observation stamp -> first command that used the chunk
        self._reported_stamp = None
        self.rejected_chunks = 0
        self.rates = {k: RateMeter() for k in ("command", "chunk", "joint_state", "camera")}
        self.sent = 0  # commands published
        self.hold_ticks = 0  # ticks spent holding (watchdog or e-stop)

        self.create_subscription(JointTrajectory, "~/action_chunk", self._on_chunk, 10)
        self.create_subscription(Bool, "~/estop", self._on_estop, 10)
        self.create_service(Trigger, "~/reset_estop", self._on_reset)
        if self.kind == "joint_position":
            self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_state, qos_profile_sensor_data)
            if p["command_interface"] == "forward_position":
                self.cmd_pub = self.create_publisher(Float64MultiArray, p["command_topic"], 10)
            else:
                self.cmd_pub = self.create_publisher(JointTrajectory, p["trajectory_topic"], 10)
        else:
            self.create_subscription(PoseStamped, p["ee_state_topic"], self._on_ee_state, qos_profile_sensor_data)
            self.cmd_pub = self.create_publisher(PoseStamped, p["ee_command_topic"], 10)
        self.gripper_pub = self.create_publisher(Float64MultiArray, p["gripper_topic"], 10) if self.has_gripper \
            else None
        if p["camera_topic"]:
            self.create_subscription(Image, p["camera_topic"], self._on_camera, qos_profile_sensor_data)
        self.latency_pub = self.create_publisher(Float64, "~/latency", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.dt, self._tick)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(f"commanding {self.action_names} at {p['rate_hz']} Hz ({self.kind})")

    # --- set-up --------------------------------------------------------------------------------------
    def _validate_and_build(self) -> None:
        p = self.p
        self.kind = p["action_kind"]
        require(self.kind in KINDS, f"action_kind must be one of {KINDS}, got {self.kind!r}.")
        require(p["command_interface"] in INTERFACES,
                f"command_interface must be one of {INTERFACES}, got {p['command_interface']!r}.")
        require(p["rate_hz"] > 0, f"rate_hz must be positive, got {p['rate_hz']}.")
        self.dt = 1.0 / p["rate_hz"]
        self.has_gripper = bool(p["gripper_joint"])
        self.watchdog = Watchdog(p["max_age"], p["chunk_timeout"], watch_camera=bool(p["camera_topic"]))
        self.ensembler = ChunkEnsembler(decay=p["ensemble_decay"], interpolate=p["interpolate"])
        if self.kind == "joint_position":
            joints = list(p["joints"])
            require(len(joints) > 0 and all(joints) and len(set(joints)) == len(joints),
                    f"joints must be a list of distinct non-empty joint names, got {joints}.")
            require(p["gripper_joint"] not in joints, "gripper_joint must not also be listed in joints.")
            self.joints = joints
            self.action_names = joints + ([p["gripper_joint"]] if self.has_gripper else [])
            self.filter = JointSafetyFilter(JointLimits(
                names=self.action_names, lower=p["lower"], upper=p["upper"], max_velocity=p["max_velocity"],
                max_acceleration=p["max_acceleration"], max_step=p["max_step"], margin=p["margin"]), self.dt)
        else:
            require(self.has_gripper, "ee_pose actions end with a gripper value; set gripper_joint.")
            self.action_names = ["x", "y", "z", "r0", "r1", "r2", "r3", "r4", "r5", p["gripper_joint"]]
            self.filter = EePoseSafetyFilter(EePoseLimits(
                p["workspace_min"], p["workspace_max"], p["max_translation"], p["max_rotation"],
                gripper_max_step=p["gripper_max_step"]))

    # --- inputs (store only; the timer does the work) -----------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        missing = [n for n in self.joints if n not in index]
        if missing or len(msg.position) != len(msg.name):
            self.get_logger().warning(f"joint_states lacks {missing or 'positions'}; ignoring it",
                                      throttle_duration_sec=5.0)
            return
        q = [msg.position[index[n]] for n in self.joints]
        if self.has_gripper:
            g = self.p["gripper_joint"]
            last = self.filter.last_command
            q.append(msg.position[index[g]] if g in index else (last[-1] if last is not None else 0.0))
        q = np.asarray(q, dtype=np.float64)
        if not np.all(np.isfinite(q)):
            self.get_logger().warning("joint_states holds NaN; ignoring it", throttle_duration_sec=5.0)
            return
        self.measured = q
        self.joint_state_stamp = stamp_to_sec(msg.header.stamp)
        self.rates["joint_state"].tick()

    def _on_ee_state(self, msg: PoseStamped) -> None:
        o, pos = msg.pose.orientation, msg.pose.position
        rot = quaternion_to_matrix([o.x, o.y, o.z, o.w])
        last = self.filter.last_command
        grip = last[-1] if last is not None else 0.0
        self.measured = np.concatenate([[pos.x, pos.y, pos.z], matrix_to_rot6d(rot), [grip]])
        self.joint_state_stamp = stamp_to_sec(msg.header.stamp)
        self.rates["joint_state"].tick()

    def _on_camera(self, msg: Image) -> None:
        self.camera_stamp = stamp_to_sec(msg.header.stamp)
        self.rates["camera"].tick()

    def _on_chunk(self, msg: JointTrajectory) -> None:
        problem = ""
        if list(msg.joint_names) != self.action_names:
            problem = f"joint names {list(msg.joint_names)} are not {self.action_names}"
        elif not msg.points:
            problem = "it has no points"
        else:
            lengths = {len(pt.positions) for pt in msg.points}
            if lengths != {len(self.action_names)}:
                problem = f"points have {sorted(lengths)} values, expected {len(self.action_names)}"
            else:
                points = np.asarray([pt.positions for pt in msg.points], dtype=np.float64)
                if not np.all(np.isfinite(points)):
                    problem = "it holds NaN or infinite values"
        if problem:
            self.rejected_chunks += 1
            self.get_logger().warning(f"rejected an action chunk: {problem}", throttle_duration_sec=2.0)
            return
        t = np.array([stamp_to_sec(pt.time_from_start) for pt in msg.points])
        dt = float(t[1] - t[0]) if len(t) > 1 else self.dt
        if not dt > 0:
            self.rejected_chunks += 1
            self.get_logger().warning("rejected an action chunk: time_from_start is not increasing",
                                      throttle_duration_sec=2.0)
            return
        stamp = stamp_to_sec(msg.header.stamp) + float(t[0])
        self.ensembler.add(stamp, dt, points, now=now_sec(self))
        self.chunk_received = now_sec(self)
        self.rates["chunk"].tick()

    def _on_estop(self, msg: Bool) -> None:
        if msg.data and not self.estop:
            self.estop = True
            self.ensembler.clear()
            self.get_logger().error("e-stop latched: holding position until ~/reset_estop is called")

    def _on_reset(self, request, response):
        if self.measured is None:
            response.success, response.message = False, "no measured state yet; cannot re-anchor"
            return response
        self.estop = False
        self.ensembler.clear()
        self.filter.anchor(self.measured)
        self.chunk_received = None  # wait for a fresh chunk before moving again
        response.success, response.message = True, "e-stop cleared; re-anchored at the measured state"
        self.get_logger().info(response.message)
        return response

    # --- the control tick -----------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.measured is None:
            return  # nothing safe to command before the first measurement
        now = now_sec(self)
        reasons = ["e-stop latched"] if self.estop else self.watchdog.reasons(
            now, self.joint_state_stamp, self.camera_stamp, self.chunk_received)
        target = None
        if reasons:
            self.hold_ticks += 1
            policy_gone = self.chunk_received is None or now - self.chunk_received > self.watchdog.chunk_timeout
            if self.estop or policy_gone:
                self.ensembler.clear()  # nothing of the old plan resumes after an e-stop or a dead policy
            # A stale camera or joint state only pauses the plan: when inputs are fresh again the live
            # chunks resume at the current time (steps that came due meanwhile are skipped), so a short
            # blip costs no more than its own length.
        else:
            target = self.ensembler.target(now)
        if target is None:
            last = self.filter.last_command
            target = last if last is not None else self.measured
        self.hold_reasons = reasons
        result = self.filter(target, self.measured)
        self._publish(result.command)
        stamp = None if reasons else self.ensembler.newest_stamp()
        if stamp is not None and stamp != self._reported_stamp:
            self._reported_stamp = stamp
            latency = now_sec(self) - stamp
            self.latency.append(latency)
            del self.latency[:-2000]
            self.latency_pub.publish(Float64(data=latency))

    def _publish(self, cmd: np.ndarray) -> None:
        n_arm = len(cmd) - (1 if self.has_gripper else 0)
        if self.kind == "ee_pose":
            msg = PoseStamped()
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self.p["ee_frame"]
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in cmd[:3])
            q = matrix_to_quaternion(rot6d_to_matrix(cmd[3:9]))
            o = msg.pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in q)
            self.cmd_pub.publish(msg)
        elif self.p["command_interface"] == "forward_position":
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
        p50, p99 = percentiles(self.latency[-200:])
        level = DiagnosticStatus.ERROR if self.estop else DiagnosticStatus.WARN if self.hold_reasons \
            else DiagnosticStatus.OK
        values = {f"{k}_rate_hz": m.rate() for k, m in self.rates.items()}
        values.update({"latency_p50_ms": p50 * 1e3, "latency_p99_ms": p99 * 1e3, "estop": self.estop,
                       "holding": bool(self.hold_reasons), "rejected_chunks": self.rejected_chunks,
                       "dropped_steps": self.ensembler.dropped_steps, "commands_sent": self.sent,
                       "hold_ticks": self.hold_ticks})
        values.update({f"clamped_{k}": v for k, v in self.filter.counts.items() if k != "rejected"})
        values["rejected_targets"] = self.filter.counts["rejected"]
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: safety", hardware_id="arm",
                                  message="; ".join(self.hold_reasons) or "following the policy",
                                  values=key_values(values))
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def main(args=None) -> int:
    """Entry point `arm_command_node`."""
    return run_node(ArmCommandNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
