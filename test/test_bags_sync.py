"""As-of sampling, frame grids and episode windows against brute-force oracles (hypothesis)."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from class_ros.data.bags.fields import extract, joint_values
from class_ros.data.bags.sync import NS, SAME_TIME_NS, Track, frame_grid, sample, split_windows

times_st = st.lists(st.integers(0, 2 * NS) | st.integers(0, 3000), min_size=1, max_size=30)  # some within 1 us


@settings(max_examples=200, deadline=None)
@given(a=times_st, b=times_st, t=st.lists(st.integers(-NS // 2, 3 * NS), min_size=1, max_size=20),
       max_age=st.floats(0.01, 1.0))
def test_as_of_matches_brute_force(a, b, t, max_age):
    ta, tb = Track.sorted(a, np.arange(len(a))[:, None]), Track.sorted(b, 100 + np.arange(len(b))[:, None])
    t = np.array(t, np.int64)
    s = sample([ta, tb], t, max_age)
    for i, ti in enumerate(t):
        picks = []
        for times, offset in ((a, 0), (b, 100)):
            past = [(tm, k) for k, tm in enumerate(times) if tm <= ti + SAME_TIME_NS]
            picks.append(None if not past else (max(past)[0], max(past, key=lambda p: (p[0], p[1]))[1] + offset))
        assert s.missing[i] == any(p is None for p in picks)
        if s.missing[i]:
            continue
        age = max(max(ti - p[0], 0) for p in picks)
        assert s.age_s[i] == age / NS
        assert s.stale[i] == (age > round(max_age * NS))
        assert [s.values[i, 0], s.values[i, 1]] == [p[1] for p in picks]  # the latest, never a later one


@given(ref=st.lists(st.integers(0, 5 * NS), min_size=1, max_size=40), rate=st.sampled_from([5.0, 10.0, 30.0]))
def test_frame_grid_spans_reference_messages(ref, rate):
    ref = np.sort(np.array(ref, np.int64))
    t = frame_grid(ref, int(ref[0]), int(ref[-1]), rate)
    assert t[0] == ref[0] and t[-1] <= ref[-1] and ref[-1] - t[-1] < NS / rate
    np.testing.assert_allclose(np.diff(t), NS / rate, atol=1)


def test_windows_bool_markers_and_gaps():
    ref = np.array([0, 1, 2, 3, 10, 11, 12], np.int64) * NS
    assert split_windows(ref, gap_s=2.0) == [(0, 3 * NS), (10 * NS, 12 * NS)]
    on_off = split_windows(ref, np.array([1, 2, 11]) * NS, np.array([True, False, True]))
    assert on_off == [(NS, 2 * NS), (11 * NS, 12 * NS)]
    assert split_windows(ref, np.array([2 * NS]), None) == [(0, 2 * NS - 1), (2 * NS, 12 * NS)]


def test_field_paths_and_joint_names():
    from rosbags.typesys import Stores, get_typestore
    T = get_typestore(Stores.LATEST).types
    pose = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=1.0, y=2.0, z=3.0),
                                       orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.5, w=0.5))
    values, names = extract(pose, ["position", "orientation.w"])
    assert values.tolist() == [1, 2, 3, 0.5] and names == ["position.x", "position.y", "position.z", "orientation.w"]
    js = T["sensor_msgs/msg/JointState"](header=T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""), name=["b", "a"],
        position=np.array([2.0, 1.0]), velocity=np.zeros(0), effort=np.zeros(0))
    assert joint_values(js, "position") == {"b": 2.0, "a": 1.0}
    assert joint_values(js, "velocity") == {}  # no velocities in this message: no value, not an error
