"""Clean shutdown: however a node or a graph is stopped, it ends with exit code 0 and no traceback.

Ctrl-C (SIGINT to the process group), a second SIGINT while shutting down, SIGTERM, and the context
shut down by rclpy's own signal handler under a running callback; for a node's main(), `class-ros
graph` and `class-ros graph --processes`. `ros2 launch` + Ctrl-C is in test_launch.py.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Started through this so the child sees SIGINT at its default even when the test runner ignores it (a
# background job): a signal ignored at exec time stays ignored.
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execvp(sys.argv[1], sys.argv[1:])")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """`cmd` in its own process group (as a terminal's foreground job), output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT, *cmd], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while text not in log.read_text():
        alive = proc.poll() is None
        assert (alive or text in log.read_text()) and time.monotonic() < end, log.read_text()[-3000:]
        time.sleep(0.02)


def stop(proc: subprocess.Popen, log: Path, signals, to_group: bool = True, timeout: float = 60.0) -> tuple[int, str]:
    """Send `signals` 50 ms apart (to the group, or the process alone); (exit code, output)."""
    for sig in signals:
        if to_group:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass  # already gone (a late signal)
        else:
            proc.send_signal(sig)
        time.sleep(0.05)
    try:
        code = proc.wait(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only if something outlived the test's expectations
        except ProcessLookupError:
            pass
    return code, log.read_text()


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT, signal.SIGINT]], ids=["sigterm", "sigint x2"])
def test_a_node_stops_quietly(signals, tmp_path):
    log = tmp_path / "camera_node.log"
    proc = start([sys.executable, "-m", "class_ros.nodes.camera_node"], log)
    wait_for(log, "rgb8", proc, timeout=60.0)  # its start-up line: the node is spinning
    code, out = stop(proc, log, signals)
    assert code == 0 and "Traceback" not in out, out


def test_a_callback_publishing_as_the_context_shuts_down_is_a_normal_stop(tmp_path):
    """What rclpy's signal handler does on Ctrl-C, at the worst moment: the context goes while a callback publishes."""
    script = tmp_path / "node.py"
    script.write_text(
        "import rclpy.node\n"
        "from std_msgs.msg import Bool\n"
        "from class_ros.nodes.common import run_node\n\n"
        "class ShutdownProbe(rclpy.node.Node):\n"
        "    def __init__(self):\n"
        "        super().__init__('shutdown_probe')\n"
        "        self.pub = self.create_publisher(Bool, 'flag', 10)\n"
        "        self.create_timer(0.01, self.tick)\n\n"
        "    def tick(self):\n"
        "        self.context.shutdown()\n"
        "        self.pub.publish(Bool())  # raises: the publisher's context is gone\n\n"
        "raise SystemExit(run_node(ShutdownProbe))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_stop_stuck_in_its_cleanup_ends_within_its_bound_and_says_where(tmp_path):
    """A cleanup that never returns (here a sleep with the signals blocked: in the field, a DDS call stuck
    in C) would ignore every later signal; the stop's watchdog dumps the stacks and ends the process."""
    script = tmp_path / "node.py"
    script.write_text(
        "import signal, time\n"
        "import rclpy.node\n"
        "from class_ros.nodes import common\n\n"
        "common.STOP_S = 2.0\n\n"
        "class StuckCleanup(rclpy.node.Node):\n"
        "    def __init__(self):\n"
        "        super().__init__('stuck_cleanup')\n"
        "        print('spinning', flush=True)\n\n"
        "    def destroy_node(self):\n"
        "        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})\n"
        "        time.sleep(600)\n\n"
        "raise SystemExit(common.run_node(StuckCleanup))\n")
    log = tmp_path / "node.log"
    proc = start([sys.executable, str(script)], log)
    wait_for(log, "spinning", proc, timeout=60.0)
    t0 = time.monotonic()
    code, out = stop(proc, log, [signal.SIGINT, signal.SIGTERM])
    assert code == 1, out
    assert time.monotonic() - t0 < 2.0 + 30.0, "the watchdog never fired"  # 2 s bound, start-up slack
    assert "Timeout" in out and "in destroy_node" in out, out


@pytest.mark.slow
def test_graph_in_one_process_stops_quietly_on_two_ctrl_c(sim_layout_run, tmp_path):
    log = tmp_path / "graph.log"
    proc = start([sys.executable, "-m", "class_ros.cli", "graph", "--sim", "--run-dir", str(sim_layout_run)], log)
    wait_for(log, "class-ros graph: running", proc, timeout=180.0)
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(log, "class-ros graph: stopped.", proc, timeout=60.0)
    code, out = stop(proc, log, [signal.SIGINT])  # the second Ctrl-C, late: the graph is already down
    assert code == 0 and "Traceback" not in out, out[-3000:]


@pytest.mark.slow
def test_graph_processes_stop_quietly_on_sigterm(sim_layout_run, tmp_path):
    """SIGTERM to the supervisor alone: it stops its node processes, each exits 0, none is left behind."""
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from ros_probe import Probe

    log = tmp_path / "graph.log"
    probe = Probe({"chunk": (JointTrajectory, "/policy_node/action_chunk"),
                   "cmd": (Float64MultiArray, "/forward_position_controller/commands")})
    proc = start([sys.executable, "-m", "class_ros.cli", "graph", "--sim", "--processes",
                  "--run-dir", str(sim_layout_run)], log)
    try:
        wait_for(log, "class-ros graph: running", proc, timeout=180.0)
        # Stop the node processes while they spin: a policy chunk has gone out (every node has loaded its
        # run) and the arm is commanded.
        assert probe.wait("chunk", 1, timeout=180.0) and probe.wait("cmd", 1, timeout=30.0), log.read_text()[-3000:]
    except BaseException:
        stop(proc, log, [signal.SIGKILL])
        raise
    finally:
        probe.close()
    code, out = stop(proc, log, [signal.SIGTERM], to_group=False)
    assert code == 0 and "class-ros graph: stopped." in out, out[-3000:]
    assert "Traceback" not in out and "exited" not in out, out[-3000:]
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # the group is empty: no node process outlived the supervisor
