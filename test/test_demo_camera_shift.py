"""The camera-shift benchmark's presets and table (the benchmark itself runs for an hour: benchmarks/)."""
import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("camera_shift", Path(__file__).resolve().parents[1] / "benchmarks" /
                                              "camera_shift.py")
camera_shift = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(camera_shift)


def test_presets_say_when_they_use_fewer_than_50_episodes():
    for preset in ("smoke", "quick", "full"):
        cfg = camera_shift.preset_config(preset, "pick_place", "cpu")
        assert cfg["task"] == "pick_place" and cfg["evaluate"]["cameras"] == ["fixed", "heldout", "moving"]
        n = cfg["evaluate"]["episodes"]
        assert n >= 50 or ("SMOKE" in cfg["note"] or f"ONLY {n} evaluation episodes" in cfg["note"]), preset
    assert camera_shift.preset_config("full", "lift", "cuda")["evaluate"]["episodes"] == 50
    smoke = camera_shift.preset_config("smoke", "lift", "cpu")
    assert smoke["evaluate"]["episodes"] < 50 and "SMOKE" in smoke["note"]
    assert smoke["convert"] == camera_shift._BASE["convert"]  # untouched sections keep the base settings
    full = camera_shift.preset_config("full", "lift", "cuda")
    assert full["pretrain"]["base"].endswith("pretrain_gpu.yaml")
    assert camera_shift._BASE["pretrain"]["base"].endswith("pretrain_cpu.yaml")  # presets never edit the base


def test_table_shows_rates_cis_and_gaps():
    cell = camera_shift.cell({"successes": 9, "episodes": 50})
    assert cell["rate"] == pytest.approx(0.18) and cell["ci_low"] < 0.18 < cell["ci_high"]
    results = {"lift": {"class-retrieval": {"fixed": cell, "heldout": None, "moving": None}}}
    md = camera_shift.markdown_table(results, "quick CPU preset", "x86_64, 2 CPU cores")
    assert "quick CPU preset) on x86_64, 2 CPU cores" in md
    assert f"| lift | class-retrieval | 18% (9/50) [{cell['ci_low']:.0%}, {cell['ci_high']:.0%}] | not run | not run |" in md


def test_seed_from_demo_copies_only_a_finished_demo_of_the_same_task(tmp_path):
    demo = tmp_path / "demo"
    (demo / "stamps").mkdir(parents=True)
    for name in camera_shift.SHARED_WITH_DEMO:
        (demo / "stamps" / f"{name}.json").write_text('{"summary": {"task": "lift"}}')
    for rel in ("bags", "dataset", "class_run"):
        (demo / rel).mkdir()
        (demo / rel / "x").write_text(rel)
    (demo / "positives.npz").write_bytes(b"npz")
    assert not camera_shift.seed_from_demo(demo, tmp_path / "pp", "pick_place")
    assert camera_shift.seed_from_demo(demo, tmp_path / "lift", "lift")
    assert (tmp_path / "lift" / "class_run" / "x").read_text() == "class_run"
    assert sorted(p.name for p in (tmp_path / "lift" / "stamps").iterdir()) == sorted(
        f"{n}.json" for n in camera_shift.SHARED_WITH_DEMO)
    assert not camera_shift.seed_from_demo(demo, tmp_path / "lift", "lift")  # never over an existing run


def test_quick_preset_shares_the_demo_data_settings_so_a_finished_demo_is_reused():
    import yaml
    demo = yaml.safe_load((camera_shift.REPO / "training/configs/demo.yaml").read_text())
    quick = camera_shift.preset_config("quick", "lift", "cpu")
    for section in ("sim_demos", "convert", "dtw", "index"):
        assert quick[section] == demo[section], section
    # Pre-training differs in its length and batch only (the table's Diffusion Policy from CLASS used 4000
    # steps of 64 frames; the demo's 1000 of 32 are unmeasured for it).
    assert quick["pretrain"]["base"] == demo["pretrain"]["base"]
    assert (quick["pretrain"]["overrides"], demo["pretrain"]["overrides"]) == \
        ({"steps": 4000}, {"steps": 1000, "batch_size": 32})
    assert (quick["task"], quick["seed"], quick["device"]) == (demo["task"], demo["seed"], demo["device"])
    # Its three fine-tunings train at once, one stage (the cores split between them).
    assert [s.name for s in camera_shift._stages(quick) if s.name.endswith("-train")] == ["dp-train"]


def test_every_table_carries_the_privileged_state_ceilings_first():
    stages = [s.name for s in camera_shift._stages()]
    assert list(camera_shift.POLICIES)[:2] == ["oracle-retrieval", "oracle-dp"]
    for name in camera_shift.POLICIES:
        assert f"eval-{name}" in stages, name
    assert stages.index("eval-oracle-retrieval") < stages.index("dp-scratch-train")  # cheap ceiling first
    deps = {s.name: s.depends for s in camera_shift._stages()}
    assert deps["oracle-dp-train"] == ["oracle-data"] and deps["eval-oracle-dp"] == ["oracle-dp-train"]
