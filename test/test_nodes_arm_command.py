"""arm_command_node under fault injection, on real DDS, with the node in its own process.

A small test robot in the test process plays the arm: it publishes /joint_states (the last command it
received, as a position-controlled arm that tracks perfectly, or a fixed pose for a blocked arm) and
camera frames, injects faults (NaN / inf, shuffled / missing / extra joints, stale and future stamps,
pushes, an arm moved by hand during an e-stop, undecodable frames, a killed policy process) and records
every command the node publishes. Every test checks every command against the invariant (velocity,
acceleration and position limits; only re-anchors at a measured state are exempt), that the command
stream never went silent, and what /diagnostics says.
"""
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from class_ros.control import JointLimits
from class_ros.control.safety import invariant_violations

REPO = Path(__file__).resolve().parents[1]
ROBOT = REPO / "config" / "robots" / "sim_arm.yaml"
LIM = yaml.safe_load(ROBOT.read_text())["arm_command_node"]["ros__parameters"]
NAMES = LIM["joints"] + [LIM["gripper_joint"]]
LIMITS = JointLimits(names=NAMES, lower=LIM["lower"], upper=LIM["upper"], max_velocity=LIM["max_velocity"],
                     max_acceleration=LIM["max_acceleration"], max_step=LIM["max_step"], margin=LIM["margin"])
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
        self.joint_states_on, self.js_age, self.camera_on, self.encoding = True, 0.0, True, "rgb8"
        self.commands: list[tuple[float, np.ndarray, np.ndarray]] = []  # (time, command (7,), state then)
        self.mangle = None  # fault injection: JointState -> JointState, applied to every published state
        self.injected = [HOME.copy()]  # states set from outside (pushes): a re-anchor may jump to one
        self._arms, self._grips = [], []
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
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        n.create_timer(0.01, self._plant)
        n.create_timer(1 / 30, self._camera)
        self.JointState, self.Image, self.JointTrajectory, self.Bool, self.Trigger = \
            JointState, Image, JointTrajectory, Bool, Trigger
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(n)
        self.closing = False
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - rclpy raises from spin when it is shut down from another thread
            if not self.closing:
                raise

    def close(self):
        self.closing = True
        self.executor.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()
        self.ctx.try_shutdown()

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
        if self.mangle is not None:
            msg = self.mangle(msg)
        self.js_pub.publish(msg)

    def _on_diagnostics(self, msg):
        self.diagnostics.append(msg)

    def push(self, state, blocked=None):
        """Move the arm from outside (a push, a hand): the measured state jumps to `state`."""
        with self.lock:
            self.state = np.array(state, dtype=float)
            self.injected.append(self.state.copy())
            if blocked is not None:
                self.blocked = blocked

    def _camera(self):
        if self.camera_on:
            msg = self.Image(height=4, width=4, encoding=self.encoding, step=12, data=bytes(48))
            msg.header.stamp = self._stamp()
            self.cam_pub.publish(msg)

    def _on_arm(self, msg):
        self._arms.append(np.array(msg.data))
        self._record()

    def _on_grip(self, msg):
        self._grips.append(np.array(msg.data))
        self._record()

    def _record(self):
        # Each topic arrives in order, but the two interleave freely: pair the k-th of each.
        while self._arms and self._grips:
            cmd = np.concatenate([self._arms.pop(0), self._grips.pop(0)])
            with self.lock:
                self.commands.append((time.monotonic(), cmd, self.state.copy()))
                if not self.blocked and cmd.shape == self.state.shape:
                    self.state = cmd.copy()  # a position-controlled arm that tracks its command

    # the policy side
    def send_chunk(self, points, names=NAMES, dt=0.1, stamp=None):
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectoryPoint
        msg = self.JointTrajectory(joint_names=list(names))
        msg.header.stamp = self._stamp() if stamp is None else stamp
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

    def follow(self, goal, timeout=15.0):
        """Stream constant-goal chunks until the arm is commanded to `goal` (the time depends on the load)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.stream(goal, 0.2)
            if np.abs(self.commands[-1][1] - goal).max() <= 1e-6:
                return
        raise AssertionError(f"never reached {goal}: last command {self.commands[-1][1]}")

    def hold_seen(self, goal, n, timeout=15.0):
        """Stream `goal` (None: send nothing) until the last n commands published since the call are one
        constant hold; returns it."""
        t0 = time.monotonic()
        while time.monotonic() < t0 + timeout:
            if goal is None:
                time.sleep(0.2)
            else:
                self.stream(goal, 0.2)
            last = [c for _, c, _ in self.since(t0)][-n:]
            if len(last) == n and np.ptp(np.array(last), axis=0).max() < 1e-12:
                return last[-1]
        raise AssertionError("the node never held")

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

    def status(self, timeout=5.0):
        """The newest arm_command_node status on /diagnostics, as (status, {key: value})."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = [st for d in list(self.diagnostics) for st in d.status if "safety" in st.name]
            if got:
                return got[-1], {kv.key: kv.value for kv in got[-1].values}
            time.sleep(0.05)
        raise AssertionError("no arm_command_node diagnostics")

    def wait_status(self, pred, timeout=5.0):
        """Wait until the newest status satisfies pred(status, values); returns it."""
        end = time.monotonic() + timeout
        while True:
            st, values = self.status(timeout)
            if pred(st, values) or time.monotonic() > end:
                return st, values
            time.sleep(0.1)

    def check_safe(self, slack=0.05):
        """Every published command obeys the invariant; only re-anchors at an injected state are exempt.

        `slack` (s) is what the received stream's gaps may exceed 1 s by."""
        with self.lock:
            cmds, injected = list(self.commands), [np.clip(s, LOWER, UPPER) for s in self.injected]
        assert cmds
        c = np.array([x[1] for x in cmds])
        reanchor = [i > 0 and any(np.abs(c[i] - s).max() < 1e-9 for s in injected) and
                    np.abs(c[i] - c[i - 1]).max() > 1e-12 for i in range(len(c))]
        assert invariant_violations(c, LIMITS, 1.0 / RATE, reanchor) == []
        _, values = self.status()
        assert sum(reanchor) <= int(values["reanchors"])
        # Never silent. What the node controls is exact: it publishes on every tick once it has a
        # measured state (silent_ticks counts the ticks that did not). What the machine controls is not:
        # on these shared 2 cores a process is descheduled for up to ~0.6 s (measured with this test's own
        # 100 Hz timer), and the DDS threads that deliver the commands can stall on their own: loaded, the
        # received stream once went 0.346 s without a command while the node's timer and this test's ran
        # late by 0.014 s at most. So the received stream is only checked never to go silent for 1 s.
        assert values["silent_ticks"] == "0"
        gaps = np.diff([x[0] for x in cmds])
        assert gaps.max() < 1.0 + slack, f"the command stream went silent for {gaps.max():.3f} s"


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
    rig.follow(GOAL)
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
    rig.follow(GOAL)
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


