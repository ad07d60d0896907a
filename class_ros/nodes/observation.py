"""Building policy observations from ROS messages: images as arrays, joint states as of a stamp."""
from __future__ import annotations

import bisect
import threading
from collections import Counter, deque

import numpy as np

from class_ros.nodes.common import stamp_to_sec


def image_to_array(msg) -> np.ndarray:
    """A preprocessed rgb8 sensor_msgs/Image (camera_node output) -> (H, W, 3) uint8."""
    from class_ros.data.images import decode_image
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def feature_to_image(feature: np.ndarray, header):
    """(F,) float32 feature -> a 1 x F 32FC1 sensor_msgs/Image carrying the source header (a stamped vector)."""
    from sensor_msgs.msg import Image
    f = np.ascontiguousarray(feature, dtype="<f4").reshape(-1)
    return Image(header=header, height=1, width=f.size, encoding="32FC1", is_bigendian=0, step=4 * f.size,
                 data=f.tobytes())


def image_to_feature(msg) -> np.ndarray:
    """The inverse of feature_to_image: (F,) float32; refuses other layouts and non-finite values."""
    from class_ros.errors import ClassRosError
    data = bytes(msg.data)
    if msg.encoding != "32FC1" or msg.height != 1 or len(data) != 4 * msg.width:
        raise ClassRosError(f"an embedding message must be a 1 x F 32FC1 image, got {msg.height} x {msg.width} "
                            f"{msg.encoding!r} with {len(data)} bytes.")
    feature = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(feature)):
        raise ClassRosError("an embedding holds NaN or infinite values.")
    return feature


class JointStateBuffer:
    """The recent joint states, so an image can be paired with the state as of its own stamp."""

    def __init__(self, names: list[str], seconds: float = 2.0):
        self.names = list(names)
        self.seconds = seconds
        self.times: deque[float] = deque()
        self.values: deque[np.ndarray] = deque()
        self.missing: list[str] = []
        self.dropped: Counter = Counter()  # refused messages, per reason
        self._lock = threading.Lock()  # written by a subscription, read by a timer in another group

    def add(self, msg) -> bool:
        """Store one sensor_msgs/JointState; False (counted in `dropped`, `missing` set) when it is unusable."""
        index = {n: i for i, n in enumerate(msg.name)}
        self.missing = [n for n in self.names if n not in index or index[n] >= len(msg.position)]
        if self.missing:
            self.dropped["missing_joints"] += 1
            return False
        if len(index) != len(msg.name):
            self.dropped["duplicate_names"] += 1
            return False
        t = stamp_to_sec(msg.header.stamp)
        values = np.array([msg.position[index[n]] for n in self.names], dtype=np.float32)
        if not np.all(np.isfinite(values)):  # a NaN would reach the encoder (and crash or poison it)
            self.dropped["not_finite"] += 1
            return False
        with self._lock:
            self._add(t, values)
        return True

    def _add(self, t: float, values: np.ndarray) -> None:
        if self.times and t < self.times[-1]:
            self.times.clear()
            self.values.clear()  # time went backwards (a sim reset or a bag loop): start over
        self.times.append(t)
        self.values.append(values)
        while self.times and t - self.times[0] > self.seconds:
            self.times.popleft()
            self.values.popleft()

    def as_of(self, t: float) -> tuple[np.ndarray, float] | None:
        """(the latest state stamped at or before t, its stamp); the oldest one if all are later; None if empty."""
        with self._lock:
            if not self.times:
                return None
            i = max(bisect.bisect_right(list(self.times), t) - 1, 0)
            return self.values[i], self.times[i]
