"""Test-wide settings: DDS stays on loopback, MuJoCo renders through EGL, shared fixtures."""
import os
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
# A per-run DDS domain keeps concurrent test runs on one machine from hearing each other, and one per
# pytest-xdist worker the workers of one run: they inherit the controller's ROS_DOMAIN_ID, so worker k of
# W moves to its own slot (domains 1-100; 0 is everyone's default).
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))
if os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _slot = (int(os.environ["ROS_DOMAIN_ID"]) - 1) // _workers * _workers + int(os.environ["PYTEST_XDIST_WORKER"][2:])
    os.environ["ROS_DOMAIN_ID"] = str(_slot % 100 + 1)
# One compute thread per test process (torch, OpenMP): the suite runs two workers on two cores, often
# beside other work, and a computation split over threads waits at every barrier for a descheduled
# sibling (a 3 s pre-training test took 32 s that way).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """../shared/realdata: real third-party recordings (read-only)."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not present")
    return REALDATA


@pytest.fixture(scope="session")
def sim_layout_run(tmp_path_factory) -> Path:
    """A retrieval run in the built-in sim's layout, made in seconds (test/tiny_run.py), for graph tests."""
    from tiny_run import make_sim_layout_run
    return make_sim_layout_run(tmp_path_factory.mktemp("sim_layout_run"))
