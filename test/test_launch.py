"""The launch files: static checks, then `ros2 launch` for real from an ament prefix.

Static: every launch argument has a description, every executable is a console-script entry point,
every parameter file exists and every key in it is a parameter its node declares.
Real (needs `ros2`: a sourced distro, or ../shared/vendor/ros2/install.sh; skipped without it unless
CLASS_ROS_REQUIRE_LAUNCH is set, as .ci/run does): the prefix that scripts/install_prefix.py writes is
sourced as a user would, `ros2 launch` runs in its own process group, `ros2 node/service/lifecycle`
talk to it, and SIGINT to the group (a terminal's Ctrl-C) must end every node with exit code 0.
"""
import ast
import importlib
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from class_ros.nodes import topology

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
POLICY_ARGS = {"run_dir", "policy", "sim", "camera_topic", "robot_config", "use_sim_time", "respawn"}


def calls(tree, name):
    """Every call `name(...)` (plain or attribute) in an ast."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name):
                yield node


def declared_arguments(path):
    tree = ast.parse(path.read_text())
    out = {}
    for call in calls(tree, "DeclareLaunchArgument"):
        name = call.args[0].value
        desc = {k.arg: k.value for k in call.keywords}.get("description")
        out[name] = desc.value if isinstance(desc, ast.Constant) else None
    return tree, out


def entry_points():
    """Node executables from setup.py's NODES list (setup.py is not imported: it calls setup())."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NODES" for t in node.targets):
            return {elt.value for elt in node.value.elts}
    raise AssertionError("setup.py has no NODES list")


def declared_parameters(node_name):
    """Parameter names a node module declares: the fields of its `*Params` dataclass, plus use_sim_time."""
    module = REPO / "class_ros" / "nodes" / f"{node_name}.py"
    tree = ast.parse(module.read_text())
    names = set()
    for cls in ast.walk(tree):
        if isinstance(cls, ast.ClassDef) and cls.name.endswith("Params"):
            names |= {f.target.id for f in cls.body if isinstance(f, ast.AnnAssign)}
    assert names, f"{module} declares no parameters"
    return names | {"use_sim_time"}


@pytest.mark.parametrize("launch_file", sorted(LAUNCH.glob("*.launch.py")), ids=lambda p: p.name)
def test_every_launch_argument_has_a_description_and_is_used(launch_file):
    tree, args = declared_arguments(launch_file)
    assert args, f"{launch_file.name} declares no arguments"
    for name, desc in args.items():
        assert desc and len(desc) > 10, f"argument {name!r} in {launch_file.name} has no real description"
    used = {c.args[0].value for c in calls(tree, "arg")} | {c.args[0].value for c in calls(tree, "LaunchConfiguration")
                                                           if isinstance(c.args[0], ast.Constant)}
    assert used == set(args), f"used {sorted(used)} vs declared {sorted(args)}"
    # One graph description: the launch file reads it rather than listing nodes itself.
    imports = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "class_ros.nodes" in imports and "topology" in launch_file.read_text()
    assert "generate_launch_description" in {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}


def test_policy_launch_has_the_documented_arguments():
    _, args = declared_arguments(LAUNCH / "policy.launch.py")
    assert set(args) == POLICY_ARGS
    assert (LAUNCH / "sim.launch.py").is_file()


def all_graphs():
    robots = sorted(str(p.relative_to(REPO)) for p in (REPO / "config" / "robots").glob("*.yaml"))
    assert topology.DEFAULT_ROBOT in robots
    for policy, sim, robot in itertools.product(("retrieval", "diffusion"), (False, True), robots):
        yield topology.graph(policy, sim, robot)


def test_every_executable_is_an_entry_point_with_a_main():
    eps = entry_points()
    for specs in all_graphs():
        for spec in specs:
            assert spec.name in eps, f"{spec.name} is not an entry point in setup.py"
            assert callable(getattr(importlib.import_module(f"class_ros.nodes.{spec.name}"), "main"))


