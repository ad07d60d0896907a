"""sim_node and camera_node on real DDS: rates, images, commands move the arm, reset by seed, bad encodings."""
import threading
import time

import numpy as np
import pytest

from class_ros.nodes import topology
from class_ros.nodes.graph import start_in_process


class Listener:
    """Collects messages of a few topics in a background executor."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Float64MultiArray

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("sim_listener", context=self.ctx)
        self.msgs = {"js": [], "img": [], "proc": [], "success": []}
        n = self.node
        n.create_subscription(JointState, "/joint_states", lambda m: self._add("js", m), qos_profile_sensor_data)
        n.create_subscription(Image, "/camera/image_raw", lambda m: self._add("img", m), qos_profile_sensor_data)
        n.create_subscription(Image, "/camera_node/image", lambda m: self._add("proc", m), qos_profile_sensor_data)
        n.create_subscription(Bool, "/sim_node/success", lambda m: self._add("success", m), 10)
        self.arm_pub = n.create_publisher(Float64MultiArray, "/forward_position_controller/commands", 10)
        self.grip_pub = n.create_publisher(Float64MultiArray, "/gripper_controller/commands", 10)
        self.raw_pub = n.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        self.Float64MultiArray, self.Image = Float64MultiArray, Image
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(n)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    def _add(self, key, msg):
        self.msgs[key].append((time.monotonic(), msg))

    def wait(self, key, count, timeout=30.0):
        end = time.monotonic() + timeout
        while len(self.msgs[key]) < count and time.monotonic() < end:
            time.sleep(0.02)
        assert len(self.msgs[key]) >= count, f"only {len(self.msgs[key])} {key} messages"

    def close(self):
        self.ex.shutdown()
        self.node.destroy_node()
        self.ctx.try_shutdown()
        self.thread.join(timeout=5)


@pytest.fixture
def sim_graph():
    specs = [topology.NodeSpec("sim_node", (topology.SIM_PARAMS,)), topology.NodeSpec("camera_node",
                                                                                      (topology.POLICY_PARAMS,))]
    with start_in_process(specs) as graph:
        listener = Listener()
        try:
            yield graph, listener
        finally:
            listener.close()


def test_sim_node_topics_commands_and_reset(sim_graph):
    graph, lis = sim_graph
    lis.wait("js", 50)
    lis.wait("img", 10)
    t0 = time.monotonic()
    n_js, n_img = len(lis.msgs["js"]), len(lis.msgs["img"])
    time.sleep(2.0)
    js_rate = (len(lis.msgs["js"]) - n_js) / (time.monotonic() - t0)
    img_rate = (len(lis.msgs["img"]) - n_img) / (time.monotonic() - t0)
    # The nominal rates (100 and 30 Hz) are ceilings the node keeps (its loop never runs ahead of them).
    # Below them is the machine's share: a real-time sim on busy shared cores drops ticks rather than lag
    # (38 Hz joint states with two busy loops beside a second test worker), so the floor says "it streams".
    assert 10 < js_rate <= 110 and 3 < img_rate <= 33, (js_rate, img_rate)
    js = lis.msgs["js"][-1][1]
    from class_ros.sim.robot import JOINT_NAMES
    assert list(js.name) == list(JOINT_NAMES) and len(js.position) == 7
    img = lis.msgs["img"][-1][1]
    assert (img.height, img.width, img.encoding) == (96, 96, "rgb8") and len(img.data) == 96 * 96 * 3
    assert np.asarray(img.data).std() > 5  # a real rendering, not a blank frame
    # camera_node republishes it at the model size with the same stamp.
    lis.wait("proc", 5)
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in lis.msgs["img"]}
    assert (lis.msgs["proc"][-1][1].header.stamp.sec, lis.msgs["proc"][-1][1].header.stamp.nanosec) in stamps

    # Commands move the arm: shoulder_pan to +0.5 rad, gripper closed.
    q0 = np.array(js.position)
    target = q0[:6].copy()
    target[0] += 0.5
    for _ in range(30):
        lis.arm_pub.publish(lis.Float64MultiArray(data=[float(v) for v in target]))
        lis.grip_pub.publish(lis.Float64MultiArray(data=[1.0]))
        time.sleep(0.05)
    time.sleep(0.5)
    q1 = np.array(lis.msgs["js"][-1][1].position)
    assert q1[0] == pytest.approx(target[0], abs=0.05)
    assert q1[6] > 0.8  # closed on nothing

    # ~/reset with a seed: the same seed gives the same start pose, another seed a different one.
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger
    sim = graph.nodes["sim_node"]
    cli = lis.node.create_client(Trigger, "/sim_node/reset")
    assert cli.wait_for_service(timeout_sec=10)
    starts = []
    for seed in (3, 3, 4):
        sim.set_parameters([Parameter("seed", value=seed)])
        fut = cli.call_async(Trigger.Request())
        end = time.monotonic() + 10
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.01)
        assert fut.result().success
        t_reset = time.monotonic()
        lis.wait("js", len(lis.msgs["js"]) + 1)
        first = next(m for t, m in lis.msgs["js"] if t > t_reset)
        starts.append(np.array(first.position))
    np.testing.assert_allclose(starts[0], starts[1], atol=0.02)
    assert np.abs(starts[0] - starts[2]).max() > 0.01
    assert lis.msgs["success"] and not lis.msgs["success"][-1][1].data  # the arm lifted nothing


def test_after_reset_the_sim_ignores_the_old_pose_until_the_controller_re_anchors(sim_graph):
    """A controller still holding the previous episode's pose must not drag the arm off its new start."""
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    graph, lis = sim_graph
    lis.wait("js", 20)
    start = np.array(lis.msgs["js"][-1][1].position)
    old = start.copy()
    old[0] += 0.4  # "the previous episode's pose", gripper closed
    sim = graph.nodes["sim_node"]
    cli = lis.node.create_client(Trigger, "/sim_node/reset")
    assert cli.wait_for_service(timeout_sec=10)
    sim.set_parameters([Parameter("seed", value=7)])
    fut = cli.call_async(Trigger.Request())
    end = time.monotonic() + 10
    while not fut.done() and time.monotonic() < end:
        time.sleep(0.01)
    assert fut.result().success
    time.sleep(0.2)
    new_start = np.array(lis.msgs["js"][-1][1].position)

    def command(q, seconds):
        for _ in range(int(seconds / 0.02)):
            lis.arm_pub.publish(lis.Float64MultiArray(data=[float(v) for v in q[:6]]))
            lis.grip_pub.publish(lis.Float64MultiArray(data=[float(q[6])]))
            time.sleep(0.02)
        time.sleep(0.3)
        return np.array(lis.msgs["js"][-1][1].position)

    held = old.copy()
    held[6] = 1.0
    q = command(held, 0.6)  # the stale hold: ignored
    np.testing.assert_allclose(q, new_start, atol=0.02)
    assert sim.ignored_after_reset > 0
    q = command(new_start, 0.2)  # re-anchored: agrees with the start pose, accepted
    target = new_start.copy()
    target[0] += 0.3
    q = command(target, 0.8)  # and from then on commands move the arm again
    assert q[0] == pytest.approx(target[0], abs=0.05)


