"""benchmarks/dtw_levers.py: the object-distance statistics of positive pairs, and the forward-kinematics chunks."""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import dtw_levers  # noqa: E402


def test_pair_stats_counts_only_pairs_across_episodes_and_the_closest_one():
    # Frames 0-1 are episode 0 (cube at x = 0), frames 2-3 episode 1 (cube at x = 0.01 m), frame 4
    # episode 2 (x = 0.10 m).
    cube = np.array([[0, 0, 0], [0, 0, 0], [0.01, 0, 0], [0.01, 0, 0], [0.10, 0, 0]], float)
    episode = np.array([0, 0, 1, 1, 2])
    # Frame 0's positives: frame 1 (same episode: ignored), frame 2 (1 cm, DTW 0.5) and frame 4 (10 cm,
    # DTW 0.2, the closest in DTW). Frame 2's: frame 0 (1 cm). No other frame has any.
    indptr = np.array([0, 3, 3, 4, 4, 4])
    pos = SimpleNamespace(indptr=indptr, indices=np.array([1, 2, 4, 0]), distance=np.array([0.1, 0.5, 0.2, 0.5]))
    s = dtw_levers.pair_stats(pos, cube, episode)
    assert s["pairs"] == 4 and s["cross_episode_share"] == 0.75
    np.testing.assert_allclose(s["mean_cm"], (1 + 10 + 1) / 3)
    np.testing.assert_allclose(s["within_2cm"], 2 / 3)
    np.testing.assert_allclose(s["closest_median_cm"], np.median([10.0, 1.0]))  # frame 0's closest is frame 4
    np.testing.assert_allclose(s["frames_with_one"], 2 / 5)
    assert s["random_mean_cm"] > 0


def test_normalise_maps_each_dimension_to_minus_one_one_and_halves_rotations():
    x = np.array([[[0.0, 10.0, 5.0]], [[2.0, 20.0, 7.0]]])
    out = dtw_levers.normalise(x, rot_dims=[2])
    np.testing.assert_allclose(out[:, 0, :2], [[-1, -1], [1, 1]])
    np.testing.assert_allclose(out[:, 0, 2], [-0.5, 0.5])


def test_ee_pose_chunks_are_the_grip_pose_of_the_joint_targets():
    from class_ros.sim.env import ArmEnv
    from class_ros.sim.kinematics import ArmKinematics

    with ArmEnv("lift", render_images=False) as env:
        q = env.joint_positions().astype(np.float64)
        pos, _ = ArmKinematics(env.model).forward(q[:6])
    chunks = np.stack([q, q + 0.05])[None]  # (1, 2, 7)
    ee = dtw_levers.ee_pose_chunks(chunks)
    assert ee.shape == (1, 2, 10)
    np.testing.assert_allclose(ee[0, 0, :3], pos, atol=1e-9)
    assert np.linalg.norm(ee[0, 1, :3] - pos) > 1e-3  # another pose, another grip position
    np.testing.assert_allclose(ee[0, :, 9], chunks[0, :, 6])  # the gripper passes through
