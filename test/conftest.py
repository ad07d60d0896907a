"""Test-wide settings: DDS stays on loopback, MuJoCo renders through EGL, shared fixtures."""
import os
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
# A per-run DDS domain keeps concurrent test runs on one machine from hearing each other.
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1))
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
