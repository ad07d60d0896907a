"""Staleness checks: which inputs are too old for the arm to keep following the policy."""
from __future__ import annotations

from dataclasses import dataclass

from class_ros.errors import ClassRosError


@dataclass
class Watchdog:
    """Trips when joint states or camera frames are older than max_age, or no chunk came for chunk_timeout."""

    max_age: float = 0.2  # s, for joint states and camera frames (by their header stamps)
    chunk_timeout: float = 0.5  # s since the last chunk arrived
    watch_camera: bool = True

    def __post_init__(self):
        if not (self.max_age > 0 and self.chunk_timeout > 0):
            raise ClassRosError(f"max_age and chunk_timeout must be positive, got {self.max_age} and "
                                f"{self.chunk_timeout}.")

    def reasons(self, now: float, joint_state_stamp: float | None, camera_stamp: float | None,
                chunk_received: float | None) -> list[str]:
        """Why the arm must hold now (empty when everything is fresh); times in seconds on one clock."""
        out = []
        if joint_state_stamp is None:
            out.append("no joint state yet")
        elif now - joint_state_stamp > self.max_age:
            out.append(f"joint states are {now - joint_state_stamp:.2f} s old")
        if self.watch_camera:
            if camera_stamp is None:
                out.append("no camera frame yet")
            elif now - camera_stamp > self.max_age:
                out.append(f"camera frames are {now - camera_stamp:.2f} s old")
        if chunk_received is None:
            out.append("no action chunk yet")
        elif now - chunk_received > self.chunk_timeout:
            out.append(f"no action chunk for {now - chunk_received:.2f} s")
        return out
