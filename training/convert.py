"""`class-ros convert`: rosbag2 recordings -> a dataset store, synchronised as a mapping YAML says.

Usage:
    class-ros convert --bags recordings/ --mapping config/mappings/sim.yaml --out data/sim
    class-ros convert --bags a_bag/ b.mcap --mapping my_arm.yaml --out data/arm --msg-dir my_msgs/ --strict

Each bag becomes one episode (or several, with `episodes:` splits in the mapping). The dataset is written in a
hidden folder beside --out and moved into place, with its manifest, only when complete: a conversion that
fails or is killed leaves nothing at --out (and --overwrite keeps the old dataset until the new one is whole;
it only ever replaces a class_ros dataset). Bags that cannot be used (damaged, no metadata.yaml, a mapped topic
missing or reading empty, NaN/inf values, a crop outside the image) are reported in one line and skipped; the
command fails only when nothing converted, or on the first skipped bag with --strict. A metadata.yaml whose
QoS profiles disagree with the storage's is read with the storage's, and the report's warnings say so.

The report (per episode: frames kept, dropped by reason, median/max sample age per key, duration; skipped
bags with their reason and NaN/inf counts per key; warnings) is printed and written as plain JSON inside the
dataset folder,
`DATASET/convert_report.json` (zarr ignores files that are not its own).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from class_ros.data import outputs
from class_ros.errors import ClassRosError
from training.workers import add_workers_argument, ordered_results, resolve_workers

REPORT_NAME = "convert_report.json"


def add_arguments(parser) -> None:
    parser.add_argument("--bags", nargs="+", required=True, metavar="PATH",
                        help="rosbag2 folders, lone .mcap files, or folders holding them")
    parser.add_argument("--mapping", required=True, help="mapping YAML (see config/mappings/)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--msg-dir", default=None, help="custom message definitions as <package>/msg/<Name>.msg")
    parser.add_argument("--strict", action="store_true", help="fail on the first bag that cannot be converted")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    add_workers_argument(parser)


def run(args) -> int:
    convert_bags(args.bags, args.mapping, args.out, msg_dir=args.msg_dir, strict=args.strict,
                 overwrite=args.overwrite, workers=resolve_workers(args.workers))
    return 0


def _count_messages(bags, mapping) -> list[int]:
    """Messages of the mapped topics in each bag (0 for a bag that will be skipped): the progress bar's units."""
    from class_ros.data.bags.reading import open_bag

    counts = []
    for bag in bags:
        counts.append(0)
        if bag.problem:
            continue
        try:
            reader = open_bag(bag.path)
        except ClassRosError:
            continue
        try:
            counts[-1] = sum(c.msgcount for c in reader.connections if c.topic in mapping.topics)
        finally:
            reader.close()
    return counts


class _BagConverter:
    """Converts one bag per call (in a worker process, or in this one with the progress bar)."""

    def __init__(self, mapping, extra_types, progress=None):
        self.mapping, self.extra_types, self.progress = mapping, extra_types, progress

    def __call__(self, bag):
        """(BagResult, None), or (None, reason) for a bag that cannot be used."""
        from class_ros.data.bags.episodes import convert_bag
        from class_ros.data.bags.reading import BagSkipped

        if bag.problem:
            return None, bag.problem
        try:
            return convert_bag(bag.path, self.mapping, self.extra_types, self.progress), None
        except BagSkipped as err:
            return None, str(err)


