"""Window sampler indices at episode edges (hand-computed) and the min-max normaliser."""
import numpy as np
import pytest
import torch

from class_ros.data.normalizer import MinMaxNormalizer
from class_ros.data.sampler import WindowSampler, action_chunk_indices, obs_window_indices
from class_ros.data.schema import DatasetMeta, KeySchema
from class_ros.data.store import EpisodeStore
from class_ros.errors import ClassRosError

ENDS = np.array([4, 10])  # episode 0: frames 0..3, episode 1: frames 4..9


def test_action_chunk_indices_hand_computed():
    idx = action_chunk_indices(ENDS, np.array([0, 2, 3, 4, 8, 9]), 3)
    np.testing.assert_array_equal(idx, [
        [0, 1, 2],  # start of episode 0
        [2, 3, 3],  # runs into the end of episode 0: last action repeated, never frame 4
        [3, 3, 3],  # last frame of episode 0
        [4, 5, 6],  # start of episode 1
        [8, 9, 9],
        [9, 9, 9],
    ])


def test_obs_window_indices_hand_computed():
    idx = obs_window_indices(ENDS, np.array([0, 1, 3, 4, 5, 9]), 3)
    np.testing.assert_array_equal(idx, [
        [0, 0, 0],  # first observation repeated before the episode start
        [0, 0, 1],
        [1, 2, 3],
        [4, 4, 4],  # never reaches back into episode 0
        [4, 4, 5],
        [7, 8, 9],
    ])
    with pytest.raises(IndexError):
        obs_window_indices(ENDS, np.array([10]), 2)


def test_sampler_values_and_all_chunks(tmp_path):
    meta = DatasetMeta(control_rate_hz=10, action_names=["a"], keys={"obs/q": KeySchema("float32", (1,))})
    store = EpisodeStore.create(tmp_path / "ds", meta)
    store.append_episode({"obs/q": np.arange(4, dtype=np.float32)[:, None] + 100,
                          "action": np.arange(4, dtype=np.float32)[:, None]})
    store.append_episode({"obs/q": np.arange(6, dtype=np.float32)[:, None] + 200,
                          "action": np.arange(6, dtype=np.float32)[:, None] + 10})
    store.finish()
    sampler = WindowSampler(EpisodeStore.open(tmp_path / "ds"), obs_horizon=2, pred_horizon=3)
    batch = sampler.sample(np.array([0, 3, 4, 9]))
    np.testing.assert_array_equal(batch["obs/q"][..., 0], [[100, 100], [102, 103], [200, 200], [204, 205]])
    np.testing.assert_array_equal(batch["action"][..., 0], [[0, 1, 2], [3, 3, 3], [10, 11, 12], [15, 15, 15]])
    chunks = sampler.all_action_chunks()
    assert chunks.shape == (10, 3, 1)
    np.testing.assert_array_equal(chunks[2, :, 0], [2, 3, 3])
    np.testing.assert_array_equal(chunks[7, :, 0], [13, 14, 15])


def test_normalizer_round_trip_and_range(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)) * [1, 10, 0.01, 3] + [0, 5, -2, 1]
    norm = MinMaxNormalizer.fit(x)
    y = norm.normalize(x)
    assert np.isclose(y.min(axis=0), -1).all() and np.isclose(y.max(axis=0), 1).all()
    np.testing.assert_allclose(norm.unnormalize(y), x, atol=1e-9)
    norm.save(tmp_path / "n.json")
    again = MinMaxNormalizer.load(tmp_path / "n.json")
    np.testing.assert_array_equal(again.normalize(x), y)
    t = torch.tensor(x, dtype=torch.float32)
    np.testing.assert_allclose(again.unnormalize(again.normalize(t)).numpy(), x, atol=1e-4)


def test_normalizer_constant_dims():
    x = np.stack([np.linspace(0, 1, 5), np.full(5, 3.5)], axis=1)
    norm = MinMaxNormalizer.fit(x)
    y = norm.normalize(x)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[:, 1], 0.0)
    np.testing.assert_allclose(norm.unnormalize(y), x)
    np.testing.assert_allclose(norm.unnormalize(np.array([[0.0, 0.7]]))[0, 1], 3.5)


def test_normalizer_rejects_bad_input(tmp_path):
    with pytest.raises(ClassRosError, match="NaN"):
        MinMaxNormalizer.fit(np.array([[1.0], [np.nan]]))
    norm = MinMaxNormalizer.fit(np.zeros((3, 2)))
    with pytest.raises(ClassRosError, match="last dimension 2"):
        norm.normalize(np.zeros((3, 4)))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ClassRosError, match="cannot read normaliser"):
        MinMaxNormalizer.load(tmp_path / "bad.json")
