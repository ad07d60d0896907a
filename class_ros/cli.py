"""`class-ros`: one console command with one subcommand per pipeline step.

Usage:
    class-ros --help
    class-ros <step> --help

Each step lives in its own module `training/<step>.py` (or `class_ros/nodes/graph.py` for `graph`)
with `add_arguments(parser)` and `run(args) -> int`. Modules are imported lazily so `--help` is fast.
Errors a user can cause end in one line on stderr and exit status 1 (2 for a step not built yet).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

from class_ros.errors import ClassRosError

INTERRUPTED = 130  # exit status after Ctrl-C, as shells report it

# name -> (module, one-line help, issue that builds it)
STEPS: dict[str, tuple[str, str, int]] = {
    "sim-demos": ("training.sim_demos", "record scripted demonstrations in the built-in MuJoCo arm world as rosbag2", 4),
    "convert": ("training.convert", "convert rosbag2 recordings into a dataset store", 5),
    "import-robomimic": ("training.import_robomimic", "import a robomimic/MimicGen HDF5 file into a dataset store", 5),
    "dtw": ("training.dtw", "compute exact DTW action-sequence positives for a dataset", 3),
    "pretrain": ("training.pretrain", "CLASS pre-training of the visual encoder (soft InfoNCE)", 6),
    "index": ("training.index", "build the retrieval (kNN) index of a pre-trained run", 6),
    "finetune": ("training.finetune", "train a Diffusion Policy, from a CLASS run or from scratch", 7),
    "evaluate": ("training.evaluate", "evaluate a policy in the built-in simulator", 4),
    "demo": ("training.demo", "the whole pipeline end to end on the built-in simulator", 9),
    "graph": ("class_ros.nodes.graph", "start the ROS 2 node graph without `ros2 launch`", 8),
}


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="class-ros", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="step", metavar="STEP")
    for name, (module, help_text, _issue) in STEPS.items():
        built = _module_exists(module)
        p = sub.add_parser(name, help=help_text + ("" if built else " [not built yet]"),
                           description=help_text)
        if built:
            importlib.import_module(module).add_arguments(p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(_module=module, _built=built)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STEPS and not any(a in ("-h", "--help") for a in argv[1:2]):
        # Build only the requested step's parser: importing every step would cost seconds.
        module, help_text, issue = STEPS[argv[0]]
        parser = argparse.ArgumentParser(prog=f"class-ros {argv[0]}", description=help_text)
        if not _module_exists(module):
            print(f"class-ros {argv[0]}: this step is not built yet (planned in issue #{issue}).", file=sys.stderr)
            return 2
        mod = importlib.import_module(module)
        mod.add_arguments(parser)
        args = parser.parse_args(argv[1:])
        return _call(mod.run, args, argv[0])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.step is None:
        parser.print_help()
        return 0
    if not args._built:
        print(f"class-ros {args.step}: this step is not built yet (planned in issue #{STEPS[args.step][2]}).",
              file=sys.stderr)
        return 2
    return _call(importlib.import_module(args._module).run, args, args.step)


def _call(fn, args, step: str) -> int:
    try:
        return int(fn(args) or 0)
    except ClassRosError as err:
        print(f"class-ros {step}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"class-ros {step}: interrupted; completed outputs are kept, partial ones were discarded.",
              file=sys.stderr)
        return INTERRUPTED


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
