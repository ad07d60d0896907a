"""What every node shares: parameter declaration, the standard main(), QoS, time conversions, diagnostics."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from collections import deque

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rcl_interfaces.msg import ParameterDescriptor

from class_ros.errors import ClassRosError

# Latched topics (~/estop, ~/success): a subscriber that joins late still gets the last value at once.
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Observation streams that trigger work (frames, embeddings): the reader keeps only the newest sample, so
# a consumer that fell behind works on the latest observation next, never through a backlog of old ones.
NEWEST = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)


def param(default, description: str, read_only: bool = True):
    """A field of a node's parameter dataclass: its default (lists as tuples) and its ROS description."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"description": description, "read_only": read_only})


def declare_params(node: Node, params_cls):
    """Declare every field of the frozen dataclass `params_cls` as a parameter of `node`; return it filled in.

    The values are read once; the dataclass's __post_init__ rejects bad ones with one sentence.
    """
    values = {}
    for f in dataclasses.fields(params_cls):
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        node.declare_parameter(f.name, default, ParameterDescriptor(description=f.metadata["description"],
                                                                    read_only=f.metadata["read_only"]))
        value = node.get_parameter(f.name).value
        values[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return params_cls(**values)


class ReleasesOnCleanup:
    """Lifecycle-node mixin: cleanup and shutdown both destroy what on_configure made (`self._release()`)."""

    def on_cleanup(self, state):
        from rclpy.lifecycle import TransitionCallbackReturn
        self._release()
        return TransitionCallbackReturn.SUCCESS

    on_shutdown = on_cleanup


def release(node, publisher=None, subscriptions=()) -> None:
    """Destroy what a lifecycle node's on_configure made: its lifecycle publisher and subscriptions
    (on cleanup and on shutdown; either may be None or empty)."""
    if publisher is not None:
        node.destroy_lifecycle_publisher(publisher)
    for sub in subscriptions:
        node.destroy_subscription(sub)


def autostart(node) -> None:
    """Drive a lifecycle node through configure and activate (its `autostart` parameter); a failed
    configure ends the node with the one sentence its on_configure left in `node.error`."""
    from rclpy.lifecycle import TransitionCallbackReturn
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        raise ClassRosError(node.error or f"{node.get_name()} failed to configure.")
    node.trigger_activate()


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
    """The standard main(): init, spin until Ctrl-C / SIGTERM / shutdown, one-line error on bad parameters;
    it ends the process (exit code 0, or 1 after that error).

    rclpy.init installs rclpy's signal handlers: SIGINT and SIGTERM shut the context down. Every way out
    of that is a normal stop and exits 0 without a traceback: the executor seeing the context gone, a
    callback whose publish failed because the context went down under it, a configure cut short. Later
    signals (`ros2 launch` sends its own SIGINT after the terminal's, then SIGTERM) change nothing, so the
    cleanup is never cut short. The executor spins off the main thread (spin_off_main_thread). A stop that
    has not ended the process STOP_S later prints every thread's stack and exits 1 (bound_the_stop).
    A SingleThreadedExecutor: rclpy's MultiThreadedExecutor busy-loops while a ready callback waits for
    its callback group (a long inference callback makes that the common case) and starves the machine.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    # A signal landing while rclpy builds its context or the executor leaves a half-made executor behind
    # (rclpy then prints an ignored exception at exit): signals wait until both exist.
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    # rclpy's handler (installed by init) shuts the context down, then chains to Python's SIGINT handler:
    # a no-op there, so Ctrl-C never raises KeyboardInterrupt - not inside torch's import (pybind11 then
    # aborts the process), not inside rclpy's executor (it can deadlock at exit), not in the cleanup.
    signal.signal(signal.SIGINT, lambda *_: None)
    rclpy.init(args=args)
    executor = SingleThreadedExecutor()
    node = None
    code = 0
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)  # a pending one is handled from here on
        node = node_factory()  # a stop during loading takes effect once it is done (the context is down)
        executor.add_node(node)
        spin_off_main_thread(executor)
    except ClassRosError as err:
        if rclpy.ok():  # a configure cut short by a signal is a stop, not an error
            print(f"{getattr(node_factory, '__name__', 'node')}: error: {err}", file=sys.stderr)
            code = 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise  # a real error while ROS was up
    finally:
        bound_the_stop()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    # Leave without the interpreter's final garbage collection and C++ static destructors: after a stop
    # they can hang (a finalizer waiting on a lock a stopped thread held) or abort ("terminate called
    # without an active exception") in rclpy / torch, although everything of ours is already released.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spin_off_main_thread(executor) -> None:
    """Spin `executor` in a worker thread until the context goes down; re-raise what the spin raised.

    Python runs signal handlers in the main thread only, so none ever runs half-way through rclpy's executor
    (interrupted there, it can deadlock the process at exit); rclpy's own handler shuts the context down,
    which ends the spin at its next wake-up.
    """
    import threading

    from rclpy.executors import ExternalShutdownException

    errors: list[BaseException] = []

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            errors.append(err)

    thread = threading.Thread(target=spin, name="executor", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if not executor.context.ok():
            bound_the_stop()
    if errors:
        raise errors[0]


STOP_S = 10.0  # from a stop to the process's end; ours takes well under a second
_stop_bounded = False


def bound_the_stop() -> None:
    """A stop that does not end the process within STOP_S writes every thread's stack to stderr and exits 1.

    Something stuck in C code (a DDS call that never returns) ignores every later signal, so without this
    only SIGKILL ends it, and nobody learns where it was. faulthandler's watchdog is a C thread: it needs
    neither the GIL nor the main thread. Only the first call arms it: the deadline counts from the stop.
    """
    import faulthandler
    global _stop_bounded
    if not _stop_bounded:
        _stop_bounded = True
        faulthandler.dump_traceback_later(STOP_S, exit=True, file=sys.__stderr__)


class CallbackGuard:
    """Catches what a callback raises: each kind is logged once, then only counted (for /diagnostics).

    No message may kill a node: a callback that fails drops its input and the node keeps running. Once
    the node's context is shut down (a stop), a callback's failed publish is the stop, not an error.
    """

    def __init__(self, node):
        from collections import Counter
        self.node = node
        self.logger = node.get_logger()
        self.counts = Counter()  # "callback: ErrorType" -> how many times

    def record(self, name: str, err: BaseException) -> None:
        """Count one exception raised in callback `name`; log it the first time its kind is seen."""
        if not self.node.context.ok():
            return  # shutting down
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
