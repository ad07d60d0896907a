"""What every node shares: parameter declaration, the standard main(), time conversions, diagnostics."""
from __future__ import annotations

import sys
import time
from collections import deque

import numpy as np
from rclpy.node import Node
from rcl_interfaces.msg import ParameterDescriptor

from class_ros.errors import ClassRosError


def declare(node: Node, name: str, default, description: str, read_only: bool = False):
    """Declare one parameter with a descriptor and return its value."""
    node.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=read_only))
    return node.get_parameter(name).value


def stamp_to_sec(stamp) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def now_sec(node: Node) -> float:
    """The node clock (ROS time: wall time, or /clock with use_sim_time) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


def require(ok: bool, message: str) -> None:
    """Parameter validation: raise the one-sentence ClassRosError when ok is false."""
    if not ok:
        raise ClassRosError(message)


class RateMeter:
    """Counts events and reports their rate over a sliding window of wall time."""

    def __init__(self, window: float = 2.0):
        self.window = window
        self.times: deque[float] = deque()

    def tick(self) -> None:
        self.times.append(time.monotonic())

    def rate(self) -> float:
        now = time.monotonic()
        while self.times and now - self.times[0] > self.window:
            self.times.popleft()
        return len(self.times) / self.window


def percentiles(samples, qs=(50, 99)) -> list[float]:
    """Percentiles of a sample list, NaN when empty."""
    return [float(np.percentile(samples, q)) if len(samples) else float("nan") for q in qs]


def key_values(values: dict):
    """dict -> list of diagnostic_msgs/KeyValue (values formatted as strings)."""
    from diagnostic_msgs.msg import KeyValue
    return [KeyValue(key=k, value=(f"{v:.4g}" if isinstance(v, float) else str(v))) for k, v in values.items()]


def run_node(node_factory, args=None) -> int:
    """The standard main(): init, spin until Ctrl-C / shutdown, one-line error on bad parameters.

    A SingleThreadedExecutor: rclpy's MultiThreadedExecutor busy-loops while a ready callback waits for
    its callback group (an inference timer makes that the common case) and starves the machine.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except ClassRosError as err:
        print(f"{getattr(node_factory, '__name__', 'node')}: error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


class CallbackGuard:
    """Catches what a callback raises: each kind is logged once, then only counted (for /diagnostics).

    No message may kill a node: a callback that fails drops its input and the node keeps running.
    """

    def __init__(self, logger):
        from collections import Counter
        self.logger = logger
        self.counts = Counter()  # "callback: ErrorType" -> how many times

    def record(self, name: str, err: BaseException) -> None:
        """Count one exception raised in callback `name`; log it the first time its kind is seen."""
        key = f"{name}: {type(err).__name__}"
        self.counts[key] += 1
        if self.counts[key] == 1:
            self.logger.error(f"{key}: {err} (logged once; counted on /diagnostics)")

    def wrap(self, name: str, fn):
        """fn wrapped so that an exception is recorded and swallowed."""
        def guarded(*args):
            try:
                return fn(*args)
            except Exception as err:  # noqa: BLE001 - whatever the input did, the node keeps running
                self.record(name, err)
                return None
        return guarded
