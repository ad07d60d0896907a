"""Bag conversion rate: a ~10k-message rosbag2 recording -> dataset store, in messages/s and frames/s.

Usage:
    python benchmarks/convert.py [--seconds 61] [--storage mcap|sqlite3] [--out benchmarks/results/convert.json]

The bag looks like a real arm recording (issue 5): a 30 Hz 160x120 rgb8 camera, a 15 Hz JPEG wrist camera,
100 Hz joint states, 10 Hz arm and gripper commands; 61 s give 10065 messages and 610 frames at 10 Hz.
Peers in the same run, on the same bag:
    raw read          rosbags Reader yielding every message's bytes (no deserialisation): the I/O floor
    deserialise all   rosbags AnyReader deserialising every message (what a naive converter starts with)
    decode all images deserialise + decode + resize every camera message (a converter that decodes
                      frames it then throws away)
`convert` is `class-ros convert` end to end (read, synchronise, decode the sampled images, write zarr);
"without zarr write" leaves out the time spent in EpisodeStore.append_episode (compressing the images).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.machine import cpu_line  # noqa: E402 - after the path set-up
from class_ros.data.outputs import write_json  # noqa: E402

JOINTS = ["j1", "j2", "j3", "j4", "j5", "j6", "gripper"]
MAPPING = {
    "rate_hz": 10, "reference": "/camera/image_raw",
    "observations": {
        "agentview": {"topic": "/camera/image_raw", "image": {"size": [96, 96]}, "max_age_s": 0.05},
        "wrist": {"topic": "/wrist/image_raw/compressed", "image": {"size": [96, 96]}, "max_age_s": 0.1},
        "joint_pos": {"topic": "/joint_states", "joints": JOINTS, "max_age_s": 0.02},
    },
    "action": {"kind": "joint_position", "lookahead_s": 0.005, "sources": [
        {"topic": "/forward_position_controller/commands", "field": "data", "names": JOINTS[:6], "max_age_s": 0.15},
        {"topic": "/gripper_controller/commands", "field": "data", "names": ["gripper"], "max_age_s": 0.15}]},
}


def write_bag(path: Path, seconds: float, storage: str) -> int:
    """A synthetic arm recording; returns its message count."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.LATEST)
    T = ts.types
    rng = np.random.default_rng(0)
    t0 = 1_767_225_600 * 10**9

    def header(ns):
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                        frame_id="")

    yy, xx = np.mgrid[0:120, 0:160]
    events = []  # (receive ns, topic, msgtype, message)
    for k in range(int(seconds * 30)):
        ns = t0 + int(k * 1e9 / 30)
        img = np.clip(127 + 60 * np.sin(xx / 9.0 + k * 0.1)[..., None] + rng.normal(0, 3, (120, 160, 3)), 0, 255)
        data = img.astype(np.uint8).reshape(-1)
        msg = T["sensor_msgs/msg/Image"](header=header(ns), height=120, width=160, encoding="rgb8", is_bigendian=0,
                                         step=480, data=data)
        events.append((ns + 3_000_000, "/camera/image_raw", "sensor_msgs/msg/Image", msg))
    for k in range(int(seconds * 15)):
        ns = t0 + int(k * 1e9 / 15)
        img = np.clip(127 + 50 * np.cos(yy / 7.0 - k * 0.2)[..., None] + rng.normal(0, 3, (120, 160, 3)), 0, 255)
        ok, buf = cv2.imencode(".jpg", img.astype(np.uint8))
        msg = T["sensor_msgs/msg/CompressedImage"](header=header(ns), format="bgr8; jpeg compressed bgr8",
                                                   data=np.frombuffer(buf.tobytes(), np.uint8))
        events.append((ns + 5_000_000, "/wrist/image_raw/compressed", "sensor_msgs/msg/CompressedImage", msg))
    empty = np.zeros(0)
    for k in range(int(seconds * 100)):
        ns = t0 + int(k * 1e7)
        order = list(rng.permutation(JOINTS))
        msg = T["sensor_msgs/msg/JointState"](header=header(ns), name=order, position=rng.normal(size=7),
                                              velocity=empty, effort=empty)
        events.append((ns + 500_000, "/joint_states", "sensor_msgs/msg/JointState", msg))
    layout = T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    for k in range(int(seconds * 10)):
        ns = t0 + int(k * 1e8) + 2_000_000
        arm = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=rng.normal(size=6))
        grip = T["std_msgs/msg/Float64MultiArray"](layout=layout, data=rng.uniform(size=1))
        events.append((ns, "/forward_position_controller/commands", "std_msgs/msg/Float64MultiArray", arm))
        events.append((ns, "/gripper_controller/commands", "std_msgs/msg/Float64MultiArray", grip))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for _, topic, msgtype, _ in events:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        for ns, topic, msgtype, msg in sorted(events, key=lambda e: e[0]):
            writer.write(conns[topic], ns, ts.serialize_cdr(msg, msgtype))
    return len(events)


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def raw_read(bag: Path) -> int:
    from rosbags.rosbag2 import Reader
    with Reader(bag) as reader:
        return sum(1 for _ in reader.messages())


def deserialise_all(bag: Path, decode_images: bool = False) -> int:
    from rosbags.highlevel import AnyReader

    from class_ros.data.images import decode_compressed, decode_image, preprocess
    n = 0
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            n += 1
            if decode_images and conn.msgtype == "sensor_msgs/msg/Image":
                preprocess(decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data), (96, 96))
            elif decode_images and conn.msgtype == "sensor_msgs/msg/CompressedImage":
                preprocess(decode_compressed(msg.format, msg.data), (96, 96))
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=61.0, help="recording length (61 s: 10065 messages)")
    ap.add_argument("--storage", default="mcap", choices=["mcap", "sqlite3"])
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/convert.json"))
    args = ap.parse_args()
    print(cpu_line(), flush=True)

    import class_ros.data.store  # noqa: F401  (zarr's import is a one-off cost, not part of the rate)
    from class_ros.data.bags.mapping import parse_mapping
    from training.convert import convert_bags

    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "bag"
        n_messages = write_bag(bag, args.seconds, args.storage)
        raw_s, _ = timed(lambda: raw_read(bag))
        deser_s, _ = timed(lambda: deserialise_all(bag))
        decode_s, _ = timed(lambda: deserialise_all(bag, decode_images=True))
        conv_s, report = timed(lambda: convert_bags([bag], parse_mapping(MAPPING), Path(tmp) / "ds"))
    frames = report["frames"]
    rows = [("raw read", raw_s), ("deserialise all", deser_s), ("decode all images", decode_s),
            ("convert", conv_s), ("  without zarr write", conv_s - report["write_s"])]
    print(f"\n{n_messages} messages ({args.storage}), {frames} frames out at 10 Hz; contended timings on this machine")
    print(f"{'':<18} {'seconds':>8} {'messages/s':>11} {'frames/s':>9} {'convert is x faster':>20}")
    for name, s in rows:
        print(f"{name:<18} {s:>8.2f} {n_messages / s:>11.0f} {frames / s:>9.0f} {s / conv_s:>20.2f}")
    result = {"messages": n_messages, "frames": frames, "storage": args.storage,
              "seconds": {name: round(s, 3) for name, s in rows},
              "convert_messages_per_s": n_messages / conv_s, "convert_frames_per_s": frames / conv_s}
    print(f"wrote {write_json(args.out, result, indent=2)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
