"""The safety filter every command passes before it reaches the arm.

Joint mode bounds each command by, in order of priority:
  1. finite values and the right length (otherwise the command is rejected and the hold is kept),
  2. joint position limits shrunk by a margin,
  3. a maximum distance from the *measured* joint state (a tracking-error bound, so a stalled or
     blocked arm is never commanded far away from where it really is),
  4. velocity and acceleration limits relative to the previously sent commands.
Limits 3-4 only ever narrow the interval from 2, and 4 is dropped where it conflicts with 3 (after a
disturbance the last command can be far from the arm); so every sent command respects 1-3 always.

End-effector mode (position + 6D rotation + gripper) bounds the position to a workspace box and the
translation / rotation per step relative to the measured pose.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from class_ros.errors import ClassRosError
from class_ros.control.rotation import (matrix_to_rot6d, rot6d_to_matrix, rotation_angle, slerp_matrix)

CLAMP_KINDS = ("position", "max_step", "velocity", "acceleration", "workspace", "translation", "rotation")


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
    max_step: np.ndarray  # (n,) largest allowed |command - measured|
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


@dataclass
class JointSafetyFilter:
    """Stateful filter: remembers the last two sent commands for the velocity / acceleration bounds."""

    limits: JointLimits
    dt: float  # seconds between commands
    counts: dict = field(default_factory=lambda: {k: 0 for k in CLAMP_KINDS + ("rejected",)})

    def __post_init__(self):
        if not self.dt > 0:
            raise ClassRosError(f"the command period must be positive, got {self.dt}.")
        self._prev: np.ndarray | None = None  # last sent command
        self._prev_vel: np.ndarray | None = None  # (last - the one before) / dt

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._prev is None else self._prev.copy()

    def anchor(self, measured: np.ndarray) -> None:
        """Restart from the measured state at rest (after start-up or an e-stop reset)."""
        self._prev = np.clip(np.asarray(measured, dtype=np.float64), self.limits.safe_lower, self.limits.safe_upper)
        self._prev_vel = np.zeros_like(self._prev)

    def __call__(self, target, measured) -> FilterResult:
        """Filter one target (n,) against the measured state (n,); returns the command to send."""
        lim = self.limits
        measured = np.asarray(measured, dtype=np.float64).reshape(-1)
        assert measured.shape == lim.lower.shape and np.all(np.isfinite(measured)), "measured state must be valid"
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
            target = self._prev.copy()  # hold: the last sent command, then bounded like any target

        # Hard interval: position limits, then the tracking-error bound around the measured state.
        lo, hi = lim.safe_lower.copy(), lim.safe_upper.copy()
        step_lo, step_hi = measured - lim.max_step, measured + lim.max_step
        lo, hi = self._narrow(lo, hi, step_lo, step_hi)
        # Soft bounds from the previous commands: used where they keep the interval non-empty.
        vmax = lim.max_velocity * self.dt
        vlo, vhi = self._narrow(lo, hi, self._prev - vmax, self._prev + vmax)
        amax = lim.max_acceleration * self.dt * self.dt
        expected = self._prev + self._prev_vel * self.dt
        alo, ahi = self._narrow(vlo, vhi, expected - amax, expected + amax)

        # Aim no faster than a speed from which the arm can still stop at the target within the
        # acceleration limit; clipping alone would overshoot a target approached at full speed.
        # Discrete form: from speed n * a * dt the arm stops in n ticks having moved a * dt^2 * n(n+1)/2.
        d = target - self._prev
        a_dt = lim.max_acceleration * self.dt
        n = (np.sqrt(1.0 + 8.0 * np.abs(d) / (a_dt * self.dt)) - 1.0) / 2.0
        v_brake = n * a_dt
        target = self._prev + np.sign(d) * np.minimum(np.abs(d), v_brake * self.dt)

        clamped = []
        cmd = target
        for kind, (a, b) in (("position", (lim.safe_lower, lim.safe_upper)), ("max_step", (lo, hi)),
                             ("velocity", (vlo, vhi)), ("acceleration", (alo, ahi))):
            new = np.clip(cmd, a, b)
            if np.any(np.abs(new - cmd) > 1e-12):
                clamped.append(kind)
                self.counts[kind] += 1
            cmd = new
        self._prev_vel = (cmd - self._prev) / self.dt
        self._prev = cmd.copy()
        return FilterResult(cmd, rejected, tuple(clamped))

    @staticmethod
    def _narrow(lo, hi, lo2, hi2):
        """Intersect [lo, hi] with [lo2, hi2] per joint; where they do not overlap keep [lo, hi]."""
        nlo, nhi = np.maximum(lo, lo2), np.minimum(hi, hi2)
        empty = nlo > nhi
        # Where the bound cannot be met, go as far toward it as the outer interval allows.
        nlo = np.where(empty, np.clip(np.where(lo2 > hi, hi, lo), lo, hi), nlo)
        nhi = np.where(empty, nlo, nhi)
        return nlo, nhi


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

    def anchor(self, measured: np.ndarray) -> None:
        """Restart from the measured pose (10,)."""
        self._prev = np.asarray(measured, dtype=np.float64).copy()

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