def test_blocked_arm_latches_a_tracking_fault_and_holds_where_it_is(rig):
    # Before, max_step clipped the command toward the arm; now leaving the band latches a fault.
    rig.blocked = True  # e.g. the arm is pushing against an obstacle
    jump = HOME + np.array([2.0, -1.5, -2.5, 1.0, 1.5, 2.0, 1.0])
    t0 = time.monotonic()
    hold = rig.hold_seen(jump, int(0.4 * RATE))
    c = np.array([x[1] for x in rig.since(t0)])
    # It moved off until the arm was max_step behind every command of the last max_age (0.2 s; plus
    # the joint states in flight), then re-anchored at the measured state and held there, although
    # the policy kept sending the jump.
    assert np.all(np.abs(c - HOME) <= MAX_STEP + VMAX * (0.2 + 0.1) + 1e-9)
    np.testing.assert_allclose(hold, HOME, atol=1e-9)
    st, values = rig.wait_status(lambda st, v: v["tracking_fault"] != "none")
    assert st.level == st.ERROR and "tracking fault: " in st.message and "call ~/reset_estop" in st.message
    assert int(values["tracking_faults"]) == 1 and int(values["reanchors_tracking_fault"]) == 1
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
    far = HOME + np.array([-0.8, 0.5, -0.6, 0.0, 0.0, 0.0, 0.0])
    hold = rig.hold_seen(far, int(0.6 * RATE))  # the policy keeps talking, but the inputs are stale
    # It held short of the new goal: the stale-time chunks were not followed.
    assert np.abs(hold - far).max() > 0.3
    rig.check_safe()
    # Fresh inputs again: it follows the policy once more.
    rig.camera_on, rig.js_age, rig.joint_states_on = True, 0.0, True
    rig.follow(far)
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
    hold = rig.hold_seen(None, int(0.5 * RATE))  # after chunk_timeout, and braking
    assert abs(hold[0] - far[0]) > 0.1, "it kept executing the dead policy's last chunk"
    rig.check_safe()


