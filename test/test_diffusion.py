"""DiffusionPolicy: it learns (a two-observation overfit that a broken loss or sampler fails), DDIM with
fewer steps, the policy interface, input errors, config errors, and the benchmark's scheduler fallback."""
import numpy as np
import pytest
import torch

from class_ros.data.normalizer import MinMaxNormalizer
from class_ros.encoder.config import EncoderConfig
from class_ros.errors import ClassRosError
from class_ros.policy.diffusion import DiffusionConfig, DiffusionPolicy
from class_ros.policy.unet import UNetConfig

H, D, S = 8, 3, 16  # chunk length, action dims, image size
TINY_UNET = UNetConfig(down_dims=[32, 64], kernel_size=3, n_groups=8, step_embed_dim=32)
INFO = {"action_names": ["a", "b", "c"], "action_kind": "other", "joint_names": ["q0", "q1"],
        "control_rate_hz": 20.0}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread avoids OpenMP spin-waiting on a busy 2-core machine (10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_policy(**diffusion) -> DiffusionPolicy:
    torch.manual_seed(0)
    enc = EncoderConfig(backbone="small", image_keys=["cam"], proprio_keys=["q"], proprio_dims=[2],
                        image_size=[S, S], crop_size=S, num_keypoints=8, feature_dim=16, small_width=8,
                        noise_std=0.0)
    cfg = DiffusionConfig(**{"horizon": H, "n_action_steps": 4, "unet": TINY_UNET, **diffusion})
    chunks = toy_data()[1]
    return DiffusionPolicy(enc, cfg, MinMaxNormalizer.fit(chunks), INFO)


def toy_data():
    """Two observations (a red and a blue image, different proprio) and their two distinct chunks, robot units."""
    images = np.zeros((2, S, S, 3), np.uint8)
    images[0, ..., 0] = 220
    images[1, ..., 2] = 220
    q = np.array([[0.1, -0.2], [0.4, 0.3]], np.float32)
    t = np.linspace(0, 1, H, dtype=np.float32)
    chunk_a = np.stack([t, 1 - t, np.full(H, 0.5, np.float32)], axis=1) * 2.0  # ramps
    chunk_b = np.stack([np.sin(3 * t), np.cos(3 * t), -t], axis=1) * 2.0 - 1.0  # curves
    return (images, q), np.stack([chunk_a, chunk_b])


def obs(i: int) -> dict:
    (images, q), _ = toy_data()
    return {"cam": images[i], "q": q[i]}


@pytest.fixture(scope="module")
def trained(one_thread):
    """The tiny policy after a few hundred steps on the two pairs."""
    policy = tiny_policy()
    (images, q), chunks = toy_data()
    opt = torch.optim.AdamW(policy.param_groups(2e-3, 2e-3), weight_decay=0.0)
    idx = np.arange(32) % 2
    batch = {"cam": torch.from_numpy(images[idx]), "q": torch.from_numpy(q[idx]),
             "action": torch.from_numpy(chunks[idx])}
    losses = []
    policy.train()
    torch.manual_seed(1)
    for _ in range(400):
        loss = policy.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    policy.eval()
    return policy, losses


def chunk_errors(policy, n: int = 4) -> np.ndarray:
    """(2, 2): mean abs error (robot units) of observation i's sampled chunks to chunk j, over n samples."""
    _, chunks = toy_data()
    err = np.zeros((2, 2))
    policy.reset()
    for i in range(2):
        for _ in range(n):
            pred = policy.predict_action_chunk(obs(i))
            assert pred.shape == (H, D) and pred.dtype == np.float32
            err[i] += np.abs(pred[None] - chunks).mean(axis=(1, 2)) / n
    return err


def test_overfit_two_observations_sample_their_own_chunks(trained):
    policy, losses = trained
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])
    policy.set_sampler("ddpm", 16)
    err = chunk_errors(policy)
    _, chunks = toy_data()
    gap = np.abs(chunks[0] - chunks[1]).mean()  # about 1.3 robot units between the two chunks
    assert err[0, 0] < 0.1 and err[1, 1] < 0.1, err
    assert err[0, 1] > 0.6 * gap and err[1, 0] > 0.6 * gap, err