def test_camera_node_reports_a_bad_encoding_once(sim_graph, caplog):
    graph, lis = sim_graph
    cam = graph.nodes["camera_node"]
    bad = lis.Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8))
    # Sensor-data QoS is best effort: keep sending until one arrives (a loaded machine drops some).
    deadline = time.monotonic() + 20
    while not cam.errors and time.monotonic() < deadline:
        lis.raw_pub.publish(bad)
        time.sleep(0.05)
    for _ in range(10):  # more bad frames after the first report add no new report, only counts
        lis.raw_pub.publish(bad)
        time.sleep(0.02)
    time.sleep(0.3)
    assert set(cam.errors) == {("/camera/image_raw", "unsupported_encoding")}
    assert cam.errors[("/camera/image_raw", "unsupported_encoding")] > 1


def test_sim_node_publishes_the_wrist_camera_and_camera_node_reads_both():
    """A two-camera run's graph: sim_node renders agentview and the eye-in-hand wrist camera at one stamp,
    camera_node republishes them as ~/image and ~/image_1 (the run's camera order)."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    topics = topology.sim_camera_topic(["agentview", "wrist"])
    specs = [s for s in topology.graph("retrieval", sim=True, camera_topic=topics)
             if s.name in ("sim_node", "camera_node")]
    with start_in_process(specs, extra={"camera_topic": topics}):
        ctx = rclpy.Context()
        rclpy.init(context=ctx)
        node = rclpy.create_node("wrist_listener", context=ctx)
        got = {k: [] for k in ("raw0", "raw1", "out0", "out1")}
        for key, topic in (("raw0", "/camera/image_raw"), ("raw1", "/wrist_camera/image_raw"),
                           ("out0", "/camera_node/image"), ("out1", "/camera_node/image_1")):
            node.create_subscription(Image, topic, lambda m, k=key: got[k].append(m), qos_profile_sensor_data)
        from rclpy.executors import SingleThreadedExecutor
        ex = SingleThreadedExecutor(context=ctx)
        ex.add_node(node)
        try:
            end = time.monotonic() + 60
            while min(len(v) for v in got.values()) < 3 and time.monotonic() < end:
                ex.spin_once(timeout_sec=0.1)
            assert min(len(v) for v in got.values()) >= 3, {k: len(v) for k, v in got.items()}
        finally:
            ex.shutdown()
            node.destroy_node()
            ctx.try_shutdown()
    stamp = lambda m: (m.header.stamp.sec, m.header.stamp.nanosec)  # noqa: E731
    assert {stamp(m) for m in got["raw0"]} & {stamp(m) for m in got["raw1"]}  # one instant, both cameras
    assert {m.header.frame_id for m in got["raw1"]} == {"wrist"}
    # camera_node's ~/image_1 is the wrist stream: each of its frames equals the raw wrist frame of its stamp
    # (96x96 in, 96x96 out). Best effort: either side may have missed a frame, so compare the shared stamps.
    raw1 = {stamp(m): bytes(m.data) for m in got["raw1"]}
    shared = [m for m in got["out1"] if stamp(m) in raw1]
    assert shared and all(bytes(m.data) == raw1[stamp(m)] for m in shared)
    agent, wrist = (np.frombuffer(bytes(got[k][-1].data), np.uint8).astype(int) for k in ("raw0", "raw1"))
    assert wrist.std() > 5 and np.abs(agent - wrist).mean() > 10  # a real, different view
