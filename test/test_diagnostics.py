"""Representation diagnostics: the three numbers respond to what an embedding holds, and the targets are right."""
import numpy as np
import pytest

from training.diagnostics import (chunk_end_positions, linear_probe_error, neighbour_target_distance,
                                  positive_pair_target_distance)


def _targets(n_episodes=20, length=30, seed=0):
    rng = np.random.default_rng(seed)
    target = rng.uniform(-0.1, 0.1, size=(n_episodes * length, 3))  # metres
    episode = np.repeat(np.arange(n_episodes), length)
    return rng, target, episode


def test_probe_and_neighbours_tell_an_informative_embedding_from_noise():
    rng, target, episode = _targets()
    informative = np.c_[target, np.full(len(target), 0.3), rng.normal(0, 1e-3, (len(target), 8))]
    noise = rng.normal(size=(len(target), 11))
    assert linear_probe_error(informative, target, episode) < 0.005  # < 5 mm: the target is linear in it
    chance = np.sqrt(3 * 0.2 ** 2 / 12)  # RMSE of predicting the mean of a uniform [-0.1, 0.1]^3 target
    assert linear_probe_error(noise, target, episode) == pytest.approx(chance, rel=0.2)
    near, far = neighbour_target_distance(informative, target, episode), neighbour_target_distance(noise, target, episode)
    assert near < 0.02 < far  # the informative neighbour replays nearly the same place; noise does not


def test_positive_pairs_distance_against_random_pairs():
    from class_ros.similarity.positives import Positives

    rng, target, _ = _targets(n_episodes=4, length=10)
    n = len(target)
    target[1::2] = target[0::2] + rng.normal(0, 1e-3, target[0::2].shape)  # frames 2i and 2i + 1: the same place
    rows = [[i + 1] if i % 2 == 0 else [i - 1] for i in range(n)]
    pos = Positives(indptr=np.arange(n + 1), indices=np.array(rows).ravel(), distance=np.zeros(n, np.float32),
                    weight=np.ones(n, np.float32))
    close, random_pairs = positive_pair_target_distance(pos, target)
    assert close < 0.01 and random_pairs > 0.1  # ~2 mm within pairs, ~13 cm between random frames


def test_chunk_end_targets_of_ee_pose_and_of_the_sim_arm(tmp_path):
    from class_ros.data.schema import DatasetMeta, KeySchema
    from class_ros.data.store import EpisodeStore
    from class_ros.sim.env import ArmEnv
    from training.diagnostics import SIM_ARM_NAMES

    act = np.random.default_rng(0).normal(size=(12, 10)).astype(np.float32)
    meta = DatasetMeta(control_rate_hz=10.0, action_names=[f"a{i}" for i in range(10)], action_kind="ee_pose",
                       keys={"obs/q": KeySchema("float32", (2,)), "action": KeySchema("float32", (10,))})
    store = EpisodeStore.create(tmp_path / "ee", meta)
    store.append_episode({"obs/q": np.zeros((12, 2), np.float32), "action": act})
    ends = chunk_end_positions(store, 4)
    assert np.allclose(ends[0], act[3, :3]) and np.allclose(ends[-1], act[-1, :3])  # the last action repeats

    with ArmEnv("lift", render_images=False) as env:
        q = env.reset(0)["joint_pos"].astype(np.float64)
        grip = env.grip_position()
    meta = DatasetMeta(control_rate_hz=10.0, action_names=list(SIM_ARM_NAMES), action_kind="joint_position",
                       keys={"obs/q": KeySchema("float32", (2,)), "action": KeySchema("float32", (7,))})
    store = EpisodeStore.create(tmp_path / "sim", meta)
    store.append_episode({"obs/q": np.zeros((3, 2), np.float32), "action": np.repeat(q[None], 3, 0).astype(np.float32)})
    assert np.allclose(chunk_end_positions(store, 2)[0], grip, atol=2e-3)  # FK of the joints = where the grip is
    meta.action_kind = "other"
    other = EpisodeStore.create(tmp_path / "other", meta)
    other.append_episode({"obs/q": np.zeros((3, 2), np.float32), "action": np.zeros((3, 7), np.float32)})
    assert chunk_end_positions(other, 2) is None  # no end-effector target: no diagnostics
