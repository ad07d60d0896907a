"""`class-ros graph`: start the node graph without `ros2 launch`, from the same YAML and graph description.

Usage:
    class-ros graph --params config/policy.yaml --run-dir runs/demo/class_run [--sim] [--processes]

One process with one executor thread per node (lowest latency, the default) or one process per node
(`--processes`, like `ros2 launch`). The nodes, their parameter files and remappings come from
class_ros.nodes.topology, which the launch files read too.

`run_closed_loop(run_dir, task, camera, episodes, seed)` runs seeded episodes of the sim through this
graph, touching the robot only through ROS topics and services, and returns successes and latencies.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np

from class_ros.errors import ClassRosError
from class_ros.nodes import topology

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
    parser.add_argument("--policy", choices=("retrieval", "diffusion"), default="retrieval")
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
    with starter(specs, args.params, extra) as graph:
        print(f"class-ros graph: running {[s.name for s in specs]} "
              f"({'processes' if args.processes else 'one process'}); Ctrl-C stops it.")
        end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
        while time.monotonic() < end and graph.alive():
            time.sleep(0.2)
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


@contextmanager
def start_in_process(specs, params_file: str = topology.POLICY_PARAMS, extra: dict | None = None):
    """Context manager: the graph in this process; closed (nodes destroyed, context shut down) on exit."""
    graph = InProcessGraph(specs, params_file, extra or {})
    try:
        yield graph
    finally:
        graph.close()


@contextmanager
def start_processes(specs, params_file: str = topology.POLICY_PARAMS, extra: dict | None = None):
    """Context manager: one process per node; interrupted and reaped on exit."""
    graph = ProcessGraph(specs, params_file, extra or {})
    try:
        yield graph
    finally:
        graph.close()


# ------------------------------------------------------------------------------------------ closed loop
class EpisodeDriver:
    """The experimenter's side of the graph: resets, e-stop, success and latency, over ROS only."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter_client import AsyncParameterClient
        from std_msgs.msg import Bool, Float64
        from std_srvs.srv import Trigger

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("closed_loop_driver", context=self.context)
        self.success = False
        self.latency: list[float] = []
        self.recording = False
        self.Bool, self.Trigger = Bool, Trigger
        self.estop_pub = self.node.create_publisher(Bool, "/arm_command_node/estop", 10)
        self.reset_sim = self.node.create_client(Trigger, "/sim_node/reset")
        self.reset_estop = self.node.create_client(Trigger, "/arm_command_node/reset_estop")
        self.sim_params = AsyncParameterClient(self.node, "sim_node")
        self.node.create_subscription(Bool, "/sim_node/success", self._on_success, 10)
        self.node.create_subscription(Float64, "/arm_command_node/latency", self._on_latency, 100)
        from rosgraph_msgs.msg import Clock
        self.sim_time = 0.0  # seconds since the sim's last reset, from /clock
        self.node.create_subscription(Clock, "/clock", self._on_clock, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_success(self, msg) -> None:
        self.success = self.success or bool(msg.data)

    def _on_clock(self, msg) -> None:
        self.sim_time = msg.clock.sec + msg.clock.nanosec * 1e-9

    def _on_latency(self, msg) -> None:
        if self.recording:
            self.latency.append(float(msg.data))

    def _wait(self, future, what: str, timeout: float = 30.0):
        end = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > end:
                raise ClassRosError(f"{what} did not answer within {timeout:.0f} s; is the graph running?")
            time.sleep(0.01)
        return future.result()

    def call(self, client, what: str, timeout: float = 60.0, retry_s: float = 0.0):
        """Call a Trigger service; a refusal is retried for `retry_s` seconds (e.g. until fresh state arrives)."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise ClassRosError(f"{what} is not available; is the graph running?")
        end = time.monotonic() + retry_s
        while True:
            res = self._wait(client.call_async(self.Trigger.Request()), what)
            if res.success:
                return res
            if time.monotonic() > end:
                raise ClassRosError(f"{what} failed: {res.message}")
            time.sleep(0.1)

    def start_episode(self, seed: int) -> None:
        """Freeze the arm, reset the world from `seed`, then release the arm at its new pose."""
        from rclpy.parameter import Parameter
        self.recording = False
        self.estop_pub.publish(self.Bool(data=True))
        if not self.sim_params.wait_for_services(timeout_sec=60.0):
            raise ClassRosError("sim_node's parameter services are not available; is the graph running?")
        self._wait(self.sim_params.set_parameters([Parameter("seed", value=int(seed))]), "sim_node set_parameters")
        time.sleep(0.2)  # let the e-stop land before the world jumps
        self.call(self.reset_sim, "/sim_node/reset")
        time.sleep(0.3)  # fresh joint states and frames of the new episode reach every node
        self.success = False
        # On a loaded machine the first joint states after the reset can take a while to reach the
        # command node, which refuses to re-anchor without them: retry until it has them.
        self.call(self.reset_estop, "/arm_command_node/reset_estop", retry_s=30.0)
        self.recording = True
        self.start_sim_time = self.sim_time

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def run_closed_loop(run_dir, task: str = "lift", camera: str = "fixed", episodes: int = 3, seed: int = 0,
                    policy: str = "retrieval", *, processes: bool = False, episode_seconds: float | None = None,
                    params_file: str = topology.POLICY_PARAMS, node_params: dict | None = None,
                    seeds: list[int] | None = None, stop_after_success: bool = False) -> dict:
    """Run `episodes` sim episodes (seeds seed, seed + 1, ... or `seeds`) through the ROS graph.

    Returns successes and latencies (ms): camera frame stamp -> first command published from the
    chunk computed on that frame. `node_params` ({node: {name: value}}) override the YAML files.
    """
    from class_ros.sim.tasks import TIME_LIMIT_S

    _check_env()
    if not os.path.isdir(run_dir):
        raise ClassRosError(f"run directory {run_dir} does not exist; train a run first.")
    seconds = float(episode_seconds or TIME_LIMIT_S[task])
    seeds = [int(s) for s in seeds] if seeds is not None else [seed + i for i in range(episodes)]
    specs = topology.graph(policy, sim=True)
    extra = dict(run_dir=str(run_dir), policy=policy)
    sim_yaml = _sim_overrides(task, camera, seeds[0] if seeds else seed)
    starter = start_processes if processes else start_in_process
    results = []
    with _extra_params(sim_yaml, node_params) as files:
        specs = [topology.NodeSpec(s.name, s.params + tuple(files.get(s.name, ())), s.remappings) for s in specs]
        # The sim plays the robot: it always runs in its own process, as a real arm is its own machine,
        # so its physics and rendering never compete with the policy graph for one interpreter.
        robot = [s for s in specs if s.name == "sim_node"]
        policy_graph = [s for s in specs if s.name != "sim_node"]
        with start_processes(robot, params_file, extra) as sim, starter(policy_graph, params_file, extra) as nodes:
            graph = _Both(sim, nodes)
            driver = EpisodeDriver()
            try:
                for ep, ep_seed in enumerate(seeds):
                    driver.start_episode(ep_seed)
                    # The time limit counts sim time (as the direct evaluation does): on a busy machine
                    # the sim falls behind the wall clock. The wall-clock guard only catches a stalled sim.
                    t0 = time.monotonic()
                    while (driver.sim_time - driver.start_sim_time < seconds and not driver.success and graph.alive()
                           and time.monotonic() - t0 < 4 * seconds + 10):
                        time.sleep(0.05)
                    if not graph.alive():
                        raise ClassRosError("a node of the graph stopped during the closed loop; see its log above.")
                    results.append({"seed": ep_seed, "success": bool(driver.success),
                                    "time_s": round(time.monotonic() - t0, 2),
                                    "sim_time_s": round(driver.sim_time - driver.start_sim_time, 2)})
                    print(f"closed loop: episode {ep + 1}/{len(seeds)} seed {ep_seed}: "
                          f"{'success' if driver.success else 'failure'} after {results[-1]['time_s']} s")
                    if driver.success and stop_after_success:
                        break
                latency_ms = [1e3 * v for v in driver.latency]
            finally:
                driver.close()
    n_ok = sum(r["success"] for r in results)
    p50, p99 = (float(np.percentile(latency_ms, q)) if latency_ms else float("nan") for q in (50, 99))
    return {"task": task, "camera": camera, "policy": policy, "episodes": results, "successes": n_ok,
            "success_rate": n_ok / max(len(results), 1), "latency_ms": latency_ms, "latency_p50_ms": p50,
            "latency_p99_ms": p99,
            "mode": "one process per node" if processes else "policy graph in one process (sim in its own)"}


class _Both:
    """Two running graphs seen as one: alive while both are."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def alive(self) -> bool:
        return self.a.alive() and self.b.alive()


def _sim_overrides(task: str, camera: str, seed: int) -> dict:
    return {"task": task, "camera": camera, "seed": int(seed), "publish_clock": True}


@contextmanager
def _extra_params(sim_params: dict, node_params: dict | None):
    """Temporary YAML files layered after the standard ones: yields {node name: [path]}."""
    import tempfile

    import yaml

    docs = {name: {name: {"ros__parameters": dict(values)}} for name, values in (node_params or {}).items()}
    docs.setdefault("sim_node", {"sim_node": {"ros__parameters": {}}})
    docs["sim_node"]["sim_node"]["ros__parameters"] = {**sim_params, **docs["sim_node"]["sim_node"]["ros__parameters"]}
    with tempfile.TemporaryDirectory(prefix="class_ros_graph_") as tmp:
        files = {}
        for name, doc in docs.items():
            path = os.path.join(tmp, f"{name}.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(doc, f)
            files[name] = [path]
        yield files
