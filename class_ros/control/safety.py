"""The safety filter every command passes before it reaches the arm.

Joint mode keeps one invariant on every command c(t) it sends at the command period dt, per joint:
  |c(t) - c(t-1)| <= max_velocity * dt,  |c(t) - 2 c(t-1) + c(t-2)| <= max_acceleration * dt^2,
  lower + margin <= c(t) <= upper - margin,
except at a declared re-anchor (`anchor`), where the command is set to the measured position (clipped
to the limits) and the motion history restarts at rest. A target is first clipped to the limits, then
approached no faster than a speed from which the arm can still stop *at the clipped target* within
the acceleration limit; the same stopping rule keeps every command able to stop before a position
limit. Non-finite or wrong-length targets are refused and the arm brakes to a stop instead.
The filter never looks at the measured state: `tracking_error` reports when the arm has left the
`max_step` band around the command, and the caller (class_ros.control.arm_state) latches a fault.

End-effector mode (position + 6D rotation + gripper) bounds the position to a workspace box and the
translation / rotation per step relative to the measured pose.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from class_ros.errors import ClassRosError
from class_ros.control.rotation import (matrix_to_rot6d, rot6d_to_matrix, rotation_angle, slerp_matrix)

CLAMP_KINDS = ("position", "velocity", "acceleration", "workspace", "translation", "rotation")


def _per_joint(value, n: int, name: str) -> np.ndarray:
    """A scalar or an n-list as an (n,) float64 array; refuses other lengths and non-positive values."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.full(n, float(arr[0]))
    if arr.size != n:
        raise ClassRosError(f"{name} has {arr.size} values but there are {n} joints; give one value or one per joint.")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ClassRosError(f"{name} must be positive and finite, got {arr.tolist()}.")
    return arr


@dataclass
class JointLimits:
    """Per-joint safety limits; positions in rad (or 0..1 for a gripper), rates per second."""

    names: list[str]
    lower: np.ndarray  # (n,)
    upper: np.ndarray  # (n,)
    max_velocity: np.ndarray  # (n,) units/s
    max_acceleration: np.ndarray  # (n,) units/s^2
    max_step: np.ndarray  # (n,) |measured - command| beyond this is a tracking fault
    margin: np.ndarray | float = 0.0  # (n,) or one value: distance kept from the position limits

    def __post_init__(self):
        n = len(self.names)
        if n == 0 or len(set(self.names)) != n or not all(isinstance(s, str) and s for s in self.names):
            raise ClassRosError(f"joint names must be a non-empty list of distinct names, got {self.names}.")
        self.lower = np.asarray(self.lower, dtype=np.float64).reshape(-1)
        self.upper = np.asarray(self.upper, dtype=np.float64).reshape(-1)
        if self.lower.size != n or self.upper.size != n:
            raise ClassRosError(f"position limits need {n} lower and upper values, got {self.lower.size} and "
                                f"{self.upper.size}.")
        if not (np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper))):
            raise ClassRosError("joint position limits must be finite numbers.")
        margin = np.asarray(self.margin, dtype=np.float64).reshape(-1)
        margin = np.full(n, float(margin[0])) if margin.size == 1 else margin
        if margin.size != n or not np.all(np.isfinite(margin)) or np.any(margin < 0):
            raise ClassRosError(f"the limit margin must be one value or one per joint, each >= 0; got "
                                f"{np.asarray(self.margin).tolist()}.")
        self.margin = margin
        if np.any(self.upper - self.lower <= 2 * self.margin):
            raise ClassRosError("every joint's upper limit must exceed its lower limit by more than twice the margin.")
        self.max_velocity = _per_joint(self.max_velocity, n, "max_velocity")
        self.max_acceleration = _per_joint(self.max_acceleration, n, "max_acceleration")
        self.max_step = _per_joint(self.max_step, n, "max_step")

    @property
    def safe_lower(self) -> np.ndarray:
        return self.lower + self.margin

    @property
    def safe_upper(self) -> np.ndarray:
        return self.upper - self.margin

    @classmethod
    def from_dict(cls, d: dict) -> "JointLimits":
        """From a robot YAML block: names, lower, upper, max_velocity, max_acceleration, max_step, margin."""
        missing = [k for k in ("names", "lower", "upper", "max_velocity", "max_acceleration", "max_step") if k not in d]
        if missing:
            raise ClassRosError(f"robot limits are missing {missing}; add them to the robot config.")
        return cls(names=list(d["names"]), lower=d["lower"], upper=d["upper"], max_velocity=d["max_velocity"],
                   max_acceleration=d["max_acceleration"], max_step=d["max_step"], margin=d.get("margin", 0.0))