def convert_bags(paths, mapping, out, msg_dir=None, strict=False, overwrite=False, workers: int = 1) -> dict:
    """Convert rosbag2 recordings into the dataset store at `out`; returns the report dict.

    The dataset appears at `out` complete or not at all (EpisodeStore.build); a bag whose data cannot be used
    is skipped with its reason in the report, or stops everything with `strict` (an old dataset stays).
    `workers` processes read and synchronise bags at once; this process appends their episodes in bag
    order, so any `workers` writes the same dataset.
    """
    import functools

    from tqdm import tqdm

    from class_ros.data.bags.mapping import Mapping, load_mapping
    from class_ros.data.bags.reading import find_bags, load_msg_dir
    from class_ros.data.schema import DatasetMeta
    from class_ros.data.store import EpisodeStore

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    mapping = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    extra_types = load_msg_dir(msg_dir)
    out = Path(out)
    bags = find_bags(paths)
    if not bags:
        raise ClassRosError(f"no rosbag2 recordings (folders with metadata.yaml, or .mcap files) under "
                            f"{', '.join(map(str, paths))}.")

    report = {"mapping": mapping.path, "out": str(out), "episodes": [], "skipped": [], "warnings": [], "frames": 0,
              "messages": 0, "n_episodes": 0,
              "write_s": 0.0}  # time spent writing the store, to tell reading from writing in benchmarks
    kept_note = " (the dataset already at --out is unchanged)" if out.exists() else ""

    def skip(bag_path, reason: str, **details) -> None:
        report["skipped"].append({"bag": str(bag_path), "reason": reason, **details})
        if strict:
            raise ClassRosError(f"{bag_path}: {reason} (--strict stops here; nothing was written{kept_note}).")

    lineage = {"mapping": str(mapping.path), "mapping_sha256": outputs.digest(mapping.to_dict()), "bags": []}
    counts = _count_messages(bags, mapping)
    workers = min(workers, len(bags))
    with EpisodeStore.build(out, overwrite=overwrite, lineage=lineage) as build, \
            tqdm(total=sum(counts), unit="msg", desc="convert", leave=False) as bar, \
            ordered_results(functools.partial(_BagConverter, mapping, extra_types, bar if workers == 1 else None),
                            bags, workers) as results:
        for bag, count, (result, problem) in zip(bags, counts, results):
            if workers > 1:  # in-process conversion moved the bar message by message
                bar.update(count)
            if problem is not None:
                skip(bag.path, problem)
                continue
            report["messages"] += result.messages
            report["warnings"] += [f"{bag.path}: {w}" for w in result.warnings]
            store = build.store
            if store is not None and (store.meta.action_names != result.action_names
                                      or store.meta.keys != result.schemas):
                skip(bag.path, f"it yields keys {_shapes(result.schemas)} but earlier bags gave "
                               f"{_shapes(store.meta.keys)}")
                continue
            nonfinite = _nonfinite(result.episodes)
            if nonfinite:  # checked for the whole bag first: a bag goes in whole or not at all
                counts = ", ".join(f"{k} {n}" for k, n in nonfinite.items())
                skip(bag.path, f"it holds NaN or infinite values ({counts})", nonfinite=nonfinite)
                continue
            for rep, ep in _pair(result):
                rep["bag"] = str(bag.path)
                if ep is not None:
                    if store is None:
                        meta = DatasetMeta(control_rate_hz=mapping.rate_hz, action_names=result.action_names,
                                           action_kind=mapping.action_kind, keys=dict(result.schemas),
                                           source="rosbag2", joint_names=result.joint_names,
                                           extra={"mapping": mapping.to_dict(), "convert_report": REPORT_NAME})
                        store = build.create(meta)
                    t_write = time.perf_counter()
                    rep["episode"] = store.append_episode(ep)
                    report["write_s"] += time.perf_counter() - t_write
                    report["frames"] += rep["kept"]
                report["episodes"].append(rep)
            if not result.episodes:
                dropped = {}
                for rep in result.reports:
                    for why, n in rep["dropped"].items():
                        dropped[why] = dropped.get(why, 0) + n
                skip(bag.path, f"no frame survived synchronisation (dropped: "
                               f"{', '.join(f'{k} {v}' for k, v in dropped.items()) or 'no frames on the grid'}); "
                               "check the topics' rates and max_age_s")
            else:
                lineage["bags"].append(_bag_identity(bag.path))
        if build.store is None:
            reasons = "; ".join(f"{Path(s['bag']).name}: {s['reason']}" for s in report["skipped"][:3])
            raise ClassRosError(f"nothing converted from {len(bags)} bag(s) ({reasons}).")
        store = build.store
        report["n_episodes"], n_frames = store.n_episodes, store.n_frames
        outputs.write_json(build.path / REPORT_NAME, report)
    print(format_report(report))
    print(f"wrote {report['n_episodes']} episodes, {n_frames} frames to {out} (report: {out / REPORT_NAME})")
    return report


def _nonfinite(episodes: list[dict]) -> dict[str, int]:
    """{key: number of NaN/inf values} over the float keys of a bag's episodes; empty when all are finite."""
    counts: dict[str, int] = {}
    for ep in episodes:
        for key, value in ep.items():
            if value.dtype.kind == "f":
                n = int(value.size - np.count_nonzero(np.isfinite(value)))
                if n:
                    counts[key] = counts.get(key, 0) + n
    return counts


def _bag_identity(path: Path) -> dict:
    """What the manifest records of a source bag: its name and the sizes of its files (cheap, no hashing)."""
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return {"path": str(path), "bytes": {p.name: p.stat().st_size for p in files}}


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
    for w in report.get("warnings", []):
        lines.append(f"warning {w}")
    return "\n".join(lines)
