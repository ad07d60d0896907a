"""CLASS pre-training: the learning test, resume, refusal of bad input, and DDP on 2 gloo processes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from class_ros.errors import ClassRosError

HORIZON = 8


class DensePositives:
    """Exact DTW positives of a tiny dataset as a dense (N, N) matrix (docs/method.md 1), for tests only."""

    def __init__(self, chunks: np.ndarray, quantile: float = 0.025):
        from dtaidistance import dtw_ndim

        n = len(chunks)
        d = dtw_ndim.distance_matrix_fast(chunks.astype(np.float64)) ** 2  # dtaidistance returns sqrt
        iu = np.triu_indices(n, 1)
        k = int(np.floor(quantile * len(iu[0])))
        order = np.argsort(d[iu], kind="stable")[:k]
        w = np.zeros((n, n), np.float32)
        w[iu[0][order], iu[1][order]] = 1.0 - np.arange(k) / max(k - 1, 1)  # closest 1.0 ... k-th 0.0
        self.w = np.maximum(w, w.T)
        self.n = n

    def batch_weights(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx)
        return self.w[np.ix_(idx, idx)]


def synthetic(tmp_path, **kw):
    """(store, positives) of the latent-state dataset, positives from min-max normalised action chunks."""
    from latent_dataset import make_latent_dataset

    store = make_latent_dataset(tmp_path / "data", **kw)
    return store, positives_of(store)


def positives_of(store) -> DensePositives:
    """Positives from the store's min-max normalised action chunks."""
    from class_ros.data.normalizer import MinMaxNormalizer

    chunks = store.action_chunks(HORIZON)
    return DensePositives(MinMaxNormalizer.fit(chunks).normalize(chunks))


def tiny_config(**kw):
    """A small encoder on 32x32 images that learns in seconds on 2 cores."""
    from class_ros.encoder.config import EncoderConfig
    from training.pretrain import PretrainConfig

    enc = dict(small_width=16, crop_size=28, num_keypoints=16, feature_dim=32)
    enc.update(kw.pop("encoder", {}))
    base = dict(encoder=EncoderConfig(**enc), batch_size=64, steps=150, lr=3e-3, warmup_steps=10,
                dist_horizon=HORIZON, save_every=1000)
    base.update(kw)
    return PretrainConfig(**base)


def cross_episode_hit_rate(encoder, store, positives) -> float:
    """How often a frame's nearest neighbour among *other* episodes (cosine, image features) is a DTW positive."""
    encoder.eval()
    with torch.no_grad():
        z = encoder.image_features({"cam": torch.from_numpy(np.asarray(store.array("obs/cam")))})
    z = torch.nn.functional.normalize(z, dim=1).numpy()
    s = z @ z.T
    ep = store.episode_of(np.arange(store.n_frames))
    s[ep[:, None] == ep[None, :]] = -np.inf  # same-episode neighbours are trivially close in time
    nearest = s.argmax(1)
    return float((positives.w[np.arange(len(nearest)), nearest] > 0).mean())


def load_encoder(run_path, group="ema"):
    from class_ros.data.rundir import RunDir
    from class_ros.encoder.config import EncoderConfig
    from class_ros.encoder.model import ObservationEncoder

    run = RunDir.open(run_path, "encoder")
    enc = ObservationEncoder(EncoderConfig.from_dict(run.load_config()["encoder"]))
    enc.load_state_dict(run.load_weights("encoder")[group])
    return enc


def test_pretraining_makes_positives_nearest_neighbours(tmp_path):
    from class_ros.encoder.model import ObservationEncoder
    from training.pretrain import pretrain

    store, positives = synthetic(tmp_path)
    cfg = tiny_config()
    torch.manual_seed(cfg.seed)  # pretrain initialises with the same seed
    before = cross_episode_hit_rate(ObservationEncoder(cfg.encoder.for_dataset(store.meta)), store, positives)
    summary = pretrain(tmp_path / "data", positives, tmp_path / "run", cfg, progress=False)
    after = cross_episode_hit_rate(load_encoder(tmp_path / "run"), store, positives)
    # Chance is ~2.5% (the positive quantile); at init the background colour dominates. Measured here:
    # ~0.04 before, ~0.5 after. A loss with a wrong sign or ignored weights stays near chance.
    assert before < 0.15
    assert after > 0.3 and after > 4 * before, (before, after)
    assert summary["loss_last"] < summary["loss_first"] - 1.0
    assert summary["rows_with_positives"] > 0.5
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "lr", "rows_with_positives", "mean_positive_weight"} <= set(tags)
    assert len(events.Scalars("loss")) == cfg.steps
    lrs = [e.value for e in events.Scalars("lr")]
    assert lrs[0] < lrs[cfg.warmup_steps] and lrs[-1] < 0.05 * max(lrs)  # warm-up, then cosine decay