@dataclass
class FilterResult:
    """One filtered command and what the filter did to it."""

    command: np.ndarray  # (n,) what is safe to send
    rejected: str = ""  # why the target was refused (the hold was used instead), "" if accepted
    clamped: tuple[str, ...] = ()  # which limits changed the target


def stoppable_speed(distance, a):
    """Largest step w (per tick) from which braking by `a` per tick covers at most `distance` in all.

    Stepping w and then w - a, w - 2a, ... until 0 covers f(w) = (m + 1)(w - a m / 2) with
    m = floor(w / a); f is increasing and piecewise linear, and this is its inverse (distance >= 0).
    """
    distance = np.maximum(np.asarray(distance, dtype=np.float64), 0.0)
    m = np.floor((np.sqrt(1.0 + 8.0 * distance / a) - 1.0) / 2.0)
    return distance / (m + 1.0) + a * m / 2.0


@dataclass
class JointSafetyFilter:
    """Stateful filter: remembers the last command and the last step for the velocity / acceleration bounds."""

    limits: JointLimits
    dt: float  # seconds between commands
    counts: dict = field(default_factory=lambda: {k: 0 for k in CLAMP_KINDS + ("rejected",)})

    def __post_init__(self):
        if not self.dt > 0:
            raise ClassRosError(f"the command period must be positive, got {self.dt}.")
        self._prev: np.ndarray | None = None  # last sent command
        self._step: np.ndarray | None = None  # last - the one before (per tick)
        lim = self.limits
        self._v = lim.max_velocity * self.dt  # largest step per tick
        self._a = lim.max_acceleration * self.dt * self.dt  # largest change of the step per tick

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._prev is None else self._prev.copy()

    def anchor(self, measured) -> np.ndarray:
        """Re-anchor: the command becomes the measured position (clipped to the limits), at rest."""
        measured = np.asarray(measured, dtype=np.float64).reshape(-1)
        assert measured.shape == self.limits.lower.shape and np.all(np.isfinite(measured)), "measured must be valid"
        self._prev = np.clip(measured, self.limits.safe_lower, self.limits.safe_upper)
        self._step = np.zeros_like(self._prev)
        return self._prev.copy()

    def tracking_error(self, measured, recent=()) -> tuple[int, float] | None:
        """(joint index, distance) of the joint furthest outside its max_step band, or None.

        The distance is from the measured position to the span of the last command and the `recent`
        commands (m, n) it may still be catching up with: a measurement is always a little old.
        """
        if self._prev is None:
            return None
        sent = np.vstack([np.asarray(recent, dtype=np.float64).reshape(-1, self._prev.size), self._prev])
        q = np.asarray(measured, dtype=np.float64)
        dist = np.maximum.reduce([sent.min(axis=0) - q, q - sent.max(axis=0), np.zeros_like(q)])
        excess = dist - self.limits.max_step
        i = int(np.argmax(excess))
        return (i, float(dist[i])) if excess[i] > 0 else None

    def hold(self) -> FilterResult:
        """Brake as hard as allowed, then stay: the command when there is nothing to follow."""
        assert self._prev is not None, "anchor the filter first"
        brake = self._step - np.sign(self._step) * np.minimum(np.abs(self._step), self._a)
        return FilterResult(self._advance(self._window(brake)))

    def __call__(self, target, measured=None) -> FilterResult:
        """Filter one target (n,); `measured` (n,) anchors the filter on its first call only."""
        lim = self.limits
        if self._prev is None:
            self.anchor(measured)
        target = np.asarray(target, dtype=np.float64).reshape(-1)
        rejected = ""
        if target.shape != lim.lower.shape:
            rejected = f"target has {target.size} values, expected {lim.lower.size}"
        elif not np.all(np.isfinite(target)):
            rejected = "target holds NaN or infinite values"
        if rejected:
            self.counts["rejected"] += 1
            return FilterResult(self.hold().command, rejected)
        clamped = []
        goal = np.clip(target, lim.safe_lower, lim.safe_upper)
        if np.any(goal != target):
            clamped.append("position")
        d = goal - self._prev
        want = np.sign(d) * stoppable_speed(np.abs(d), self._a)  # arrive at the clipped goal at rest
        step = self._window(want)
        changed = np.abs(step - want) > 1e-12
        if np.any(changed & (np.abs(step) >= self._v - 1e-12)):
            clamped.append("velocity")
        if np.any(changed & (np.abs(step - self._step) >= self._a - 1e-12)):
            clamped.append("acceleration")
        for kind in clamped:
            self.counts[kind] += 1
        return FilterResult(self._advance(step), "", tuple(clamped))

    def _window(self, want: np.ndarray) -> np.ndarray:
        """`want` (a step per tick) clipped to what the invariant allows from the current state."""
        lim = self.limits
        lo = np.maximum.reduce([-self._v, self._step - self._a,
                                -stoppable_speed(self._prev - lim.safe_lower, self._a)])
        hi = np.minimum.reduce([np.broadcast_to(self._v, want.shape), self._step + self._a,
                                stoppable_speed(lim.safe_upper - self._prev, self._a)])
        # By induction braking is always inside the window; rounding can only make it a hair empty.
        hi = np.maximum(hi, lo)
        return np.clip(want, lo, hi)

    def _advance(self, step: np.ndarray) -> np.ndarray:
        cmd = np.clip(self._prev + step, self.limits.safe_lower, self.limits.safe_upper)
        self._step = cmd - self._prev
        self._prev = cmd
        return cmd.copy()


