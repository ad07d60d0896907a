"""The built-in MuJoCo arm world alone, behind ros2_control-style topics.

    ros2 launch class_ros sim.launch.py task:=lift camera:=random
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from class_ros.nodes import topology


def nodes(context):
    """The sim node with its YAML, then the task / camera / seed arguments."""
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    share = get_package_share_directory("class_ros")
    spec = next(s for s in topology.graph(sim=True) if s.name == "sim_node")
    params = {"task": arg("task"), "camera": arg("camera"), "seed": int(arg("seed")),
              "publish_clock": arg("publish_clock").lower() == "true",
              "cameras": [c.strip() for c in arg("cameras").split(",") if c.strip()]}
    return [Node(package="class_ros", executable=spec.name, name=spec.name, output="screen",
                 parameters=[*(os.path.join(share, f) for f in spec.params), params])]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("task", default_value="lift", choices=["lift", "push", "pick_place"],
                              description="task of the sim world (which objects, which success test)"),
        DeclareLaunchArgument("camera", default_value="fixed", choices=["fixed", "random", "moving", "heldout"],
                              description="camera pose mode of the agentview camera"),
        DeclareLaunchArgument("seed", default_value="0", description="seed of the first episode"),
        DeclareLaunchArgument("cameras", default_value="agentview",
                              description="cameras to publish, joined by commas: agentview (/camera/image_raw) "
                                          "and/or wrist (eye-in-hand, /wrist_camera/image_raw)"),
        DeclareLaunchArgument("publish_clock", default_value="false", choices=["true", "false"],
                              description="publish the sim time on /clock"),
        OpaqueFunction(function=nodes),
    ])
