"""Camera-shift benchmark: does CLASS keep working when the camera moves, where plain behaviour cloning fails?

Usage:
    python benchmarks/camera_shift.py --quick          # CPU preset, 1.8 hours for both tasks on 2 cores
    python benchmarks/camera_shift.py --preset full    # sized for a GPU machine (more demos, longer training)
    python benchmarks/camera_shift.py --preset smoke   # 2 episodes per cell: checks the wiring, NOT a result
    python benchmarks/camera_shift.py                  # full when CUDA is available, else quick
    python benchmarks/camera_shift.py --preset gpu --part 1 --carry DIR   # one H200, two 9-minute commands:
    python benchmarks/camera_shift.py --preset gpu --part 2 --carry DIR   # see benchmarks/gpu.sh camera_shift

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
    "index": {"relative": True},  # arm targets replayed from the measured joints (RetrievalConfig.relative)
    "evaluate": {"episodes": 50, "cameras": list(CAMERAS)},
}
PRESETS = {
    "smoke": {"sim_demos": {"episodes": 4}, "evaluate": {"episodes": 2},
              "pretrain": {"overrides": {"steps": 20, "batch_size": 32, "warmup_steps": 5}},
              "finetune": {"overrides": {"steps": 20}}, "note": "SMOKE RUN: 2 episodes per cell, "
              "checks that every stage runs; the numbers say nothing about the method"},
    # The demo's data and index settings (training/configs/demo.yaml: 200 demonstrations with the agentview
    # and wrist cameras, DTW quantile 0.005), so a finished `make demo`'s data are reused for lift (--demo).
    # Pre-training keeps 4000 steps of 64 frames, the demo's 1000 of 32 (which retrieve as well) being
    # unmeasured for Diffusion Policy from CLASS; so the demo's pretrain and index stages are redone here.
    # Diffusion Policy gets finetune_cpu.yaml's full 4000 steps (2000 left it short of its budget). The
    # three fine-tunings run at once, one torch thread each (2-core Xeon, idle: two image fine-tunings side
    # by side made 2.57 + 2.53 steps/s, one alone on both threads 4.15): lift's three took 1855 s instead
    # of 2410 s one after another.
    # Evaluation is cheap next to training, so it keeps 50 episodes per cell.
    "quick": {"sim_demos": {"episodes": 200, "cameras": ["agentview", "wrist"]},
              "convert": {"mapping": "config/mappings/sim_wrist.yaml"}, "dtw": {"quantile": 0.005},
              "pretrain": {"overrides": {"steps": 4000}}, "index": {"k": 8, "view_weights": {"wrist": 4}},
              "finetune": {"overrides": {"steps": 4000}, "concurrent": True},
              "note": "quick CPU preset: 200 demonstrations with agentview + wrist cameras, small encoder, "
                      "4000 pre-training and 4000 fine-tuning steps, 50 evaluation episodes per cell"},
    "full": {"sim_demos": {"episodes": 200},
             "pretrain": {"base": "training/configs/pretrain_gpu.yaml"},
             "finetune": {"base": "training/configs/finetune_gpu.yaml"},
             "note": "full preset for a GPU machine: 200 demonstrations, ResNet-18, 50 evaluation episodes per cell"},
    # One lent H200 with 16 cores, in two device commands of at most 9 minutes each (benchmarks/gpu.sh
    # camera_shift 1, then 2), lift only. Budget per stage, from the measured rates (README: CLASS
    # pre-training 11.6k img/s bf16 at B = 160, i.e. ~72 steps/s of model time; Diffusion Policy training
    # 22 steps/s full size, benchmarks/diffusion.py; sim ~190 env steps/s per core, 16 worker processes) and
    # 200 lift demonstrations of ~60 frames, 12k frames:
    #   part 1 (~8 min of 9):  set-up (.gl, .whl, imports, CUDA) 40 s; sim-demos ~220 tries x ~60 control
    #     steps over 16 workers 60 s; convert 12k frames over 16 workers 30 s; dtw on the GPU 20 s; pretrain
    #     50 epochs = 3750 steps, at half the model rate for data sampling and EMA, 120 s; index 20 s;
    #     oracle-data (200 scripted episodes, physics only) 30 s; 3 retrieval policies (oracle, CLASS,
    #     random) x 3 cameras x 50 episodes (<= 100 steps each, 45k env steps at ~3k/s) 90 s; random
    #     encoder + index 20 s; carry out (tar of 22 MB) 5 s.
    #   part 2 (~8 min of 9): set-up 40 s; sim-demos + convert + dtw again (the carry cannot hold the
    #     ~100 MB dataset; the same seeds give the same dataset, checked by its fingerprint) 110 s;
    #     3 Diffusion Policies (scratch, CLASS, oracle on the true state) x 2000 steps trained at the same
    #     time: if they only share the GPU's time, 4000 image steps at 22/s + 2000 state-only steps at ~44/s
    #     = 230 s (less if each run is bound by its own CPU work); 3 x 3 x 50 episodes, 16 envs per forward
    #     pass (~17 ms DDPM-16 chunk) 90 s.
    # 2000 steps is 11 epochs at batch 64: far below the paper's 100 (CLASS) and 500 (scratch) epochs; the
    # same for every policy, so the comparison of initialisations is fair; raise it when a first run's
    # stage times (in its table) show room. Between the parts only `carry` travels (stamps, evaluation
    # JSONs, the oracle's state dataset, the CLASS run's EMA encoder as float16: ~23 MB of the 64 MiB).
    "gpu": {"sim_demos": {"episodes": 200},
            "pretrain": {"base": "training/configs/pretrain_gpu.yaml"},
            "finetune": {"base": "training/configs/finetune_gpu.yaml", "overrides": {"steps": 2000},
                         "concurrent": True},
            "tasks": ["lift"], "parts": True,
            "note": "GPU preset (one H200, two 9-minute commands): lift, 200 demonstrations, ResNet-18, CLASS "
                    "pre-training 50 epochs, Diffusion Policies 2000 steps each, 50 evaluation episodes per cell"},
    # The gpu preset's shape at smoke size, for a CPU rehearsal (and test_camera_shift_parts): two parts and
    # the carry between them; the numbers say nothing about the method.
    "rehearsal": {"sim_demos": {"episodes": 2}, "evaluate": {"episodes": 1},
                  "pretrain": {"overrides": {"steps": 4, "batch_size": 16, "warmup_steps": 1,
                                             "encoder": {"small_width": 8}}},
                  "finetune": {"overrides": {"steps": 4, "batch_size": 16, "warmup_steps": 1,
                                             "encoder": {"small_width": 8},
                                             "diffusion": {"num_train_timesteps": 4, "num_inference_steps": 4,
                                                           "unet": {"down_dims": [16, 32], "kernel_size": 3,
                                                                    "n_groups": 4, "step_embed_dim": 16}}},
                               "concurrent": True},
                  "tasks": ["lift"], "parts": True,
                  "note": "REHEARSAL RUN: the gpu preset's two parts at smoke size (1 episode per cell); the "
                          "numbers say nothing about the method"},
}
# Stages of each part of a two-part preset (the rest of part 1's outputs reach part 2 through the carry).
PARTS = {1: ["sim-demos", "convert", "dtw", "pretrain", "index", "oracle-data", "eval-oracle-retrieval",
             "random-encoder", "eval-class-retrieval", "eval-random-retrieval"],
         2: ["sim-demos", "convert", "dtw", "pretrain", "oracle-data", "dp-train", "eval-dp-scratch", "eval-dp-class",
             "eval-oracle-dp"]}


def preset_config(preset: str, task: str, device: str) -> dict:
    """The stage configuration of one task under a preset."""
    from class_ros.sim.pool import available_cores

    cfg = copy.deepcopy(_BASE)
    for section, values in PRESETS[preset].items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    # workers: sim-demos, convert and evaluation spread episodes over the cores (same results, not stamped).
    cfg.update(task=task, device=device, preset=preset, workers=available_cores())
    return cfg


def _stages(d_cfg: dict | None = None, parts: int | None = None):
    """The demo's stages up to the index, then the baselines and the evaluation grid (or one part's stages)."""
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

    def train_alone(name):
        # One fine-tuning, in a fresh process of its own: in the process that had run the earlier stages,
        # the same 4000 pick_place steps ran at 2.4-2.7 steps/s (4.6 on the true state), in a fresh one at
        # 3.5-3.9 (12.9) (2-core Xeon, AVX-512; README, camera-shift benchmark).
        def work(d):
            import functools

            from training.workers import ordered_results
            with ordered_results(functools.partial(_Finetuner, d.out, d.cfg, 1), [name], 1,
                                 own_process=True) as results:
                [summary] = list(results)
                return summary
        return work

    def oracle_data(d):
        from class_ros.sim.oracle import expert_demos, write_state_dataset
        demos = expert_demos(d.cfg["task"], d.cfg["sim_demos"]["episodes"], seed=d.cfg["seed"], progress=True)
        store = write_state_dataset(demos, d.path("oracle_data"))
        return {"episodes": len(demos.episode_ends), "frames": store.n_frames}

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

    def train_together(d):
        # The fine-tunings at once, each in its own process. On one GPU, each run's data sampling, EMA and
        # kernel launches are CPU work that the other runs' GPU work can overlap; on CPUs each run gets its
        # share of the cores (one thread on 2 cores), where the small convolutions scale better than on two
        # threads in one run.
        import functools

        from class_ros.data.store import EpisodeStore
        from class_ros.errors import ClassRosError
        from training.workers import ordered_results
        want, have = d.cfg.get("dataset_fingerprint"), EpisodeStore.open(d.dataset).fingerprint()
        if want is not None and want != have:  # part 2 re-recorded the data: it must be part 1's
            raise ClassRosError(f"the dataset re-made in part 2 has fingerprint {have}, part 1's had {want}; the "
                                "CLASS run would not belong to it.")
        runs = ("dp-scratch", "dp-class", "oracle-dp")
        with ordered_results(functools.partial(_Finetuner, d.out, d.cfg, len(runs)), runs, len(runs)) as results:
            return dict(zip(runs, results))

    def loss_key(s):
        return f"loss {s['loss_first']:.3f} -> {s['loss_last']:.3f} in {s['steps']} steps"

    def together_key(s):
        return "; ".join(f"{name} {loss_key(v)}" for name, v in s.items())

    def eval_key(s):
        from training.demo import _eval_key
        return _eval_key(s)

    base = [s for s in STAGES if s.name in ("sim-demos", "convert", "dtw", "pretrain", "index")]
    train = {
        "oracle-data": Stage("oracle-data", [], ["oracle_data"], oracle_data,
                             lambda s: f"{s['episodes']} episodes, {s['frames']} frames", ["sim_demos"]),
        "random-encoder": Stage("random-encoder", ["index"], ["random_run"], random_encoder,
                                lambda s: f"{s['n']} frames indexed", ["index"]),
        "oracle-dp-train": Stage("oracle-dp-train", ["oracle-data"], ["oracle_dp"], train_alone("oracle-dp"), loss_key,
                                 ["finetune"]),
        "dp-scratch-train": Stage("dp-scratch-train", ["convert"], ["dp_scratch"], train_alone("dp-scratch"), loss_key,
                                  ["finetune"]),
        "dp-class-train": Stage("dp-class-train", ["pretrain"], ["dp_class"], train_alone("dp-class"), loss_key,
                                ["finetune"]),
        # The three fine-tunings at once (presets with finetune.concurrent): one stage, three processes.
        "dp-train": Stage("dp-train", ["convert", "pretrain", "oracle-data"], ["dp_scratch", "dp_class", "oracle_dp"],
                          train_together, together_key, ["finetune"]),
    }
    together = bool((d_cfg or {}).get("finetune", {}).get("concurrent"))
    depends = {"oracle-retrieval": "oracle-data", "oracle-dp": "oracle-dp-train", "class-retrieval": "index",
               "random-retrieval": "random-encoder", "dp-scratch": "dp-scratch-train", "dp-class": "dp-class-train"}
    if together:
        depends.update({"oracle-dp": "dp-train", "dp-scratch": "dp-train", "dp-class": "dp-train"})
    evals = {name: Stage(f"eval-{name}", [dep], [f"eval/{name}"], evaluate(name), eval_key, ["evaluate"])
             for name, dep in depends.items()}
    stages = {**{s.name: s for s in base}, **train, **{s.name: s for s in evals.values()}}
    if parts:
        return [stages[name] for name in PARTS[parts]]
    # Cheap results first, so a run stopped early still has the retrieval rows and the retrieval ceiling.
    order = ["oracle-data", "eval-oracle-retrieval", "random-encoder", "eval-class-retrieval",
             "eval-random-retrieval"]
    order += (["dp-train", "eval-dp-scratch", "eval-dp-class", "eval-oracle-dp"] if together else
              ["dp-scratch-train", "eval-dp-scratch", "dp-class-train", "eval-dp-class", "oracle-dp-train",
               "eval-oracle-dp"])
    return base + [stages[name] for name in order]


class _Finetuner:
    """Fine-tunes one Diffusion Policy of a camera-shift folder per call (in its own process)."""

    def __init__(self, out, cfg, share: int):
        import torch

        from class_ros.sim.pool import available_cores
        torch.set_num_threads(max(1, available_cores() // share))  # the cores split between the runs
        self.out, self.cfg = Path(out), cfg

    def __call__(self, name: str) -> dict:
        from training.demo import _jsonable, merged_config
        from training.finetune import finetune
        init = self.out / "class_run" if name == "dp-class" else None
        dataset = self.out / ("oracle_data" if name == "oracle-dp" else "dataset")  # the true state, no images
        return _jsonable(finetune(dataset, init, self.out / POLICIES[name][0], merged_config(self.cfg["finetune"]),
                                  device=self.cfg["device"]))


SHARED_WITH_DEMO = {"sim-demos": "bags", "convert": "dataset", "dtw": "positives.npz", "pretrain": "class_run",
                    "index": None}


def seed_from_demo(demo: Path, task_dir: Path, task: str) -> bool:
    """Copy a finished demo's first five stages (outputs and stamps) into an empty task folder.

    The stamps then decide: with the same settings they are reused (the quick preset's sim-demos, convert
    and dtw), otherwise those stages run again as usual (its longer pretrain, and so its index).
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
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=None, help="default: the preset's, else both")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench" / "camera_shift"))
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--fresh", action="store_true", help="redo every stage")
    parser.add_argument("--demo", default=str(REPO / "runs" / "demo"),
                        help="a finished `class-ros demo` folder whose data and CLASS run are reused when their "
                             "settings match (the quick preset's data stages do, for lift)")
    parser.add_argument("--part", type=int, choices=sorted(PARTS),
                        help="two-part presets (gpu, rehearsal): 1 writes the carry into --carry, 2 reads it")
    parser.add_argument("--carry", default=None, help="folder of the carry between the parts")
    args = parser.parse_args(argv)

    from training.demo import DEMO_ENV, format_table, run_stages
    for name, value in DEMO_ENV.items():  # off-screen rendering, DDS on this machine (as `make` sets them)
        os.environ.setdefault(name, value)
    import torch
    from class_ros.data.outputs import write_json, write_text
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = args.preset if args.preset != "auto" else ("full" if device == "cuda" else "quick")
    two_parts = bool(PRESETS[preset].get("parts"))
    if two_parts != (args.part is not None) or (two_parts and not args.carry):
        print(f"camera_shift: preset {preset} " + ("runs in two parts: pass --part 1 or 2 and --carry DIR."
                                                   if two_parts else "runs in one go: leave out --part."))
        return 2
    tasks = args.tasks or PRESETS[preset].get("tasks") or list(TASKS)
    note = PRESETS[preset]["note"]
    print(f"camera_shift: preset {preset}{f' part {args.part}' if two_parts else ''}: {note}", flush=True)
    out = Path(args.out) / preset
    carried = unpack_carry(Path(args.carry), out) if args.part == 2 else {}
    results, timings = {}, dict(carried.get("stage_seconds", {}))
    t0 = time.perf_counter()
    for task in tasks:
        cfg = preset_config(preset, task, device)
        cfg["dataset_fingerprint"] = carried.get("dataset_fingerprint", {}).get(task)
        demo = Path(args.demo)
        if not args.fresh and not two_parts and demo.is_dir() and seed_from_demo(demo, out / task, task):
            print(f"camera_shift: copied the demo's data and CLASS run from {demo}; reused if the settings match")
        table, status = run_stages(out / task, cfg, _stages(cfg, args.part), fresh=args.fresh,
                                   label=f"camera_shift {task}")
        print(format_table(table), flush=True)
        timings[f"{task} part {args.part}" if two_parts else task] = {r["stage"]: r["seconds"] for r in table}
        results[task] = {}
        for name in POLICIES:
            folder = out / task / "eval" / name
            results[task][name] = {cam: cell(json.loads((folder / f"{cam}.json").read_text())
                                             if (folder / f"{cam}.json").exists() else None) for cam in CAMERAS}
    machine = machine_description(device)
    total = {**carried.get("total_seconds", {}), f"part {args.part}" if two_parts else "all": time.perf_counter() - t0}
    md = markdown_table(results, note, machine)
    md += "\nStage seconds: " + "; ".join(f"{k}: " + ", ".join(f"{st} {sec:.0f}" for st, sec in v.items()
                                                                 if sec is not None)
                                          for k, v in timings.items()) + "\n"
    if carried:
        md += f"Part 1 ran on {carried['machine']}.\n"
    write_text(out / "camera_shift.md", md)
    summary = {"preset": preset, "note": note, "machine": machine, "device": device, "results": results,
               "stage_seconds": timings, "total_seconds": total}
    write_json(out / "camera_shift.json", summary, indent=2, sort_keys=True)
    print(md)
    print(f"camera_shift: table written to {out / 'camera_shift.md'} and {out / 'camera_shift.json'}")
    if args.part == 1:
        from class_ros.data.store import EpisodeStore
        if not all(state in ("ran", "reused") for state in status.values()):
            print("camera_shift: part 1 did not finish every stage (see the table); no carry written.")
            return 1
        summary["dataset_fingerprint"] = {t: EpisodeStore.open(out / t / "dataset").fingerprint() for t in tasks}
        files = pack_carry(out, tasks, summary, Path(args.carry))
        print(f"camera_shift: carry for part 2 written to {', '.join(str(f) for f in files)} "
              f"({sum(f.stat().st_size for f in files) / 2**20:.1f} MiB)")
        return 0
    complete = all(c is not None for t in results.values() for p in t.values() for c in p.values())
    return 0 if complete else 1


