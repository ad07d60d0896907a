"""`class-ros finetune`: --init RUN starts from the CLASS run's EMA encoder, checkpoint round trip, exact
resume, refusal of mismatched runs / datasets / configs, and one-line CLI errors."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from class_ros.errors import ClassRosError

H = 8  # chunk length of the tiny configs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class NeighbourPositives:
    """Adjacent frames are positives: enough for a few pre-training steps that make a CLASS run."""

    def __init__(self, n: int):
        self.n = n

    def batch_weights(self, idx):
        idx = np.asarray(idx)
        return (np.abs(idx[:, None] - idx[None, :]) == 1).astype(np.float32)


def tiny_config(**kw):
    from class_ros.encoder.config import EncoderConfig
    from training.finetune import FinetuneConfig

    base = dict(encoder=EncoderConfig(small_width=8, crop_size=16, num_keypoints=8, feature_dim=16),
                diffusion={"horizon": H, "n_action_steps": 4, "sampler": "ddim", "num_inference_steps": 4,
                           "unet": {"down_dims": [16, 32], "kernel_size": 3, "n_groups": 8, "step_embed_dim": 16}},
                batch_size=8, steps=4, lr=1e-3, vision_lr=1e-4, warmup_steps=0, save_every=1000)
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny dataset and a CLASS run pre-trained on it for a few steps."""
    from class_ros.encoder.config import EncoderConfig
    from latent_dataset import make_latent_dataset
    from training.pretrain import PretrainConfig, pretrain

    root = tmp_path_factory.mktemp("ft")
    store = make_latent_dataset(root / "data", n_episodes=4, length=12, size=16)
    cfg = PretrainConfig(encoder=EncoderConfig(small_width=8, crop_size=14, num_keypoints=8, feature_dim=16),
                         batch_size=8, steps=3, warmup_steps=0, dist_horizon=H, save_every=1000)
    pretrain(root / "data", NeighbourPositives(store.n_frames), root / "class", cfg, progress=False)
    return root


def test_init_run_encoder_equals_class_ema_weights(world):
    from class_ros.data.rundir import RunDir
    from class_ros.policy import load_policy
    from training.finetune import finetune as run

    # vision_lr 0: the image backbones must stay exactly the CLASS run's EMA weights through training.
    summary = run(world / "data", world / "class", world / "dp_class", tiny_config(vision_lr=0.0), progress=False)
    assert summary["steps_this_call"] == 4 and summary["init"] == str((world / "class").resolve())
    ema = RunDir.open(world / "class", "encoder").load_weights("encoder")["ema"]
    policy = load_policy(world / "dp_class", kind="diffusion")
    enc = policy.encoder.state_dict()
    assert set(enc) == set(ema)
    for k in ema:
        assert torch.equal(enc[k], ema[k]), k
    assert policy.encoder.config.crop_size == 14  # the CLASS run's architecture, not this config's 16

    # From scratch the encoder is a different (random) one.
    run(world / "data", "none", world / "dp_scratch", tiny_config(), progress=False)
    scratch = load_policy(world / "dp_scratch", kind="diffusion").encoder.state_dict()
    assert scratch["backbones.cam.proj.weight"].shape != ema["backbones.cam.proj.weight"].shape or \
        not torch.equal(scratch["backbones.cam.proj.weight"], ema["backbones.cam.proj.weight"])


def test_checkpoint_round_trip(world):
    from class_ros.data.rundir import RunDir
    from class_ros.data.store import EpisodeStore
    from class_ros.policy import load_policy
    from class_ros.policy.diffusion import DiffusionPolicy
    from training.finetune import finetune as run

    run(world / "data", None, world / "dp_rt", tiny_config(), progress=False)
    saved = RunDir.open(world / "dp_rt", "diffusion").load_weights("policy")["ema"]
    a = load_policy(world / "dp_rt", kind="diffusion")
    b = DiffusionPolicy.load(world / "dp_rt", "cpu")
    for k, v in saved.items():
        assert torch.equal(a.state_dict()[k], v), k
    assert a.sampler_kind == "ddim" and a.num_inference_steps == 4 and a.n_action_steps == 4
    assert a.noise_scheduler.config.num_train_timesteps == 16
    assert a.noise_scheduler.config.beta_schedule == "squaredcos_cap_v2"
    store = EpisodeStore.open(world / "data")
    assert a.action_names == store.meta.action_names and a.control_rate_hz == store.meta.control_rate_hz
    obs = {"cam": store.read("obs/cam", np.array([3]))[0], "state": store.read("obs/state", np.array([3]))[0]}
    chunk = a.predict_action_chunk(obs)
    np.testing.assert_array_equal(chunk, b.predict_action_chunk(obs))
    assert chunk.shape == (H, 2) and chunk.dtype == np.float32
    # clip_sample keeps every sampled action inside the range the normaliser saw in training
    actions = np.asarray(store.array("action"))
    assert (chunk >= actions.min(0) - 1e-5).all() and (chunk <= actions.max(0) + 1e-5).all()


