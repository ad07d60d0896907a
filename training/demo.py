"""`class-ros demo`: the whole pipeline on the built-in simulator, end to end, with a report.

Usage:
    class-ros demo [--out runs/demo] [--fresh] [--preset default|tiny]

Stages, in order (the configuration of each is a section of training/configs/demo[_tiny].yaml):
    sim-demos    scripted `lift` demonstrations, a random camera pose per episode, written as rosbag2
    convert      the bags -> a dataset store, through config/mappings/sim.yaml (as for a real arm)
    dtw          exact DTW action-sequence positives
    pretrain     CLASS pre-training of the visual encoder (CPU preset)
    index        the retrieval index of the pre-trained run
    evaluate     the retrieval policy run directly in the simulator on fixed, heldout and moving cameras
    oracle       the ceiling beside it: retrieval over the true cube position + joints, on the same scenes
    closed-loop  the same policy through the ROS 2 node graph with sim_node, on heldout cameras
    report       report.md and its figures

Every stage records a JSON stamp (out/stamps/<stage>.json) holding a hash of its configuration and of
the stamps of the stages it reads from; a stage whose stamp matches and whose outputs exist is reused,
so a second run is fast. `--fresh` redoes everything. A stage that fails is reported as such and the
stages that need it are skipped; the rest still run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from class_ros.data import outputs
from class_ros.errors import ClassRosError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
PRESETS = {"default": "demo.yaml", "tiny": "demo_tiny.yaml"}
STAMP_VERSION = 1  # bump when a stage's outputs change meaning, so old stamps stop matching

DEMO_ENV = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOCALHOST_ONLY": "1", "MUJOCO_GL": "egl",
            "PYOPENGL_PLATFORM": "egl"}

# Statuses a stage can end in.
RAN, REUSED, SKIPPED, FAILED = "ran", "reused", "skipped", "failed"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="folder for every output of the demo (default runs/demo)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: the full demo (under 15 min on 2 cores); tiny: a quick smoke run")
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing earlier outputs")


def run(args) -> int:
    summary = run_demo(args.out, preset=args.preset, fresh=args.fresh)
    return 0 if summary["ok"] else 1


# ---------------------------------------------------------------- configuration
def load_config(preset: str) -> dict:
    """The demo settings of a preset (training/configs/demo*.yaml) as a dict."""
    from class_ros.config import read_yaml_mapping
    if preset not in PRESETS:
        raise ClassRosError(f"unknown demo preset {preset!r}; choose one of {sorted(PRESETS)}.")
    return read_yaml_mapping(CONFIGS / PRESETS[preset], "demo")


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _named_files(obj) -> dict[str, str]:
    """Content hashes of the repository files a config section names (a mapping, a base YAML), so editing
    such a file also makes the stage out of date."""
    if isinstance(obj, dict):
        return {k: v for value in obj.values() for k, v in _named_files(value).items()}
    if isinstance(obj, list):
        return {k: v for value in obj for k, v in _named_files(value).items()}
    if isinstance(obj, str) and obj.endswith((".yaml", ".yml")) and (REPO / obj).is_file():
        return {obj: hashlib.sha256((REPO / obj).read_bytes()).hexdigest()[:16]}
    return {}


# ---------------------------------------------------------------- stages
@dataclass
class Stage:
    """One pipeline step: what it reads and writes, and how to run it."""

    name: str
    depends: list[str]  # stages whose outputs it reads
    outputs: list[str]  # paths relative to the demo folder; all must exist to reuse the stage
    work: Callable[["Demo"], dict]  # runs the stage, returns a JSON-able summary
    key: Callable[[dict], str]  # the one number the final table shows
    config_keys: list[str] = field(default_factory=list)  # config sections that define the stage
    partial_ok: bool = False  # runs even when a stage it reads from did not (the report explains the gaps)


@dataclass
class Demo:
    """The state shared by the stages of one demo run."""

    out: Path
    cfg: dict
    summaries: dict = field(default_factory=dict)  # stage -> summary of its latest run (or reuse)

    def path(self, rel: str) -> Path:
        return self.out / rel

    @property
    def dataset(self) -> Path:
        return self.path("dataset")

    @property
    def class_run(self) -> Path:
        return self.path("class_run")


def _sim_demos(d: Demo) -> dict:
    from training.sim_demos import record_demos
    c = d.cfg["sim_demos"]
    return record_demos(task=d.cfg["task"], episodes=c["episodes"], camera=c["camera"], storage=c["storage"],
                        out=d.path("bags"), seed=d.cfg["seed"], image_size=c["image_size"],
                        workers=d.cfg.get("workers", 1), cameras=c.get("cameras", ["agentview"]))


def _convert(d: Demo) -> dict:
    from training.convert import convert_bags
    mapping = REPO / d.cfg["convert"]["mapping"]
    return convert_bags([d.path("bags")], mapping, d.dataset, workers=d.cfg.get("workers", 1))


def _dtw(d: Demo) -> dict:
    from training.dtw import compute_positives
    c = d.cfg["dtw"]
    return compute_positives(d.dataset, d.path("positives.npz"), horizon=c["horizon"], quantile=c["quantile"],
                             device=d.cfg["device"], mode=c["mode"])


def merged_config(section: dict) -> dict:
    """A step's YAML preset (`base`, relative to the repository) with the demo's `overrides` on top."""
    from class_ros.config import read_yaml_mapping
    config = read_yaml_mapping(REPO / section["base"], "training")
    for key, value in (section.get("overrides") or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def _pretrain(d: Demo) -> dict:
    from training.pretrain import pretrain
    return pretrain(d.dataset, d.path("positives.npz"), d.class_run, merged_config(d.cfg["pretrain"]),
                    device=d.cfg["device"], progress=True)


def _index(d: Demo) -> dict:
    from training.index import build_index
    return build_index(d.class_run, d.dataset, **d.cfg.get("index", {}))


def _evaluate(d: Demo) -> dict:
    from class_ros.policy import load_policy
    c = d.cfg["evaluate"]
    return evaluate_cameras(d, lambda: load_policy(d.class_run, kind=c["policy"], device=d.cfg["device"]), "eval",
                            video=True)


def _oracle(d: Demo) -> dict:
    """The ceiling beside the learned policy: retrieval over the true cube position + joints, on the same
    scenes (class_ros.sim.oracle)."""
    from class_ros.sim.oracle import OracleRetrievalPolicy, expert_demos
    demos = expert_demos(d.cfg["task"], d.cfg["sim_demos"]["episodes"], seed=d.cfg["seed"])
    oracle = OracleRetrievalPolicy(demos)
    return evaluate_cameras(d, lambda: oracle, "oracle")


def evaluate_cameras(d: Demo, make_policy: Callable, folder: str, video: bool = False) -> dict:
    """Evaluate a fresh `make_policy()` on every camera mode of the evaluate section, with the shared seeds;
    writes folder/<camera>.json (and .mp4 with `video`) and returns {camera: result}."""
    from training.evaluate import evaluate_policy
    c = d.cfg["evaluate"]
    results = {}
    for camera in c["cameras"]:
        res = evaluate_policy(make_policy(), task=d.cfg["task"], camera=camera, episodes=c["episodes"],
                              seed=eval_seed(d.cfg, camera), image_size=(d.cfg["sim_demos"]["image_size"],) * 2,
                              video_path=d.path(f"{folder}/{camera}.mp4") if video else None,
                              workers=d.cfg.get("workers", 1))
        results[camera] = _jsonable(res)
        outputs.write_json(d.path(f"{folder}/{camera}.json"), results[camera], indent=2, sort_keys=True)
    return results


def eval_seed(cfg: dict, camera: str) -> int:
    """Base seed of the evaluation episodes on `camera`: one per camera mode, shared by the direct and
    the ROS evaluation so their episodes are the same scenes."""
    cameras = list(cfg["evaluate"]["cameras"])
    return cfg["seed"] + 1000 * (cameras.index(camera) + 1 if camera in cameras else len(cameras) + 1)


def _closed_loop(d: Demo) -> dict:
    from training.evaluate import evaluate_through_ros
    c = d.cfg["closed_loop"]
    res = evaluate_through_ros(d.class_run, c["policy"], d.cfg["task"], c["camera"], c["episodes"],
                               eval_seed(d.cfg, c["camera"]), d.cfg["device"])
    res = _jsonable(res)
    outputs.write_json(d.path("closed_loop.json"), res, indent=2, sort_keys=True)
    return res


def _report(d: Demo) -> dict:
    from training.report import write_report
    from training.report_inputs import gather_inputs
    inputs = gather_inputs(d.out, d.cfg, stages=d.summaries.get("_table", []))
    path = write_report(d.out, inputs)
    missing = sorted(inputs.notes)
    return {"report": str(path), "missing_sections": missing}


def _eval_key(s: dict) -> str:
    return ", ".join(f"{cam} {r['success_rate']:.0%}" for cam, r in s.items())


def _index_key(s: dict) -> str:
    k = s["config"]["k"]
    return f"{s['n']} frames, {s['index_kind']} index, k = {k}, recall@{k} {s[f'recall_at_{k}']:.2f}"


def _loop_key(s: dict) -> str:
    lat = s["latency_ms"]
    return f"success {s['success_rate']:.0%}" + (f", p50 latency {np.percentile(lat, 50):.1f} ms" if lat else "")


STAGES = [
    Stage("sim-demos", [], ["bags"], _sim_demos,
          lambda s: f"{s['episodes_kept']} episodes, expert success {s['expert_success_rate']:.0%}", ["sim_demos"]),
    Stage("convert", ["sim-demos"], ["dataset"], _convert,
          lambda s: f"{s['n_episodes']} episodes, {s['frames']} frames", ["convert"]),
    Stage("dtw", ["convert"], ["positives.npz"], _dtw,
          lambda s: f"threshold {s['threshold']:.4g}, {s['pairs']} positive pairs", ["dtw"]),
    Stage("pretrain", ["dtw"], ["class_run"], _pretrain,
          lambda s: f"loss {s['loss_first']:.3f} -> {s['loss_last']:.3f} in {s['steps']} steps", ["pretrain"]),
    Stage("index", ["pretrain"], ["class_run/index"], _index, _index_key, ["index"]),
    Stage("evaluate", ["index"], ["eval"], _evaluate, _eval_key, ["evaluate"]),
    Stage("oracle", [], ["oracle"], _oracle, _eval_key, ["sim_demos", "evaluate"]),
    Stage("closed-loop", ["index"], ["closed_loop.json"], _closed_loop, _loop_key, ["closed_loop"]),
    Stage("report", ["dtw", "pretrain", "index", "evaluate", "oracle", "closed-loop"], ["report.md"], _report,
          lambda s: s.get("report", ""), ["report"], partial_ok=True),
]


def _jsonable(obj):
    """numpy scalars and arrays -> plain Python, so summaries can be stamped as JSON."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses
        return _jsonable(dataclasses.asdict(obj))
    return obj


