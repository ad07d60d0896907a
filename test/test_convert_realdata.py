"""Conformance on real third-party rosbag2 recordings (../shared/realdata, see its PROVENANCE.md):
convert what maps, and explain, bag by bag, what does not."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from class_ros.data.bags.mapping import load_mapping, parse_mapping
from class_ros.data.store import EpisodeStore
from class_ros.errors import ClassRosError
from training.convert import convert_bags

REPO = Path(__file__).resolve().parents[1]


def _reasons(report) -> dict[str, str]:
    return {Path(s["bag"]).name: s["reason"] for s in report["skipped"]}


def test_turtlebot_odometry_bags_convert_with_next_pose_actions(realdata, tmp_path):
    bags = realdata / "ros2bag_turtlebot_IR2121"
    report = convert_bags([bags], REPO / "config/mappings/turtlebot_odom.yaml", tmp_path / "tb")
    store = EpisodeStore.open(tmp_path / "tb")
    assert store.n_episodes == 2 and not report["skipped"]
    for i, rep in enumerate(report["episodes"]):
        # /odom spans ~381 s (Gazebo, 30 Hz) and ~104.6 s (Webots): 10 frames a second, all kept but the
        # last, which has no next frame for its action.
        assert rep["dropped"] == {"no_next_frame": 1} and rep["kept"] == rep["frames"] - 1
        assert abs(rep["duration_s"] - (rep["frames"] - 2) / 10) < 1e-6
        ep = store.episode(i)
        pose = ep["obs/pose"]
        # Field paths picked the planar pose: a yaw-only quaternion has z^2 + w^2 = 1.
        np.testing.assert_allclose(pose[:, 2] ** 2 + pose[:, 3] ** 2, 1.0, atol=1e-4)
        np.testing.assert_array_equal(ep["action"][:-1], pose[1:])  # next_observation
        assert np.ptp(pose[:, 0]) > 0.5, "the robot was driven around"
    assert [r["frames"] for r in report["episodes"]][0] > 3000
    assert store.meta.action_names == ["next_pose.pose.position.x", "next_pose.pose.position.y",
                                       "next_pose.pose.orientation.z", "next_pose.pose.orientation.w"]


CDR = {"rate_hz": 20, "reference": "/test_topic", "max_age_s": 0.06,
       "observations": {"basic": {"topic": "/test_topic", "field": ["int32_value", "float64_value", "bool_value"]},
                        "arrays": {"topic": "/array_topic", "field": "float64_values"}},
       "action": {"next_observation": "basic"}}


def test_rosbag2_test_bags_convert_or_explain(realdata, tmp_path):
    root = realdata / "rosbag2_tests"
    report = convert_bags([root], parse_mapping(CDR), tmp_path / "cdr")
    store = EpisodeStore.open(tmp_path / "cdr")
    assert [Path(r["bag"]).name for r in report["episodes"]] == ["mcap__cdr_test", "sqlite3__cdr_test"]
    for i, rep in enumerate(report["episodes"]):
        # Frames at 0, 50, 100 ms after the first /test_topic message: the first precedes any /array_topic
        # message, the last has no next frame.
        assert rep["frames"] == 3 and rep["kept"] == 1
        assert rep["dropped"] == {"missing:arrays": 1, "no_next_frame": 1}
        ep = store.episode(i)
        np.testing.assert_array_equal(ep["obs/basic"], [[123, 0, 0]])
        np.testing.assert_array_equal(ep["obs/arrays"], [[0, 0, 0]])
    reasons = _reasons(report)
    assert len(reasons) == 9
    assert "no metadata.yaml" in reasons["sqlite3__reindex_test_bags__multiple_files"]
    assert "/test_topic is not in the bag" in reasons["mcap__wbag"]

    # The same tree under mappings aimed at the other bags: each bag's reason names what is wrong.
    with pytest.raises(ClassRosError, match="nothing converted") as err:
        convert_bags([root / "sqlite3__talker", root / "mcap__talker"],
                     parse_mapping(dict(CDR, reference="/topic", observations={"s": {"topic": "/topic", "field": "data"}},
                                        action={"next_observation": "s"})), tmp_path / "talker")
    # ros2 bag record wrote QoS profiles into metadata.yaml that differ from the storage's: rosbags reads nothing.
    assert "lists 10 messages on /topic but reading yields none" in str(err.value) and "QoS" in str(err.value)

    for storage in ("sqlite3", "mcap"):
        bag = root / f"{storage}__convert_a"
        m = dict(CDR, reference="b_basictypes", observations={"b": {"topic": "b_basictypes", "field": "int8_value"}},
                 action={"next_observation": "b"})
        with pytest.raises(ClassRosError, match="lists 50 messages on b_basictypes but reading yields none"):
            convert_bags([bag], parse_mapping(m), tmp_path / "a")

        bag = root / f"{storage}__bag_with_topics_and_service_events"
        m = dict(CDR, reference="/test_service1/_service_event",
                 observations={"s": {"topic": "/test_service1/_service_event", "field": "int8_value"}},
                 action={"next_observation": "s"})
        with pytest.raises(ClassRosError, match="service-event topic"):
            convert_bags([bag], parse_mapping(m), tmp_path / "srv")
        m = dict(CDR, reference="/test_topic1", observations={"s": {"topic": "/test_topic1", "field": "string_value"}},
                 action={"next_observation": "s"})
        with pytest.raises(ClassRosError, match="string_value.*not numeric"):
            convert_bags([bag], parse_mapping(m), tmp_path / "str")

        bag = root / f"{storage}__wbag"  # split over 5 storage files
        m = dict(CDR, reference="AAA", observations={"s": {"topic": "AAA", "field": "data"}},
                 action={"next_observation": "s"})
        with pytest.raises(ClassRosError, match="'data' on topic AAA is not numeric"):
            convert_bags([bag], parse_mapping(m), tmp_path / "w")
    assert not any((tmp_path / n).exists() for n in ("talker", "a", "srv", "str", "w"))


def test_shipped_mappings_parse():
    for path in sorted((REPO / "config/mappings").glob("*.yaml")):
        m = load_mapping(path)
        assert m.rate_hz > 0 and m.observations, path
    sim = load_mapping(REPO / "config/mappings/sim.yaml")
    assert sim.rate_hz == 10 and sim.observations["agentview"].image.size == (96, 96)
    assert [n for s in sim.action_sources for n in s.names] == sim.observations["joint_pos"].joints
    try:
        from class_ros.sim.robot import JOINT_NAMES
    except ImportError:
        return
    assert sim.observations["joint_pos"].joints == list(JOINT_NAMES)
