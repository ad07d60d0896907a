"""Helpers for the bag tests: write real rosbag2 files (sqlite3 or MCAP) with rosbags. No tests here."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.LATEST)
T0 = 1_700_000_000 * 10**9  # bag epoch (ns); header stamps and receive times stay close to it
MS = 1_000_000


def _time(ns: int):
    ns = int(ns)
    return TS.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def header(ns: int, frame: str = ""):
    return TS.types["std_msgs/msg/Header"](stamp=_time(ns), frame_id=frame)


def image(ns: int, pixels: np.ndarray, encoding: str = "rgb8"):
    h, w = pixels.shape[:2]
    data = np.ascontiguousarray(pixels).reshape(-1).view(np.uint8)
    return TS.types["sensor_msgs/msg/Image"](header=header(ns), height=h, width=w, encoding=encoding,
                                             is_bigendian=0, step=data.size // h, data=data)


def compressed_png(ns: int, rgb: np.ndarray):
    ok, buf = cv2.imencode(".png", rgb[:, :, ::-1])
    assert ok
    return TS.types["sensor_msgs/msg/CompressedImage"](header=header(ns), format="rgb8; png compressed bgr8",
                                                       data=np.frombuffer(buf.tobytes(), np.uint8))


def joint_state(ns: int, names: list[str], positions: list[float]):
    empty = np.zeros(0, np.float64)
    return TS.types["sensor_msgs/msg/JointState"](header=header(ns), name=list(names),
                                                  position=np.asarray(positions, np.float64), velocity=empty,
                                                  effort=empty)


def float_array(values):
    layout = TS.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    return TS.types["std_msgs/msg/Float64MultiArray"](layout=layout, data=np.asarray(values, np.float64))


def trajectory(ns: int, names: list[str], positions: list[float]):
    dur = TS.types["builtin_interfaces/msg/Duration"](sec=0, nanosec=0)
    empty = np.zeros(0, np.float64)
    point = TS.types["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.asarray(positions, np.float64), velocities=empty, accelerations=empty, effort=empty,
        time_from_start=dur)
    return TS.types["trajectory_msgs/msg/JointTrajectory"](header=header(ns), joint_names=list(names), points=[point])


def write_bag(path: Path, messages: list[tuple[str, str, int, object]], storage: str = "sqlite3",
              typestore=TS, msgdefs: dict | None = None) -> Path:
    """Write (topic, msgtype, receive_ns, message) tuples into a rosbag2 folder at `path`."""
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    conns = {}
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        for topic, msgtype, _, _ in messages:
            if topic not in conns:
                if msgdefs and msgtype in msgdefs:  # e.g. '' to write a bag without an embedded definition
                    conns[topic] = writer.add_connection(topic, msgtype, msgdef=msgdefs[msgtype],
                                                         rihs01="RIHS01_" + "0" * 64)
                else:
                    conns[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
        for topic, msgtype, t_ns, msg in sorted(messages, key=lambda m: m[2]):
            writer.write(conns[topic], int(t_ns), typestore.serialize_cdr(msg, msgtype))
    return path
