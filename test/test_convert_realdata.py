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
    for storage in ("sqlite3", "mcap"):
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
    assert not any((tmp_path / n).exists() for n in ("srv", "str", "w"))


BASIC_TYPES = ("bool bool_value\nbyte byte_value\nchar char_value\nfloat32 float32_value\nfloat64 float64_value\n"
               "int8 int8_value\nuint8 uint8_value\nint16 int16_value\nuint16 uint16_value\nint32 int32_value\n"
               "uint32 uint32_value\nint64 int64_value\nuint64 uint64_value\n")  # ros2/rcl_interfaces test_msgs
LOG = "builtin_interfaces/Time stamp\nuint8 level\nstring name\nstring msg\nstring file\nstring function\nuint32 line\n"


def test_talker_and_convert_a_bags_read_as_ros2_bag_plays_them(realdata, tmp_path):
    """metadata.yaml's QoS profiles differ from the storage's in talker and convert_a (both storages): read with
    the storage's, with a warning; what still stops a bag is named for what it is, and --msg-dir overrides it."""
    root = realdata / "rosbag2_tests"
    msgs = tmp_path / "msgs"
    for pkg, name, text in (("test_msgs", "BasicTypes", BASIC_TYPES), ("rcl_interfaces", "Log", LOG)):
        (msgs / pkg / "msg").mkdir(parents=True)
        (msgs / pkg / "msg" / f"{name}.msg").write_text(text)
    rosout = parse_mapping({"rate_hz": 2, "reference": "/rosout", "max_age_s": 1.0,
                            "observations": {"level": {"topic": "/rosout", "field": "level"}},
                            "action": {"next_observation": "level"}})
    basic = parse_mapping(dict(CDR, reference="b_basictypes",
                               observations={"b": {"topic": "b_basictypes", "field": ["int8_value", "float64_value"]}},
                               action={"next_observation": "b"}))
    report = convert_bags([root / "mcap__talker"], rosout, tmp_path / "talker")
    assert report["warnings"] == [f"{root / 'mcap__talker'}: metadata.yaml and the storage file disagree about the "
                                  "QoS profiles of /rosout; used the storage's"]
    # The talker logged at INFO (20) every 0.5 s: 10 frames, the last without a next frame.
    np.testing.assert_array_equal(EpisodeStore.open(tmp_path / "talker").episode(0)["obs/level"][:, 0], [20] * 9)
    # sqlite3__talker embeds a one-line stand-in for rcl_interfaces/Log that does not fit its messages.
    with pytest.raises(ClassRosError, match="a message on /rosout does not fit the definition embedded in the bag "
                                            "of rcl_interfaces/msg/Log.*--msg-dir"):
        convert_bags([root / "sqlite3__talker"], rosout, tmp_path / "t2")
    convert_bags([root / "sqlite3__talker"], rosout, tmp_path / "t2", msg_dir=msgs)  # --msg-dir wins
    for out in ("talker", "t2"):
        assert EpisodeStore.open(tmp_path / out).episode(0)["obs/level"][:, 0].tolist() == [20] * 9
    # convert_a: MCAP embeds test_msgs/BasicTypes, the sqlite3 copy does not (a storage older than definitions).
    convert_bags([root / "mcap__convert_a"], basic, tmp_path / "a_mcap")
    with pytest.raises(ClassRosError, match="test_msgs/msg/BasicTypes of topic b_basictypes is unknown.*--msg-dir"):
        convert_bags([root / "sqlite3__convert_a"], basic, tmp_path / "a_db3")
    convert_bags([root / "sqlite3__convert_a"], basic, tmp_path / "a_db3", msg_dir=msgs)
    a, b = (EpisodeStore.open(tmp_path / n).episode(0) for n in ("a_mcap", "a_db3"))
    assert a["obs/b"].shape == (1, 2) and all(np.array_equal(a[k], b[k]) for k in a)


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
