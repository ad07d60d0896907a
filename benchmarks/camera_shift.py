"""Camera-shift benchmark: does CLASS keep working when the camera moves, where plain behaviour cloning fails?

Usage:
    python benchmarks/camera_shift.py --quick          # CPU preset, 52 minutes for both tasks on 2 cores
    python benchmarks/camera_shift.py --preset full    # sized for a GPU machine (more demos, longer training)
    python benchmarks/camera_shift.py --preset smoke   # 2 episodes per cell: checks the wiring, NOT a result
    python benchmarks/camera_shift.py                  # full when CUDA is available, else quick

For each task (lift, pick_place): scripted demonstrations with `random` cameras -> convert -> DTW
positives -> CLASS pre-training -> index (the `class-ros demo` stages), then four policies and two
ceilings, each evaluated on `fixed`, `heldout` and `moving` cameras with the same seeds:
    oracle-retrieval   the ceiling: retrieval over the TRUE cube/goal position + joints (no image), from
                       scripted demonstrations of the same scenes
    oracle-dp          the ceiling for Diffusion Policy: the same U-Net trained on that true state
    class-retrieval    retrieval (kNN) over the CLASS encoder's embeddings
    random-retrieval   the same retrieval over a randomly initialised encoder of the same architecture
    dp-scratch         Diffusion Policy trained from scratch
    dp-class           Diffusion Policy fine-tuned from the CLASS encoder
Success rates with 95% Wilson confidence intervals over 50 episodes per cell (the smoke preset: 2).
Writes OUT/camera_shift.md (the table) and OUT/camera_shift.json; every stage is stamped and reused
on a second run, as in `class-ros demo`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("lift", "pick_place")
CAMERAS = ("fixed", "heldout", "moving")
POLICIES = {  # name -> (run folder, policy kind); "oracle": retrieval over the true state (class_ros.sim.oracle)
    "oracle-retrieval": ("oracle_data", "oracle"),
    "oracle-dp": ("oracle_dp", "diffusion"),
    "class-retrieval": ("class_run", "retrieval"),
    "random-retrieval": ("random_run", "retrieval"),
    "dp-scratch": ("dp_scratch", "diffusion"),
    "dp-class": ("dp_class", "diffusion"),
}

# Presets: sections as in training/configs/demo.yaml, plus `finetune` and the per-cell episode count.
_BASE = {
    "seed": 0,
    "sim_demos": {"episodes": 50, "camera": "random", "storage": "mcap", "image_size": 96},
    "convert": {"mapping": "config/mappings/sim.yaml"},
    "dtw": {"horizon": 16, "quantile": 0.025, "mode": "exact"},
    "pretrain": {"base": "training/configs/pretrain_cpu.yaml", "overrides": {}},
    "finetune": {"base": "training/configs/finetune_cpu.yaml", "overrides": {}},
    "index": {},
    "evaluate": {"episodes": 50, "cameras": list(CAMERAS)},
}
PRESETS = {
    "smoke": {"sim_demos": {"episodes": 4}, "evaluate": {"episodes": 2},
              "pretrain": {"overrides": {"steps": 20, "batch_size": 32, "warmup_steps": 5}},
              "finetune": {"overrides": {"steps": 20}}, "note": "SMOKE RUN: 2 episodes per cell, "
              "checks that every stage runs; the numbers say nothing about the method"},
    # The demo's data and pre-training settings (training/configs/demo.yaml), so a finished `make demo` is
    # reused for lift (--demo). Fine-tuning runs ~7 steps/s on 2 cores, so the quick preset fine-tunes 2000
    # steps (half of finetune_cpu.yaml's 4000); evaluation is cheap next to training, so it keeps 50
    # episodes per cell. Measured from nothing on 2 idle cores: 22 (lift) + 30 (pick_place) = 52 minutes.
    "quick": {"sim_demos": {"episodes": 80},
              "pretrain": {"overrides": {"steps": 4000}}, "index": {"k": 8},
              "finetune": {"overrides": {"steps": 2000}},
              "note": "quick CPU preset: 80 demonstrations, small encoder, 4000 pre-training and 2000 "
                      "fine-tuning steps, 50 evaluation episodes per cell"},
    "full": {"sim_demos": {"episodes": 200},
             "pretrain": {"base": "training/configs/pretrain_gpu.yaml"},
             "finetune": {"base": "training/configs/finetune_gpu.yaml"},
             "note": "full preset for a GPU machine: 200 demonstrations, ResNet-18, 50 evaluation episodes per cell"},
}


def preset_config(preset: str, task: str, device: str) -> dict:
    """The stage configuration of one task under a preset."""
    cfg = copy.deepcopy(_BASE)
    for section, values in PRESETS[preset].items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    cfg.update(task=task, device=device, preset=preset)
    return cfg


def _stages():
    """The demo's stages up to the index, then the baselines and the evaluation grid."""
    from training.demo import STAGES, Stage

    def random_encoder(d):
        # Same architecture, config and normalisers as the CLASS run; only the weights are a fresh init.
        import torch
        from class_ros.data.rundir import RunDir
        from class_ros.data.store import EpisodeStore
        from class_ros.encoder.config import EncoderConfig
        from class_ros.encoder.model import ObservationEncoder
        from training.index import build_index
        store = EpisodeStore.open(d.dataset)
        src = RunDir.open(d.class_run, kind="encoder", store=store)
        run_cfg = src.load_config()
        dst = RunDir.create(d.path("random_run"), "encoder", config=run_cfg, store=store)
        dst.save_normalizers(src.load_normalizers())
        torch.manual_seed(d.cfg["seed"])
        enc = ObservationEncoder(EncoderConfig.from_dict(run_cfg["encoder"]))
        trained = src.load_weights("encoder")["ema"]
        # The proprio normaliser is a buffer of the encoder: keep the trained one so only vision differs.
        state = {k: (trained[k] if k.startswith("proprio_") else v) for k, v in enc.state_dict().items()}
        dst.save_weights("encoder", {"ema": state, "raw": state})
        dst.finish(0)  # an untrained baseline is complete as it is
        return build_index(d.path("random_run"), d.dataset, **d.cfg.get("index", {}))

    def finetune(init):
        def work(d):
            from training.demo import merged_config
            from training.finetune import finetune as run_finetune
            out = d.path("dp_class" if init else "dp_scratch")
            return run_finetune(d.dataset, d.class_run if init else None, out, merged_config(d.cfg["finetune"]),
                                device=d.cfg["device"])
        return work

    def oracle_data(d):
        from class_ros.sim.oracle import expert_demos, write_state_dataset
        demos = expert_demos(d.cfg["task"], d.cfg["sim_demos"]["episodes"], seed=d.cfg["seed"], progress=True)
        store = write_state_dataset(demos, d.path("oracle_data"))
        return {"episodes": len(demos.episode_ends), "frames": store.n_frames}

    def oracle_dp(d):
        from training.demo import merged_config
        from training.finetune import finetune as run_finetune
        return run_finetune(d.path("oracle_data"), None, d.path("oracle_dp"), merged_config(d.cfg["finetune"]),
                            device=d.cfg["device"])

    def load(name, d):
        from class_ros.policy import load_policy
        folder, kind = POLICIES[name]
        if kind != "oracle":
            return load_policy(d.path(folder), kind=kind, device=d.cfg["device"])
        from class_ros.data.store import EpisodeStore
        from class_ros.sim.oracle import ExpertDemos, OracleRetrievalPolicy
        return OracleRetrievalPolicy(ExpertDemos.from_store(EpisodeStore.open(d.path(folder)), d.cfg["task"]))

    def evaluate(name):
        def work(d):
            from training.demo import evaluate_cameras
            # Same seeds for every policy (and the demo): the cells of one column compare the same scenes.
            return evaluate_cameras(d, lambda: load(name, d), f"eval/{name}")
        return work

    def loss_key(s):
        return f"loss {s['loss_first']:.3f} -> {s['loss_last']:.3f} in {s['steps']} steps"

    def eval_key(s):
        from training.demo import _eval_key
        return _eval_key(s)

    base = [s for s in STAGES if s.name in ("sim-demos", "convert", "dtw", "pretrain", "index")]
    train = {
        "oracle-data": Stage("oracle-data", [], ["oracle_data"], oracle_data,
                             lambda s: f"{s['episodes']} episodes, {s['frames']} frames", ["sim_demos"]),
        "random-encoder": Stage("random-encoder", ["index"], ["random_run"], random_encoder,
                                lambda s: f"{s['n']} frames indexed", ["index"]),
        "oracle-dp-train": Stage("oracle-dp-train", ["oracle-data"], ["oracle_dp"], oracle_dp, loss_key,
                                 ["finetune"]),
        "dp-scratch-train": Stage("dp-scratch-train", ["convert"], ["dp_scratch"], finetune(False), loss_key,
                                  ["finetune"]),
        "dp-class-train": Stage("dp-class-train", ["pretrain"], ["dp_class"], finetune(True), loss_key,
                                ["finetune"]),
    }
    depends = {"oracle-retrieval": "oracle-data", "oracle-dp": "oracle-dp-train", "class-retrieval": "index",
               "random-retrieval": "random-encoder", "dp-scratch": "dp-scratch-train", "dp-class": "dp-class-train"}
    evals = {name: Stage(f"eval-{name}", [dep], [f"eval/{name}"], evaluate(name), eval_key, ["evaluate"])
             for name, dep in depends.items()}
    # Cheap results first, so a run stopped early still has the retrieval rows and the retrieval ceiling.
    order = ["oracle-data", "eval-oracle-retrieval", "random-encoder", "eval-class-retrieval",
             "eval-random-retrieval", "dp-scratch-train", "eval-dp-scratch", "dp-class-train", "eval-dp-class",
             "oracle-dp-train", "eval-oracle-dp"]
    stages = {**train, **{s.name: s for s in evals.values()}}
    return base + [stages[name] for name in order]


