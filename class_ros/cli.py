"""`class-ros`: one console command with one subcommand per pipeline step.

Usage:
    class-ros --help
    class-ros <step> --help

Each step lives in its own module `training/<step>.py` (or `class_ros/nodes/graph.py` for `graph`)
with `add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so `--help` is fast.
Errors a user can cause end in one line on stderr and exit status 1.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from class_ros.errors import ClassRosError

INTERRUPTED = 130  # exit status after Ctrl-C, as shells report it

# name -> (module, one-line help)
STEPS: dict[str, tuple[str, str]] = {
    "sim-demos": ("training.sim_demos", "record scripted demonstrations in the built-in MuJoCo arm world as rosbag2"),
    "convert": ("training.convert", "convert rosbag2 recordings into a dataset store"),
    "import-robomimic": ("training.import_robomimic", "import a robomimic/MimicGen HDF5 file into a dataset store"),
    "import-lerobot": ("training.import_lerobot", "import a LeRobot dataset (v3.0 / v2.1) into a dataset store"),
    "export-lerobot": ("training.export_lerobot", "export a dataset store as a LeRobot v3.0 dataset"),
    "dtw": ("training.dtw", "compute exact DTW action-sequence positives for a dataset"),
    "pretrain": ("training.pretrain", "CLASS pre-training of the visual encoder (soft InfoNCE)"),
    "index": ("training.index", "build the retrieval (kNN) index of a pre-trained run"),
    "finetune": ("training.finetune", "train a Diffusion Policy, from a CLASS run or from scratch"),
    "evaluate": ("training.evaluate", "evaluate a policy in the built-in simulator"),
    "demo": ("training.demo", "the whole pipeline end to end on the built-in simulator"),
    "graph": ("class_ros.nodes.graph", "start the ROS 2 node graph without `ros2 launch`"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="class-ros", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", metavar="STEP")
    for name, (module, help_text) in STEPS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STEPS and not any(a in ("-h", "--help") for a in argv[1:2]):
        # Build only the requested step's parser: importing every step would cost seconds.
        module, help_text = STEPS[argv[0]]
        parser = argparse.ArgumentParser(prog=f"class-ros {argv[0]}", description=help_text)
        mod = importlib.import_module(module)
        mod.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        return _call(mod.run, args, argv[0])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.step is None:
        parser.print_help()
        return 0
    return _call(importlib.import_module(args._module).run, args, args.step)


def _call(fn, args, step: str) -> int:
    try:
        return int(fn(args) or 0)
    except ClassRosError as err:
        print(f"class-ros {step}: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # permission, not-a-directory, disk full...: the path and the reason, no traceback
        print(f"class-ros {step}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"class-ros {step}: error: out of memory; use smaller settings (image size, batch size) or a "
              "machine with more memory.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"class-ros {step}: interrupted; completed outputs are kept, partial ones were discarded.",
              file=sys.stderr)
        return INTERRUPTED


def describe_os_error(err: OSError) -> str:
    """One sentence for an OSError: what failed on which path, and why."""
    paths = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    reason = err.strerror or str(err)
    return f"{paths}: {reason}; check the path and its permissions or free space." if paths else f"{reason}."


def entry(argv: list[str] | None = None) -> None:
    """The `class-ros` console script: run `main()` and exit with its status.

    After an interrupt `_call` has already cleaned up and reported, so the process leaves through `os._exit(130)`:
    CPython would otherwise kill itself with SIGINT at exit whenever the Ctrl-C landed inside a library's `exec` of
    generated code (rosbags builds its serialisers that way), although the interrupt was handled.
    """
    code = main(argv)
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
