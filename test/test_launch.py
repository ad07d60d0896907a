"""Static checks of the launch files and the graph description (launch_ros cannot be installed here).

Every launch argument has a description, every executable is a console-script entry point, every
parameter file exists and every key in it is a parameter its node declares.
"""
import ast
import importlib
import itertools
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
    """Parameter names a node module declares with `declare(self, "name", ...)` or as the fields of its
    `*Params` dataclass, plus use_sim_time."""
    module = REPO / "class_ros" / "nodes" / f"{node_name}.py"
    tree = ast.parse(module.read_text())
    names = {c.args[1].value for c in calls(tree, "declare") if len(c.args) > 1 and isinstance(c.args[1], ast.Constant)}
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
