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


# --- a test stuck where no signal reaches it ---------------------------------------------------------------
# pytest-timeout (pytest.ini) fails a test that overruns while Python runs. A test stuck inside C code - a
# DDS or rclpy call that never comes back to the interpreter - never sees its signal and would hold its
# worker, and the run, for ever. faulthandler's watchdog is a C thread: 60 s after that timeout it writes
# every thread's stack to this process's file and ends the process; pytest-xdist reports the test as
# crashed and goes on with a fresh worker, and the run's summary prints the stacks. xdist hands the crashed
# test to that fresh worker again (with the rest of its file): there it fails at once instead.
HANG_GRACE_S = 60.0
_hang_file = None  # this process's stack file: empty between tests, so only a hung test leaves it written


def _hang_dir() -> Path:
    return Path(os.environ["CLASS_ROS_HANG_DIR"])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    import faulthandler
    global _hang_file
    if _hang_file is None:
        _hang_file = open(_hang_dir() / f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}.txt", "w")
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0] if marker else item.config.getini("timeout")) + HANG_GRACE_S
    _hang_file.write(f"{item.nodeid} stuck for {seconds:.0f} s; every thread's stack then:\n")
    _hang_file.flush()
    faulthandler.dump_traceback_later(seconds, exit=True, file=_hang_file)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        _hang_file.seek(0)
        _hang_file.truncate()


def pytest_runtest_setup(item):
    for path in _hang_dir().glob("*.txt"):
        if path != Path(_hang_file.name) and path.read_text().startswith(f"{item.nodeid} stuck"):
            pytest.fail("it hung in an earlier worker (its stacks are in the run's summary); not run again",
                        pytrace=False)


def pytest_configure(config):
    if "CLASS_ROS_HANG_DIR" not in os.environ:  # the controller (or the only process); workers inherit it
        import tempfile
        os.environ["CLASS_ROS_HANG_DIR"] = tempfile.mkdtemp(prefix="class_ros_hangs_")


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import shutil
    for path in sorted(_hang_dir().glob("*.txt")):
        text = path.read_text()
        if text:
            terminalreporter.section(f"stuck in C code: {text.splitlines()[0]}", red=True)
            terminalreporter.write(text)
    shutil.rmtree(_hang_dir(), ignore_errors=True)
