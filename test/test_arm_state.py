"""ArmStateMachine: every transition of hold / e-stop / tracking fault / resume / re-anchor, and the
invariant on every command under random event streams (ROS-free)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from class_ros.control import ArmStateMachine, ChunkEnsembler, JointLimits, JointSafetyFilter, Watchdog
from class_ros.control.safety import invariant_violations

DT = 0.01
NAMES = ["a", "b", "g"]
HOME = np.array([0.0, 0.5, 0.2])


def make(watch_camera=True):
    lim = JointLimits(names=NAMES, lower=[-1.0, -2.0, 0.0], upper=[1.0, 2.0, 1.0], max_velocity=[2.0, 2.0, 2.5],
                      max_acceleration=[12.0, 12.0, 40.0], max_step=[0.3, 0.3, 1.0], margin=[0.02, 0.02, 0.0])
    return ArmStateMachine(JointSafetyFilter(lim, DT), Watchdog(0.2, 0.5, watch_camera, 0.05),
                           ChunkEnsembler(decay=0.1), NAMES)


def feed(sm, now, q, camera=True):
    assert sm.joint_state(now, q, now) == ""
    if camera:
        assert sm.camera(now) == ""


def chunk(sm, now, goal, n=20):
    return sm.chunk(now, 0.1, np.tile(goal, (n, 1)), now)


def run(sm, t0, seconds, q=None, goal=None):
    """Tick for `seconds` with a perfectly tracking arm (q None) or a fixed measured state; returns decisions."""
    out, t = [], t0
    while t < t0 + seconds - 1e-9:
        meas = sm.filter.last_command if q is None else q
        feed(sm, t, HOME if meas is None else meas)
        if goal is not None and round(t / DT) % 10 == 0:
            chunk(sm, t, goal)
        out.append(sm.tick(t))
        t += DT
    return out


def cmds(ds):
    return np.array([d.command for d in ds])


def test_waits_for_every_input_and_sends_nothing_before_a_measured_state():
    sm = make()
    d = sm.tick(1.0)
    assert d.command is None and d.mode == "waiting"
    assert d.reasons == ["waiting for joint states", "waiting for camera", "waiting for a chunk"]
    assert sm.joint_state(1.0, HOME, 1.0) == ""
    d = sm.tick(1.0)
    assert d.reanchor == "start" and sm.reanchors == {"start": 1}
    np.testing.assert_allclose(d.command, HOME)
    assert d.mode == "holding" and d.reasons == ["waiting for camera", "waiting for a chunk"]


def test_follows_a_chunk_within_the_invariant_and_reports_latency():
    sm = make()
    goal = HOME + [0.5, -0.4, 0.8]
    ds = run(sm, 10.0, 2.0, goal=goal)
    assert ds[-1].mode == "following" and ds[-1].reasons == []
    np.testing.assert_allclose(ds[-1].command, goal, atol=1e-9)
    assert invariant_violations(cmds(ds), sm.filter.limits, DT, [bool(d.reanchor) for d in ds]) == []
    lat = [d.latency for d in ds if d.latency is not None]
    assert lat and min(lat) >= 0.0


def test_stale_inputs_brake_and_hold_then_resume():
    sm = make()
    goal = HOME + [0.95, 0.0, 0.0]
    ds = run(sm, 10.0, 0.15, goal=goal)
    t = 10.15
    held = []
    for _ in range(60):  # joint states stop coming: after max_age it holds
        assert chunk(sm, t, goal) == ""
        held.append(sm.tick(t))
        t += DT
    assert held[-1].mode == "holding" and "joint states are" in held[-1].reasons[0]
    np.testing.assert_allclose(held[-1].command, held[-2].command, atol=1e-12)
    assert held[-1].command[0] < goal[0] - 0.1
    ds += held + run(sm, t, 2.0, goal=goal)
    np.testing.assert_allclose(ds[-1].command, goal, atol=1e-9)
    assert invariant_violations(cmds(ds), sm.filter.limits, DT, [bool(d.reanchor) for d in ds]) == []


def test_estop_hold_never_moves_with_the_arm_and_reset_reanchors():
    sm = make()
    ds = run(sm, 10.0, 0.3, goal=HOME + [0.6, 0.0, 0.0])
    assert sm.trigger_estop() and not sm.trigger_estop()  # latched once
    ds += run(sm, 10.3, 0.4, goal=HOME + [0.6, 0.0, 0.0])  # brakes to a stop, ignores the chunks
    hold = ds[-1].command.copy()
    pushed = hold + [0.7, 0.0, 0.0]  # moved by hand far beyond max_step
    moved = run(sm, 10.7, 0.5, q=pushed)
    assert all(np.array_equal(d.command, hold) for d in moved), "the e-stop hold moved with the arm"
    assert moved[-1].mode == "estop" and moved[-1].reasons[0] == "e-stop latched"
    assert "tracking fault: a is 0.700" in moved[-1].reasons[1]
    assert sm.reanchors == {"start": 1}  # no re-anchor while the e-stop is latched
    ok, _ = sm.reset(11.2)
    assert ok and not sm.estop and not sm.fault
    d = sm.tick(11.2)
    assert d.reanchor == "reset"
    np.testing.assert_allclose(d.command, np.clip(pushed, sm.filter.limits.safe_lower, sm.filter.limits.safe_upper))
    assert d.reasons == ["waiting for a chunk"]  # a fresh chunk is needed before moving again
    ds += moved + [d] + run(sm, 11.21, 1.5, goal=HOME)
    np.testing.assert_allclose(ds[-1].command, HOME, atol=1e-9)
    assert invariant_violations(cmds(ds), sm.filter.limits, DT, [bool(d.reanchor) for d in ds]) == []


def test_a_push_latches_a_tracking_fault_reanchors_and_follows_the_arm_within_limits():
    sm = make()
    ds = run(sm, 10.0, 0.5, goal=HOME)
    pushed = HOME + [0.0, 0.5, 0.0]
    d = (feed(sm, 10.5, pushed), sm.tick(10.5))[1]
    assert d.reanchor == "tracking fault" and d.mode == "tracking_fault"
    np.testing.assert_allclose(d.command, pushed)
    assert "tracking fault: b is 0.500 from its commands (max_step 0.300)" in d.reasons[0]
    # The arm keeps moving (pushed on): the command follows within the limits, no second re-anchor,
    # and the policy's chunks are not followed.
    t, drift = 10.51, []
    for k in range(100):
        q = pushed + [0.0, 0.01 * k, 0.0]
        feed(sm, t, q)
        chunk(sm, t, HOME)
        drift.append(sm.tick(t))
        t += DT
    assert all(x.mode == "tracking_fault" and not x.reanchor for x in drift)
    assert sm.reanchors == {"start": 1, "tracking fault": 1} and sm.tracking_faults == 1
    np.testing.assert_allclose(drift[-1].command[1], q[1], atol=0.05)
    ds += [d] + drift
    assert invariant_violations(cmds(ds), sm.filter.limits, DT, [bool(x.reanchor) for x in ds]) == []
    # Only a reset resumes.
    ds = run(sm, t, 0.5, goal=HOME)
    assert ds[-1].mode == "tracking_fault"
    assert sm.reset(t + 0.5)[0]
    ds = run(sm, t + 0.5, 2.0, goal=HOME)
    assert ds[0].reanchor == "reset" and ds[-1].mode == "following"
    np.testing.assert_allclose(ds[-1].command, HOME, atol=1e-9)


def test_a_lagging_arm_is_not_a_tracking_fault_but_a_push_is():
    # The arm lags 0.18 s behind at full speed (2 rad/s: 0.36 rad behind the command, beyond max_step
    # 0.3): it matches a command of the last max_age (0.2 s), so no fault; pushed 0.35 rad off, one.
    for push, faults in ((0.0, 0), (0.35, 1)):
        sm = make()
        t, history = 10.0, []
        feed(sm, t, HOME)
        for k in range(150):
            if k % 10 == 0:
                chunk(sm, t, HOME + [0.9, 0.0, 0.0])
            lagged = history[-18] if len(history) >= 18 else HOME
            q = lagged + [0.0, push if k >= 60 else 0.0, 0.0]
            feed(sm, t, q)
            history.append(sm.tick(t).command)
            t += DT
        assert sm.tracking_faults == faults, sm.fault
        if not push:  # it did lag by more than max_step
            lag = np.abs(np.array(history[18:]) - np.array(history[:-18]))[:, 0].max()
            assert lag > 0.3


def test_future_stamps_are_clock_skew_never_fresh():
    sm = make()
    run(sm, 10.0, 0.5, goal=HOME)
    assert sm.joint_state(110.6, HOME, 10.5) == ""  # stamped 100 s ahead
    d = sm.tick(10.5)
    assert d.mode == "holding" and any("clock skew: joint states stamped 100.10 s ahead" in r for r in d.reasons)
    d = sm.tick(30.0)  # no joint state for 20 s: still holding, still skew
    assert d.mode == "holding" and any("clock skew" in r for r in d.reasons)
    assert sm.camera(31.0) == "" and any("clock skew: camera" in r for r in sm.tick(30.0).reasons)
    assert sm.chunk(40.0, 0.1, np.tile(HOME, (5, 1)), 30.0) == "chunk_future_stamp"
    assert any("clock skew: chunks stamped 10.00 s ahead" in r for r in sm.tick(30.0).reasons)
    assert sm.dropped["chunk_future_stamp"] == 1


def test_inputs_it_cannot_use_are_dropped_and_counted():
    sm = make()
    assert sm.joint_state(1.0, [0.0, np.nan, 0.0], 1.0) == "joint_state_not_finite"
    assert sm.joint_state(1.0, [0.0, 0.0], 1.0) == "joint_state_length"
    assert sm.chunk(1.0, 0.1, np.zeros((4, 2)), 1.0) == "chunk_shape"
    assert sm.chunk(1.0, 0.1, np.full((4, 3), np.inf), 1.0) == "chunk_not_finite"
    assert sm.chunk(1.0, 0.0, np.zeros((4, 3)), 1.0) == "chunk_bad_time"
    assert sm.measured is None and sum(sm.dropped.values()) == 5


def test_undecodable_camera_is_named_rather_than_old():
    sm = make()
    run(sm, 10.0, 0.3, goal=HOME)
    sm.camera_undecodable(10.5, "unknown encoding 'yuv9' (12 frames)")
    feed(sm, 10.6, HOME, camera=False)
    d = sm.tick(10.6)
    assert "camera frames undecodable: unknown encoding 'yuv9' (12 frames)" in d.reasons
    feed(sm, 20.0, HOME, camera=False)
    assert any(r.startswith("camera frames are") for r in sm.tick(20.0).reasons)  # errors long past


def test_reset_needs_a_fresh_measured_state():
    sm = make()
    assert sm.reset(1.0) == (False, "no measured state yet; cannot re-anchor")
    sm.joint_state(1.0, HOME, 1.0)
    ok, msg = sm.reset(5.0)
    assert not ok and "joint states are 4.00 s old" in msg


events = st.lists(st.one_of(
    st.tuples(st.just("chunk"), st.lists(st.floats(-20, 20), min_size=3, max_size=3)),
    st.tuples(st.just("jump"), st.lists(st.floats(-1.5, 1.5), min_size=3, max_size=3)),
    st.tuples(st.just("estop"), st.none()), st.tuples(st.just("reset"), st.none()),
    st.tuples(st.just("silence"), st.integers(1, 60)), st.tuples(st.just("ticks"), st.integers(1, 60))),
    min_size=1, max_size=30)


@settings(max_examples=200, deadline=None)
@given(events)
def test_property_every_command_obeys_the_invariant_under_random_events(seq):
    # Random chunk streams with targets far outside the limits, measured-state jumps, e-stop / reset
    # sequences and sensor silences: every command obeys the invariant, except declared re-anchors,
    # which happen only at start, at a reset, or when a tracking fault latches.
    sm = make(watch_camera=False)
    t, q, ds, resets = 10.0, HOME.copy(), [], 0
    sm.joint_state(t, q, t)
    for kind, arg in seq:
        n, sensors = 1, True
        if kind == "chunk":
            sm.chunk(t, 0.1, np.tile(arg, (8, 1)), t)
        elif kind == "jump":
            q = q + np.array(arg)
        elif kind == "estop":
            sm.trigger_estop()
        elif kind == "reset":
            resets += sm.reset(t)[0]
        else:
            n, sensors = arg, kind == "ticks"
        for _ in range(n):
            if sensors:
                sm.joint_state(t, q, t)
            d = sm.tick(t)
            assert d.command is not None
            ds.append(d)
            q = d.command.copy()  # the arm tracks its command
            t += DT
    assert invariant_violations(cmds(ds), sm.filter.limits, DT, [bool(d.reanchor) for d in ds]) == []
    why = [d.reanchor for d in ds if d.reanchor]
    assert why[0] in ("start", "reset") and why.count("start") <= 1  # a reset before the first tick anchors too
    assert why.count("reset") == resets
    assert why.count("tracking fault") <= sm.tracking_faults


def test_pose_mode_runs_the_same_rules():
    from class_ros.control import EePoseLimits, EePoseSafetyFilter
    from class_ros.control.rotation import matrix_to_rot6d
    names = ["x", "y", "z", "r0", "r1", "r2", "r3", "r4", "r5", "gripper"]
    sm = ArmStateMachine(EePoseSafetyFilter(EePoseLimits([0.2, -0.3, 0.05], [0.6, 0.3, 0.5], 0.004, 0.02)),
                         Watchdog(0.2, 0.5, False, 0.05), ChunkEnsembler(), names)
    pose = np.concatenate([[0.4, 0.0, 0.3], matrix_to_rot6d(np.eye(3)), [0.0]])
    goal = pose + np.r_[[0.1], np.zeros(9)]
    t = 10.0
    for k in range(20):
        assert sm.joint_state(t, pose, t) == ""
        assert sm.chunk(t, 0.1, np.tile(goal, (5, 1)), t) == ""
        d = sm.tick(t)
        t += DT
    assert d.mode == "following" and d.command[0] == pytest.approx(0.404)  # one max_translation step