def test_estop_latches_until_reset_then_reanchors(rig):
    rig.stream(GOAL, 0.4)
    rig.estop_pub.publish(rig.Bool(data=True))
    far = HOME + np.array([-0.8, 0.5, -0.6, 0.0, 0.0, 0.0, 0.0])
    rig.stream(far, 0.5)
    rig.estop_pub.publish(rig.Bool(data=False))  # a False does not clear the latch
    hold_pos = rig.hold_seen(far, int(0.8 * RATE))
    # /diagnostics says so, with the counters the operator needs.
    from diagnostic_msgs.msg import DiagnosticStatus
    status, values = rig.wait_status(lambda st, v: v["estop"] == "True")
    assert status.level == DiagnosticStatus.ERROR and "e-stop" in status.message and values["estop"] == "True"
    assert float(values["command_rate_hz"]) > 5 and int(values["commands_sent"]) > 10  # rates depend on the load
    assert {"latency_p50_ms", "latency_p99_ms", "clamped_velocity", "tracking_faults", "rejected_chunks",
            "joint_state_rate_hz", "camera_rate_hz", "chunk_rate_hz"} <= set(values)
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


def _with_value(i, value):
    def mangle(msg):
        msg.position = [value if k == i else v for k, v in enumerate(msg.position)]
        return msg
    return mangle


def _reorder(order, extra=()):
    def mangle(msg):
        names, pos = list(msg.name), list(msg.position)
        msg.name = [names[k] for k in order] + [n for n, _ in extra]
        msg.position = [pos[k] for k in order] + [v for _, v in extra]
        return msg
    return mangle


def _duplicate(msg):
    msg.name = list(msg.name)[:-1] + [msg.name[0]]
    return msg


def _short(msg):
    msg.position = list(msg.position)[:-2]
    return msg


SHUFFLE = [3, 0, 6, 2, 5, 1, 4]
JOINT_STATE_FAULTS = {  # fault -> (mangle, the drop reason counted on /diagnostics or None when usable)
    "nan": (_with_value(2, float("nan")), "dropped_joint_state_not_finite"),
    "inf": (_with_value(0, float("inf")), "dropped_joint_state_not_finite"),
    "missing_joint": (_reorder([0, 1, 3, 4, 5, 6]), "dropped_joint_state_missing_joints"),
    "duplicate_name": (_duplicate, "dropped_joint_state_duplicate_names"),
    "fewer_positions": (_short, "dropped_joint_state_length"),
    "shuffled": (_reorder(SHUFFLE), None),
    "extra_joints": (_reorder(range(7), extra=[("finger_2", 0.3), ("conveyor", 1e9)]), None),
}


