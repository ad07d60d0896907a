"""The `class-ros` command: every planned step is listed; errors are one line."""
import os
import subprocess
import sys

from class_ros.cli import STEPS

PLANNED = ["sim-demos", "convert", "import-robomimic", "import-lerobot", "export-lerobot", "dtw", "pretrain", "index",
           "finetune", "evaluate", "demo", "graph"]


def test_help_lists_every_planned_step():
    out = subprocess.run([sys.executable, "-m", "class_ros.cli", "--help"], capture_output=True, text=True, check=True)
    assert list(STEPS) == PLANNED
    for step in PLANNED:
        assert step in out.stdout


def test_unknown_step_fails():
    proc = subprocess.run([sys.executable, "-m", "class_ros.cli", "teleport"], capture_output=True, text=True)
    assert proc.returncode != 0 and "invalid choice" in proc.stderr


def test_an_interrupt_inside_generated_code_still_exits_130(tmp_path):
    """CPython kills a `-m` process with SIGINT at exit when a Ctrl-C escaped an `exec` of a string - rosbags
    generates its serialisers that way - even after the CLI handled it; `entry` must exit 130 regardless."""
    (tmp_path / "interrupted_step.py").write_text(
        "from class_ros import cli\n"
        "def step(args):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "cli.main = lambda argv: cli._call(step, None, 'sim-demos')\n"
        "cli.entry([])\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "interrupted_step"], cwd=tmp_path, env=env, capture_output=True,
                          timeout=60)
    assert proc.returncode == 130, proc.stderr.decode()[-500:]
    assert b"interrupted; completed outputs are kept" in proc.stderr
