"""Seeded sim episodes through the ROS graph, touching the robot only through ROS topics and services.

    res = run_closed_loop("runs/demo/class_run", task="lift", camera="fixed", episodes=3, seed=0)
    res["successes"], res["latency_p99_ms"]

The graph comes from class_ros.nodes.graph (the policy graph in one child process, as `class-ros graph`
runs it, or one process per node); the sim node always runs in its own process, as a real arm is its
own machine, and this driver in the caller's: none of them shares an interpreter with the policy graph.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager

import numpy as np

from class_ros.errors import ClassRosError
from class_ros.nodes import topology
from class_ros.nodes.graph import _check_env, start_one_process, start_processes


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
        from class_ros.nodes.common import LATCHED
        self.estop_pub = self.node.create_publisher(Bool, "/arm_command_node/estop", LATCHED)
        self.reset_sim = self.node.create_client(Trigger, "/sim_node/reset")
        self.reset_estop = self.node.create_client(Trigger, "/arm_command_node/reset_estop")
        self.sim_params = AsyncParameterClient(self.node, "sim_node")
        self.node.create_subscription(Bool, "/sim_node/success", self._on_success, LATCHED)
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
    # The sim publishes, and camera_node reads, exactly the cameras the run was trained on.
    camera_topic = topology.run_camera_topic(str(run_dir), sim=True)
    specs = topology.graph(policy, sim=True, camera_topic=camera_topic)
    extra = dict(run_dir=str(run_dir), policy=policy, camera_topic=camera_topic)
    sim_yaml = _sim_overrides(task, camera, seeds[0] if seeds else seed)
    starter = start_processes if processes else start_one_process
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
