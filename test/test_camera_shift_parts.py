"""The camera-shift benchmark in two parts (the gpu preset's shape): the carry between them round-trips the
CLASS run, and the rehearsal preset runs part 1 and part 2 in separate folders into one complete table."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import camera_shift  # noqa: E402  (imported by name, so its spawned workers can import it too)


def small_class_run(path: Path) -> dict:
    """An encoder run directory as pretrain leaves it (ema + raw weights, a train_state) with random weights."""
    from class_ros.data.rundir import RunDir
    from class_ros.encoder.config import EncoderConfig
    from class_ros.encoder.model import ObservationEncoder

    torch.manual_seed(0)
    cfg = EncoderConfig(backbone="small", image_keys=["agentview"], proprio_keys=["joint_pos"], proprio_dims=[7],
                        image_size=[48, 48], crop_size=40, small_width=16, num_keypoints=8, feature_dim=16)
    enc = ObservationEncoder(cfg)
    from class_ros.data.normalizer import MinMaxNormalizer
    run = RunDir.create(path, "encoder", config={"encoder": cfg.__dict__})
    run.save_normalizers({"joint_pos": MinMaxNormalizer.fit(np.eye(7))})
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    run.save_weights("encoder", {"ema": state, "raw": state})
    run.save_train_state(3, model=enc)
    run.finish(3)
    return state


def test_carry_keeps_what_part_2_needs_in_small_pieces(tmp_path, monkeypatch):
    from class_ros.data.rundir import RunDir

    out = tmp_path / "part1" / "gpu"
    task = out / "lift"
    ema = small_class_run(task / "class_run")
    (task / "stamps").mkdir()
    (task / "stamps" / "pretrain.json").write_text('{"inputs": "abc", "seconds": 1.0, "summary": {}}')
    (task / "eval").mkdir()
    (task / "eval" / "class-retrieval.json").write_text('{"fixed": {"successes": 1, "episodes": 2}}')
    (task / "eval" / "fixed.mp4").write_bytes(b"0" * 1000)  # videos stay behind
    monkeypatch.setattr(camera_shift, "CARRY_PART_BYTES", 64 << 10)  # force several pieces
    summary = {"dataset_fingerprint": {"lift": "f00"}, "machine": "m", "stage_seconds": {"lift part 1": {"a": 1.0}},
               "total_seconds": {"part 1": 5.0}}
    files = camera_shift.pack_carry(out, ["lift"], summary, tmp_path / "carry")
    assert len(files) >= 2 and all(f.stat().st_size <= 64 << 10 for f in files)

    got = camera_shift.unpack_carry(tmp_path / "carry", tmp_path / "part2" / "gpu")
    assert got == summary
    dst = tmp_path / "part2" / "gpu" / "lift"
    assert sorted(p.name for p in (dst / "eval").iterdir()) == ["class-retrieval.json"]
    assert json.loads((dst / "stamps" / "pretrain.json").read_text())["inputs"] == "abc"
    run = RunDir.open(dst / "class_run", kind="encoder")
    assert not (dst / "class_run" / "train_state").exists()
    assert sorted(run.meta["files"]) == ["config.yaml", "encoder.safetensors", "normalizer.json"]
    back = run.load_weights("encoder")
    assert list(back) == ["ema"]
    for k, v in ema.items():
        assert back["ema"][k].dtype == v.dtype, k
        if v.is_floating_point() and v.numel() > camera_shift.SMALL_TENSOR:  # travelled as float16
            np.testing.assert_allclose(back["ema"][k].numpy(), v.numpy(), rtol=1e-3, atol=1e-4)
        else:
            assert torch.equal(back["ema"][k], v), k
    with pytest.raises(Exception, match="no camera_shift_carry.tar.000"):
        camera_shift.unpack_carry(tmp_path / "nothing", tmp_path / "x")


def test_two_part_presets_need_part_and_carry(capsys):
    assert camera_shift.main(["--preset", "rehearsal"]) == 2
    assert "--part 1 or 2 and --carry" in capsys.readouterr().out
    assert camera_shift.main(["--preset", "smoke", "--part", "1", "--carry", "x"]) == 2
    gpu = camera_shift.preset_config("gpu", "lift", "cuda")
    assert gpu["evaluate"]["episodes"] >= 50 and gpu["sim_demos"]["episodes"] == 200
    assert gpu["pretrain"]["base"].endswith("pretrain_gpu.yaml") and gpu["finetune"]["concurrent"]
    names = [s.name for s in camera_shift._stages(gpu, None)]
    for part, stages in camera_shift.PARTS.items():
        assert [s.name for s in camera_shift._stages(gpu, part)] == stages
        assert set(stages) <= set(names)
    # Every evaluation runs in one of the parts, and part 2 re-makes the data its training reads.
    evals = {n for n in names if n.startswith("eval-")}
    assert evals == {n for stages in camera_shift.PARTS.values() for n in stages if n.startswith("eval-")}
    assert camera_shift.PARTS[2][:2] == ["sim-demos", "convert"]


@pytest.mark.slow
def test_rehearsal_runs_both_parts_apart_into_one_table(tmp_path):
    torch.set_num_threads(1)
    carry = tmp_path / "carry"
    base = ["--preset", "rehearsal", "--device", "cpu", "--carry", str(carry)]
    assert camera_shift.main(base + ["--part", "1", "--out", str(tmp_path / "m1")]) == 0
    assert camera_shift.main(base + ["--part", "2", "--out", str(tmp_path / "m2")]) == 0  # another machine
    res = json.loads((tmp_path / "m2" / "rehearsal" / "camera_shift.json").read_text())
    cells = [c for p in res["results"]["lift"].values() for c in p.values()]
    assert len(cells) == 3 * len(camera_shift.POLICIES) and all(c["episodes"] == 1 for c in cells)
    part1, part2 = res["stage_seconds"]["lift part 1"], res["stage_seconds"]["lift part 2"]
    assert set(part1) == set(camera_shift.PARTS[1]) and set(part2) == set(camera_shift.PARTS[2])  # JSON sorts keys
    assert not (tmp_path / "m2" / "rehearsal" / "lift" / "index").exists()
    assert (tmp_path / "m2" / "rehearsal" / "lift" / "dp_class").is_dir()
    assert set(res["total_seconds"]) == {"part 1", "part 2"}
