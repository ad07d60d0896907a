"""Safety filter, temporal ensembling and watchdog: ROS-free unit tests."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from class_ros.control import (ChunkEnsembler, EePoseLimits, EePoseSafetyFilter, JointLimits, JointSafetyFilter,
                               Watchdog)
from class_ros.control.rotation import (matrix_to_quaternion, matrix_to_rot6d, quaternion_to_matrix, rot6d_to_matrix,
                                        rotation_angle, slerp_matrix)
from class_ros.control.safety import invariant_violations
from class_ros.errors import ClassRosError

DT = 0.02


def limits(**kw):
    d = dict(names=["a", "b", "c"], lower=[-1.0, -2.0, 0.0], upper=[1.0, 2.0, 1.0], max_velocity=1.0,
             max_acceleration=20.0, max_step=0.1, margin=0.05)
    d.update(kw)
    return JointLimits(**d)


def assert_invariant(cmds, lim, dt=DT, reanchors=None):
    assert invariant_violations(np.array(cmds), lim, dt, reanchors) == []


def test_accepts_a_safe_target_unchanged():
    f = JointSafetyFilter(limits(), DT)
    r = f(np.array([0.005, 0.0, 0.5]), measured=np.array([0.0, 0.0, 0.5]))
    np.testing.assert_allclose(r.command, [0.005, 0.0, 0.5])
    assert r.rejected == "" and r.clamped == ()


def test_position_limits_with_margin():
    f = JointSafetyFilter(limits(max_step=10.0, max_velocity=100.0, max_acceleration=1e6), DT)
    r = f(np.array([5.0, -5.0, 0.99]), measured=np.array([0.9, -1.9, 0.9]))
    np.testing.assert_allclose(r.command, [0.95, -1.95, 0.95])
    assert "position" in r.clamped and f.counts["position"] == 1


def test_tracking_error_names_the_joint_outside_its_max_step_band():
    # The filter no longer pulls commands toward the measured state (that broke the rate limits);
    # it reports the joint furthest outside its band, and ArmStateMachine latches a tracking fault.
    f = JointSafetyFilter(limits(), DT)
    f.anchor(np.array([0.0, 0.0, 0.5]))
    assert f.tracking_error(np.array([0.09, -0.1, 0.5])) is None
    i, dist = f.tracking_error(np.array([0.05, -0.5, 0.7]))
    assert i == 1 and dist == pytest.approx(0.5)
    # Measured where a recent command was (the arm lags): within the band of the recent span.
    assert f.tracking_error(np.array([0.0, -0.5, 0.5]), recent=[[0.0, -0.45, 0.5]]) is None
    assert f.tracking_error(np.array([0.0, -0.9, 0.5]), recent=[[0.0, -0.45, 0.5]])[1] == pytest.approx(0.45)


def test_velocity_and_acceleration_limits():
    lim = limits(max_step=1.0, max_velocity=1.0, max_acceleration=10.0)
    f = JointSafetyFilter(lim, DT)
    f.anchor(np.zeros(3) + [0, 0, 0.5])
    cmds = [np.array([0.0, 0.0, 0.5])]
    for _ in range(30):
        # Measured follows the command perfectly; the target is far away.
        cmds.append(f(np.array([0.9, 0.0, 0.5]), measured=cmds[-1]).command)
    c = np.array(cmds)[:, 0]
    vel = np.diff(c) / DT
    acc = np.diff(vel) / DT
    assert np.all(vel <= 1.0 + 1e-9)
    assert np.all(np.abs(acc) <= 10.0 + 1e-6)
    # It ramps up: the first step is acceleration-limited, later ones reach the velocity limit.
    assert vel[0] == pytest.approx(10.0 * DT)
    assert vel[-1] == pytest.approx(1.0)


def test_approaching_a_target_does_not_overshoot():
    lim = limits(max_step=1.0, max_velocity=1.0, max_acceleration=10.0)
    f = JointSafetyFilter(lim, DT)
    cmds = [np.array([-0.5, 0.0, 0.5])]
    f.anchor(cmds[0])
    for _ in range(100):
        cmds.append(f(np.array([0.5, 0.0, 0.5]), measured=cmds[-1]).command)
    c = np.array(cmds)[:, 0]
    assert c.max() <= 0.5 + 1e-3 and c[-1] == pytest.approx(0.5, abs=1e-6)
    assert np.all(np.diff(c) >= -1e-9)  # monotone: no back-and-forth


@pytest.mark.parametrize("bad", [np.array([np.nan, 0.0, 0.5]), np.array([0.0, np.inf, 0.5]), np.zeros(2),
                                 np.zeros(4)])
def test_rejects_nan_and_wrong_length_by_holding(bad):
    f = JointSafetyFilter(limits(), DT)
    f.anchor(np.array([0.2, 0.3, 0.4]))
    r = f(bad, measured=np.array([0.2, 0.3, 0.4]))
    assert r.rejected
    np.testing.assert_allclose(r.command, [0.2, 0.3, 0.4])
    assert f.counts["rejected"] == 1


def test_measured_state_beyond_the_limits_anchors_inside_them():
    # A measured state beyond the limits (a bad calibration) never pulls the command outside them.
    lim = limits()
    r = JointSafetyFilter(lim, DT)(np.array([0.0, 0.0, 2.0]), measured=np.array([0.0, 0.0, 2.0]))
    assert r.command[2] == pytest.approx(0.95)


@pytest.mark.parametrize("goal", [10.0, -10.0, 1.0, 0.95])
def test_braking_aims_at_the_clipped_target(goal):
    # A target beyond the limit: the command reaches the safe limit at rest, inside every bound
    # (before, braking was computed against the unclipped target and broke the acceleration limit).
    lim = limits(names=["j"], lower=[-1.0], upper=[1.0], max_velocity=2.2, max_acceleration=12.0, max_step=1.0,
                 margin=0.05)
    f = JointSafetyFilter(lim, 0.01)
    cmds = [f.anchor([0.0])]
    for _ in range(300):
        cmds.append(f([goal]).command)
    assert_invariant(cmds, lim, 0.01)
    assert cmds[-1][0] == pytest.approx(np.clip(goal, -0.95, 0.95), abs=1e-9)
    assert cmds[-2][0] == pytest.approx(cmds[-1][0], abs=1e-12)  # at rest at the end


def test_gripper_closing_to_its_end_stays_within_the_acceleration_limit():
    # The reported case: 0.9948, 0.9995, 1.0 against a 0..1 gripper with no margin at 40 units/s^2.
    lim = limits(names=["g"], lower=[0.0], upper=[1.0], max_velocity=2.5, max_acceleration=40.0, max_step=1.0,
                 margin=0.0)
    f = JointSafetyFilter(lim, 0.01)
    cmds = [f.anchor([0.0])]
    for goal in [0.5] * 20 + [0.9948, 0.9995] + [1.0] * 100:
        cmds.append(f([goal]).command)
    assert_invariant(cmds, lim, 0.01)
    assert cmds[-1][0] == pytest.approx(1.0)


def test_hold_brakes_to_a_stop_within_the_limits():
    lim = limits(max_step=1.0)
    f = JointSafetyFilter(lim, DT)
    cmds = [f.anchor([0.0, 0.0, 0.5])]
    for _ in range(30):
        cmds.append(f(np.array([0.9, -1.5, 0.9])).command)
    for _ in range(30):
        cmds.append(f.hold().command)
    assert_invariant(cmds, lim)
    np.testing.assert_allclose(cmds[-1], cmds[-2], atol=1e-12)


finite = st.floats(-1e3, 1e3)
target = st.lists(finite | st.sampled_from([float("nan"), float("inf"), -float("inf")]), min_size=3, max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(target, st.just(None), st.lists(finite, min_size=1, max_size=5)), min_size=1,
                max_size=60),
       st.floats(1.0, 50.0), st.floats(0.1, 100.0))
def test_property_every_command_obeys_the_invariant(seq, vmax, amax):
    # Random targets far outside the limits, NaN / inf, wrong lengths and holds (None): every output
    # obeys the velocity, acceleration and position limits.
    lim = limits(max_velocity=vmax, max_acceleration=amax)
    f = JointSafetyFilter(lim, DT)
    cmds = [f.anchor([0.9, -1.9, 0.0])]
    for t in seq:
        cmds.append((f.hold() if t is None else f(np.array(t))).command)
    assert_invariant(cmds, lim)


def test_limit_validation_messages():
    with pytest.raises(ClassRosError, match="distinct"):
        limits(names=["a", "a", "c"])
    with pytest.raises(ClassRosError, match="3 lower"):
        limits(lower=[0.0, 0.0])
    with pytest.raises(ClassRosError, match="positive"):
        limits(max_velocity=-1.0)
    with pytest.raises(ClassRosError, match="one per joint"):
        limits(max_step=[0.1, 0.1])
    with pytest.raises(ClassRosError, match="positive"):
        JointSafetyFilter(limits(), dt=0.0)


# --- temporal ensembling ---------------------------------------------------------------------------

def ramp_chunk(start, n=8, slope=1.0):
    return (start + slope * np.arange(n, dtype=float))[:, None]


def test_single_chunk_holds_each_step_for_its_period():
    e = ChunkEnsembler(decay=0.0)
    e.add(stamp=10.0, dt=0.1, points=ramp_chunk(0.0), now=10.0)
    assert e.target(10.0)[0] == pytest.approx(0.0)
    assert e.target(10.099)[0] == pytest.approx(0.0)
    assert e.target(10.25)[0] == pytest.approx(2.0)
    assert e.target(10.79)[0] == pytest.approx(7.0)  # the last step is held for its period too
    assert e.target(10.81) is None
    late = ChunkEnsembler()
    assert late.add(stamp=10.0, dt=0.1, points=ramp_chunk(0.0), now=10.32) == 5 and late.dropped_steps == 3
    assert late.target(10.32)[0] == pytest.approx(3.0)


def test_single_chunk_interpolates_and_expires():
    e = ChunkEnsembler(decay=0.0, interpolate=True)
    e.add(stamp=10.0, dt=0.1, points=ramp_chunk(0.0), now=10.0)
    assert e.target(10.0)[0] == pytest.approx(0.0)
    assert e.target(10.25)[0] == pytest.approx(2.5)
    assert e.target(10.7)[0] == pytest.approx(7.0)
    assert e.target(10.71) is None


def test_late_chunk_drops_steps_already_due():
    e = ChunkEnsembler(interpolate=True)
    kept = e.add(stamp=10.0, dt=0.1, points=ramp_chunk(0.0), now=10.32)
    assert kept == 4 and e.dropped_steps == 4  # steps 0..3 were due before 10.32
    # The first executed target is where the trajectory is now, not its (stale) first step.
    assert e.target(10.32)[0] == pytest.approx(3.2)
    assert e.add(stamp=10.0, dt=0.1, points=ramp_chunk(0.0), now=11.0) == 0


def test_blending_removes_the_jump_at_a_chunk_boundary():
    # Two chunks that disagree by 1.0: with blending the target moves gradually, without it jumps.
    old = np.zeros((10, 1))
    new = np.ones((10, 1))
    for decay, expect in ((0.0, 0.5), (1.0, 1.0 / (1.0 + np.exp(-5.0)))):
        e = ChunkEnsembler(decay=decay)
        e.add(0.0, 0.1, old, now=0.0)
        e.add(0.5, 0.1, new, now=0.5)
        # At t = 0.5 the old chunk is 5 steps into its future, the new one 0.
        assert e.target(0.5)[0] == pytest.approx(expect)
    # A negative decay favours the older chunk.
    e = ChunkEnsembler(decay=-1.0)
    e.add(0.0, 0.1, old, now=0.0)
    e.add(0.5, 0.1, new, now=0.5)
    assert e.target(0.5)[0] < 0.01
    # After the old chunk ends, only the new one is left.
    assert e.target(1.05)[0] == pytest.approx(1.0)


def test_ensembler_keeps_at_most_max_chunks_and_refuses_bad_settings():
    e = ChunkEnsembler(max_chunks=3)
    for i in range(6):
        e.add(i * 0.01, 0.1, np.full((16, 2), float(i)), now=i * 0.01)
    assert len(e.chunks) == 3 and e.newest_stamp() == pytest.approx(0.05)
    with pytest.raises(ClassRosError):
        ChunkEnsembler(decay=float("nan"))
    with pytest.raises(ClassRosError):
        ChunkEnsembler(max_chunks=0)


# --- watchdog -------------------------------------------------------------------------------------

def test_watchdog_reasons():
    w = Watchdog(max_age=0.2, chunk_timeout=0.5)
    assert w.reasons(10.0, 9.9, 9.95, 9.8) == []
    r = w.reasons(10.0, 9.7, 9.95, 9.8)
    assert len(r) == 1 and "joint states" in r[0]
    r = w.reasons(10.0, 9.9, 9.5, 9.8)
    assert len(r) == 1 and "camera" in r[0]
    r = w.reasons(10.0, 9.9, 9.9, 9.0)
    assert len(r) == 1 and "chunk" in r[0]
    assert len(w.reasons(10.0, None, None, None)) == 3
    assert Watchdog(watch_camera=False).reasons(10.0, 9.9, None, 9.9) == []
    with pytest.raises(ClassRosError):
        Watchdog(max_age=-1.0)


# --- end-effector pose mode -----------------------------------------------------------------------

def rot_z(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


def pose(pos, rot, grip):
    return np.concatenate([pos, matrix_to_rot6d(rot), [grip]])


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        m = quaternion_to_matrix(q)
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-9)
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(m)), m, atol=1e-9)
        np.testing.assert_allclose(rot6d_to_matrix(matrix_to_rot6d(m) * 2.0), m, atol=1e-9)
    a, b = rot_z(0.1), rot_z(1.1)
    assert rotation_angle(a, b) == pytest.approx(1.0)
    np.testing.assert_allclose(slerp_matrix(a, b, 0.3), rot_z(0.4), atol=1e-9)


def test_ee_filter_workspace_translation_rotation_gripper():
    lim = EePoseLimits(workspace_min=[-0.5, -0.5, 0.0], workspace_max=[0.5, 0.5, 0.8], max_translation=0.01,
                       max_rotation=0.05, gripper_max_step=0.2)
    f = EePoseSafetyFilter(lim)
    measured = pose([0.495, 0.0, 0.3], rot_z(0.0), 0.0)
    r = f(pose([2.0, 0.0, 0.3], rot_z(1.0), 1.0), measured)
    pos, rot, grip = r.command[:3], rot6d_to_matrix(r.command[3:9]), r.command[9]
    assert pos[0] == pytest.approx(0.5)  # the workspace box, not the full 1 cm step
    assert np.linalg.norm(pos - measured[:3]) <= 0.01 + 1e-9
    assert rotation_angle(rot_z(0.0), rot) == pytest.approx(0.05)
    np.testing.assert_allclose(rot, rot_z(0.05), atol=1e-9)
    assert grip == pytest.approx(0.2)
    assert set(r.clamped) == {"workspace", "rotation"} or set(r.clamped) == {"workspace", "translation", "rotation"}
    # Far inside the box a long move is cut to max_translation along the same direction.
    measured = pose([0.0, 0.0, 0.3], rot_z(0.0), 0.0)
    r = f(pose([0.0, 0.3, 0.7], rot_z(0.0), 0.0), measured)
    d = r.command[:3] - measured[:3]
    assert np.linalg.norm(d) == pytest.approx(0.01)
    np.testing.assert_allclose(d / np.linalg.norm(d), np.array([0, 0.3, 0.4]) / 0.5, atol=1e-9)


def test_ee_filter_rejects_nan_and_wrong_length():
    lim = EePoseLimits(workspace_min=[-1, -1, 0], workspace_max=[1, 1, 1], max_translation=0.05, max_rotation=0.1)
    f = EePoseSafetyFilter(lim)
    measured = pose([0.1, 0.1, 0.1], rot_z(0.3), 0.5)
    f.anchor(measured)
    for bad in (np.full(10, np.nan), np.zeros(7), pose([0, 0, 0.1], np.zeros((3, 3)), 0.0)):
        r = f(bad, measured)
        assert r.rejected
        np.testing.assert_allclose(r.command, measured, atol=1e-9)
    with pytest.raises(ClassRosError):
        EePoseLimits(workspace_min=[0, 0, 0], workspace_max=[0, 1, 1], max_translation=0.1, max_rotation=0.1)