def test_every_parameter_file_and_key_exists():
    for specs in all_graphs():
        for spec in specs:
            declared = declared_parameters(spec.name)
            found = False
            for rel in spec.params:
                path = REPO / rel
                assert path.is_file(), f"{rel} (parameters of {spec.name}) does not exist"
                doc = yaml.safe_load(path.read_text())
                for node, section in doc.items():
                    assert set(section) == {"ros__parameters"}, f"{rel}: {node} must hold only ros__parameters"
                if spec.name in doc:
                    found = True
                    unknown = set(doc[spec.name]["ros__parameters"]) - declared
                    assert not unknown, f"{rel}: {spec.name} declares no parameters {sorted(unknown)}"
            assert found, f"no parameter file of {spec.name} has a {spec.name} section"
            # Launch arguments become overrides: those must be declared too.
            unknown = set(topology.overrides(spec.name, run_dir="x")) - declared
            assert not unknown, f"overrides {sorted(unknown)} are not parameters of {spec.name}"
            for src, dst in spec.remappings:
                assert src.startswith("~/") and dst.startswith("/")


def test_remappings_connect_the_graph():
    specs = {s.name: s for s in topology.graph("retrieval", sim=True)}
    assert dict(specs["embedding_node"].remappings)["~/image"] == "/camera_node/image"
    assert dict(specs["policy_node"].remappings)["~/embedding"] == "/embedding_node/embedding"
    assert dict(specs["arm_command_node"].remappings)["~/action_chunk"] == "/policy_node/action_chunk"
    assert "embedding_node" not in {s.name for s in topology.graph("diffusion")}


def test_a_second_camera_is_wired_through_and_the_sim_renders_it():
    topics = "/camera/image_raw, /wrist_camera/image_raw"
    for policy, reader in (("retrieval", "embedding_node"), ("diffusion", "policy_node")):
        specs = {s.name: s for s in topology.graph(policy, sim=True, camera_topic=topics)}
        assert dict(specs[reader].remappings) == {"~/image": "/camera_node/image", "~/image_1": "/camera_node/image_1"}
    assert topology.overrides("camera_node", camera_topic=topics)["input_topics"] == [
        "/camera/image_raw", "/wrist_camera/image_raw"]
    assert topology.overrides("sim_node", camera_topic=topics)["cameras"] == ["agentview", "wrist"]
    assert topology.overrides("sim_node")["cameras"] == ["agentview"]
    assert topology.sim_camera_topic(["agentview", "wrist"]) == "/camera/image_raw,/wrist_camera/image_raw"
    from class_ros.errors import ClassRosError
    with pytest.raises(ClassRosError, match="distinct topics"):
        topology.camera_topics("/a,/a")
    with pytest.raises(ClassRosError, match="not the sim's"):
        topology.sim_camera_topic(["front"])


def test_with_the_sim_the_default_camera_topics_follow_the_run(tmp_path):
    from tiny_run import make_sim_layout_run
    run = str(make_sim_layout_run(tmp_path, n_episodes=2, length=12, cameras=("agentview", "wrist")))
    both = "/camera/image_raw,/wrist_camera/image_raw"
    assert topology.run_camera_topic(run, sim=True) == both
    assert topology.run_camera_topic(run, sim=False) == topology.DEFAULT_CAMERA_TOPIC  # a real arm names its own
    assert topology.run_camera_topic(run, "/cam", sim=True) == "/cam"  # what the user gave stays


def test_sim_robot_config_matches_the_sim():
    from class_ros.sim import robot
    p = yaml.safe_load((REPO / topology.DEFAULT_ROBOT).read_text())["arm_command_node"]["ros__parameters"]
    assert p["joints"] + [p["gripper_joint"]] == list(robot.JOINT_NAMES)
    np.testing.assert_allclose(p["lower"], robot.JOINT_LOWER)
    np.testing.assert_allclose(p["upper"], robot.JOINT_UPPER)
    np.testing.assert_allclose(p["max_velocity"], robot.VELOCITY_LIMITS)
    policy = yaml.safe_load((REPO / topology.POLICY_PARAMS).read_text())["policy_node"]["ros__parameters"]
    assert policy["action_names"] == list(robot.JOINT_NAMES)


def test_ros_arguments_layer_files_overrides_and_remaps():
    spec = next(s for s in topology.graph("retrieval") if s.name == "arm_command_node")
    args = topology.ros_arguments(spec, extra={"use_sim_time": True, "names": ["a", "b"], "x": "it's"})
    assert args[0] == "--ros-args"
    files = [args[i + 1] for i, a in enumerate(args) if a == "--params-file"]
    assert [Path(f).name for f in files] == ["policy.yaml", "sim_arm.yaml"]
    assert "use_sim_time:=true" in args and "names:=['a', 'b']" in args
    assert "x:='it''s'" in args
    assert "~/action_chunk:=/policy_node/action_chunk" in args
    from class_ros.errors import ClassRosError
    with pytest.raises(ClassRosError, match="does not exist"):
        topology.resolve("config/nope.yaml")
    with pytest.raises(ClassRosError, match="retrieval or diffusion"):
        topology.graph("ppo")


