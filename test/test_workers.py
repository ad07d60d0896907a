"""--workers: sim-demos, convert and direct evaluation with 2 worker processes give exactly the serial output
(bags byte for byte, dataset arrays, evaluation results and every observation the policy saw)."""
import filecmp

import numpy as np
import pytest
import torch

from class_ros.data.normalizer import MinMaxNormalizer
from class_ros.data.store import EpisodeStore
from class_ros.encoder.config import EncoderConfig
from class_ros.policy.diffusion import DiffusionConfig, DiffusionPolicy
from class_ros.policy.unet import UNetConfig
from class_ros.sim import robot
from training.convert import convert_bags
from training.evaluate import evaluate_policy
from training.sim_demos import record_demos

SIZE = 48  # px: small frames keep the rollouts quick


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """The same 2 demonstrations recorded serially and by 2 workers."""
    tmp = tmp_path_factory.mktemp("bags")
    summaries = [record_demos("lift", 2, "random", "mcap", tmp / f"w{w}", seed=4, image_size=SIZE,
                              progress=False, workers=w) for w in (1, 2)]
    return tmp / "w1", tmp / "w2", summaries


def test_sim_demos_with_two_workers_writes_the_serial_bags_byte_for_byte(bags):
    serial, parallel, (s1, s2) = bags
    files = sorted(p.relative_to(serial) for p in serial.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(parallel) for p in parallel.rglob("*") if p.is_file())
    assert [str(f) for f in files if f.suffix == ".mcap"] == ["episode_0000/episode_0000.mcap",
                                                              "episode_0001/episode_0001.mcap"]
    for f in files:
        if f.name != "sim_demos.json":  # it names its own folder
            assert filecmp.cmp(serial / f, parallel / f, shallow=False), f
    assert {k: v for k, v in s1.items() if k not in ("out", "summary_path")} == \
        {k: v for k, v in s2.items() if k not in ("out", "summary_path")}


def test_convert_with_two_workers_writes_the_serial_dataset(bags, tmp_path):
    serial, _, _ = bags
    from training.demo import REPO
    mapping = REPO / "config/mappings/sim.yaml"
    reports = [convert_bags([serial], mapping, tmp_path / f"d{w}", workers=w) for w in (1, 2)]
    a, b = EpisodeStore.open(tmp_path / "d1"), EpisodeStore.open(tmp_path / "d2")
    assert a.n_episodes == b.n_episodes == 2 and list(a.episode_ends) == list(b.episode_ends)
    for key in ("obs/agentview", "obs/joint_pos", "action"):
        assert np.array_equal(np.asarray(a.array(key)), np.asarray(b.array(key))), key
    drop = lambda r: {k: v for k, v in r.items() if k not in ("out", "write_s")}  # noqa: E731
    assert drop(reports[0]) == drop(reports[1])


def tiny_diffusion() -> DiffusionPolicy:
    """A real (untrained) Diffusion Policy for the sim's observations: its chunks depend on every pixel."""
    torch.manual_seed(0)
    enc = EncoderConfig(backbone="small", image_keys=["agentview"], proprio_keys=["joint_pos"], proprio_dims=[7],
                        image_size=[SIZE, SIZE], crop_size=SIZE, num_keypoints=8, feature_dim=16, small_width=8,
                        noise_std=0.0)
    cfg = DiffusionConfig(horizon=8, n_action_steps=8, num_inference_steps=4, num_train_timesteps=4,
                          unet=UNetConfig(down_dims=[16, 32], kernel_size=3, n_groups=4, step_embed_dim=16))
    norm = MinMaxNormalizer.fit(np.stack([robot.JOINT_LOWER, robot.JOINT_UPPER]))
    return DiffusionPolicy(enc, cfg, norm, {"control_rate_hz": 10.0}).eval()


