"""Staleness checks: which inputs are missing, too old, or stamped ahead of this clock."""
from __future__ import annotations

from dataclasses import dataclass

from class_ros.errors import ClassRosError


@dataclass
class Watchdog:
    """Trips on a missing / old / future-stamped joint state or camera frame, or no chunk for chunk_timeout."""

    max_age: float = 0.2  # s, for joint states and camera frames (by their header stamps)
    chunk_timeout: float = 0.5  # s since the last chunk arrived
    watch_camera: bool = True
    max_future: float = 0.05  # s: a stamp further ahead of this clock is a clock-skew fault, never fresh

    def __post_init__(self):
        if not (self.max_age > 0 and self.chunk_timeout > 0 and self.max_future >= 0):
            raise ClassRosError(f"max_age and chunk_timeout must be positive and max_future >= 0, got "
                                f"{self.max_age}, {self.chunk_timeout} and {self.max_future}.")

    def reasons(self, now: float, joint_state_stamp: float | None, camera_stamp: float | None,
                chunk_received: float | None) -> list[str]:
        """Why the arm must hold now (empty when everything is fresh); times in seconds on one clock."""
        out = [self._age("joint states", now, joint_state_stamp)]
        if self.watch_camera:
            out.append(self._age("camera frames", now, camera_stamp).replace("waiting for camera frames",
                                                                              "waiting for camera"))
        if chunk_received is None:
            out.append("waiting for a chunk")
        elif now - chunk_received > self.chunk_timeout:
            out.append(f"no action chunk for {now - chunk_received:.2f} s")
        return [r for r in out if r]

    def _age(self, what: str, now: float, stamp: float | None) -> str:
        if stamp is None:
            return f"waiting for {what}"
        if stamp - now > self.max_future:
            return f"clock skew: {what} stamped {stamp - now:.2f} s ahead of this node's clock"
        if now - stamp > self.max_age:
            return f"{what} are {now - stamp:.2f} s old"
        return ""