# ------------------------------------------------------------------------------------ ros2 launch, for real
NODES = {"/camera_node", "/embedding_node", "/policy_node", "/arm_command_node", "/sim_node"}
# Started through this so the launch sees SIGINT at its default even when the test runner ignores it (a
# background job): a signal ignored at exec time stays ignored in the child.
DEFAULT_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execvp(sys.argv[1], sys.argv[1:])")


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    """An ament prefix written by scripts/install_prefix.py (what `make install` does), in a temp folder."""
    have_ros2 = shutil.which("ros2", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if not have_ros2:
        why = ("no `ros2` command: source a ROS 2 distro, or install the launch stack with "
               "../shared/vendor/ros2/install.sh .venv/bin/python (make setup does when ../shared is there)")
        if os.environ.get("CLASS_ROS_REQUIRE_LAUNCH"):
            pytest.fail(why)
        pytest.skip(why)
    out = tmp_path_factory.mktemp("ament") / "install"
    subprocess.run([sys.executable, str(REPO / "scripts/install_prefix.py"), "--prefix", str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def run_dir(sim_layout_run):
    return sim_layout_run


def sourced(prefix, command: str) -> list[str]:
    """`command` in a bash that sourced the prefix's setup.bash, as a user's shell would."""
    return ["bash", "-c", f"source {shlex.quote(str(prefix))}/setup.bash && exec {command}"]


def ros2(prefix, *args, timeout=60.0) -> subprocess.CompletedProcess:
    """One `ros2 ...` command line (no daemon: nothing may outlive the test)."""
    return subprocess.run(sourced(prefix, "ros2 " + " ".join(shlex.quote(str(a)) for a in args)),
                          capture_output=True, text=True, timeout=timeout)


def ros2_discovering(prefix, done, *args, tries=5) -> subprocess.CompletedProcess:
    """`ros2 ARGS --no-daemon --spin-time 3`, again until `done(result)`: without a daemon each command
    discovers the graph itself in its spin time, and on a busy machine a node can be missed in one."""
    for _ in range(tries):
        result = ros2(prefix, *args, "--no-daemon", "--spin-time", "3")
        if done(result):
            break
    return result


class Launch:
    """`ros2 launch class_ros ARGS` in its own process group, its output in a file."""

    def __init__(self, prefix, log: Path, *args):
        self.log = log
        self.started = time.monotonic()
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", DEFAULT_SIGINT,
                                          *sourced(prefix, "ros2 launch class_ros " + " ".join(args))],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def interrupt(self, timeout=60.0) -> tuple[int, str]:
        """SIGINT to the whole group, as Ctrl-C in a terminal; (the launch's exit code, its output)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        return code, self.log.read_text()

    def kill(self) -> None:
        """Whatever is left of the group, gone (only after a failure)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def assert_clean_exit(code: int, out: str, nodes: set[str]) -> None:
    """The launch and every node ended with exit code 0 and nothing printed a traceback."""
    assert code == 0, out[-3000:]
    assert "Traceback" not in out and "has died" not in out, out[-3000:]
    finished = set(re.findall(r"\[INFO\] \[(\w+)-\d+\]: process has finished cleanly", out))
    assert finished == {n.lstrip("/") for n in nodes}, out[-3000:]


@pytest.fixture(scope="module")
def sim_graph(prefix, run_dir, tmp_path_factory):
    """`ros2 launch class_ros policy.launch.py run_dir:=RUN sim:=true`, watched by a probe, once it runs."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64, Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from ros_probe import Probe

    probe = Probe({"cmd": (Float64MultiArray, "/forward_position_controller/commands"),
                   "chunk": (JointTrajectory, "/policy_node/action_chunk"),
                   "joints": (JointState, "/joint_states"),
                   "latency": (Float64, "/arm_command_node/latency")})
    launch = Launch(prefix, tmp_path_factory.mktemp("launch") / "policy_sim.log", "policy.launch.py",
                    f"run_dir:={run_dir}", "sim:=true")
    try:
        # Up when a command follows a policy chunk (arm_command_node reports that chunk's latency): every
        # node has loaded, so the tests measure the running graph, not its start-up.
        assert probe.wait("latency", 1, timeout=180.0), launch.log.read_text()[-3000:]
        print(f"ros2 launch -> first command {probe.times['cmd'][0] - launch.started:.1f} s, "
              f"first command from a policy chunk {probe.times['latency'][0] - launch.started:.1f} s")
        yield launch, probe
    finally:
        launch.kill()
        probe.close()


@pytest.mark.slow
def test_policy_launch_with_sim_runs_the_graph(sim_graph, prefix):
    launch, probe = sim_graph
    listed = ros2_discovering(prefix, lambda r: NODES <= set(r.stdout.split()), "node", "list")
    assert NODES <= set(listed.stdout.split()), listed.stdout + listed.stderr
    # The command stream over a 5 s window, on arrival: it never goes silent. Its rate (100 Hz when the
    # machine has room) is printed, not checked: on a busy machine every timer runs late, and the rate is
    # benchmarks/latency.py's to measure.
    t0 = time.monotonic()
    time.sleep(5.0)
    arrivals = np.array(probe.arrivals_between("cmd", t0, t0 + 5.0))
    latency_ms = 1e3 * np.array([m.data for m in probe.got["latency"]])
    print(f"command rate {len(arrivals) / 5.0:.1f} Hz; camera-to-command latency p50 {np.median(latency_ms):.1f} "
          f"ms, p99 {np.percentile(latency_ms, 99):.1f} ms over {len(latency_ms)} chunks")
    gaps = np.diff(np.concatenate([[t0], arrivals, [t0 + 5.0]]))
    assert len(arrivals) >= 5 and gaps.max() < 1.0, f"{len(arrivals)} commands in 5 s, longest gap {gaps.max():.2f} s"
    assert len(latency_ms) and np.all(latency_ms > 0)
    answer = ros2(prefix, "service", "call", "/arm_command_node/reset_estop", "std_srvs/srv/Trigger")
    assert "success=True" in answer.stdout, answer.stdout + answer.stderr
    # The sim arm follows the chunks: its measured joints move well beyond sensor noise (0 in the sim).
    q = np.array([m.position for m in probe.got["joints"]])
    assert np.abs(q - q[0]).max() > 0.05, np.abs(q - q[0]).max()


@pytest.mark.slow
def test_policy_node_lifecycle_deactivate_stops_chunks_and_activate_resumes(sim_graph, prefix):
    launch, probe = sim_graph
    assert probe.wait("chunk", 1, timeout=30.0)
    moved = lambda r: "Transitioning successful" in r.stdout  # noqa: E731
    done = ros2_discovering(prefix, moved, "lifecycle", "set", "/policy_node", "deactivate")
    assert moved(done), done.stdout + done.stderr
    state = ros2_discovering(prefix, lambda r: r.stdout.strip(), "lifecycle", "get", "/policy_node")
    assert state.stdout.startswith("inactive"), state.stdout + state.stderr
    # Active, a chunk goes out every (n_action_steps - 1) / 10 Hz = 0.7 s: 3 s of silence says "stopped".
    time.sleep(0.5)  # a chunk already on the wire
    t0 = time.monotonic()
    time.sleep(3.0)
    assert probe.count_between("chunk", t0, t0 + 3.0) == 0
    done = ros2_discovering(prefix, moved, "lifecycle", "set", "/policy_node", "activate")
    assert moved(done), done.stdout + done.stderr
    n = len(probe.got["chunk"])
    assert probe.wait("chunk", n + 2, timeout=10.0), "no chunks after activate"


@pytest.mark.slow
def test_sigint_to_the_launch_group_ends_every_node_cleanly(sim_graph):
    """Last of the sim_graph tests: Ctrl-C (the terminal's SIGINT to the group, then launch's own)."""
    launch, _ = sim_graph
    code, out = launch.interrupt()
    assert_clean_exit(code, out, NODES)


@pytest.mark.slow
def test_policy_launch_against_a_robot_node(prefix, run_dir, tmp_path):
    """Without sim:=true the graph drives whatever publishes /joint_states and the camera: here a test node."""
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    from class_ros.sim.robot import HOME, JOINT_NAMES
    from ros_probe import Probe

    nodes = NODES - {"/sim_node"}
    probe = Probe({"cmd": (Float64MultiArray, "/forward_position_controller/commands"),
                   "grip": (Float64MultiArray, "/gripper_controller/commands"),
                   "chunk": (JointTrajectory, "/policy_node/action_chunk")})
    launch = Launch(prefix, tmp_path / "policy.log", "policy.launch.py", f"run_dir:={run_dir}")
    try:
        joints = probe.publisher(JointState, "/joint_states", sensor=True)
        camera = probe.publisher(Image, "/camera/image_raw", sensor=True)
        frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        end = time.monotonic() + 120.0
        following = lambda: probe.count_between("cmd", (probe.times["chunk"] or [end])[0], end)  # noqa: E731
        while following() < 100 and time.monotonic() < end:  # the robot: 50 Hz state, 25 Hz camera
            for _ in range(2):
                msg = JointState(name=list(JOINT_NAMES), position=[float(v) for v in HOME])
                msg.header.stamp = probe.node.get_clock().now().to_msg()
                joints.publish(msg)
                time.sleep(0.02)
            img = Image(height=120, width=160, encoding="rgb8", step=480, data=frame.tobytes())
            img.header.stamp = probe.node.get_clock().now().to_msg()
            camera.publish(img)
        assert following() >= 100, launch.log.read_text()[-3000:]  # 1 s of commands after the first chunk
        cmds = np.array([m.data for m in probe.got["cmd"]])
        grip = np.array([m.data for m in probe.got["grip"]])
        assert cmds.shape[1] == 6 and grip.shape[1] == 1
        # Every command stays within max_step (0.3 rad, config/robots/sim_arm.yaml) of the measured HOME,
        # and the policy's chunks (HOME plus a ramp) make the commands leave it.
        dev = np.abs(cmds - HOME[:6]).max(axis=1)
        assert dev.max() <= 0.3 + 1e-9 and dev.max() > 0.01, dev.max()
    finally:
        code, out = launch.interrupt()
        probe.close()
    assert_clean_exit(code, out, nodes)


@pytest.mark.slow
def test_sim_launch_alone(prefix, tmp_path):
    from sensor_msgs.msg import Image, JointState

    from ros_probe import Probe

    probe = Probe({"joints": (JointState, "/joint_states"), "image": (Image, "/camera/image_raw")})
    launch = Launch(prefix, tmp_path / "sim.log", "sim.launch.py", "task:=push", "seed:=3")
    try:
        assert probe.wait("joints", 20, timeout=60.0) and probe.wait("image", 5, timeout=30.0), \
            launch.log.read_text()[-3000:]
        assert probe.got["image"][-1].height == 96 and probe.got["image"][-1].encoding == "rgb8"
        task = ros2_discovering(prefix, lambda r: "push" in r.stdout, "param", "get", "/sim_node", "task")
        assert "push" in task.stdout, task.stdout + task.stderr
        answer = ros2(prefix, "service", "call", "/sim_node/reset", "std_srvs/srv/Trigger")
        assert "success=True" in answer.stdout and "seed 3" in answer.stdout, answer.stdout + answer.stderr
    finally:
        code, out = launch.interrupt()
        probe.close()
    assert_clean_exit(code, out, {"/sim_node"})


@pytest.mark.parametrize("launch_file", sorted(LAUNCH.glob("*.launch.py")), ids=lambda p: p.name)
def test_show_args_lists_every_argument_with_its_description(prefix, launch_file):
    shown = ros2(prefix, "launch", "class_ros", launch_file.name, "--show-args")
    assert shown.returncode == 0, shown.stderr
    _, args = declared_arguments(launch_file)
    for name, description in args.items():
        assert f"'{name}':" in shown.stdout and description in shown.stdout, (name, shown.stdout)


@pytest.mark.parametrize("run", ["/nonexistent/run", "."])
def test_a_wrong_run_dir_fails_with_one_clear_line(prefix, run, tmp_path):
    proc = subprocess.run(sourced(prefix, f"ros2 launch class_ros policy.launch.py run_dir:={run} sim:=true"),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if "ERROR" in line]
    assert proc.returncode != 0 and len(errors) == 1, out
    assert ("does not exist" in errors[0]) if run.startswith("/") else ("not a class_ros run directory" in errors[0])
    assert "Traceback" not in out and "process started" not in out, out