def test_resume_continues_exactly(world):
    from class_ros.data.rundir import RunDir
    from training.finetune import finetune as run

    cfg = tiny_config(steps=4)
    run(world / "data", "none", world / "full", cfg, progress=False)
    part = run(world / "data", "none", world / "split", cfg, progress=False, stop_after=2)
    assert part["steps_this_call"] == 2
    rest = run(world / "data", "none", world / "split", cfg, progress=False, resume=True)
    assert rest["steps_this_call"] == 2
    full = RunDir.open(world / "full", "diffusion").load_weights("policy")
    split = RunDir.open(world / "split", "diffusion").load_weights("policy")
    for group in ("raw", "ema"):
        for k, v in full[group].items():
            assert torch.equal(split[group][k], v), (group, k)


def test_mismatches_are_refused(world, tmp_path):
    from latent_dataset import make_latent_dataset
    from class_ros.policy import load_policy
    from training.finetune import finetune as run

    run(world / "data", "none", tmp_path / "dp", tiny_config(), progress=False)
    with pytest.raises(ClassRosError, match="config differs"):
        run(world / "data", "none", tmp_path / "dp", tiny_config(steps=8), progress=False, resume=True)
    other = make_latent_dataset(tmp_path / "other", n_episodes=3, length=12, size=16, seed=5)
    with pytest.raises(ClassRosError, match="trained on dataset"):
        run(other.path, "none", tmp_path / "dp", tiny_config(), progress=False, resume=True)
    with pytest.raises(ClassRosError, match="already exists"):
        run(world / "data", "none", tmp_path / "dp", tiny_config(), progress=False)
    with pytest.raises(ClassRosError, match="is a 'encoder' run"):
        load_policy(world / "class", kind="diffusion")
    # a CLASS run whose cameras do not fit the dataset, and a path that is no run: nothing is written
    small = make_latent_dataset(tmp_path / "small", n_episodes=2, length=12, size=12)
    with pytest.raises(ClassRosError, match="encodes 'cam' of shape"):
        run(small.path, world / "class", tmp_path / "dp2", tiny_config(), progress=False)
    with pytest.raises(ClassRosError, match="not a class_ros run directory"):
        run(world / "data", tmp_path / "nope", tmp_path / "dp3", tiny_config(), progress=False)
    assert not (tmp_path / "dp2").exists() and not (tmp_path / "dp3").exists()
    # a truncated weights file is refused on load
    weights = tmp_path / "dp" / "policy.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ClassRosError, match="truncated"):
        load_policy(tmp_path / "dp", kind="diffusion")


def test_bad_config_values_are_refused():
    from training.finetune import FinetuneConfig

    with pytest.raises(ClassRosError, match="unknown finetune config keys"):
        FinetuneConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(ClassRosError, match="batch_size"):
        tiny_config(batch_size=0)
    with pytest.raises(ClassRosError, match="multiple of"):
        tiny_config(diffusion={"horizon": 6, "n_action_steps": 4, "unet": {"down_dims": [16, 32, 64]}})


def test_presets_parse_and_gpu_preset_has_method_values():
    from training.finetune import CONFIG_DIR, FinetuneConfig

    cpu = FinetuneConfig.from_yaml(CONFIG_DIR / "finetune_cpu.yaml")
    gpu = FinetuneConfig.from_yaml(CONFIG_DIR / "finetune_gpu.yaml")
    d = gpu.diffusion
    assert (d.horizon, d.n_action_steps, d.num_train_timesteps, d.num_inference_steps) == (16, 8, 16, 16)
    assert (d.beta_schedule, d.prediction_type, d.sampler) == ("squaredcos_cap_v2", "epsilon", "ddpm")
    assert d.unet.down_dims == [256, 512, 1024] and d.unet.kernel_size == 5 and d.unet.n_groups == 8
    assert d.unet.step_embed_dim == 256 and gpu.encoder.backbone == "resnet18"
    assert (gpu.lr, gpu.vision_lr, gpu.weight_decay, gpu.batch_size, gpu.warmup_steps) == (1e-4, 1e-5, 1e-6, 64, 500)
    assert (gpu.epochs, gpu.scratch_epochs) == (100, 500)
    assert cpu.encoder.backbone == "small" and cpu.steps > 0
    assert dataclasses.asdict(cpu.diffusion)["unet"]["down_dims"] == [48, 96, 192]


def test_cli_reports_one_line_errors(world, tmp_path, capsys):
    from class_ros.cli import main

    rc = main(["finetune", "--dataset", str(world / "data"), "--init", str(tmp_path / "missing"),
               "--out", str(tmp_path / "dp")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "not a class_ros run directory" in err
    assert not (tmp_path / "dp").exists()


def test_an_edited_or_unfinished_init_run_is_refused_before_writing(world, tmp_path):
    import shutil

    from class_ros.data.rundir import RunDir
    from training.finetune import finetune

    init = tmp_path / "class"
    shutil.copytree(world / "class", init)
    cfg = init / "config.yaml"
    cfg.write_text(cfg.read_text().replace("feature_dim: 16", "feature_dim: 64"))  # hand-edited
    with pytest.raises(ClassRosError, match="config.yaml does not match its recorded checksum"):
        finetune(world / "data", init, tmp_path / "dp", tiny_config(), progress=False)
    shutil.copy(world / "class" / "config.yaml", cfg)
    run = RunDir.open(init)
    run.update_meta(complete=False)  # as a killed pretrain leaves it
    with pytest.raises(ClassRosError, match=r"unfinished run \(stopped at step \d+"):
        finetune(world / "data", init, tmp_path / "dp", tiny_config(), progress=False)
    assert not (tmp_path / "dp").exists()