def test_resume_continues_exactly(tmp_path):
    from class_ros.data.rundir import RunDir
    from training.pretrain import pretrain

    store, positives = synthetic(tmp_path, n_episodes=6, length=12)
    cfg = tiny_config(steps=6, batch_size=16, optimizer="lars", lr=0.5)
    pretrain(tmp_path / "data", positives, tmp_path / "full", cfg, progress=False)
    pretrain(tmp_path / "data", positives, tmp_path / "split", cfg, progress=False, stop_after=3)
    assert RunDir.open(tmp_path / "split").train_state_values()["step"] == 3
    pretrain(tmp_path / "data", positives, tmp_path / "split", cfg, progress=False, resume=True)
    full = RunDir.open(tmp_path / "full").load_weights("encoder")
    split = RunDir.open(tmp_path / "split").load_weights("encoder")
    for group in ("raw", "ema"):
        for key, value in full[group].items():
            torch.testing.assert_close(split[group][key], value, rtol=1e-5, atol=1e-6)
    # A changed config cannot resume the run.
    with pytest.raises(ClassRosError, match="config differs"):
        pretrain(tmp_path / "data", positives, tmp_path / "split", tiny_config(steps=6, batch_size=16, lr=0.1),
                 progress=False, resume=True)


def test_bad_input_is_refused_before_writing(tmp_path):
    from training.pretrain import pretrain

    store, positives = synthetic(tmp_path, n_episodes=4, length=10)
    other, _ = synthetic(tmp_path / "other", n_episodes=3, length=10)
    wrong = DensePositives(other.action_chunks(HORIZON))  # 30 samples for a 40-frame dataset
    with pytest.raises(ClassRosError, match="positives cover 30 samples"):
        pretrain(tmp_path / "data", wrong, tmp_path / "run", tiny_config(steps=2), progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ClassRosError, match="not a dataset store"):
        pretrain(tmp_path / "nothing", positives, tmp_path / "run", tiny_config(steps=2), progress=False)
    pretrain(tmp_path / "data", positives, tmp_path / "run", tiny_config(steps=1, batch_size=8), progress=False)
    with pytest.raises(ClassRosError, match="already exists"):
        pretrain(tmp_path / "data", positives, tmp_path / "run", tiny_config(steps=1, batch_size=8), progress=False)
    with pytest.raises(ClassRosError, match="unknown pretrain config keys"):
        pretrain(tmp_path / "data", positives, tmp_path / "run2", {"batch_sise": 8}, progress=False)


