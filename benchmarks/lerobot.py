"""LeRobot import / export throughput and peak memory on the real SO-101 example (1782 frames, AV1 640x360).

Usage:
    python benchmarks/lerobot.py [--sizes 96 full] [--codecs h264 av1] [--out benchmarks/results/lerobot.json]

Each step runs in its own process so its peak RSS (ru_maxrss) is its own: import at 96x96 and at the
videos' full 640x360, export of each (h264, and av1 with --codecs), and the re-import of each export,
whose images are compared with the first import (PSNR, dB). Frames/s count table frames (one camera).
Needs ../shared/realdata (the example is not shipped with the repository).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_info, cpu_line  # noqa: E402 - after the path set-up
from class_ros.data.outputs import write_json  # noqa: E402

EXAMPLE = REPO.parent / "shared" / "realdata" / "lerobot_v3_so101_example"

STEP = r"""
import json, resource, sys, time
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
if args["step"] == "import":
    from class_ros.data.lerobot.importer import import_lerobot
    s = import_lerobot(args["src"], args["out"], image_size=args["size"])
elif args["step"] == "export":
    from class_ros.data.lerobot.exporter import export_lerobot
    s = export_lerobot(args["src"], args["out"], codec=args["codec"])
else:  # PSNR (dB) between the camera images of two stores, a few frames at a time
    import numpy as np
    from class_ros.data.store import EpisodeStore
    sa, sb = EpisodeStore.open(args["src"]), EpisodeStore.open(args["out"])
    key, se, n = sa.meta.image_keys[0], 0.0, 0
    for i in range(0, sa.n_frames, 8):
        d = np.asarray(sa.array(key)[i: i + 8], np.float64) - np.asarray(sb.array(key)[i: i + 8], np.float64)
        se, n = se + float((d ** 2).sum()), n + d.size
    s = {"frames": sa.n_frames, "psnr_db": float(10 * np.log10(255.0 ** 2 / (se / n)))}
dt = time.perf_counter() - t0
# VmHWM is this process's own peak RSS; ru_maxrss also keeps the parent's peak across exec (Linux), hence both
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({**{k: s[k] for k in ("frames", "psnr_db") if k in s}, "seconds": dt, "peak_rss_mb": hwm / 1024,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def step(**args) -> dict:
    """Run one import, export or PSNR comparison in a fresh process; its frames, seconds and peak RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", STEP, json.dumps(args)], capture_output=True, text=True, cwd=REPO,
                          env=env)
    if proc.returncode:
        sys.exit(f"lerobot benchmark: {args['step']} failed:\n{proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["frames_per_s"] = out["frames"] / out["seconds"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["96", "full"], choices=["96", "full"])
    ap.add_argument("--codecs", nargs="+", default=["h264", "av1"], choices=["h264", "av1"])
    ap.add_argument("--out", default="benchmarks/results/lerobot.json")
    args = ap.parse_args()
    if not EXAMPLE.is_dir():
        print(f"lerobot benchmark: {EXAMPLE} is not here; skipped.")
        return 0
    results = {"cpu": cpu_info(), "runs": []}
    print(cpu_line())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for size in args.sizes:
            hw = [96, 96] if size == "96" else None
            first = tmp / f"ds_{size}"
            r = step(step="import", src=str(EXAMPLE), out=str(first), size=hw)
            results["runs"].append({"what": f"import {size}", **r})
            print(f"import  {size:>4}: {r['frames_per_s']:7.1f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB")
            for codec in args.codecs:
                lr = tmp / f"lr_{size}_{codec}"
                r = step(step="export", src=str(first), out=str(lr), codec=codec)
                mp4 = sum(p.stat().st_size for p in (lr / "videos").rglob("*.mp4")) / 1e6
                back = tmp / f"back_{size}_{codec}"
                rb = step(step="import", src=str(lr), out=str(back), size=None)
                db = step(step="psnr", src=str(first), out=str(back))["psnr_db"]
                results["runs"].append({"what": f"export {size} {codec}", **r, "mp4_mb": mp4, "psnr_db": db})
                results["runs"].append({"what": f"re-import {size} {codec}", **rb})
                print(f"export  {size:>4} {codec}: {r['frames_per_s']:7.1f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB,"
                      f" mp4 {mp4:.1f} MB; re-import {rb['frames_per_s']:.1f} frames/s; PSNR {db:.1f} dB")
                shutil.rmtree(back)
                shutil.rmtree(lr)
            shutil.rmtree(first)
    print(f"lerobot benchmark: written to {write_json(REPO / args.out, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
