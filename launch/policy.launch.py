"""Camera, embedding, policy and arm-command nodes for a ros2_control arm; `sim:=true` adds the MuJoCo sim.

    ros2 launch class_ros policy.launch.py run_dir:=runs/demo/class_run sim:=true

The nodes, their parameter files and remappings come from class_ros.nodes.topology, which
`class-ros graph` reads too, so both start the same graph from the same YAML.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from class_ros.nodes import topology


def nodes(context):
    """The graph's Node actions, built once the launch arguments are known."""
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    share = get_package_share_directory("class_ros")
    run_dir = topology.check_run_dir(arg("run_dir"))  # a wrong run stops the launch with one line, before any node
    policy = arg("policy")
    use_sim_time = arg("use_sim_time").lower() == "true"
    respawn = arg("respawn").lower() == "true"
    sim = arg("sim").lower() == "true"
    camera_topic = topology.run_camera_topic(run_dir, arg("camera_topic"), sim)
    specs = topology.graph(policy, sim=sim, robot_config=arg("robot_config"), camera_topic=camera_topic)
    actions = []
    for spec in specs:
        files = [f if os.path.isabs(f) else os.path.join(share, f) for f in spec.params]
        params = topology.overrides(spec.name, run_dir=run_dir, policy=policy,
                                    camera_topic=camera_topic, use_sim_time=use_sim_time)
        # Each node is its own process: a dead one never takes arm_command_node (the hold) with it.
        actions.append(Node(package="class_ros", executable=spec.name, name=spec.name, output="screen",
                            parameters=[*files, params], remappings=list(spec.remappings),
                            respawn=respawn, respawn_delay=1.0))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("run_dir", description="trained run directory (absolute, or relative to this folder)"),
        DeclareLaunchArgument("policy", default_value="retrieval", choices=["retrieval", "diffusion"],
                              description="retrieval (kNN over CLASS embeddings) or diffusion"),
        DeclareLaunchArgument("sim", default_value="false", choices=["true", "false"],
                              description="also start the built-in MuJoCo sim node"),
        DeclareLaunchArgument("camera_topic", default_value=topology.DEFAULT_CAMERA_TOPIC,
                              description="raw camera topic (sensor_msgs/Image); several joined by commas, in "
                                          "the run's camera order (with sim:=true the default follows the run)"),
        DeclareLaunchArgument("robot_config", default_value=topology.DEFAULT_ROBOT,
                              description="robot limits YAML, relative to the package share or absolute"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="follow /clock instead of the wall clock"),
        DeclareLaunchArgument("respawn", default_value="false", choices=["true", "false"],
                              description="restart a node whose process dies (after 1 s)"),
        OpaqueFunction(function=nodes),
    ])