@pytest.mark.parametrize("steps", [8, 4])
def test_ddim_with_fewer_steps_stays_within_tolerance(trained, steps):
    policy, _ = trained
    policy.set_sampler("ddim", steps)
    try:
        err = chunk_errors(policy)
    finally:
        policy.set_sampler("ddpm", 16)
    assert len(policy.sampler.timesteps) == 16
    assert err[0, 0] < 0.15 and err[1, 1] < 0.15, err
    assert err[0, 1] > 0.5 and err[1, 0] > 0.5, err


def test_bfloat16_unet_samples_nearly_the_float32_chunks_and_refuses_training(trained):
    policy, _ = trained
    policy.set_sampler("ddim", 8)
    policy.reset()
    fp32 = policy.predict_action_chunk(obs(0))
    try:
        policy.set_inference_dtype(torch.bfloat16)
        assert next(policy.unet.parameters()).dtype == torch.bfloat16
        policy.reset()
        bf16 = policy.predict_action_chunk(obs(0))
        (images, q), chunks = toy_data()
        with pytest.raises(ClassRosError, match="cannot train"):
            policy.compute_loss({"cam": torch.from_numpy(images), "q": torch.from_numpy(q),
                                 "action": torch.from_numpy(chunks)})
    finally:
        policy.set_inference_dtype(torch.float32)
        policy.set_sampler("ddpm", 16)
    err = np.abs(bf16 - fp32).max()
    assert 0 < err < 0.05, err  # bf16 rounding shows, but the chunk is the same motion
    with pytest.raises(ClassRosError, match="inference dtype"):
        policy.set_inference_dtype(torch.float16)


def test_untrained_policy_does_not_reproduce_the_chunks():
    policy = tiny_policy()  # the overfit test's thresholds must be able to fail
    err = chunk_errors(policy, n=2)
    assert min(err[0, 0], err[1, 1]) > 0.15, err


def test_reset_makes_sampling_reproducible(trained):
    policy, _ = trained
    policy.reset()
    a = policy.predict_action_chunk(obs(0))
    b = policy.predict_action_chunk(obs(0))
    policy.reset()
    np.testing.assert_array_equal(policy.predict_action_chunk(obs(0)), a)
    assert not np.array_equal(a, b)  # fresh noise within an episode


def test_batched_chunks_equal_one_episode_at_a_time(trained):
    """predict_action_chunks: each row samples with its own episode's generator, as if it ran alone (up to
    batched float rounding), whatever its batch mates; the generators advance as in the serial episodes."""
    policy, _ = trained
    serial = []
    for i in (0, 1):
        policy.reset()
        serial.append([policy.predict_action_chunk(obs(i)) for _ in range(2)])  # two chunks of one episode
    gens = [policy.new_episode_state(), policy.new_episode_state()]
    rounds = [policy.predict_action_chunks([obs(0), obs(1)], gens) for _ in range(2)]
    for step in (0, 1):
        assert rounds[step].shape == (2, H, D) and rounds[step].dtype == np.float32
        for i in (0, 1):
            np.testing.assert_allclose(rounds[step][i], serial[i][step], atol=1e-4)
    twice = policy.predict_action_chunks([obs(0), obs(0)], [policy.new_episode_state(), policy.new_episode_state()])
    np.testing.assert_allclose(twice[0], twice[1], atol=1e-5)  # same episode state, same chunk: rows share nothing


def test_policy_interface_attributes():
    policy = tiny_policy()
    assert policy.action_names == INFO["action_names"]
    assert policy.action_kind == "other" and policy.joint_names == ["q0", "q1"]
    assert policy.control_rate_hz == 20.0 and policy.n_action_steps == 4
    assert DiffusionConfig().n_action_steps == 8 and DiffusionConfig().num_train_timesteps == 16


