"""A test node on real DDS: publishes inputs, collects what the graph publishes (with arrival times)."""
from __future__ import annotations

import threading
import time


def wait_until(condition, timeout: float) -> bool:
    """True once `condition()` holds (polled every 20 ms), False after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


class Probe:
    """Subscribes to `topics` ({name: (msg_type, topic) or (msg_type, topic, qos)}) in its own context.

    Without a QoS, topics whose name holds "image" or "joint_states" use sensor-data QoS (as their
    publishers do), the rest the default (reliable, depth 10). `got[name]` holds the messages,
    `times[name]` their arrival times (time.monotonic()).
    """

    def __init__(self, topics):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("probe", context=self.ctx)
        self.got = {name: [] for name in topics}
        self.times = {name: [] for name in topics}
        for name, (msg_type, topic, *qos) in topics.items():
            self.node.create_subscription(msg_type, topic, lambda m, n=name: self._store(n, m),
                                          qos[0] if qos else self.default_qos(topic))
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()

    @staticmethod
    def default_qos(topic: str):
        from rclpy.qos import qos_profile_sensor_data
        return qos_profile_sensor_data if ("image" in topic or "joint_states" in topic) else 10

    def _store(self, name, msg) -> None:
        self.times[name].append(time.monotonic())
        self.got[name].append(msg)

    def publisher(self, msg_type, topic, sensor=False):
        from rclpy.qos import qos_profile_sensor_data
        return self.node.create_publisher(msg_type, topic, qos_profile_sensor_data if sensor else 10)

    def wait(self, name, count=1, timeout=30.0) -> bool:
        """True once `count` messages of `name` arrived, False after `timeout` seconds."""
        return wait_until(lambda: len(self.got[name]) >= count, timeout)

    def arrivals_between(self, name, t0: float, t1: float) -> list[float]:
        """Arrival times (time.monotonic()) of the messages of `name` that arrived in [t0, t1)."""
        return [t for t in list(self.times[name]) if t0 <= t < t1]

    def count_between(self, name, t0: float, t1: float) -> int:
        """Messages of `name` that arrived in [t0, t1) (time.monotonic())."""
        return len(self.arrivals_between(name, t0, t1))

    def close(self) -> None:
        self.ex.shutdown()
        self.thread.join(timeout=5)
        self.node.destroy_node()
        self.ctx.try_shutdown()
