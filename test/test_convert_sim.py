"""The built-in sim's bags through config/mappings/sim.yaml: the dataset keys the rest of the pipeline
expects, and each frame paired with the command computed from it (not the previous one)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from class_ros.data.store import EpisodeStore
from training.convert import convert_bags

REPO = Path(__file__).resolve().parents[1]


def _read(bag: Path, topic: str):
    """(stamps ns, messages) of one topic, read straight with rosbags (the test's own oracle)."""
    from rosbags.highlevel import AnyReader
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        items = [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages(connections=conns)]
    return np.array([t for t, _ in items]), [m for _, m in items]


def test_sim_bag_converts_with_own_commands(tmp_path):
    sim_demos = pytest.importorskip("training.sim_demos")
    from class_ros.sim.robot import JOINT_NAMES
    summary = sim_demos.record_demos("lift", 1, "fixed", "mcap", tmp_path / "bags", seed=0, progress=False,
                                     keep_failed=True)
    bag = tmp_path / "bags" / summary["bags"][0]
    report = convert_bags([tmp_path / "bags"], REPO / "config/mappings/sim.yaml", tmp_path / "ds")
    store = EpisodeStore.open(tmp_path / "ds")
    meta = store.meta
    assert meta.keys["obs/agentview"].shape == (96, 96, 3) and meta.keys["obs/joint_pos"].shape == (7,)
    assert meta.action_names == list(JOINT_NAMES) and meta.joint_names == list(JOINT_NAMES)
    assert meta.control_rate_hz == 10 and meta.action_kind == "joint_position"
    assert report["episodes"][0]["dropped"] == {}

    img_t, imgs = _read(bag, "/camera/image_raw")
    arm_t, arms = _read(bag, "/forward_position_controller/commands")
    grip_t, grips = _read(bag, "/gripper_controller/commands")
    ep = store.episode(0)
    n = len(ep["action"])
    frame_t = img_t[0] + np.arange(n) * 100_000_000
    assert n == summary["episode_control_steps"][0] + 1
    for k in range(n - 1):
        # The command stamped 2 ms after frame k is frame k's action; the camera image at frame k is stored.
        j = int(np.searchsorted(arm_t, frame_t[k] + 5_000_000, side="right") - 1)
        assert 0 < arm_t[j] - frame_t[k] <= 2_000_000
        np.testing.assert_allclose(ep["action"][k, :6], arms[j].data, rtol=1e-6)
        np.testing.assert_allclose(ep["action"][k, 6], grips[j].data[0], rtol=1e-6)
        i = int(np.searchsorted(img_t, frame_t[k], side="right") - 1)
        assert img_t[i] == frame_t[k]
        np.testing.assert_array_equal(ep["obs/agentview"][k], imgs[i].data.reshape(96, 96, 3))
    assert len(grip_t) == len(arm_t)