class Recording:
    """A policy passed through, logging per episode every observation it was asked about."""

    def __init__(self, policy):
        self.policy, self.n_action_steps, self.log = policy, policy.n_action_steps, []

    @staticmethod
    def _key(obs):
        return tuple(obs["joint_pos"].tolist()), obs["agentview"].tobytes()

    def reset(self):
        self.policy.reset()
        self.log.append([])

    def predict_action_chunk(self, obs):
        self.log[-1].append(self._key(obs))
        return self.policy.predict_action_chunk(obs)

    def new_episode_state(self):
        self.log.append([])
        return self.log[-1], self.policy.new_episode_state()

    def predict_action_chunks(self, observations, states):
        for obs, (log, _) in zip(observations, states):
            log.append(self._key(obs))
        return self.policy.predict_action_chunks(observations, [s for _, s in states])


def test_evaluate_with_two_workers_equals_serial_to_the_bit(tmp_path):
    import cv2
    torch.set_num_threads(1)
    runs = {}
    for workers in (1, 2):
        policy = Recording(tiny_diffusion())
        res = evaluate_policy(policy, "lift", "moving", episodes=3, seed=7, image_size=(SIZE, SIZE),
                              video_path=tmp_path / f"w{workers}.mp4", video_episodes=2, progress=False,
                              workers=workers)
        runs[workers] = res, policy.log
    (res1, log1), (res2, log2) = runs[1], runs[2]
    assert len(log1) == len(log2) == 3 and all(len(ep) >= 10 for ep in log1)  # every chunk of 3 episodes
    assert log1 == log2  # the same joint positions and the same pixels at every query
    assert {k: v for k, v in res1.items() if k != "video"} == {k: v for k, v in res2.items() if k != "video"}
    frames = []
    for res in (res1, res2):
        cap = cv2.VideoCapture(res["video"])
        frames.append([f for ok, f in iter(cap.read, (False, None)) if ok])
        cap.release()
    assert len(frames[0]) == sum(res1["episode_steps"][:2]) + 2
    assert all(np.array_equal(a, b) for a, b in zip(*frames)) and len(frames[0]) == len(frames[1])


def test_batched_evaluation_and_policies_without_the_batch_interface(tmp_path):
    from class_ros.sim.env import ArmEnv, episode_seed
    from training.evaluate import EVAL_STREAM
    torch.set_num_threads(1)
    batched = Recording(tiny_diffusion())
    res = evaluate_policy(batched, "lift", "fixed", episodes=2, seed=1, image_size=(SIZE, SIZE), progress=False,
                          workers=2, batch=True)
    assert res["episodes"] == 2 and len(batched.log) == 2 and all(len(ep) == 13 for ep in batched.log)
    with ArmEnv("lift", "fixed", image_size=(SIZE, SIZE)) as env:  # each episode began in its own scene
        assert [ep[0] for ep in batched.log] == [Recording._key(env.reset(episode_seed(1, i, EVAL_STREAM)))
                                                 for i in range(2)]

    class ChunkOnly:
        n_action_steps = 8

        def reset(self):
            pass

        def predict_action_chunk(self, obs):
            return np.tile(robot.HOME, (8, 1))

    # Without the several-episode interface a policy runs in this process's one env, whatever `workers`.
    res = evaluate_policy(ChunkOnly(), "lift", "fixed", episodes=2, image_size=(SIZE, SIZE), progress=False,
                          workers=2)
    assert res["episode_steps"] == [100, 100]


def test_own_process_gives_one_worker_a_fresh_process_and_its_errors_reach_the_caller():
    import functools
    import os

    from training.workers import ordered_results

    make = functools.partial(functools.partial, os.readlink)  # worker("/proc/self") -> its process id
    with ordered_results(make, ["/proc/self"], 1) as results:
        assert [int(pid) for pid in results] == [os.getpid()]
    with ordered_results(make, ["/proc/self"], 1, own_process=True) as results:
        [pid] = list(results)
    assert int(pid) != os.getpid()
    with pytest.raises(FileNotFoundError):
        with ordered_results(make, ["/no/such/link"], 1, own_process=True) as results:
            next(iter(results))
