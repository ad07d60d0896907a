"""Camera modes of the `agentview` camera: the visual shift CLASS is about.

A pose is (azimuth, elevation, distance, roll) of a camera looking at the workspace centre
`LOOKAT` = (0.34, 0, 0.1) m. Azimuth 0 puts the camera in front of the arm (on the +x side, looking
back at the base); positive azimuth swings it to the arm's left (+y). Elevation is the angle above
the table plane; roll turns the image about the viewing axis. Angles in degrees, distance in metres.

Modes and their distributions (all uniform, drawn from the episode's seed):
- `fixed`:   azimuth 0, elevation 40, distance 0.85, roll 0, every episode.
- `random`:  a new pose each episode: azimuth in [-50, 50], elevation in [25, 65],
             distance in [0.72, 1.05], roll in [-10, 10].
- `moving`:  the pose drifts smoothly during the episode, like the paper's dynamic camera: each
             parameter is centre + amplitude * sin(2 pi t / period + phase) with amplitudes
             azimuth 20, elevation 8, distance 0.1, roll 4, periods in [6, 14] s and centres drawn
             so the whole path stays inside the `random` ranges.
- `heldout`: evaluation only: azimuth in [-100, -65] or [65, 100] (either side, equally likely),
             elevation, distance and roll as `random`. The azimuth ranges do not meet `random`'s,
             so no held-out pose is ever a training pose (`ranges_disjoint("random", "heldout")`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from class_ros.errors import ClassRosError

CAMERA_MODES = ("fixed", "random", "moving", "heldout")
# The sim's cameras: the posed `agentview` above, and `wrist`, fixed to the hand (eye-in-hand), with the raw
# topics they are published on (sim_node, and the bags of sim-demos).
CAMERA_TOPICS = {"agentview": "/camera/image_raw", "wrist": "/wrist_camera/image_raw"}
CAMERA_NAMES = tuple(CAMERA_TOPICS)
LOOKAT = np.array([0.34, 0.0, 0.1])
FOVY_DEG = 45.0


@dataclass(frozen=True)
class CameraPose:
    """Camera pose around `LOOKAT`: degrees and metres."""

    azimuth: float
    elevation: float
    distance: float
    roll: float


FIXED_POSE = CameraPose(azimuth=0.0, elevation=40.0, distance=0.85, roll=0.0)

# Per mode and parameter: a list of closed intervals the parameter is drawn from.
CAMERA_RANGES: dict[str, dict[str, list[tuple[float, float]]]] = {
    "fixed": {k: [(v, v)] for k, v in dataclasses.asdict(FIXED_POSE).items()},
    "random": {"azimuth": [(-50.0, 50.0)], "elevation": [(25.0, 65.0)],
               "distance": [(0.72, 1.05)], "roll": [(-10.0, 10.0)]},
    "heldout": {"azimuth": [(-100.0, -65.0), (65.0, 100.0)], "elevation": [(25.0, 65.0)],
                "distance": [(0.72, 1.05)], "roll": [(-10.0, 10.0)]},
}
CAMERA_RANGES["moving"] = CAMERA_RANGES["random"]  # the moving path never leaves the random ranges
_AMPLITUDE = {"azimuth": 20.0, "elevation": 8.0, "distance": 0.1, "roll": 4.0}
_PERIOD_S = (6.0, 14.0)
_FIELDS = ("azimuth", "elevation", "distance", "roll")


def check_mode(mode: str) -> str:
    """Return `mode` or raise a ClassRosError naming the valid modes."""
    if mode not in CAMERA_MODES:
        raise ClassRosError(f"unknown camera mode {mode!r}; use one of {', '.join(CAMERA_MODES)}.")
    return mode


def check_cameras(cameras) -> tuple[str, ...]:
    """Return `cameras` as a tuple, or raise a ClassRosError naming the sim's cameras."""
    cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
    unknown = [c for c in cameras if c not in CAMERA_NAMES]
    if unknown or not cameras or len(set(cameras)) != len(cameras):
        raise ClassRosError(f"cameras {list(cameras)} must be distinct names from {', '.join(CAMERA_NAMES)}.")
    return cameras


def _intervals_meet(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def ranges_disjoint(mode_a: str, mode_b: str) -> bool:
    """True when no pose can come from both modes: some parameter's ranges never meet."""
    ra, rb = CAMERA_RANGES[check_mode(mode_a)], CAMERA_RANGES[check_mode(mode_b)]
    return any(not _intervals_meet(ra[k], rb[k]) for k in _FIELDS)


def in_range(pose: CameraPose, mode: str) -> bool:
    """True when `pose` lies inside `mode`'s documented ranges (with a 1e-9 tolerance)."""
    ranges = CAMERA_RANGES[check_mode(mode)]
    return all(any(lo - 1e-9 <= getattr(pose, k) <= hi + 1e-9 for lo, hi in ranges[k]) for k in _FIELDS)


class CameraRig:
    """The camera pose over one episode: `pose_at(t)` for simulation time t (s) since reset."""

    def __init__(self, mode: str, rng: np.random.Generator):
        self.mode = check_mode(mode)
        if mode == "fixed":
            self._pose = FIXED_POSE
        elif mode in ("random", "heldout"):
            ranges = CAMERA_RANGES[mode]
            values = {}
            for k in _FIELDS:
                lo, hi = ranges[k][rng.integers(len(ranges[k]))]
                values[k] = float(rng.uniform(lo, hi))
            self._pose = CameraPose(**values)
        else:  # moving
            self._centre, self._period, self._phase = {}, {}, {}
            for k in _FIELDS:
                (lo, hi), = CAMERA_RANGES["random"][k]
                amp = _AMPLITUDE[k]
                self._centre[k] = float(rng.uniform(lo + amp, hi - amp))
                self._period[k] = float(rng.uniform(*_PERIOD_S))
                self._phase[k] = float(rng.uniform(0.0, 2 * np.pi))

    def pose_at(self, t: float) -> CameraPose:
        """The camera pose at time t (s) since the episode's reset."""
        if self.mode != "moving":
            return self._pose
        return CameraPose(**{
            k: self._centre[k] + _AMPLITUDE[k] * float(np.sin(2 * np.pi * t / self._period[k] + self._phase[k]))
            for k in _FIELDS})


def camera_pos_quat(pose: CameraPose, lookat: np.ndarray = LOOKAT) -> tuple[np.ndarray, np.ndarray]:
    """World position (3,) and orientation quaternion (4,) (w, x, y, z) of a MuJoCo camera at `pose`."""
    az, el, roll = np.deg2rad([pose.azimuth, pose.elevation, pose.roll])
    offset = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    pos = lookat + pose.distance * offset
    forward = -offset  # MuJoCo cameras look along their -z axis, with +y up in the image
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c, s = np.cos(roll), np.sin(roll)
    x_axis, y_axis = c * right + s * up, -s * right + c * up
    rot = np.stack([x_axis, y_axis, -forward], axis=1)  # columns: camera axes in world frame
    return pos, _mat_to_quat(rot)


def _mat_to_quat(rot: np.ndarray) -> np.ndarray:
    import mujoco

    quat = np.zeros(4)
    mujoco.mju_mat2Quat(quat, rot.reshape(-1))
    return quat
