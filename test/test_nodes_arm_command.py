"""arm_command_node under fault injection, on real DDS, with the node in its own process.

A small plant in the test process plays the arm: it publishes /joint_states (the last command it
received, as a position-controlled arm that tracks perfectly, or a fixed pose for a blocked arm) and
camera frames, and records every command the node actually publishes. Each test asserts on those
commands; every test also checks that no command ever left the limits or moved faster than allowed.
"""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ROBOT = REPO / "config" / "robots" / "sim_arm.yaml"
LIM = yaml.safe_load(ROBOT.read_text())["arm_command_node"]["ros__parameters"]
NAMES = LIM["joints"] + [LIM["gripper_joint"]]
LOWER = np.array(LIM["lower"]) + np.array(LIM["margin"])
UPPER = np.array(LIM["upper"]) - np.array(LIM["margin"])
VMAX = np.array(LIM["max_velocity"])
MAX_STEP = np.array(LIM["max_step"])
RATE = 50.0
HOME = np.array([0.0, 0.3, 1.3, 1.54, 0.0, 0.0, 0.2])


def start_arm_node(*extra):
    """arm_command_node as its own process, with the sim arm's limits."""
    cmd = [sys.executable, "-m", "class_ros.nodes.arm_command_node", "--ros-args", "--params-file", str(ROBOT),
           "-p", f"rate_hz:={RATE}", "-p", "chunk_timeout:=0.5", "-p", "max_age:=0.2", *extra]
    return subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Rig:
    """The test side of the graph: plant, camera, chunk publisher, command recorder."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float64MultiArray
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("fault_rig", context=self.ctx)
        self.lock = threading.Lock()
        self.state = HOME.copy()
        self.blocked = False  # True: the arm does not move whatever it is told
        self.joint_states_on, self.js_age, self.camera_on = True, 0.0, True
        self.commands: list[tuple[float, np.ndarray, np.ndarray]] = []  # (time, command (7,), state then)
        self._arm, self._grip = None, None
        n = self.node
        self.js_pub = n.create_publisher(JointState, "/joint_states", qos_profile_sensor_data)
        self.cam_pub = n.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.chunk_pub = n.create_publisher(JointTrajectory, "/arm_command_node/action_chunk", 10)
        self.estop_pub = n.create_publisher(Bool, "/arm_command_node/estop", 10)
        self.reset_cli = n.create_client(Trigger, "/arm_command_node/reset_estop")
        n.create_subscription(Float64MultiArray, "/forward_position_controller/commands", self._on_arm, 100)
        n.create_subscription(Float64MultiArray, "/gripper_controller/commands", self._on_grip, 100)
        from diagnostic_msgs.msg import DiagnosticArray
        self.diagnostics = []
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        n.create_timer(0.01, self._plant)
        n.create_timer(1 / 30, self._camera)
        self.JointState, self.Image, self.JointTrajectory, self.Bool, self.Trigger = \
            JointState, Image, JointTrajectory, Bool, Trigger
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()
        self.thread.join(timeout=5)

    # plant and sensors
    def _stamp(self, age=0.0):
        t = self.node.get_clock().now().nanoseconds - int(age * 1e9)
        from builtin_interfaces.msg import Time
        return Time(sec=t // 10**9, nanosec=t % 10**9)

    def _plant(self):
        if not self.joint_states_on:
            return
        msg = self.JointState(name=NAMES)
        msg.header.stamp = self._stamp(self.js_age)
        with self.lock:
            msg.position = [float(v) for v in self.state]
        self.js_pub.publish(msg)

    def _camera(self):
        if self.camera_on:
            msg = self.Image(height=4, width=4, encoding="rgb8", step=12, data=bytes(48))
            msg.header.stamp = self._stamp()
            self.cam_pub.publish(msg)

    def _on_arm(self, msg):
        self._arm = np.array(msg.data)
        self._record()

    def _on_grip(self, msg):
        self._grip = np.array(msg.data)
        self._record()

    def _record(self):
        if self._arm is None or self._grip is None:
            return
        cmd = np.concatenate([self._arm, self._grip])
        self._arm, self._grip = None, None
        with self.lock:
            self.commands.append((time.monotonic(), cmd, self.state.copy()))
            if not self.blocked and cmd.shape == self.state.shape:
                self.state = cmd.copy()  # a position-controlled arm that tracks its command

    # the policy side
    def send_chunk(self, points, names=NAMES, dt=0.1):
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectoryPoint
        msg = self.JointTrajectory(joint_names=list(names))
        msg.header.stamp = self._stamp()
        for k, p in enumerate(points):
            ns = int(round(k * dt * 1e9))
            msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in p],
                                                   time_from_start=Duration(sec=ns // 10**9, nanosec=ns % 10**9)))
        self.chunk_pub.publish(msg)

    def stream(self, goal, seconds, rate=10.0, n=16):
        """Publish constant-goal chunks like a policy at `rate` for `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.send_chunk(np.tile(goal, (n, 1)))
            time.sleep(1.0 / rate)

    def wait_for_commands(self, timeout=20.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end and len(self.commands) < 5:
            time.sleep(0.05)
        assert len(self.commands) >= 5, "arm_command_node published no commands"

    def since(self, t0):
        with self.lock:
            return [c for c in self.commands if c[0] >= t0]

    def reset_estop(self):
        assert self.reset_cli.wait_for_service(timeout_sec=5.0)
        fut = self.reset_cli.call_async(self.Trigger.Request())
        end = time.monotonic() + 5
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.02)
        return fut.result()

    def check_safe(self):
        """No published command ever violated the limits, the max step or the velocity limit."""
        with self.lock:
            cmds = list(self.commands)
        assert cmds
        c = np.array([x[1] for x in cmds])
        assert np.all(np.isfinite(c))
        assert np.all(c >= LOWER - 1e-9) and np.all(c <= UPPER + 1e-9)
        for _, cmd, state in cmds:
            # The node filters against the state it last received, at most a few plant ticks old.
            assert np.all(np.abs(cmd - state) <= MAX_STEP + VMAX * 0.1 + 1e-9)
        if not self.blocked:
            # Consecutive commands: velocity limit at the command period (measured tracks commands).
            assert np.all(np.abs(np.diff(c, axis=0)) <= VMAX / RATE + 1e-9)


def held_constant(cmds, min_count):
    c = np.array([x[1] for x in cmds])
    return len(c) >= min_count and np.ptp(c, axis=0).max() < 1e-9


@pytest.fixture
def rig():
    proc = start_arm_node()
    r = Rig()
    try:
        r.wait_for_commands()
        yield r
    finally:
        r.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


GOAL = HOME + np.array([0.4, -0.2, 0.0, 0.0, 0.0, 0.0, 0.6])


def test_follows_chunks_within_limits(rig):
    # Before any chunk it holds home (and keeps publishing the hold).
    assert held_constant(rig.since(0.0), 5)
    np.testing.assert_allclose(rig.commands[-1][1], np.clip(HOME, LOWER, UPPER), atol=1e-9)
    rig.stream(GOAL, 1.5)
    np.testing.assert_allclose(rig.commands[-1][1], GOAL, atol=1e-6)
    rig.check_safe()


def test_nan_and_wrong_length_chunks_are_rejected(rig):
    rig.stream(GOAL, 0.6)
    t0 = time.monotonic()
    bad_nan = np.tile(GOAL, (16, 1))
    bad_nan[3, 2] = np.nan
    for _ in range(5):
        rig.send_chunk(bad_nan)
        rig.send_chunk(np.zeros((16, 6)))  # one value short
        rig.send_chunk(np.zeros((16, 7)), names=NAMES[::-1])  # joint order the node does not use
        time.sleep(0.1)
    later = rig.since(t0)
    assert len(later) > 15
    # The rejected chunks never reach the arm: it still heads for GOAL, never to 0.
    c = np.array([x[1] for x in later])
    assert np.all(np.abs(c - GOAL).max(axis=1) <= np.abs(c[0] - GOAL).max() + 1e-9)
    rig.stream(GOAL, 0.6)
    np.testing.assert_allclose(rig.commands[-1][1], GOAL, atol=1e-6)
    rig.check_safe()


def test_targets_beyond_limits_are_clamped(rig):
    beyond = HOME.copy()
    beyond[1] = 5.0  # far past shoulder_lift's 1.9 rad
    beyond[6] = -3.0  # gripper below 0
    rig.stream(beyond, 2.5)
    last = rig.commands[-1][1]
    assert last[1] == pytest.approx(UPPER[1])
    assert last[6] == pytest.approx(LOWER[6])
    rig.check_safe()


def test_huge_jump_against_a_blocked_arm_stays_within_max_step(rig):
    rig.blocked = True  # e.g. the arm is pushing against an obstacle
    jump = HOME + np.array([2.0, -1.5, -2.5, 1.0, 1.5, 2.0, 1.0])
    t0 = time.monotonic()
    rig.stream(jump, 1.0)
    c = np.array([x[1] for x in rig.since(t0)])
    assert len(c) > 20
    # Never further than max_step from where the arm really is (HOME), although the target is far.
    assert np.all(np.abs(c - HOME) <= MAX_STEP + 1e-9)
    assert np.abs(c[-1] - HOME)[0] == pytest.approx(MAX_STEP[0])  # as far as allowed, no further
    rig.check_safe()


@pytest.mark.parametrize("fault", ["camera", "joint_states_old", "joint_states_gone"])
def test_stale_inputs_hold_and_keep_publishing(rig, fault):
    rig.stream(GOAL, 0.4)
    if fault == "camera":
        rig.camera_on = False
    elif fault == "joint_states_old":
        rig.js_age = 0.5  # stamps half a second in the past: stale, although messages keep coming
    else:
        rig.joint_states_on = False
    t_fault = time.monotonic()
    far = HOME + np.array([-0.8, 0.5, -0.6, 0.0, 0.0, 0.0, 0.0])
    rig.stream(far, 1.2)  # the policy keeps talking, but the inputs are stale
    held = rig.since(t_fault + 0.5)  # max_age 0.2 s, plus deceleration within the acceleration limit
    assert held_constant(held, int(0.6 * RATE)), "the arm did not hold while inputs were stale"
    # It held short of the new goal: the stale-time chunks were not followed.
    assert np.abs(held[-1][1] - far).max() > 0.3
    rig.check_safe()
    # Fresh inputs again: it follows the policy once more.
    rig.camera_on, rig.js_age, rig.joint_states_on = True, 0.0, True
    rig.stream(far, 1.5)
    np.testing.assert_allclose(rig.commands[-1][1], far, atol=1e-6)
    rig.check_safe()


POLICY_SCRIPT = """
import sys, time, numpy as np, rclpy
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from builtin_interfaces.msg import Duration
names, goal = sys.argv[1].split(","), [float(v) for v in sys.argv[2].split(",")]
rclpy.init()
node = rclpy.create_node("fake_policy_process")
pub = node.create_publisher(JointTrajectory, "/arm_command_node/action_chunk", 10)
while True:
    msg = JointTrajectory(joint_names=names)
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.points = [JointTrajectoryPoint(positions=goal, time_from_start=Duration(sec=0, nanosec=k * 100_000_000))
                  for k in range(16)]
    pub.publish(msg)
    print("sent", flush=True)
    time.sleep(0.1)
"""


def test_policy_process_killed_mid_run_holds(rig):
    far = HOME + np.array([1.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # takes ~0.8 s at 1.8 rad/s
    proc = subprocess.Popen([sys.executable, "-c", POLICY_SCRIPT, ",".join(NAMES), ",".join(map(str, far))],
                            env=os.environ.copy(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "sent"
        end = time.monotonic() + 10
        while time.monotonic() < end and abs(rig.commands[-1][1][0] - HOME[0]) < 0.3:
            time.sleep(0.02)
        assert abs(rig.commands[-1][1][0] - HOME[0]) >= 0.3, "the policy process never moved the arm"
    finally:
        proc.kill()  # SIGKILL: no goodbye message
        proc.wait()
    t_kill = time.monotonic()
    time.sleep(1.5)
    held = rig.since(t_kill + 0.5 + 0.3)  # chunk_timeout, plus deceleration
    assert held_constant(held, int(0.5 * RATE))
    assert abs(held[-1][1][0] - far[0]) > 0.1, "it kept executing the dead policy's last chunk"
    rig.check_safe()


def test_estop_latches_until_reset_then_reanchors(rig):
    rig.stream(GOAL, 0.4)
    rig.estop_pub.publish(rig.Bool(data=True))
    t_stop = time.monotonic()
    far = HOME + np.array([-0.8, 0.5, -0.6, 0.0, 0.0, 0.0, 0.0])
    rig.stream(far, 0.5)
    rig.estop_pub.publish(rig.Bool(data=False))  # a False does not clear the latch
    rig.stream(far, 0.8)
    held = rig.since(t_stop + 0.3)
    assert held_constant(held, int(0.8 * RATE)), "the e-stop did not hold the arm"
    # /diagnostics says so, with the counters the operator needs.
    from diagnostic_msgs.msg import DiagnosticStatus
    status = [s for d in rig.diagnostics for s in d.status if "safety" in s.name][-1]
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.ERROR and "e-stop" in status.message and values["estop"] == "True"
    assert float(values["command_rate_hz"]) > 5 and int(values["commands_sent"]) > 10  # rates depend on the load
    assert {"latency_p50_ms", "latency_p99_ms", "clamped_velocity", "clamped_max_step", "rejected_chunks",
            "joint_state_rate_hz", "camera_rate_hz", "chunk_rate_hz"} <= set(values)
    hold_pos = held[-1][1]
    assert np.abs(hold_pos - far).max() > 0.3
    res = rig.reset_estop()
    assert res.success, res.message
    # Re-anchored at the measured state: the first command after the reset starts from where the arm is.
    t_reset = time.monotonic()
    rig.stream(far, 2.0)
    after = rig.since(t_reset)
    assert np.abs(after[0][1] - hold_pos).max() <= (VMAX / RATE).max() + 1e-9
    np.testing.assert_allclose(rig.commands[-1][1], far, atol=1e-6)
    rig.check_safe()


def test_bad_parameters_fail_at_start_with_one_clear_line():
    for extra, words in ((["-p", "rate_hz:=-5.0"], "rate_hz must be positive"),
                         (["-p", "joints:=[a, a, b, c, d, e]"], "distinct"),
                         (["-p", "max_velocity:=[1.0, 2.0]"], "one per joint")):
        proc = start_arm_node(*extra)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 1, out
        assert words in out and "Traceback" not in out, out


def test_ee_pose_actions_become_bounded_pose_commands(tmp_path):
    """End-effector actions: PoseStamped targets inside the workspace, at most max_translation per step."""
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    from class_ros.control.rotation import matrix_to_rot6d

    params = tmp_path / "ee.yaml"
    params.write_text(yaml.safe_dump({"arm_command_node": {"ros__parameters": {
        "action_kind": "ee_pose", "gripper_joint": "gripper", "camera_topic": "", "rate_hz": 50.0,
        "workspace_min": [0.2, -0.3, 0.05], "workspace_max": [0.6, 0.3, 0.5], "max_translation": 0.004,
        "max_rotation": 0.02}}}))
    proc = subprocess.Popen([sys.executable, "-m", "class_ros.nodes.arm_command_node", "--ros-args", "--params-file",
                             str(params)], env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("ee_rig", context=ctx)
    got = []
    node.create_subscription(PoseStamped, "/cartesian_controller/target_pose", got.append, 100)
    state_pub = node.create_publisher(PoseStamped, "/cartesian_controller/current_pose", 10)
    chunk_pub = node.create_publisher(JointTrajectory, "/arm_command_node/action_chunk", 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    measured = np.array([0.4, 0.0, 0.3])

    def publish_state():
        msg = PoseStamped()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in measured)
        msg.pose.orientation.w = 1.0
        state_pub.publish(msg)

    def publish_chunk():
        goal = np.concatenate([[0.9, 0.0, 0.3], matrix_to_rot6d(np.eye(3)), [1.0]])  # x beyond the box
        msg = JointTrajectory(joint_names=["x", "y", "z", "r0", "r1", "r2", "r3", "r4", "r5", "gripper"])
        msg.header.stamp = node.get_clock().now().to_msg()
        for k in range(16):
            pt = JointTrajectoryPoint(positions=[float(v) for v in goal])
            pt.time_from_start.nanosec = k * 100_000_000 % 10**9
            pt.time_from_start.sec = k // 10
            msg.points.append(pt)
        chunk_pub.publish(msg)

    node.create_timer(0.01, publish_state)
    node.create_timer(0.1, publish_chunk)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and len(got) < 100:
            ex.spin_once(timeout_sec=0.05)
        assert len(got) >= 100, proc.stdout.read() if proc.poll() is not None else "no pose commands"
        pos = np.array([[m.pose.position.x, m.pose.position.y, m.pose.position.z] for m in got])
        # The measured pose stays put (nobody moves the arm): every command is within one step of it.
        assert np.all(np.linalg.norm(pos - measured, axis=1) <= 0.004 + 1e-9)
        assert np.all(pos[:, 0] <= 0.6 + 1e-9)
        assert pos[-1, 0] == pytest.approx(measured[0] + 0.004)  # pushing toward the goal as far as allowed
        assert all(m.header.frame_id == "base_link" for m in got)
    finally:
        ex.shutdown()
        node.destroy_node()
        ctx.try_shutdown()
        proc.terminate()
        proc.wait(timeout=10)


def test_safety_parameters_are_read_only_after_start():
    import rclpy
    from rclpy.parameter import Parameter

    from class_ros.nodes.arm_command_node import ArmCommandNode

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = ArmCommandNode(context=ctx, cli_args=["--ros-args", "--params-file", str(ROBOT)])
        for name, value in (("max_step", [9.0] * 7), ("upper", [9.0] * 7), ("rate_hz", 1000.0),
                            ("max_age", 100.0)):
            result = node.set_parameters([Parameter(name, value=value)])[0]
            assert not result.successful, name
        np.testing.assert_allclose(node.filter.limits.max_step, MAX_STEP)
        node.destroy_node()
    finally:
        ctx.try_shutdown()
