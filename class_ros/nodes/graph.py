"""`class-ros graph`: start the node graph without `ros2 launch`, from the same YAML and graph description.

Usage:
    class-ros graph --params config/policy.yaml --run-dir runs/demo/class_run [--sim] [--processes]

One process with one executor thread per node (lowest latency, the default) or one process per node
(`--processes`, like `ros2 launch`). The nodes, their parameter files and remappings come from
class_ros.nodes.topology, which the launch files read too.

A dead node never silences the arm: when another node dies (its process, or its executor thread in
one process) it is reported and arm_command_node keeps running, holding the arm by its watchdog;
with `--processes --respawn` the dead node is restarted (at most RESPAWN_LIMIT times each). The exit
status is 0 only for a requested stop (--duration, SIGTERM; Ctrl-C gives 130) with every node alive;
otherwise 1, naming the dead nodes. If arm_command_node itself dies and is not restarted, the graph
stops at once.

The closed-loop episode driver that runs seeded sim episodes through this graph lives in
class_ros.nodes.closed_loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing


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
    parser.add_argument("--camera-topic", default=topology.DEFAULT_CAMERA_TOPIC,
                        help="raw camera topic; several joined by commas, in the run's camera order")
    parser.add_argument("--sim", action="store_true", help="also start the MuJoCo sim node (config/sim.yaml)")
    parser.add_argument("--processes", action="store_true", help="one process per node instead of one in total")
    parser.add_argument("--use-sim-time", action="store_true", help="nodes follow /clock")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: Ctrl-C)")
    parser.add_argument("--respawn", action="store_true",
                        help=f"with --processes: restart a node that dies (at most {RESPAWN_LIMIT} times each)")


def run(args: argparse.Namespace) -> int:
    _check_env()
    if args.respawn and not args.processes:
        raise ClassRosError("--respawn restarts node processes; add --processes.")
    camera_topic = topology.run_camera_topic(args.run_dir, args.camera_topic, args.sim)
    specs = topology.graph(args.policy, args.sim, args.robot_config, camera_topic)
    extra = dict(run_dir=args.run_dir, policy=args.policy, camera_topic=camera_topic,
                 use_sim_time=args.use_sim_time)
    return run_graph(specs, args.params, extra, args.processes, args.duration, args.respawn)


def run_graph(specs, params_file: str, extra: dict, processes: bool = False, duration: float = 0.0,
              respawn: bool = False) -> int:
    """Start the graph, supervise it until stopped; returns the exit status (see supervise)."""
    starter = start_processes if processes else start_in_process
    # Ctrl-C and SIGTERM only ask the graph to stop: a second one during start-up or shutdown cannot cut
    # either short (no half-destroyed nodes, no orphaned processes), and the stop exits 0 without a traceback.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with starter(specs, params_file, extra) as graph:
            print(f"class-ros graph: running {[s.name for s in specs]} "
                  f"({'processes' if processes else 'one process'}); Ctrl-C stops it.", flush=True)
            code = supervise(graph, duration, respawn, stop)
    finally:
        # After a stop the process is on its way out: a late second Ctrl-C must not turn exit 0 into death
        # by SIGINT, so stop signals stay ignored; otherwise (duration over, a node gone) the old handlers return.
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else handler)
    print("class-ros graph: stopped.", flush=True)
    return code


RESPAWN_LIMIT = 5  # restarts per node before the graph gives up on it
COMMAND_NODE = "arm_command_node"


def supervise(graph, duration: float = 0.0, respawn: bool = False, stop: threading.Event | None = None) -> int:
    """Watch a running graph until `duration` s pass (0: forever) or `stop` is set; returns the exit status.

    A dead node is reported once and, with `respawn`, restarted; the command node keeps running either
    way. Returns 0 only when the stop was requested and every node is alive, else 1 naming the dead.
    """
    stop = stop or threading.Event()
    end = time.monotonic() + duration if duration > 0 else float("inf")
    given_up: dict[str, str] = {}  # node -> how it died
    restarts: dict[str, int] = {}
    while time.monotonic() < end and not stop.is_set():
        for name, why in graph.dead().items():
            if name in given_up:
                continue
            if respawn and restarts.get(name, 0) < RESPAWN_LIMIT:
                restarts[name] = restarts.get(name, 0) + 1
                print(f"class-ros graph: {name} {why}; restarting it ({restarts[name]}/{RESPAWN_LIMIT}).",
                      file=sys.stderr, flush=True)
                graph.restart(name)
                continue
            given_up[name] = why
            if name == COMMAND_NODE:
                print(f"class-ros graph: {name} {why}; nothing commands the arm, stopping the graph.",
                      file=sys.stderr, flush=True)
                return _dead_status(given_up)
            print(f"class-ros graph: {name} {why}; {COMMAND_NODE} keeps holding the arm. Stop the graph to "
                  f"restart it (or run with --processes --respawn).", file=sys.stderr, flush=True)
        stop.wait(0.1)
    return _dead_status(given_up)


def _dead_status(dead: dict[str, str]) -> int:
    if not dead:
        return 0
    print(f"class-ros graph: error: {', '.join(f'{n} {w}' for n, w in dead.items())}.", file=sys.stderr, flush=True)
    return 1


def _check_env() -> None:
    # No DDS traffic may leave the machine unless the user chose otherwise.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")


def _node_args(spec, params_file, extra):
    return topology.ros_arguments(spec, params_file, topology.overrides(spec.name, **extra))


class InProcessGraph:
    """Every node in this process, each spun by its own SingleThreadedExecutor in a background thread.

    Not one MultiThreadedExecutor: rclpy's busy-loops (100% of a core, holding the GIL) while a ready
    callback waits for its mutually exclusive group, which long inference callbacks make the common case.
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
        self.errors: dict[str, str] = {}  # node -> what stopped its executor thread
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
            thread = threading.Thread(target=self._spin, args=(name, executor), name=name, daemon=True)
            self.executors.append(executor)
            self.threads.append(thread)
            thread.start()

    def _spin(self, name, executor):
        from rclpy.executors import ExternalShutdownException
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except Exception as err:  # noqa: BLE001 - reported by dead(); the other nodes keep running
            if not self.closing:  # (a timer firing while the executor shuts down is expected)
                self.errors[name] = f"{type(err).__name__}: {err}"
                print(f"class-ros graph: {name}'s executor stopped: {self.errors[name]}", file=sys.stderr, flush=True)

    def alive(self) -> bool:
        return not self.dead()

    def dead(self) -> dict[str, str]:
        """{node: how it died} for every node whose executor thread stopped."""
        if self.closing:
            return {}
        return {t.name: f"stopped ({self.errors.get(t.name, 'its executor returned')})"
                for t in self.threads if not t.is_alive()}

    def restart(self, name: str) -> None:
        raise ClassRosError("nodes in one process are not restarted; use --processes --respawn.")

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
    """Child processes, each running one node (as `ros2 launch` would start them) or the whole graph."""

    def __init__(self, cmds: dict[str, list[str]]):
        self.cmds = cmds
        self.procs = {name: subprocess.Popen(cmd, env=os.environ.copy()) for name, cmd in self.cmds.items()}

    def alive(self) -> bool:
        return not self.dead()

    def dead(self) -> dict[str, str]:
        """{node: how it died} for every node process that exited."""
        return {n: f"exited with status {p.returncode}" for n, p in self.procs.items() if p.poll() is not None}

    def restart(self, name: str) -> None:
        """Start node `name` again, as it was started first."""
        self.procs[name] = subprocess.Popen(self.cmds[name], env=os.environ.copy())

    def close(self) -> None:
        # The command node stops last, so the arm is held while the others shut down.
        others = [p for n, p in self.procs.items() if n != COMMAND_NODE]
        last = [self.procs[COMMAND_NODE]] if COMMAND_NODE in self.procs else []
        for group in (others, last):
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in group:
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
    return closing(ProcessGraph({s.name: [sys.executable, "-m", NODE_CLASSES[s.name][0],
                                          *_node_args(s, params_file, extra or {})] for s in specs}))


def start_one_process(specs, params_file: str = topology.POLICY_PARAMS, extra: dict | None = None):
    """Context manager: the graph in ONE child process, as `class-ros graph` runs it, so that the caller's
    own ROS work (an episode driver, a latency probe) never shares the graph's interpreter and its GIL."""
    spec = json.dumps({"specs": [dataclasses.asdict(s) for s in specs], "params_file": params_file,
                       "extra": extra or {}})
    return closing(ProcessGraph({"policy graph": [sys.executable, "-m", "class_ros.nodes.graph", spec]}))


def _serve(spec: str) -> int:
    """start_one_process's child: the graph described by `spec` (JSON) until SIGINT / SIGTERM."""
    d = json.loads(spec)
    specs = [topology.NodeSpec(s["name"], tuple(s["params"]), tuple(tuple(r) for r in s["remappings"]))
             for s in d["specs"]]
    return run_graph(specs, d["params_file"], d["extra"])


if __name__ == "__main__":
    _check_env()
    try:
        status = _serve(sys.argv[1])
    except ClassRosError as err:
        print(f"class-ros graph: error: {err}", file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # as run_node: no interpreter teardown after rclpy / torch (it can hang)
