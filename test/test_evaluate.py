"""`class-ros evaluate`: scores, intervals and videos through evaluate_policy, with policies that must
fail (random actions) and succeed (the scripted expert)."""
import json

import numpy as np
import pytest

from class_ros.cli import main as cli_main
from class_ros.errors import ClassRosError
from class_ros.sim import robot
from class_ros.sim.env import ArmEnv
from class_ros.sim.expert import ExpertPolicy
from class_ros.sim.stats import wilson_interval
from class_ros.data.outputs import write_json
from training.evaluate import evaluate_policy, summary_line


class RandomPolicy:
    """Uniformly random joint targets within the limits, 8 per chunk."""

    n_action_steps = 8

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.resets = 0

    def reset(self):
        self.resets += 1

    def predict_action_chunk(self, obs):
        assert obs["agentview"].shape == (96, 96, 3) and obs["joint_pos"].shape == (7,)
        return self.rng.uniform(robot.JOINT_LOWER, robot.JOINT_UPPER, size=(16, 7)).astype(np.float32)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(9, 10)
    assert lo == pytest.approx(0.5958, abs=1e-3) and hi == pytest.approx(0.9821, abs=1e-3)
    assert wilson_interval(0, 50) == (0.0, pytest.approx(0.0713, abs=1e-3))
    assert wilson_interval(50, 50)[1] == 1.0 and wilson_interval(50, 50)[0] == pytest.approx(0.9287, abs=1e-3)


def test_random_policy_scores_zero(tmp_path):
    policy = RandomPolicy()
    res = evaluate_policy(policy, "lift", "random", episodes=4, seed=1, progress=False)
    assert res["successes"] == 0 and res["success_rate"] == 0.0 and policy.resets == 4
    assert res["completion_time_s"] == [None] * 4 and res["n_action_steps"] == 8
    assert res["episode_steps"] == [100] * 4  # ran to the 10 s time limit
    assert res["ci_low"] == 0.0 and 0.4 < res["ci_high"] < 0.6


def test_expert_scores_high_with_times_json_and_video(tmp_path):
    import cv2
    with ArmEnv("pick_place", camera="heldout") as env:
        res = evaluate_policy(ExpertPolicy(env, seed=2), "pick_place", "heldout", episodes=5, seed=3, env=env,
                              video_path=tmp_path / "eval.mp4", video_episodes=2, progress=False)
    assert res["successes"] >= 4 and res["camera"] == "heldout" and res["n_action_steps"] == 1
    times = [t for t in res["completion_time_s"] if t is not None]
    assert len(times) == res["successes"] and all(0.5 < t < 20.0 for t in times)
    lo, hi = res["ci95"]
    assert lo <= res["success_rate"] <= hi
    cap = cv2.VideoCapture(res["video"])
    n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[0] >= 288 and n_frames == sum(res["episode_steps"][:2]) + 2
    path = write_json(tmp_path / "r.json", res)
    assert json.loads(path.read_text())["successes"] == res["successes"]
    assert summary_line(res).startswith(f"success {res['successes']}/5")


def test_bad_chunks_and_bad_runs_fail_clearly(tmp_path):
    class Wrong(RandomPolicy):
        def predict_action_chunk(self, obs):
            return np.zeros((4, 6))

    with pytest.raises(ClassRosError, match=r"\(H, 7\)"):
        evaluate_policy(Wrong(), "lift", "fixed", episodes=1, progress=False)
    assert cli_main(["evaluate", "--run", str(tmp_path / "missing"), "--episodes", "1"]) == 1
