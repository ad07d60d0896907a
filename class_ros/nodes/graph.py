"""`class-ros graph`: start the node graph without `ros2 launch`, from the same YAML and graph description.

Usage:
    class-ros graph --params config/policy.yaml --run-dir runs/demo/class_run [--sim] [--processes]

One process with one executor thread per node (lowest latency, the default) or one process per node
(`--processes`, like `ros2 launch`). The nodes, their parameter files and remappings come from
class_ros.nodes.topology, which the launch files read too.

The closed-loop episode driver that runs seeded sim episodes through this graph lives in
class_ros.nodes.closed_loop.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing

import numpy as np

from class_ros.errors import ClassRosError
from class_ros.nodes import topology
from class_ros.policy import POLICY_KINDS

NODE_CLASSES = {
    "camera_node": ("class_ros.nodes.camera_node", "CameraNode"),
    "embedding_node": ("class_ros.nodes.embedding_node", "EmbeddingNode"),
    "policy_node": ("class_ros.nodes.policy_node", "PolicyNode"),
    "arm_command_node": ("class_ros.nodes.arm_command_node", "ArmCommandNode"),
    "sim_node": ("class_ros.nodes.sim_node", "SimNode"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=topology.POLICY_PARAMS, help="graph parameter file (config/policy.yaml)")
    parser.add_argument("--run-dir", default="", help="the trained run (overrides run_dir in --params)")
    parser.add_argument("--policy", choices=POLICY_KINDS, default="retrieval")
    parser.add_argument("--robot-config", default=topology.DEFAULT_ROBOT, help="robot limits (config/robots/*.yaml)")
    parser.add_argument("--camera-topic", default=topology.DEFAULT_CAMERA_TOPIC, help="raw camera topic")
    parser.add_argument("--sim", action="store_true", help="also start the MuJoCo sim node (config/sim.yaml)")
    parser.add_argument("--processes", action="store_true", help="one process per node instead of one in total")
    parser.add_argument("--use-sim-time", action="store_true", help="nodes follow /clock")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    _check_env()
    specs = topology.graph(args.policy, args.sim, args.robot_config)
    extra = dict(run_dir=args.run_dir, policy=args.policy, camera_topic=args.camera_topic,
                 use_sim_time=args.use_sim_time)
    starter = start_processes if args.processes else start_in_process
    # Ctrl-C and SIGTERM only ask the graph to stop: a second one during start-up or shutdown cannot cut
    # either short (no half-destroyed nodes, no orphaned processes), and the stop exits 0 without a traceback.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with starter(specs, args.params, extra) as graph:
            print(f"class-ros graph: running {[s.name for s in specs]} "
                  f"({'processes' if args.processes else 'one process'}); Ctrl-C stops it.", flush=True)
            end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
            while not stop.is_set() and time.monotonic() < end and graph.alive():
                stop.wait(0.2)
    finally:
        # After a stop the process is on its way out: a late second Ctrl-C must not turn exit 0 into death
        # by SIGINT, so stop signals stay ignored; otherwise (duration over, a node gone) the old handlers return.
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else handler)
    print("class-ros graph: stopped.", flush=True)
    return 0


def _check_env() -> None:
    # No DDS traffic may leave the machine unless the user chose otherwise.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")


def _node_args(spec, params_file, extra):
    return topology.ros_arguments(spec, params_file, topology.overrides(spec.name, **extra))


class InProcessGraph:
    """Every node in this process, each spun by its own SingleThreadedExecutor in a background thread.

    Not one MultiThreadedExecutor: rclpy's busy-loops (100% of a core, holding the GIL) while a ready
    callback waits for its mutually exclusive group, which an inference timer makes the common case.
    One executor per node keeps inference in one node from delaying another node's callbacks.
    """

    def __init__(self, specs, params_file: str, extra: dict):
        import importlib

        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.closing = False
        self.nodes = {}
        self.executors = []
        self.threads = []
        try:
            for spec in specs:
                module, cls = NODE_CLASSES[spec.name]
                node_cls = getattr(importlib.import_module(module), cls)
                self.nodes[spec.name] = node_cls(context=self.context, cli_args=_node_args(spec, params_file, extra))
        except BaseException:
            self.close()
            raise
        for name, node in self.nodes.items():
            executor = SingleThreadedExecutor(context=self.context)
            executor.add_node(node)
            thread = threading.Thread(target=self._spin, args=(executor,), name=name, daemon=True)
            self.executors.append(executor)
            self.threads.append(thread)
            thread.start()

    def _spin(self, executor):
        from rclpy.executors import ExternalShutdownException
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except RuntimeError:
            if not self.closing:  # a timer firing while the executor shuts down is expected
                raise

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def close(self) -> None:
        # Stop spinning before destroying nodes, so no callback runs on a destroyed node.
        self.closing = True
        for executor in self.executors:
            executor.shutdown(timeout_sec=5.0)
        for thread in self.threads:
            thread.join(timeout=5.0)
        for node in self.nodes.values():
            node.destroy_node()
        self.nodes = {}
        self.context.try_shutdown()


class ProcessGraph:
    """One process per node, as `ros2 launch` would start them."""

    def __init__(self, specs, params_file: str, extra: dict):
        self.procs = {}
        for spec in specs:
            cmd = [sys.executable, "-m", NODE_CLASSES[spec.name][0], *_node_args(spec, params_file, extra)]
            self.procs[spec.name] = subprocess.Popen(cmd, env=os.environ.copy())

    def alive(self) -> bool:
        dead = [n for n, p in self.procs.items() if p.poll() is not None]
        if dead:
            print(f"class-ros graph: {dead} exited; stopping the graph.", file=sys.stderr)
        return not dead

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_in_process(specs, params_file: str = topology.POLICY_PARAMS, extra: dict | None = None):
    """Context manager: the graph in this process; closed (nodes destroyed, context shut down) on exit."""
    return closing(InProcessGraph(specs, params_file, extra or {}))


def start_processes(specs, params_file: str = topology.POLICY_PARAMS, extra: dict | None = None):
    """Context manager: one process per node; interrupted and reaped on exit."""
    return closing(ProcessGraph(specs, params_file, extra or {}))