SHARED_WITH_DEMO = {"sim-demos": "bags", "convert": "dataset", "dtw": "positives.npz", "pretrain": "class_run",
                    "index": None}


def seed_from_demo(demo: Path, task_dir: Path, task: str) -> bool:
    """Copy a finished demo's first five stages (outputs and stamps) into an empty task folder.

    The stamps then decide: with the same settings (the quick preset uses the demo's) they are reused,
    otherwise those stages run again as usual.
    """
    stamps = [demo / "stamps" / f"{name}.json" for name in SHARED_WITH_DEMO]
    if (task_dir / "stamps").exists() or not all(p.is_file() for p in stamps):
        return False
    if json.loads(stamps[0].read_text())["summary"].get("task") != task:
        return False
    import shutil
    (task_dir / "stamps").mkdir(parents=True)
    for name, rel in SHARED_WITH_DEMO.items():
        if rel is not None:
            src, dst = demo / rel, task_dir / rel
            shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
        shutil.copy2(demo / "stamps" / f"{name}.json", task_dir / "stamps" / f"{name}.json")
    return True


def cell(res: dict | None) -> dict | None:
    """An evaluation dict as {"successes", "episodes", "rate", "ci_low", "ci_high"}."""
    from training.report import success_rows
    from training.report_inputs import success_record
    if res is None:
        return None
    return success_rows({"x": success_record(res, "direct")})[0]


