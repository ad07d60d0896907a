"""Observation building from ROS messages: bad joint states and embeddings are refused, never passed on."""
import numpy as np
import pytest

from class_ros.errors import ClassRosError


def joint_state(names, position, sec=10):
    from sensor_msgs.msg import JointState
    msg = JointState(name=list(names), position=[float(v) for v in position])
    msg.header.stamp.sec = sec
    return msg


def test_joint_state_buffer_drops_what_it_cannot_use_and_counts_why():
    from class_ros.nodes.observation import JointStateBuffer
    buf = JointStateBuffer(["a", "b"])
    assert not buf.add(joint_state(["a", "b"], [0.1, float("nan")]))
    assert not buf.add(joint_state(["a", "b"], [float("inf"), 0.0]))
    assert not buf.add(joint_state(["a"], [0.1])) and buf.missing == ["b"]
    assert not buf.add(joint_state(["a", "b", "a"], [0.1, 0.2, 0.3]))
    assert buf.as_of(10.0) is None  # nothing usable stored
    assert buf.dropped == {"not_finite": 2, "missing_joints": 1, "duplicate_names": 1}
    assert buf.add(joint_state(["x", "b", "a"], [9.0, 0.2, 0.1]))  # shuffled, with an extra joint
    values, t = buf.as_of(10.0)
    np.testing.assert_allclose(values, [0.1, 0.2])
    assert t == 10.0


def test_embedding_messages_are_checked():
    from class_ros.nodes.observation import feature_to_image, image_to_feature
    from std_msgs.msg import Header
    good = feature_to_image(np.arange(4, dtype=np.float32), Header())
    np.testing.assert_array_equal(image_to_feature(good), np.arange(4))
    bad = feature_to_image(np.array([0.0, np.nan], np.float32), Header())
    with pytest.raises(ClassRosError, match="NaN"):
        image_to_feature(bad)
    bad = feature_to_image(np.arange(4, dtype=np.float32), Header())
    bad.width = 9
    with pytest.raises(ClassRosError, match="1 x F 32FC1"):
        image_to_feature(bad)
