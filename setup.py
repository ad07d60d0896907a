"""ament_python packaging: works with `colcon build` and with `pip install -e .`."""
from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = "class_ros"
NODES = ["camera_node", "embedding_node", "policy_node", "arm_command_node", "sim_node"]


def config_files():
    """(install_dir, [files]) pairs for every YAML under config/, keeping sub-folders."""
    out = {}
    for path in glob("config/**/*.yaml", recursive=True):
        out.setdefault(os.path.join("share", PACKAGE, os.path.dirname(path)), []).append(path)
    return sorted(out.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["class_ros", "class_ros.*", "training", "training.*"]),
    package_data={"class_ros": ["sim/assets/*.xml"], "training": ["configs/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        *config_files(),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="class_ros maintainers",
    maintainer_email="maintainers@class-ros.dev",
    description="CLASS for ROS 2 arms: demonstrations to a safe running policy.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "class-ros = class_ros.cli:entry",
            *[f"{node} = class_ros.nodes.{node}:main" for node in NODES],
        ],
    },
)