# ---------------------------------------------------------------- the runner
def run_demo(out: str | os.PathLike = "runs/demo", preset: str = "default", fresh: bool = False) -> dict:
    """Run every stage (reusing up-to-date outputs), write the report, print the table."""
    # As `make demo` sets them: the demo's ROS nodes stay on this machine, MuJoCo renders off-screen.
    for name, value in DEMO_ENV.items():
        os.environ.setdefault(name, value)
    from class_ros.sim.pool import available_cores

    out = Path(out)
    # Episodes over every core: the same outputs as one process (so `workers` is not part of any stamp).
    cfg = {**load_config(preset), "workers": available_cores()}
    table, status = run_stages(out, cfg, STAGES, fresh=fresh)
    ok = all(status[s.name] in (RAN, REUSED) for s in STAGES)
    result = {"ok": ok, "preset": preset, "out": str(out), "stages": table,
              "report": str(out / "report.md") if status.get("report") in (RAN, REUSED) else None}
    outputs.write_json(out / "demo_summary.json", result, indent=2, sort_keys=True)
    print(format_table(table))
    if result["report"]:
        print(f"class-ros demo: report written to {result['report']}")
    if not ok:
        print("class-ros demo: not every stage ran; see the status column above.")
    return result


def run_stages(out: Path, cfg: dict, stages: list[Stage], fresh: bool = False,
               label: str = "class-ros demo") -> tuple[list[dict], dict]:
    """Run `stages` in order into `out`, reusing each whose stamp matches; returns (table rows, stage -> status).

    The benchmarks call this too, with more stages after the demo's.
    """
    stamps = out / "stamps"
    if fresh:  # only the stamps and each stage's own outputs go: never a whole --out folder a user pointed at
        shutil.rmtree(stamps, ignore_errors=True)
    stamps.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, cfg)
    table: list[dict] = []
    demo.summaries["_table"] = table
    hashes: dict[str, str] = {}
    status: dict[str, str] = {}
    for stage in stages:
        config = {k: cfg.get(k, {}) for k in stage.config_keys}
        inputs_hash = _hash({"version": STAMP_VERSION, "task": cfg["task"], "seed": cfg["seed"],
                             "device": cfg["device"], "config": config, "files": _named_files(config),
                             "upstream": [hashes.get(dep) for dep in stage.depends]})
        row = {"stage": stage.name, "seconds": None, "key": ""}
        blocked = [dep for dep in stage.depends if status.get(dep) not in (RAN, REUSED)]
        stamp_path = stamps / f"{stage.name}.json"
        if blocked and not stage.partial_ok:
            row["status"] = f"{SKIPPED} (needs {', '.join(blocked)})"
            status[stage.name] = SKIPPED
        else:
            stamp = _read_stamp(stamp_path)
            reusable = (not fresh and stamp is not None and stamp.get("inputs") == inputs_hash
                        and all(demo.path(p).exists() for p in stage.outputs))
            if reusable:
                summary, row["seconds"], row["status"] = stamp["summary"], stamp["seconds"], REUSED
            else:
                stamp_path.unlink(missing_ok=True)  # a half-redone stage must never look up to date
                for rel in stage.outputs:
                    _remove(demo.path(rel))
                print(f"{label}: {stage.name} ...", flush=True)
                t0 = time.perf_counter()
                try:
                    summary = _jsonable(stage.work(demo) or {})
                except ClassRosError as err:
                    row["status"], row["key"] = FAILED, str(err)
                    status[stage.name] = FAILED
                    print(f"{label}: {stage.name} failed: {err}", flush=True)
                    table.append(row)
                    continue
                row["seconds"] = time.perf_counter() - t0
                row["status"] = RAN
                outputs.write_json(stamp_path, {"inputs": inputs_hash, "seconds": row["seconds"], "summary": summary},
                                   indent=2, sort_keys=True)
            status[stage.name] = row["status"]
            demo.summaries[stage.name] = summary
            hashes[stage.name] = inputs_hash
            try:
                row["key"] = stage.key(summary)
            except (KeyError, TypeError, ValueError):
                row["key"] = ""
        table.append(row)
    return table, status


def format_table(table: list[dict]) -> str:
    """The closing table: stage, status, time, key number."""
    rows = [("stage", "status", "time", "key number")]
    for r in table:
        secs = "" if r["seconds"] is None else f"{r['seconds']:.1f} s"
        rows.append((r["stage"], r["status"], secs, str(r["key"])[:70]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