def test_bad_joint_states_are_dropped_and_counted_and_never_stop_the_stream(rig):
    rig.stream(GOAL, 0.3)
    targets = [HOME + np.array([-0.5, 0.3, -0.4, 0.0, 0.0, 0.0, 0.3]), GOAL]
    for k, (fault, (mangle, counter)) in enumerate(JOINT_STATE_FAULTS.items()):
        goal = targets[k % 2]
        rig.mangle = mangle
        if counter is None:  # usable: followed as usual
            rig.follow(goal)
        else:  # every state dropped: joint states go stale, it holds (and never stops publishing)
            rig.hold_seen(goal, int(0.4 * RATE))
            st, values = rig.wait_status(lambda st, v: int(v.get(counter, "0")) > 10 and "joint states" in st.message)
            assert int(values[counter]) > 10 and "joint states are" in st.message, fault
        rig.mangle = None
        rig.follow(goal)
    rig.check_safe()


def test_future_stamps_are_a_clock_skew_fault_that_holds(rig):
    rig.stream(GOAL, 0.4)
    rig.js_age = -100.0  # joint states stamped 100 s ahead of the node's clock
    far = HOME + np.array([-0.8, 0.5, -0.6, 0.0, 0.0, 0.0, 0.0])
    hold = rig.hold_seen(far, int(0.4 * RATE))
    assert np.abs(hold - far).max() > 0.3
    st, _ = rig.wait_status(lambda st, v: "clock skew" in st.message)
    assert st.level == st.WARN and re.search(r"clock skew: joint states stamped (99|100)\.\d\d s ahead", st.message)
    rig.joint_states_on = False  # and when they stop, the last future stamp never looks fresh
    t1 = time.monotonic()
    rig.stream(far, 1.0)
    assert all(np.array_equal(c, hold) for _, c, _ in rig.since(t1))
    _, values = rig.status()
    assert float(values["latency_p50_ms"]) >= 0.0
    rig.check_safe()


def test_future_stamped_chunks_are_refused_and_named(rig):
    rig.stream(GOAL, 1.0)
    from builtin_interfaces.msg import Time
    t0 = time.monotonic()
    end = t0 + 1.5
    far = HOME + np.array([-0.8, 0.5, -0.6, 0.0, 0.0, 0.0, 0.0])
    stamp_ahead = rig._stamp(-5.0)
    while time.monotonic() < end:
        rig.send_chunk(np.tile(far, (16, 1)), stamp=Time(sec=stamp_ahead.sec, nanosec=stamp_ahead.nanosec))
        time.sleep(0.1)
    st, values = rig.wait_status(lambda st, v: "clock skew: chunks" in st.message)
    assert "clock skew: chunks stamped" in st.message and int(values["dropped_chunk_future_stamp"]) > 5
    np.testing.assert_allclose(rig.commands[-1][1], GOAL, atol=1e-6)  # it never moved toward them
    rig.check_safe()


def test_a_push_latches_a_tracking_fault_until_reset(rig):
    rig.follow(GOAL)
    pushed = GOAL + np.array([0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0])  # 0.5 rad, max_step 0.3
    rig.push(pushed, blocked=True)  # pushed and held there
    st, values = rig.wait_status(lambda st, v: v["tracking_fault"] != "none")
    rig.blocked = False  # let go: the arm tracks its command again
    hold = rig.hold_seen(GOAL, int(0.5 * RATE))  # the policy still asks for GOAL
    np.testing.assert_allclose(hold, pushed, atol=1e-9)  # re-anchored where the arm is: no force
    # 0.5 from the last command; the span of the commands of the last max_age may reach a little closer.
    dist = float(re.search(r"tracking fault: shoulder_lift is ([0-9.]+) from its commands", st.message).group(1))
    assert st.level == st.ERROR and MAX_STEP[1] < dist <= 0.5 + 1e-3
    assert int(values["reanchors_tracking_fault"]) == 1
    assert rig.reset_estop().success
    rig.follow(GOAL)
    rig.check_safe()