@dataclass
class EePoseLimits:
    """End-effector limits: a workspace box (m) and the largest change per step from the measured pose."""

    workspace_min: np.ndarray  # (3,)
    workspace_max: np.ndarray  # (3,)
    max_translation: float  # m per step
    max_rotation: float  # rad per step
    gripper_lower: float = 0.0
    gripper_upper: float = 1.0
    gripper_max_step: float = 1.0

    def __post_init__(self):
        self.workspace_min = np.asarray(self.workspace_min, dtype=np.float64).reshape(-1)
        self.workspace_max = np.asarray(self.workspace_max, dtype=np.float64).reshape(-1)
        if self.workspace_min.size != 3 or self.workspace_max.size != 3 or np.any(self.workspace_min >= self.workspace_max):
            raise ClassRosError("the workspace box needs 3 minimum and 3 maximum values with min < max.")
        if not (self.max_translation > 0 and self.max_rotation > 0 and self.gripper_max_step > 0):
            raise ClassRosError("max_translation, max_rotation and gripper_max_step must be positive.")


class EePoseSafetyFilter:
    """Filters (10,) end-effector targets: position (3) + 6D rotation (6) + gripper (1)."""

    DIM = 10

    def __init__(self, limits: EePoseLimits):
        self.limits = limits
        self.counts = {k: 0 for k in CLAMP_KINDS + ("rejected",)}
        self._prev: np.ndarray | None = None

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._prev is None else self._prev.copy()

    def anchor(self, measured: np.ndarray) -> np.ndarray:
        """Restart from the measured pose (10,)."""
        self._prev = np.asarray(measured, dtype=np.float64).copy()
        return self._prev.copy()

    def tracking_error(self, measured, recent=()) -> None:
        """Pose mode bounds every command by the measured pose itself, so it has no tracking fault."""
        return None

    def hold(self) -> FilterResult:
        """Keep the last command."""
        return FilterResult(self._prev.copy())

    def __call__(self, target, measured) -> FilterResult:
        """Filter one target pose (10,) against the measured pose (10,)."""
        lim = self.limits
        measured = np.asarray(measured, dtype=np.float64).reshape(-1)
        assert measured.shape == (self.DIM,) and np.all(np.isfinite(measured)), "measured pose must be valid"
        if self._prev is None:
            self.anchor(measured)
        target = np.asarray(target, dtype=np.float64).reshape(-1)
        rejected = ""
        if target.shape != (self.DIM,):
            rejected = f"target has {target.size} values, expected {self.DIM}"
        elif not np.all(np.isfinite(target)):
            rejected = "target holds NaN or infinite values"
        elif np.linalg.norm(target[3:6]) < 1e-6 or np.linalg.norm(target[6:9]) < 1e-6:
            rejected = "target rotation is degenerate"
        if rejected:
            self.counts["rejected"] += 1
            target = self._prev.copy()
        clamped = []

        pos = np.clip(target[:3], lim.workspace_min, lim.workspace_max)
        if np.any(pos != target[:3]):
            clamped.append("workspace")
        delta = pos - measured[:3]
        dist = float(np.linalg.norm(delta))
        if dist > lim.max_translation:
            pos = measured[:3] + delta * (lim.max_translation / dist)
            pos = np.clip(pos, lim.workspace_min, lim.workspace_max)  # a convex box keeps the segment inside
            clamped.append("translation")

        r_meas = rot6d_to_matrix(measured[3:9])
        r_tgt = rot6d_to_matrix(target[3:9])
        angle = rotation_angle(r_meas, r_tgt)
        if angle > lim.max_rotation:
            r_tgt = slerp_matrix(r_meas, r_tgt, lim.max_rotation / angle)
            clamped.append("rotation")

        g_lo = max(lim.gripper_lower, measured[9] - lim.gripper_max_step)
        g_hi = min(lim.gripper_upper, measured[9] + lim.gripper_max_step)
        grip = float(np.clip(target[9], g_lo, g_hi)) if g_lo <= g_hi else float(np.clip(target[9], lim.gripper_lower,
                                                                                          lim.gripper_upper))
        cmd = np.concatenate([pos, matrix_to_rot6d(r_tgt), [grip]])
        for kind in clamped:
            self.counts[kind] += 1
        self._prev = cmd.copy()
        return FilterResult(cmd, rejected, tuple(clamped))