def test_cli_reports_one_line_errors(tmp_path, capsys):
    from class_ros.cli import main

    rc = main(["pretrain", "--dataset", str(tmp_path / "none"), "--positives", str(tmp_path / "p.npz"),
               "--out", str(tmp_path / "run"), "--config", "training/configs/pretrain_cpu.yaml"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "not a dataset store" in err


def test_presets_parse():
    from pathlib import Path

    from training.pretrain import PretrainConfig

    configs = Path(__file__).resolve().parents[1] / "training" / "configs"
    cpu = PretrainConfig.from_yaml(configs / "pretrain_cpu.yaml")
    gpu = PretrainConfig.from_yaml(configs / "pretrain_gpu.yaml")
    assert cpu.encoder.backbone == "small" and cpu.optimizer == "adamw"
    assert (gpu.encoder.backbone, gpu.encoder.crop_size, gpu.batch_size, gpu.optimizer, gpu.lr) == \
        ("resnet18", 84, 160, "lars", 0.4)


def test_init_weights_are_used_and_a_bad_file_is_refused_before_writing(tmp_path):
    from safetensors.torch import save_file

    from class_ros.encoder.model import ObservationEncoder
    from training.pretrain import pretrain

    store, positives = synthetic(tmp_path, n_episodes=4, length=10)
    cfg = tiny_config(steps=1, batch_size=8, lr=1e-9, warmup_steps=0)
    torch.manual_seed(123)
    source = ObservationEncoder(cfg.encoder.for_dataset(store.meta))
    save_file(source.state_dict(), str(tmp_path / "init.safetensors"))
    pretrain(tmp_path / "data", positives, tmp_path / "run", cfg, init_weights=tmp_path / "init.safetensors",
             progress=False)
    trained = load_encoder(tmp_path / "run", "raw").state_dict()
    key = "backbones.cam.trunk.net.0.weight"
    torch.testing.assert_close(trained[key], source.state_dict()[key], atol=1e-6, rtol=0)  # lr ~ 0: unchanged
    save_file({"nothing": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ClassRosError, match="no tensor"):
        pretrain(tmp_path / "data", positives, tmp_path / "run2", cfg, init_weights=tmp_path / "bad.safetensors",
                 progress=False)
    assert not (tmp_path / "run2").exists()


def test_positives_file_from_the_similarity_step(tmp_path):
    from class_ros.similarity import dtw_positives, normalized_chunks
    from training.pretrain import pretrain

    store, dense = synthetic(tmp_path, n_episodes=4, length=10)
    other, _ = synthetic(tmp_path / "other", n_episodes=3, length=10)
    dtw_positives(normalized_chunks(store, HORIZON)).save(tmp_path / "pos.npz", store.fingerprint())
    dtw_positives(normalized_chunks(other, HORIZON)).save(tmp_path / "other.npz", other.fingerprint())
    cfg = tiny_config(steps=2, batch_size=8)
    summary = pretrain(tmp_path / "data", tmp_path / "pos.npz", tmp_path / "run", cfg, progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["loss_last"])
    with pytest.raises(ClassRosError, match=f"computed from dataset {other.fingerprint()}, not from this dataset"):
        pretrain(tmp_path / "data", tmp_path / "other.npz", tmp_path / "run2", cfg, progress=False)
    with pytest.raises(ClassRosError, match="do not exist"):
        pretrain(tmp_path / "data", tmp_path / "none.npz", tmp_path / "run2", cfg, progress=False)
    assert not (tmp_path / "run2").exists()


def test_positive_pair_batches_pair_each_anchor_with_one_of_its_positives():
    from training.pretrain import sample_batch

    class Csr:  # the CSR view that an exact positives file gives: row i's positives are indices[indptr[i]:indptr[i+1]]
        indptr = np.array([0, 2, 2, 3, 5])
        indices = np.array([1, 3, 0, 0, 2])

    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        idx = sample_batch(rng, 4, 8, Csr)
        assert idx.shape == (8,) and idx.min() >= 0 and idx.max() < 4
        for a, b in zip(idx[:4], idx[4:]):
            if a != 1:  # frame 1 has no positives: its partner is any frame
                assert b in Csr.indices[Csr.indptr[a]:Csr.indptr[a + 1]]
            seen.add((int(a), int(b)))
    assert {(0, 1), (0, 3), (3, 0), (3, 2), (2, 0)} <= seen  # every positive gets drawn
    assert sample_batch(rng, 4, 8).shape == (8,)  # no positives: uniform


@pytest.mark.slow  # ~25 s idle (a torch process start, then a few steps); more on a loaded machine
def test_kill_9_mid_pretrain_is_refused_by_index_and_resumed(tmp_path, capsys):
    """A real `class-ros pretrain` process killed with SIGKILL while it trains: index refuses the run (or uses its
    last checkpoint with --allow-partial, saying which step), and --resume continues from that checkpoint."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from class_ros.cli import main
    from class_ros.data.rundir import RunDir, config_to_dict
    from latent_dataset import make_latent_dataset
    from training.dtw import compute_positives
    from training.pretrain import pretrain

    make_latent_dataset(tmp_path / "data", n_episodes=4, length=10, size=16)
    compute_positives(tmp_path / "data", tmp_path / "pos.npz", horizon=HORIZON, quantile=0.05, verbose=False)
    total = 10 ** 6  # it cannot finish before the kill, however loaded the machine: no race
    cfg = tiny_config(steps=total, batch_size=8, save_every=2)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config_to_dict(cfg)))
    run = tmp_path / "run"
    args = ["pretrain", "--dataset", str(tmp_path / "data"), "--positives", str(tmp_path / "pos.npz"),
            "--out", str(run), "--config", str(tmp_path / "cfg.yaml"), "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "class_ros.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def step() -> int:
        try:
            return json.loads((run / "manifest.json").read_text()).get("step") or 0
        except (OSError, ValueError):
            return 0

    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and step() < 6:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = RunDir.open(run)
    assert killed.meta["complete"] is False and 6 <= killed.step < total
    at = killed.step
    capsys.readouterr()
    for argv in (["index", "--run", str(run), "--dataset", str(tmp_path / "data")],
                 ["evaluate", "--run", str(run), "--episodes", "1"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"unfinished run (stopped at step {at} of {total})" in err and "--resume" in err
        assert len(err.strip().splitlines()) == 1
    assert main(["index", "--run", str(run), "--dataset", str(tmp_path / "data"), "--allow-partial"]) == 0
    assert f"using its checkpoint of step {at} of {total}" in capsys.readouterr().out
    # --resume continues from the checkpoint the kill left (two more steps here: the API's stop_after)
    summary = pretrain(tmp_path / "data", tmp_path / "pos.npz", run, cfg, resume=True, progress=False,
                       device="cpu", stop_after=2)
    assert summary["steps_this_call"] == 2 and RunDir.open(run).train_state_values()["step"] == at + 2
