"""The ament_python package installs with colcon into a ROS 2 workspace layout, and with pip."""
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NODES = ["camera_node", "embedding_node", "policy_node", "arm_command_node", "sim_node"]


def test_package_xml_declares_ros_dependencies():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "class_ros"
    deps = {e.text for e in root.findall("exec_depend")}
    for dep in ["rclpy", "sensor_msgs", "std_msgs", "trajectory_msgs", "geometry_msgs", "std_srvs",
                "diagnostic_msgs", "lifecycle_msgs", "launch_ros"]:
        assert dep in deps, dep
    assert root.find("export/build_type").text == "ament_python"


@pytest.mark.skipif(shutil.which("colcon", path=os.path.dirname(sys.executable)) is None, reason="colcon not installed")
def test_colcon_build_installs_launch_config_and_executables(tmp_path):
    colcon = shutil.which("colcon", path=os.path.dirname(sys.executable))
    # build from a copy so the build leaves nothing in the source tree
    src = tmp_path / "src" / "class_ros"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    proc = subprocess.run([colcon, "--log-base", str(tmp_path / "log"), "build", "--base-paths", str(tmp_path / "src"), "--build-base", str(tmp_path / "build"),
                           "--install-base", str(tmp_path / "install")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = tmp_path / "install" / "class_ros"
    assert (prefix / "share/ament_index/resource_index/packages/class_ros").is_file()
    assert (prefix / "share/class_ros/package.xml").is_file()
    for exe in NODES + ["class-ros"]:
        assert (prefix / "lib/class_ros" / exe).is_file(), exe
    for launch in (REPO / "launch").glob("*.launch.py"):
        assert (prefix / "share/class_ros/launch" / launch.name).is_file(), launch.name
    for cfg in (REPO / "config").rglob("*.yaml"):
        assert (prefix / "share/class_ros" / cfg.relative_to(REPO)).is_file(), cfg
    site = next((prefix / "lib").glob("python3*/site-packages"))
    for xml in (REPO / "class_ros/sim/assets").glob("*.xml"):
        assert (site / "class_ros/sim/assets" / xml.name).is_file(), xml.name
    assert (site / "training" / "__init__.py").is_file()


def test_pip_console_scripts_exist():
    bindir = Path(sys.executable).parent
    for exe in NODES + ["class-ros"]:
        assert (bindir / exe).is_file(), f"{exe} missing: run `make setup`"


def test_install_prefix_lays_out_an_ament_package_and_a_setup_bash(tmp_path):
    """`make install`: the colcon layout from links to the source, usable after `source setup.bash`, venv untouched."""
    prefix = tmp_path / "install"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = Path(sys.executable).parent.parent / "lib" / version
    before = sorted(p.name for p in (site_packages / "site-packages").iterdir())
    for _ in range(2):  # idempotent
        subprocess.run([sys.executable, str(REPO / "scripts/install_prefix.py"), "--prefix", str(prefix)], check=True,
                       capture_output=True)
    assert sorted(p.name for p in (site_packages / "site-packages").iterdir()) == before
    assert (prefix / "share/ament_index/resource_index/packages/class_ros").is_file()
    assert (prefix / "share/class_ros/package.xml").resolve() == REPO / "package.xml"
    for launch in (REPO / "launch").glob("*.launch.py"):
        assert (prefix / "share/class_ros/launch" / launch.name).resolve() == launch
    for cfg in (REPO / "config").rglob("*.yaml"):
        assert (prefix / "share/class_ros" / cfg.relative_to(REPO)).resolve() == cfg
    for exe in NODES + ["class-ros"]:
        assert os.access(prefix / "lib/class_ros" / exe, os.X_OK), exe
    # A user's shell: source it, then the ament index, the executables and the package resolve to this tree.
    check = ("from ament_index_python.packages import get_package_prefix, get_package_share_directory; "
             "import class_ros; print(get_package_prefix('class_ros')); print(class_ros.__file__)")
    out = subprocess.run(["bash", "-c", f"source {prefix}/setup.bash && source {prefix}/setup.bash && "
                                        f"python -c \"{check}\" && echo $AMENT_PREFIX_PATH && "
                                        f"{prefix}/lib/class_ros/class-ros --help"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "AMENT_PREFIX_PATH": ""})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(prefix) and Path(lines[1]).resolve() == REPO / "class_ros/__init__.py"
    assert lines[2] == str(prefix)  # sourced twice, listed once
    assert "usage: class-ros" in out.stdout