def test_estop_hold_never_moves_when_the_arm_is_moved_by_hand(rig):
    rig.follow(GOAL)
    rig.estop_pub.publish(rig.Bool(data=True))
    hold = rig.hold_seen(GOAL, 10)
    by_hand = hold + np.array([0.6, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    rig.push(by_hand, blocked=True)  # the operator holds the arm there
    t0 = time.monotonic()
    rig.stream(GOAL, 1.0)
    moved = rig.since(t0)
    assert len(moved) > 10 and all(np.array_equal(x[1], hold) for x in moved), "the e-stop hold moved"
    st, values = rig.wait_status(lambda st, v: v["tracking_fault"] != "none")
    assert "e-stop latched" in st.message and "tracking fault: shoulder_pan is 0.600" in st.message  # held still
    assert int(values.get("reanchors_tracking_fault", "0")) == 0
    t1 = time.monotonic()
    assert rig.reset_estop().success  # re-anchored where the operator left the arm
    end = time.monotonic() + 10
    while time.monotonic() < end and all(np.array_equal(x[1], hold) for x in rig.since(t1)):
        time.sleep(0.02)
    first_new = next(x[1] for x in rig.since(t1) if not np.array_equal(x[1], hold))
    np.testing.assert_allclose(first_new, np.clip(by_hand, LOWER, UPPER), atol=1e-9)
    rig.blocked = False  # the operator lets go
    rig.follow(GOAL)
    rig.check_safe()


def test_alone_without_input_it_says_what_it_waits_for():
    proc = start_arm_node()
    rig = Rig()
    rig.joint_states_on = rig.camera_on = False
    try:
        st, _ = rig.wait_status(lambda st, v: "waiting" in st.message, timeout=20.0)
        assert st.level == st.WARN
        assert st.message == "waiting for joint states; waiting for camera; waiting for a chunk"
        assert not rig.commands  # nothing is safe to command before a measured state
        # A refused reset, then a granted one: both answered, and the node lives on (rclpy refuses one
        # logging call site used at two severities; that once killed the node's executor here).
        refused = rig.reset_estop()
        assert not refused.success and "no measured state" in refused.message
        rig.joint_states_on = rig.camera_on = True
        rig.wait_for_commands()
        assert rig.reset_estop().success
        n = len(rig.commands)
        time.sleep(0.5)
        assert len(rig.commands) > n
    finally:
        rig.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_undecodable_camera_frames_are_named_on_diagnostics():
    """camera_node counts what it cannot decode; arm_command_node says so rather than "frames are old"."""
    cam = subprocess.Popen([sys.executable, "-m", "class_ros.nodes.camera_node", "--ros-args", "-p",
                            "image_size:=[4, 4]"], env=os.environ.copy(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    arm = start_arm_node("-p", "camera_topic:=/camera_node/image")
    rig = Rig()
    try:
        rig.wait_for_commands()
        rig.stream(GOAL, 1.0)
        rig.encoding = "yuv9"  # an encoding nobody decodes
        rig.stream(GOAL, 1.0)
        st, _ = rig.wait_status(lambda st, v: "undecodable" in st.message)
        assert "camera frames undecodable: /camera/image_raw:" in st.message and "yuv9" in st.message
        key = "decode_errors_unsupported_encoding /camera/image_raw"
        end = time.monotonic() + 15
        while time.monotonic() < end:  # counted per frame (best-effort frames: how many arrive depends on the load)
            cams = [s for d in list(rig.diagnostics) for s in d.status if s.hardware_id == "camera"]
            values = {kv.key: kv.value for kv in cams[-1].values}
            if int(values.get(key, "0")) >= 5:
                break
            rig.stream(GOAL, 0.5)
        assert int(values[key]) >= 5 and int(values["decode_errors"]) == int(values[key])
        rig.check_safe()
    finally:
        rig.close()
        for p in (arm, cam):
            p.terminate()
            p.wait(timeout=10)
    out = cam.stdout.read()
    assert out.count("yuv9") == 1, out  # logged once, counted after that


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


# --- the graph's supervisor: a dead node never silences the arm ------------------------------------------

def _graph_params(tmp_path):
    """config/policy.yaml with the command node at this file's rate, watching the raw camera."""
    doc = yaml.safe_load((REPO / "config" / "policy.yaml").read_text())
    doc["arm_command_node"]["ros__parameters"].update(rate_hz=RATE, chunk_timeout=0.5, camera_topic="")
    doc["camera_node"]["ros__parameters"]["image_size"] = [4, 4]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _small_graph():
    from class_ros.nodes import topology
    return [s for s in topology.graph("retrieval") if s.name in ("camera_node", "arm_command_node")]


@pytest.mark.parametrize("respawn", [False, True])
def test_graph_processes_keep_the_arm_commanded_when_a_node_dies(tmp_path, capfd, respawn):
    from class_ros.nodes.graph import start_processes, supervise
    rig = Rig()
    try:
        with start_processes(_small_graph(), _graph_params(tmp_path)) as graph:
            rig.wait_for_commands()
            victim = graph.procs["camera_node"]
            threading.Timer(1.0, victim.kill).start()  # SIGKILL: as a crash would
            status = supervise(graph, duration=4.0, respawn=respawn)
            assert graph.procs["arm_command_node"].poll() is None, "the command node died with the camera node"
            if respawn:
                assert graph.procs["camera_node"] is not victim and graph.procs["camera_node"].poll() is None
        err = capfd.readouterr().err
        if respawn:
            assert status == 0 and "camera_node exited with status -9; restarting it (1/5)" in err, err
        else:
            assert status == 1 and "camera_node exited with status -9; arm_command_node keeps holding" in err, err
            assert "error: camera_node exited with status -9" in err
        # Never silent while the camera node died, was restarted and the graph stopped; starting a node
        # process (its imports) takes the 2 shared cores for a while, hence the larger slack.
        rig.check_safe(slack=0.5)
    finally:
        rig.close()


def test_graph_in_one_process_reports_a_dead_executor_and_keeps_commanding(tmp_path, capfd):
    from class_ros.nodes.graph import start_in_process, supervise
    rig = Rig()
    try:
        with start_in_process(_small_graph(), _graph_params(tmp_path)) as graph:
            rig.wait_for_commands()

            def boom():
                raise RuntimeError("injected executor failure")
            graph.nodes["camera_node"].create_timer(0.5, boom)  # a callback nothing guards
            status = supervise(graph, duration=3.0)
            assert [t.name for t in graph.threads if t.is_alive()] == ["arm_command_node"]
            rig.check_safe()
        err = capfd.readouterr().err
        assert status == 1 and "camera_node's executor stopped: RuntimeError: injected executor failure" in err, err
        assert "camera_node stopped (RuntimeError: injected executor failure); arm_command_node keeps holding" in err
    finally:
        rig.close()


def test_graph_stops_at_once_with_status_1_when_the_command_node_dies(tmp_path, capfd):
    from class_ros.nodes.graph import start_processes, supervise
    with start_processes(_small_graph(), _graph_params(tmp_path)) as graph:
        threading.Timer(1.0, graph.procs["arm_command_node"].kill).start()
        t0 = time.monotonic()
        status = supervise(graph, duration=30.0)
        assert time.monotonic() - t0 < 10.0
    err = capfd.readouterr().err
    assert status == 1 and "arm_command_node exited with status -9; nothing commands the arm" in err, err


def test_graph_respawn_needs_processes_one_clear_line():
    res = subprocess.run([sys.executable, "-m", "class_ros.cli", "graph", "--respawn"], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "class-ros graph: error: --respawn restarts node processes; add --processes."
