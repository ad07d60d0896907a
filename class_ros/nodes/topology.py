"""The one description of the node graph, read by launch/policy.launch.py, launch/sim.launch.py and `class-ros graph`.

Each node: its name (also its executable and module `class_ros.nodes.<name>`), its parameter files
(relative to the package: the repository root in a venv install, share/class_ros with colcon) and its
remappings. Launch arguments / CLI options become parameter overrides through `overrides()`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from class_ros.errors import ClassRosError
from class_ros.policy import POLICY_KINDS
from class_ros.sim.cameras import CAMERA_TOPICS

POLICY_PARAMS = "config/policy.yaml"
SIM_PARAMS = "config/sim.yaml"
DEFAULT_ROBOT = "config/robots/sim_arm.yaml"
DEFAULT_CAMERA_TOPIC = "/camera/image_raw"


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph."""

    name: str  # node name == executable == module class_ros.nodes.<name>
    params: tuple[str, ...]  # parameter files, in load order (later files override earlier ones)
    remappings: tuple[tuple[str, str], ...] = ()


def image_topic(i: int) -> str:
    """camera_node's output topic of camera i (and the input topic of the node that reads it)."""
    return "~/image" if i == 0 else f"~/image_{i}"


def camera_topics(camera_topic: str) -> list[str]:
    """The raw camera topics of a `camera_topic` argument: one topic, or several joined by commas, in the
    order of the run's cameras (e.g. `/camera/image_raw,/wrist_camera/image_raw`)."""
    topics = [t.strip() for t in str(camera_topic).split(",") if t.strip()]
    if not topics or len(set(topics)) != len(topics):
        raise ClassRosError(f"camera_topic {camera_topic!r} must name one or more distinct topics, joined by commas.")
    return topics


def sim_camera_topic(image_keys) -> str:
    """The `camera_topic` argument for a run trained on the built-in sim's cameras `image_keys`."""
    unknown = [k for k in image_keys if k not in CAMERA_TOPICS]
    if unknown:
        raise ClassRosError(f"the run's cameras {unknown} are not the sim's ({', '.join(CAMERA_TOPICS)}).")
    return ",".join(CAMERA_TOPICS[k] for k in image_keys) or DEFAULT_CAMERA_TOPIC


def run_camera_topic(run_dir: str, camera_topic: str = DEFAULT_CAMERA_TOPIC, sim: bool = False) -> str:
    """The `camera_topic` to use: as given, except that with the built-in sim the default follows the run's
    cameras (a run trained on agentview + wrist reads both of sim_node's camera topics)."""
    if not sim or not run_dir or camera_topic != DEFAULT_CAMERA_TOPIC:
        return camera_topic
    from class_ros.data.rundir import RunDir
    return sim_camera_topic(RunDir.open(run_dir).load_config()["encoder"]["image_keys"])


def graph(policy: str = "retrieval", sim: bool = False, robot_config: str = DEFAULT_ROBOT,
          camera_topic: str = DEFAULT_CAMERA_TOPIC) -> list[NodeSpec]:
    """The nodes to start: camera -> (embedding ->) policy -> arm command, plus the sim node with sim=True."""
    if policy not in POLICY_KINDS:
        raise ClassRosError(f"policy must be {' or '.join(POLICY_KINDS)}, got {policy!r}.")
    nodes = [NodeSpec("camera_node", (POLICY_PARAMS,))]
    # The reader of camera_node's i-th output, camera i of the run, hears it under the same relative name.
    n_cameras = len(camera_topics(camera_topic))
    images = tuple((image_topic(i), "/camera_node/" + image_topic(i)[2:]) for i in range(n_cameras))
    if policy == "retrieval":
        nodes.append(NodeSpec("embedding_node", (POLICY_PARAMS,), images))
        policy_in = (("~/embedding", "/embedding_node/embedding"),)
    else:
        policy_in = images
    nodes.append(NodeSpec("policy_node", (POLICY_PARAMS,), policy_in))
    nodes.append(NodeSpec("arm_command_node", (POLICY_PARAMS, robot_config),
                          (("~/action_chunk", "/policy_node/action_chunk"),)))
    if sim:
        nodes.append(NodeSpec("sim_node", (SIM_PARAMS,)))
    return nodes


def overrides(name: str, run_dir: str = "", policy: str = "retrieval", camera_topic: str = DEFAULT_CAMERA_TOPIC,
              use_sim_time: bool = False) -> dict:
    """Parameter overrides from the launch arguments for node `name` (applied after its YAML files)."""
    out: dict = {"use_sim_time": bool(use_sim_time)}
    topics = camera_topics(camera_topic)
    if name in ("embedding_node", "policy_node") and run_dir:
        out["run_dir"] = str(run_dir)
    if name == "policy_node":
        out["policy"] = policy
    if name == "camera_node":
        out["input_topics"] = topics
    if name == "sim_node":  # the sim renders the cameras the graph listens to (agentview at least)
        out["cameras"] = [cam for cam, topic in CAMERA_TOPICS.items() if topic in topics] or ["agentview"]
    return out


def check_run_dir(run_dir: str) -> str:
    """`run_dir` as an absolute path; one sentence unless it names a class_ros run directory."""
    from class_ros.data.rundir import RunDir
    if not run_dir:
        raise ClassRosError("run_dir is not set; give the trained run, e.g. run_dir:=runs/demo/class_run.")
    path = os.path.abspath(run_dir)
    if not os.path.isdir(path):
        raise ClassRosError(f"run_dir {path} does not exist; give a trained run directory (class-ros pretrain / "
                            "finetune write one).")
    RunDir.open(path)  # refuses a folder that is not a run, or one of another format version
    return path


def package_root() -> Path:
    """Where config/ and launch/ live: the source tree in a venv install, else the colcon share folder."""
    here = Path(__file__).resolve().parents[2]
    if (here / POLICY_PARAMS).is_file():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("class_ros"))
    except Exception:  # noqa: BLE001 - no ament index: only the source tree could have held it
        raise ClassRosError(f"cannot find {POLICY_PARAMS}; run from the class_ros source tree or a colcon install.")


def resolve(path: str) -> str:
    """A parameter-file path as given if it exists, else relative to the package root."""
    if os.path.isfile(path):
        return os.path.abspath(path)
    candidate = package_root() / path
    if not candidate.is_file():
        raise ClassRosError(f"parameter file {path} does not exist (looked in . and {package_root()}).")
    return str(candidate)


def ros_arguments(spec: NodeSpec, params_file: str = POLICY_PARAMS, extra: dict | None = None) -> list[str]:
    """`--ros-args ...` for one node: its YAML files (policy.yaml replaced by params_file), overrides, remaps."""
    args = ["--ros-args"]
    for f in spec.params:
        args += ["--params-file", resolve(params_file if f == POLICY_PARAMS else f)]
    for key, value in (extra or {}).items():
        args += ["-p", f"{key}:={_yaml_value(value)}"]
    for src, dst in spec.remappings:
        args += ["-r", f"{src}:={dst}"]
    return args


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)
