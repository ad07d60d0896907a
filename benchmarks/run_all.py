"""Run every benchmark script in benchmarks/ one after the other (`make bench`) and summarise.

Usage:
    python benchmarks/run_all.py                 # every script with its default (machine-sized) settings
    python benchmarks/run_all.py --only dtw latency
    python benchmarks/run_all.py --skip camera_shift

Each script prints its own numbers (ratios against the peers its issue names); this runner streams that
output, then prints one line per script with its exit status and wall time, and writes the same as
JSON to runs/bench/run_all.json. A script that fails does not stop the others; the exit status is 1
if any failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
from class_ros.data.outputs import write_json  # noqa: E402 - after the path set-up


def scripts(only: list[str] | None, skip: list[str]) -> list[Path]:
    """Benchmark scripts to run, by file name without .py, in alphabetical order."""
    found = sorted(p for p in HERE.glob("*.py") if p.stem not in ("run_all", "__init__") and not p.stem.startswith("_"))
    names = {p.stem for p in found}
    for name in (only or []) + skip:
        if name not in names:
            sys.exit(f"run_all: no benchmark named {name!r}; there are {sorted(names)}.")
    return [p for p in found if (not only or p.stem in only) and p.stem not in skip]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", help="run only these benchmarks (file names without .py)")
    parser.add_argument("--skip", nargs="+", default=[], help="benchmarks to leave out")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "run_all.json"), help="summary JSON")
    args = parser.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Benchmarks that start ROS nodes must keep DDS on this machine.
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_LOCALHOST_ONLY", "1")
    env.setdefault("MUJOCO_GL", "egl")
    results = []
    for script in scripts(args.only, args.skip):
        print(f"\n===== {script.stem} =====", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(script)], cwd=REPO, env=env)
        results.append({"benchmark": script.stem, "rc": rc, "seconds": round(time.perf_counter() - t0, 1)})
    print("\n===== summary =====")
    for r in results:
        print(f"{r['benchmark']:<16} {'ok' if r['rc'] == 0 else 'FAILED (exit %d)' % r['rc']:<16} {r['seconds']:>8.1f} s")
    out = Path(args.out)
    write_json(out, {"results": results}, indent=2)
    print(f"summary written to {out}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
