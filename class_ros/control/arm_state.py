"""The rules of the command stream: when to follow, hold, fault, resume and re-anchor (ROS-free).

arm_command_node only feeds `ArmStateMachine` its inputs (joint states, camera stamps, chunks, e-stop,
reset requests) and publishes what `tick` decides. The rules:
  - nothing is sent before the first measured state; the first command is a re-anchor at it ("start");
  - following: the ensembled chunk target, through the safety filter;
  - holding (an input missing, old or stamped in the future, or no chunk): brake to a stop and stay;
  - e-stop (latched): brake to a stop and stay, whatever the arm does; the live chunks are dropped;
  - tracking fault (the measured position left the max_step band around the commands of the last
    max_age before it was measured, so a lagging arm is not a fault): latched;
    re-anchor at the measured position, then follow it only within the velocity / acceleration
    limits. Latched during an e-stop too, but then without re-anchoring: the e-stop hold never moves;
  - `reset` (the ~/reset_estop service) clears both latches and re-anchors at the measured state.
Re-anchors happen at exactly those three moments and are counted per reason.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from class_ros.control.ensemble import ChunkEnsembler
from class_ros.control.watchdog import Watchdog

MODES = ("waiting", "following", "holding", "estop", "tracking_fault")
UNDECODABLE_WINDOW = 3.0  # s: how recent a camera decode failure must be to explain a missing camera


@dataclass
class Decision:
    """What to send this tick and why."""

    command: np.ndarray | None  # (D,) or None: nothing is safe to send yet (no measured state)
    mode: str  # one of MODES
    reasons: list[str] = field(default_factory=list)  # why it is not following, [] when it is
    reanchor: str = ""  # "start", "reset" or "tracking fault" when this command is a re-anchor
    clamped: tuple[str, ...] = ()  # limits that changed the target
    rejected: str = ""  # why the target was refused
    latency: float | None = None  # s, observation stamp -> this command, for the first command of a new chunk


class ArmStateMachine:
    """Hold / fault / resume / re-anchor rules around one safety filter, one watchdog and one ensembler."""

    def __init__(self, safety_filter, watchdog: Watchdog, ensembler: ChunkEnsembler, names: list[str]):
        self.filter = safety_filter
        self.watchdog = watchdog
        self.ensembler = ensembler
        self.names = list(names)
        self.measured: np.ndarray | None = None
        self.joint_state_stamp: float | None = None
        self.camera_stamp: float | None = None
        self.chunk_received: float | None = None
        self.chunk_skew: float | None = None  # s ahead, while the newest chunks come stamped in the future
        self.camera_error: tuple[float, str] | None = None  # (when, what) the camera's decoder last failed
        self.estop = False
        self.fault = ""  # the latched tracking fault, "" when none
        self.anchored = False
        self._pending = ""  # re-anchor reason to report with the next command
        self._new_measurement = False  # a joint state arrived since the last tracking check
        self._sent: deque = deque()  # (time, command) of the recent commands, for the tracking check
        self._reported_stamp = None
        self.reanchors: Counter = Counter()
        self.dropped: Counter = Counter()  # inputs refused, per reason
        self.tracking_faults = 0
        self.hold_ticks = 0
        self.last = Decision(None, "waiting", ["waiting for joint states"])

    # --- inputs -------------------------------------------------------------------------------------------
    def drop(self, reason: str) -> str:
        """Count one refused input under `reason`; returns the reason."""
        self.dropped[reason] += 1
        return reason

    def joint_state(self, stamp: float, position, now: float) -> str:
        """A measured state (D,) stamped `stamp`; returns why it was refused, "" if used."""
        q = np.asarray(position, dtype=np.float64).reshape(-1)
        if q.size != len(self.names):
            return self.drop("joint_state_length")
        if not np.all(np.isfinite(q)):
            return self.drop("joint_state_not_finite")
        if not np.isfinite(stamp):
            return self.drop("joint_state_bad_stamp")
        # A future stamp is kept: the watchdog then reports the skew (and holds) until fresh ones come.
        self.measured, self.joint_state_stamp = q, float(stamp)
        self._new_measurement = True
        return ""

    def camera(self, stamp: float) -> str:
        """A camera frame's stamp; returns why it was refused, "" if used."""
        if not np.isfinite(stamp):
            return self.drop("camera_bad_stamp")
        self.camera_stamp = float(stamp)
        return ""

    def camera_undecodable(self, now: float, what: str) -> None:
        """The camera pipeline reports frames it could not decode (`what` says which and why)."""
        self.camera_error = (now, what)

    def chunk(self, stamp: float, dt: float, points, now: float) -> str:
        """A chunk (H, D) whose point k is due at stamp + k * dt; returns why it was refused, "" if used."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or len(points) == 0 or points.shape[1] != len(self.names):
            return self.drop("chunk_shape")
        if not np.all(np.isfinite(points)):
            return self.drop("chunk_not_finite")
        if not (np.isfinite(stamp) and np.isfinite(dt) and dt > 0):
            return self.drop("chunk_bad_time")
        if stamp - now > self.watchdog.max_future:
            self.chunk_skew = stamp - now
            return self.drop("chunk_future_stamp")
        self.chunk_skew = None
        self.chunk_received = now  # the policy is alive
        if not (self.estop or self.fault):  # else not executed: nothing of a plan resumes before a reset
            self.ensembler.add(stamp, dt, points, now=now)
        return ""

    def trigger_estop(self) -> bool:
        """Latch the e-stop; True if it was not latched before."""
        first = not self.estop
        self.estop = True
        self.ensembler.clear()
        return first

    def reset(self, now: float) -> tuple[bool, str]:
        """Clear the e-stop and any tracking fault and re-anchor at the measured state, if it is fresh."""
        if self.measured is None:
            return False, "no measured state yet; cannot re-anchor"
        stale = [r for r in self.watchdog.reasons(now, self.joint_state_stamp, None, now) if "joint states" in r]
        if stale:
            return False, f"cannot re-anchor: {stale[0]}"
        self.estop, self.fault = False, ""
        self.ensembler.clear()
        self.chunk_received = None  # wait for a fresh chunk before moving again
        self._anchor("reset")
        return True, "e-stop and faults cleared; re-anchored at the measured state"

    # --- the control tick -----------------------------------------------------------------------------------
    def tick(self, now: float) -> Decision:
        """The command for this control tick (command None only before the first measured state)."""
        reasons = self.watchdog.reasons(now, self.joint_state_stamp, self.camera_stamp, self.chunk_received)
        reasons = [self._explain_camera(r, now) for r in reasons]
        if self.chunk_skew is not None:
            reasons.append(f"clock skew: chunks stamped {self.chunk_skew:.2f} s ahead of this node's clock")
        if self.measured is None:
            self.last = Decision(None, "waiting", ["e-stop latched"] * self.estop + reasons)
            return self.last
        if not self.anchored:
            self._anchor("start")
        self._check_tracking(now)
        latency = None
        if self._pending:
            result = self.filter.hold()  # at rest at the anchor: the re-anchor command is the measured state
            mode = "estop" if self.estop else "tracking_fault" if self.fault else "holding"
            reasons = ["e-stop latched"] * self.estop + [self.fault] * bool(self.fault) + reasons
        elif self.estop or self.fault:
            self.ensembler.clear()
            result = self.filter.hold() if self.estop else self.filter(self.measured, self.measured)
            mode = "estop" if self.estop else "tracking_fault"
            reasons = ["e-stop latched"] * self.estop + [self.fault] * bool(self.fault) + reasons
        elif reasons:
            policy_gone = self.chunk_received is None or now - self.chunk_received > self.watchdog.chunk_timeout
            if policy_gone:
                self.ensembler.clear()  # a dead policy's plan never resumes
            # A stale camera or joint state only pauses the plan: when inputs are fresh again the live
            # chunks resume at the current time (steps that came due meanwhile are skipped).
            result, mode = self.filter.hold(), "holding"
        else:
            target = self.ensembler.target(now)
            result = self.filter(target, self.measured) if target is not None else self.filter.hold()
            mode = "following"
            stamp = self.ensembler.newest_stamp()
            if target is not None and stamp != self._reported_stamp:
                self._reported_stamp = stamp
                latency = max(0.0, now - stamp)  # stamps up to max_future ahead are accepted, never negative
        if mode != "following":
            self.hold_ticks += 1
        self.last = Decision(result.command, mode, reasons, self._pending, result.clamped, result.rejected, latency)
        self._pending = ""
        self._sent.append((now, result.command))
        while self._sent and self._sent[0][0] < now - 2 * self.watchdog.max_age:
            self._sent.popleft()
        return self.last

    def _anchor(self, why: str) -> None:
        self.filter.anchor(self.measured)
        self.anchored = True
        self.reanchors[why] += 1
        self._pending = why

    def _check_tracking(self, now: float) -> None:
        # Only a new, fresh measurement says where the arm is now (an old one lags the command); a
        # latched fault is not re-checked (further drift is followed within the limits, never
        # re-anchored again); a re-anchor about to be sent is checked on the next tick.
        fresh = self._new_measurement and -self.watchdog.max_future <= now - self.joint_state_stamp \
            <= self.watchdog.max_age
        self._new_measurement = False
        if self.fault or not fresh or self._pending:
            return
        # The arm may lag its commands by up to the measurement's age: compare with every command sent
        # since max_age before the measurement was taken.
        since = self.joint_state_stamp - self.watchdog.max_age
        recent = [c for t, c in self._sent if t >= since]
        err = self.filter.tracking_error(self.measured, recent)
        if err is None:
            return
        i, dist = err
        self.tracking_faults += 1
        self.fault = (f"tracking fault: {self.names[i]} is {dist:.3f} from its commands (max_step "
                      f"{self.filter.limits.max_step[i]:.3f}); call ~/reset_estop to resume")
        self.ensembler.clear()
        if not self.estop:
            self._anchor("tracking fault")

    def _explain_camera(self, reason: str, now: float) -> str:
        # No fresh frame because the camera pipeline cannot decode them: say so, rather than "old".
        if not reason.startswith(("camera frames are", "waiting for camera")) or self.camera_error is None:
            return reason
        when, what = self.camera_error
        return f"camera frames undecodable: {what}" if now - when <= UNDECODABLE_WINDOW else reason
