"""The `class-ros` command: every planned step is listed; errors are one line."""
import subprocess
import sys

from class_ros.cli import STEPS, main

PLANNED = ["sim-demos", "convert", "import-robomimic", "dtw", "pretrain", "index", "finetune", "evaluate",
           "demo", "graph"]


def test_help_lists_every_planned_step():
    out = subprocess.run([sys.executable, "-m", "class_ros.cli", "--help"], capture_output=True, text=True, check=True)
    assert list(STEPS) == PLANNED
    for step in PLANNED:
        assert step in out.stdout


def test_unknown_step_fails():
    proc = subprocess.run([sys.executable, "-m", "class_ros.cli", "teleport"], capture_output=True, text=True)
    assert proc.returncode != 0 and "invalid choice" in proc.stderr


def test_not_built_step_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setitem(STEPS, "dtw", ("training.not_a_module", "x", 3))
    assert main(["dtw", "--dataset", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["class-ros dtw: this step is not built yet (planned in issue #3)."]