def markdown_table(results: dict, note: str, machine: str) -> str:
    """results: task -> policy -> camera -> cell (or None when it did not run)."""
    lines = [f"Camera-shift benchmark ({note}) on {machine}.",
             "Trained on `random` cameras; success rate (successes/episodes) [95% Wilson CI].", "",
             "| task | policy | " + " | ".join(CAMERAS) + " |", "|---|---|" + "---|" * len(CAMERAS)]
    for task, by_policy in results.items():
        for policy, by_camera in by_policy.items():
            cells = []
            for cam in CAMERAS:
                c = by_camera.get(cam)
                cells.append("not run" if c is None else
                             f"{c['rate']:.0%} ({c['successes']}/{c['episodes']}) [{c['ci_low']:.0%}, {c['ci_high']:.0%}]")
            lines.append(f"| {task} | {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_description(device: str) -> str:
    """The machine in a few words, so numbers are never quoted without it."""
    desc = f"{platform.machine()}, {os.cpu_count()} CPU cores"
    if device == "cuda":
        import torch
        desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                        help="auto: full with CUDA, else quick")
    parser.add_argument("--quick", action="store_const", const="quick", dest="preset", help="same as --preset quick")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "camera_shift"))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--fresh", action="store_true", help="redo every stage")
    parser.add_argument("--demo", default=str(REPO / "runs" / "demo"),
                        help="a finished `class-ros demo` folder whose data and CLASS run are reused when their "
                             "settings match (the quick preset's do, for lift)")
    args = parser.parse_args(argv)

    from training.demo import DEMO_ENV, format_table, run_stages
    for name, value in DEMO_ENV.items():  # off-screen rendering, DDS on this machine (as `make` sets them)
        os.environ.setdefault(name, value)
    import torch
    from class_ros.data.outputs import write_json, write_text
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset if args.preset != "auto" else ("full" if device == "cuda" else "quick")
    note = PRESETS[preset]["note"]
    print(f"camera_shift: preset {preset}: {note}", flush=True)
    out = Path(args.out) / preset
    results, timings = {}, {}
    t0 = time.perf_counter()
    for task in args.tasks:
        cfg = preset_config(preset, task, device)
        demo = Path(args.demo)
        if not args.fresh and demo.is_dir() and seed_from_demo(demo, out / task, task):
            print(f"camera_shift: copied the demo's data and CLASS run from {demo}; reused if the settings match")
        table, status = run_stages(out / task, cfg, _stages(), fresh=args.fresh, label=f"camera_shift {task}")
        print(format_table(table), flush=True)
        timings[task] = {r["stage"]: r["seconds"] for r in table}
        results[task] = {}
        for name in POLICIES:
            folder = out / task / "eval" / name
            results[task][name] = {cam: cell(json.loads((folder / f"{cam}.json").read_text())
                                             if (folder / f"{cam}.json").exists() else None) for cam in CAMERAS}
    machine = machine_description(device)
    md = markdown_table(results, note, machine)
    write_text(out / "camera_shift.md", md)
    write_json(out / "camera_shift.json", {"preset": preset, "note": note, "machine": machine, "device": device,
                                           "results": results, "stage_seconds": timings,
                                           "total_seconds": time.perf_counter() - t0}, indent=2, sort_keys=True)
    print(md)
    print(f"camera_shift: table written to {out / 'camera_shift.md'} and {out / 'camera_shift.json'}")
    complete = all(c is not None for t in results.values() for p in t.values() for c in p.values())
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