def invariant_violations(commands, limits: JointLimits, dt: float, reanchors=None, tol: float = 1e-9) -> list[str]:
    """Where a joint command stream (T, n) breaks the invariant of JointSafetyFilter; [] when it never does.

    `reanchors` (T,) marks declared re-anchors: they are exempt from the rate bounds (not from the
    position limits) and restart the history at rest.
    """
    c = np.asarray(commands, dtype=np.float64)
    flags = np.zeros(len(c), bool) if reanchors is None else np.asarray(reanchors, bool)
    v, a = limits.max_velocity * dt, limits.max_acceleration * dt * dt
    out = []
    for t in range(len(c)):
        if not np.all(np.isfinite(c[t])):
            out.append(f"command {t} is not finite")
            continue
        if np.any(c[t] < limits.safe_lower - tol) or np.any(c[t] > limits.safe_upper + tol):
            out.append(f"command {t} is outside the position limits: {c[t].tolist()}")
        if flags[t] or t == 0:
            continue
        step = c[t] - c[t - 1]
        prev = c[t - 1] - c[t - 2] if t >= 2 and not flags[t - 1] else np.zeros_like(step)
        j = np.flatnonzero(np.abs(step) > v + tol)
        if j.size:
            out.append(f"command {t}: joint {j[0]} moved {abs(step[j[0]]):.6g} in one tick (max {v[j[0]]:.6g})")
        j = np.flatnonzero(np.abs(step - prev) > a + tol)
        if j.size:
            out.append(f"command {t}: joint {j[0]} changed its step by {abs(step[j[0]] - prev[j[0]]):.6g} "
                       f"(max {a[j[0]]:.6g})")
    return out