def test_vision_and_rest_param_groups_partition_the_parameters():
    policy = tiny_policy()
    vision, rest = policy.param_groups(1e-4, 1e-5)
    assert vision["lr"] == 1e-5 and rest["lr"] == 1e-4
    ids = [id(p) for p in vision["params"] + rest["params"]]
    assert len(ids) == len(set(ids)) == len(list(policy.parameters()))
    assert {id(p) for p in policy.encoder.backbones.parameters()} == {id(p) for p in vision["params"]}


@pytest.mark.parametrize("bad, match", [
    ({"q": np.zeros(2, np.float32)}, "no camera 'cam'"),
    ({"cam": np.zeros((S, S, 3), np.float32), "q": np.zeros(2)}, "uint8"),
    ({"cam": np.zeros((S, S, 3), np.uint8)}, "no 'q'"),
    ({"cam": np.zeros((S, S, 3), np.uint8), "q": np.array([0.0, np.nan])}, "finite"),
    ({"cam": np.zeros((S, S, 3), np.uint8), "q": np.zeros(3)}, "2 finite"),
    ({"cam": np.zeros((S + 2, S, 3), np.uint8), "q": np.zeros(2)}, "shape"),
])
def test_bad_observation_is_a_clear_error(bad, match):
    with pytest.raises(ClassRosError, match=match):
        tiny_policy().predict_action_chunk(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"sampler": "euler"}, "sampler"),
    ({"num_inference_steps": 17}, "between 1 and"),
    ({"num_inference_steps": 0}, "between 1 and"),
    ({"horizon": 10}, "multiple of"),
    ({"n_action_steps": 20}, "n_action_steps"),
    ({"prediction_type": "v"}, "prediction_type"),
    ({"bogus": 1}, "unknown diffusion config keys"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ClassRosError, match=match):
        DiffusionConfig.from_dict(kwargs)


def test_set_sampler_refuses_more_steps_than_training():
    with pytest.raises(ClassRosError, match="between 1 and"):
        tiny_policy().set_sampler("ddim", 32)


def test_sample_prediction_type_trains_on_the_clean_chunk():
    policy = tiny_policy(prediction_type="sample")
    assert policy.noise_scheduler.config.prediction_type == "sample"
    (images, q), chunks = toy_data()
    batch = {"cam": torch.from_numpy(images), "q": torch.from_numpy(q), "action": torch.from_numpy(chunks)}
    assert torch.isfinite(policy.compute_loss(batch))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sampling_equals_eager_and_amp_loss_is_finite(trained):
    import copy
    policy = copy.deepcopy(trained[0]).to("cuda").eval()
    policy.set_sampler("ddim", 8)
    policy.reset()
    eager = policy.predict_action_chunk(obs(0))
    policy.use_cuda_graph(True)
    policy.reset()
    graphed = policy.predict_action_chunk(obs(0))
    np.testing.assert_allclose(graphed, eager, atol=1e-4)
    policy.set_inference_dtype(torch.bfloat16)  # what DiffusionPolicy.load does on CUDA
    policy.reset()
    np.testing.assert_allclose(policy.predict_action_chunk(obs(0)), eager, atol=0.05)
    graphed_batch = policy.predict_action_chunks([obs(0), obs(1)], [policy.new_episode_state() for _ in range(2)])
    policy.reset()
    np.testing.assert_allclose(graphed_batch[0], policy.predict_action_chunk(obs(0)), atol=0.05)
    policy.set_inference_dtype(torch.float32)
    (images, q), chunks = toy_data()
    batch = {"cam": torch.from_numpy(images).cuda(), "q": torch.from_numpy(q).cuda(),
             "action": torch.from_numpy(chunks).cuda()}
    policy.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = policy.compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
