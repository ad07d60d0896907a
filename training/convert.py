"""`class-ros convert`: rosbag2 recordings -> a dataset store, synchronised as a mapping YAML says.

Usage:
    class-ros convert --bags recordings/ --mapping config/mappings/sim.yaml --out data/sim
    class-ros convert --bags a_bag/ b.mcap --mapping my_arm.yaml --out data/arm --msg-dir my_msgs/ --strict

Each bag becomes one episode (or several, with `episodes:` splits in the mapping), appended atomically,
so a conversion killed midway leaves the dataset at its last complete episode. Bags that cannot be used
(damaged, no metadata.yaml, a mapped topic missing or reading empty) are reported in one line and
skipped; the command fails only when nothing converted, or on the first skipped bag with --strict
(which then removes the dataset it started).

The report (per episode: frames kept, dropped by reason, median/max sample age per key, duration; skipped
bags with their reason) is printed and written as plain JSON inside the dataset folder,
`DATASET/convert_report.json` (zarr ignores files that are not its own).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from class_ros.errors import ClassRosError

REPORT_NAME = "convert_report.json"


def add_arguments(parser) -> None:
    parser.add_argument("--bags", nargs="+", required=True, metavar="PATH",
                        help="rosbag2 folders, lone .mcap files, or folders holding them")
    parser.add_argument("--mapping", required=True, help="mapping YAML (see config/mappings/)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--msg-dir", default=None, help="custom message definitions as <package>/msg/<Name>.msg")
    parser.add_argument("--strict", action="store_true", help="fail on the first bag that cannot be converted")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")


def run(args) -> int:
    convert_bags(args.bags, args.mapping, args.out, msg_dir=args.msg_dir, strict=args.strict,
                 overwrite=args.overwrite)
    return 0


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON through a temp file in the same folder and os.replace, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _count_messages(bags, mapping) -> int:
    from class_ros.data.bags.reading import open_bag

    total = 0
    for bag in bags:
        if bag.problem:
            continue
        try:
            reader = open_bag(bag.path)
        except ClassRosError:
            continue
        try:
            total += sum(c.msgcount for c in reader.connections if c.topic in mapping.topics)
        finally:
            reader.close()
    return total


def convert_bags(paths, mapping, out, msg_dir=None, strict=False, overwrite=False) -> dict:
    """Convert rosbag2 recordings into the dataset store at `out`; returns the report dict."""
    from tqdm import tqdm

    from class_ros.data.bags.episodes import convert_bag
    from class_ros.data.bags.mapping import Mapping, load_mapping
    from class_ros.data.bags.reading import BagSkipped, find_bags, load_msg_dir
    from class_ros.data.schema import DatasetMeta
    from class_ros.data.store import EpisodeStore

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    mapping = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    extra_types = load_msg_dir(msg_dir)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ClassRosError(f"{out} already exists; choose another --out or pass --overwrite.")
    bags = find_bags(paths)
    if not bags:
        raise ClassRosError(f"no rosbag2 recordings (folders with metadata.yaml, or .mcap files) under "
                            f"{', '.join(map(str, paths))}.")

    report = {"mapping": mapping.path, "out": str(out), "episodes": [], "skipped": [], "frames": 0,
              "messages": 0, "n_episodes": 0,
              "write_s": 0.0}  # time spent writing the store, to tell reading from writing in benchmarks
    store: EpisodeStore | None = None

    def skip(bag_path, reason: str) -> None:
        report["skipped"].append({"bag": str(bag_path), "reason": reason})
        if strict:
            if store is not None:
                shutil.rmtree(out, ignore_errors=True)  # a strict run that fails leaves nothing behind
            raise ClassRosError(f"{bag_path}: {reason} (--strict stops here; nothing was kept).")

    with tqdm(total=_count_messages(bags, mapping), unit="msg", desc="convert", leave=False) as bar:
        for bag in bags:
            if bag.problem:
                skip(bag.path, bag.problem)
                continue
            try:
                result = convert_bag(bag.path, mapping, extra_types, bar)
            except BagSkipped as err:
                skip(bag.path, str(err))
                continue
            report["messages"] += result.messages
            if store is not None and (store.meta.action_names != result.action_names
                                      or store.meta.keys != result.schemas):
                skip(bag.path, f"it yields keys {_shapes(result.schemas)} but earlier bags gave "
                               f"{_shapes(store.meta.keys)}")
                continue
            for rep, ep in _pair(result):
                rep["bag"] = str(bag.path)
                if ep is not None:
                    if store is None:
                        meta = DatasetMeta(control_rate_hz=mapping.rate_hz, action_names=result.action_names,
                                           action_kind=mapping.action_kind, keys=dict(result.schemas),
                                           source="rosbag2", joint_names=result.joint_names,
                                           extra={"mapping": mapping.to_dict(), "convert_report": REPORT_NAME})
                        store = EpisodeStore.create(out, meta, overwrite=overwrite)
                    t_write = time.perf_counter()
                    rep["episode"] = store.append_episode(ep)
                    report["write_s"] += time.perf_counter() - t_write
                    report["frames"] += rep["kept"]
                report["episodes"].append(rep)
            if store is not None:
                report["n_episodes"] = store.n_episodes
                write_json_atomic(out / REPORT_NAME, report)
            if not result.episodes:
                skip(bag.path, "no frame survived synchronisation (see the dropped counts in the report); "
                               "check the topics' rates and max_age_s")

    if store is None:
        reasons = "; ".join(f"{Path(s['bag']).name}: {s['reason']}" for s in report["skipped"][:3])
        raise ClassRosError(f"nothing converted from {len(bags)} bag(s) ({reasons}).")
    write_json_atomic(out / REPORT_NAME, report)
    print(format_report(report))
    print(f"wrote {store.n_episodes} episodes, {store.n_frames} frames to {out} (report: {out / REPORT_NAME})")
    return report


def _pair(result):
    """(report, episode or None) per window, in order: windows with no kept frame have no episode."""
    episodes = iter(result.episodes)
    return [(rep, next(episodes) if rep["kept"] else None) for rep in result.reports]


def _shapes(schemas) -> dict:
    return {k: list(s.shape) for k, s in sorted(schemas.items())}


def format_report(report: dict) -> str:
    """A plain-text table: one line per episode, then the skipped bags."""
    lines = [f"{'episode':>7} {'kept':>6} {'frames':>6} {'dur s':>7}  dropped / oldest sample per key   bag"]
    for rep in report["episodes"]:
        ep = rep.get("episode", "-")
        dropped = ", ".join(f"{k} {v}" for k, v in rep["dropped"].items()) or "none"
        ages = ", ".join(f"{k} {a['max_s']:.3f}s" for k, a in rep["age"].items() if a["max_s"] is not None)
        lines.append(f"{ep:>7} {rep['kept']:>6} {rep['frames']:>6} {rep['duration_s']:>7.2f}  dropped: {dropped}; "
                     f"max age: {ages}   {Path(rep['bag']).name}")
    for s in report["skipped"]:
        lines.append(f"skipped {s['bag']}: {s['reason']}")
    return "\n".join(lines)