# ---------------------------------------------------------------- the carry between the two parts
CARRY_NAME = "camera_shift_carry.tar"
CARRY_PART_BYTES = 15 << 20  # files back from a device command: at most 16 MiB each
SMALL_TENSOR = 4096  # elements: tensors up to this size travel as float32 (normaliser buffers, biases)


def pack_carry(out: Path, tasks: list[str], summary: dict, dest: Path) -> list[Path]:
    """Part 1's outputs that part 2 needs, as a tar split into <= 15 MiB files in `dest`: every stamp and
    evaluation JSON, and the CLASS run without its optimizer state, its index or its raw weights, its EMA
    encoder's large tensors as float16 (ResNet-18: 22 MB instead of 90). The dataset does not travel: part 2
    records and converts it again from the same seeds (its fingerprint is checked)."""
    import io
    import shutil
    import tarfile
    import tempfile

    import torch

    from class_ros.data import outputs
    from class_ros.data.rundir import CONFIG, META, NORMALIZER, RunDir
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob(f"{CARRY_NAME}.*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for task in tasks:
            src, dst = out / task, root / task
            shutil.copytree(src / "stamps", dst / "stamps")
            shutil.copytree(src / "eval", dst / "eval", ignore=shutil.ignore_patterns("*.mp4"))
            if (src / "oracle_data").is_dir():  # the true-state demonstrations: small, and cheaper to carry
                shutil.copytree(src / "oracle_data", dst / "oracle_data")
            (dst / "class_run").mkdir()
            for name in (META, CONFIG, NORMALIZER):
                shutil.copy2(src / "class_run" / name, dst / "class_run" / name)
            ema = RunDir.open(src / "class_run", kind="encoder").load_weights("encoder")["ema"]
            half = {k: v.half() if v.is_floating_point() and v.numel() > SMALL_TENSOR else v for k, v in ema.items()}
            run = RunDir.open(dst / "class_run", kind="encoder")
            # Only the files that travel stay recorded (the new weights are recorded as they are saved).
            run.meta["files"] = {k: v for k, v in run.meta["files"].items() if k in (CONFIG, NORMALIZER)}
            run.save_weights("encoder", {"ema": half})
            assert half and all(t.dtype in (torch.float16, torch.float32) or not t.is_floating_point()
                                for t in half.values())
        (root / "part1.json").write_text(json.dumps(summary, indent=1, default=str))  # inside the tar only
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(root, arcname=".")
    data = buf.getvalue()
    files = []
    for i in range(0, len(data), CARRY_PART_BYTES):
        files.append(dest / f"{CARRY_NAME}.{i // CARRY_PART_BYTES:03d}")
        outputs.write_bytes(files[-1], data[i:i + CARRY_PART_BYTES])
    return files


def unpack_carry(src: Path, out: Path) -> dict:
    """Unpack part 1's carry from `src` into `out` (EMA weights back to float32); returns part 1's summary."""
    import io
    import tarfile

    from class_ros.data.rundir import RunDir
    from class_ros.errors import ClassRosError
    pieces = sorted(src.glob(f"{CARRY_NAME}.*"))
    if not pieces:
        raise ClassRosError(f"{src} holds no {CARRY_NAME}.000; run part 1 with --carry {src} first.")
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in pieces)), mode="r") as tar:
        tar.extractall(out, filter="data")
    summary = json.loads((out / "part1.json").read_text())
    for task in summary["dataset_fingerprint"]:
        run = RunDir.open(out / task / "class_run", kind="encoder")
        ema = run.load_weights("encoder")["ema"]
        run.save_weights("encoder", {"ema": {k: v.float() if v.is_floating_point() else v for k, v in ema.items()}})
    return summary


if __name__ == "__main__":
    sys.exit(main())
