"""Run directories: bitwise round trips, atomic writes, and refusal of damaged or mismatched runs."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from class_ros.data.normalizer import MinMaxNormalizer
from class_ros.data.rundir import RunDir, split_tensors, join_tensors
from class_ros.errors import ClassRosError


@pytest.fixture
def store(tmp_path):
    from latent_dataset import make_latent_dataset
    return make_latent_dataset(tmp_path / "data", n_episodes=3, length=6, size=16)


def make_run(tmp_path, store, config=None):
    return RunDir.create(tmp_path / "run", "encoder", config or {"lr": 0.001, "encoder": {"backbone": "small"}}, store)


def test_meta_records_the_dataset(tmp_path, store):
    run = make_run(tmp_path, store)
    meta = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert meta["format_version"] == 2 and meta["kind"] == "encoder" and meta["complete"] is False
    assert meta["dataset_fingerprint"] == store.fingerprint()
    assert (meta["action_names"], meta["action_kind"], meta["joint_names"], meta["control_rate_hz"]) == \
        (["x", "y"], "other", ["x", "y"], 10.0)
    assert run.load_config() == {"lr": 0.001, "encoder": {"backbone": "small"}}


def test_weights_round_trip_is_bitwise(tmp_path, store):
    run = make_run(tmp_path, store)
    torch.manual_seed(0)
    groups = {"ema": {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64)},
              "raw": {"a": torch.randn(3, 4, dtype=torch.float64), "h": torch.randn(2).half()}}
    path = run.save_weights("encoder", groups, metadata={"step": 7})
    back = RunDir.open(tmp_path / "run", "encoder", store=store).load_weights("encoder")
    for g, sd in groups.items():
        assert set(back[g]) == set(sd)
        for k, v in sd.items():
            assert back[g][k].dtype == v.dtype and back[g][k].numpy().tobytes() == v.numpy().tobytes()
    run.save_weights("encoder", groups, metadata={"step": 7})
    assert path.read_bytes() == run.path.joinpath("encoder.safetensors").read_bytes()  # deterministic bytes
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]  # no temp files left behind


def test_channels_last_weights_and_optimizer_state_save_and_restore(tmp_path, store):
    """Training keeps the convolutions channels-last (not contiguous, which safetensors refuses): weights and
    train state are packed on the way out and load back equal into a channels-last model."""
    run = make_run(tmp_path, store)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    opt = torch.optim.AdamW(conv.parameters(), lr=0.01)
    conv(torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)).sum().backward()
    opt.step()
    run.save_weights("encoder", {"ema": conv.state_dict()})
    run.save_train_state(1, model=conv, optimizer=opt)
    back = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    back.load_state_dict(run.load_weights("encoder")["ema"])
    assert torch.equal(back.weight, conv.weight) and not back.weight.is_contiguous()
    opt2 = torch.optim.AdamW(back.parameters(), lr=0.01)
    assert RunDir.open(tmp_path / "run").load_train_state(model=back, optimizer=opt2) == 1
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])


def test_normalizers_and_train_state_round_trip(tmp_path, store):
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    run = make_run(tmp_path, store)
    norm = MinMaxNormalizer.fit(np.random.default_rng(0).normal(size=(50, 3)))
    run.save_normalizers({"action": norm})
    back = run.load_normalizers()["action"]
    assert np.array_equal(back.min, norm.min) and np.array_equal(back.max, norm.max)

    def trainer():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        return model, opt, get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=20), \
            EMAModel(model.parameters(), power=0.75, use_ema_warmup=True)

    model, opt, sched, ema = trainer()
    for _ in range(3):
        model(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step(), sched.step(), ema.step(model.parameters())
    run.save_train_state(3, optimizer=opt, scheduler=sched, ema=ema, seed=5)
    model2, opt2, sched2, ema2 = trainer()
    assert RunDir.open(tmp_path / "run").load_train_state(optimizer=opt2, scheduler=sched2, ema=ema2) == 3
    assert [p.name for p in (run.path / "train_state").iterdir()] == ["state-000000003.safetensors"]
    assert run.train_state_values() == {"seed": 5, "step": 3}
    assert sched2.get_last_lr() == sched.get_last_lr() and ema2.optimization_step == ema.optimization_step
    for a, b in zip(ema.shadow_params, ema2.shadow_params):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i][k], s2[i][k]) for i in s1 for k in s1[i])


def test_nested_state_without_pickle():
    tree = {"a": [1, 2.5, None, "x", (torch.ones(2), True)], 3: {"t": torch.zeros(1)}}
    skeleton, tensors = split_tensors(tree)
    json.dumps(skeleton)  # plain JSON
    back = join_tensors(json.loads(json.dumps(skeleton)), tensors)
    assert back["a"][:4] == [1, 2.5, None, "x"] and isinstance(back["a"][4], tuple)
    assert torch.equal(back["a"][4][0], torch.ones(2)) and 3 in back
    with pytest.raises(ClassRosError, match="without pickle"):
        split_tensors({"f": object()})


def test_damaged_files_are_refused(tmp_path, store):
    run = make_run(tmp_path, store)
    run.save_weights("encoder", {"ema": {"w": torch.randn(64, 64)}})
    path = run.path / "encoder.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ClassRosError, match="truncated"):
        RunDir.open(run.path).load_weights("encoder")
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ClassRosError, match="checksum"):
        RunDir.open(run.path).load_weights("encoder")
    path.unlink()
    with pytest.raises(ClassRosError, match="missing"):
        RunDir.open(run.path).load_weights("encoder")
    meta = (run.path / "manifest.json").read_text()
    (run.path / "manifest.json").write_text(meta[: len(meta) // 2])
    with pytest.raises(ClassRosError, match="truncated"):
        RunDir.open(run.path)


def test_mismatches_are_refused(tmp_path, store):
    from latent_dataset import make_latent_dataset

    make_run(tmp_path, store)
    other = make_latent_dataset(tmp_path / "other", n_episodes=3, length=6, size=16, seed=1)
    with pytest.raises(ClassRosError, match="was trained on dataset"):
        RunDir.open(tmp_path / "run", store=other)
    with pytest.raises(ClassRosError, match="config differs"):
        RunDir.open(tmp_path / "run", config={"lr": 0.002, "encoder": {"backbone": "small"}})
    RunDir.open(tmp_path / "run", config={"lr": 0.001, "encoder": {"backbone": "small"}})  # same config is fine
    with pytest.raises(ClassRosError, match="'diffusion' run is needed"):
        RunDir.open(tmp_path / "run", kind="diffusion")
    meta = json.loads((tmp_path / "run" / "manifest.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(ClassRosError, match="format version 99"):
        RunDir.open(tmp_path / "run")
    meta["format_version"] = 2
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(meta))
    RunDir.open(tmp_path / "run").save_train_state(1, seed=0)  # a checkpoint: now there is work to keep
    with pytest.raises(ClassRosError, match="already exists"):
        make_run(tmp_path, store)
    with pytest.raises(ClassRosError, match="not a class_ros run"):
        RunDir.open(tmp_path / "nothing")


def test_unfinished_run_is_refused_unless_partial_use_is_asked_for(tmp_path, store):
    run = make_run(tmp_path, store)
    with pytest.raises(ClassRosError, match="has not saved its first checkpoint"):
        run.check_finished(allow_partial=True)
    run.update_meta(extra={"steps": 10})
    run.save_train_state(4, seed=0)
    with pytest.raises(ClassRosError, match=r"unfinished run \(stopped at step 4 of 10\).*--resume.*--allow-partial"):
        RunDir.open(run.path).check_finished()
    assert "step 4 of 10" in RunDir.open(run.path).check_finished(allow_partial=True)
    run.finish(10)
    assert RunDir.open(run.path).check_finished() is None


def test_edited_config_is_refused_by_its_checksum(tmp_path, store):
    run = make_run(tmp_path, store)
    path = run.path / "config.yaml"
    path.write_text(path.read_text().replace("0.001", "0.002"))
    with pytest.raises(ClassRosError, match="config.yaml does not match its recorded checksum"):
        RunDir.open(run.path).load_config()


def test_a_kill_while_weights_are_replaced_leaves_a_readable_version(tmp_path, store):
    """The manifest names the new weights before they replace the old: a kill on either side of the rename
    leaves a file the manifest accepts (a SIGKILLed pretrain once left "does not match its checksum")."""
    run = make_run(tmp_path, store)
    run.save_weights("encoder", {"ema": {"w": torch.zeros(3)}})
    old_bytes = (run.path / "encoder.safetensors").read_bytes()
    run.save_weights("encoder", {"ema": {"w": torch.ones(3)}})
    new_bytes = (run.path / "encoder.safetensors").read_bytes()
    record = json.loads((run.path / "manifest.json").read_text())["files"]["encoder.safetensors"]
    assert "next" not in record  # a finished save leaves one plain record
    # What a kill between the pending manifest and its final form leaves, the rename done or not yet:
    pending = json.loads((run.path / "manifest.json").read_text())
    pending["files"]["encoder.safetensors"] = {"bytes": len(old_bytes), "sha256": hashlib.sha256(old_bytes).hexdigest(),
                                               "next": record}
    (run.path / "manifest.json").write_text(json.dumps(pending))
    for on_disk, value in ((old_bytes, 0.0), (new_bytes, 1.0)):
        (run.path / "encoder.safetensors").write_bytes(on_disk)
        assert RunDir.open(run.path).load_weights("encoder")["ema"]["w"].tolist() == [value] * 3
    (run.path / "encoder.safetensors").write_bytes(new_bytes[:-1] + b" ")  # neither version: still refused
    with pytest.raises(ClassRosError, match="does not match its recorded checksum"):
        RunDir.open(run.path).load_weights("encoder")


def test_a_kill_between_train_state_and_manifest_keeps_the_committed_state(tmp_path, store):
    """The state file is written under a new name before the manifest names it: the old pair stays usable."""
    run = make_run(tmp_path, store)
    run.save_train_state(3, seed=3, w=torch.full((4,), 3.0))
    committed = (run.path / "manifest.json").read_bytes()
    old = run.path / "train_state" / "state-000000003.safetensors"
    old_bytes = old.read_bytes()
    run.save_train_state(6, seed=6, w=torch.full((4,), 6.0))
    # What a kill right after the step-6 file was written, before the manifest named it, leaves behind:
    (run.path / "manifest.json").write_bytes(committed)
    old.write_bytes(old_bytes)
    back = RunDir.open(run.path)
    assert back.train_state_values() == {"seed": 3, "step": 3}  # step and values of one save, never mixed
    back.save_train_state(4, seed=4)
    assert sorted(p.name for p in (run.path / "train_state").iterdir()) == ["state-000000004.safetensors"]
