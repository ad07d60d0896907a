"""camera_node: camera images in any supported encoding -> rgb8 at the model's input size, same header.

Usage:
    camera_node --ros-args --params-file config/policy.yaml -p input_topics:="[/camera/image_raw]"

Subscribes with sensor-data QoS to each of `input_topics` (sensor_msgs/Image, or CompressedImage with
`compressed:=true`), decodes without cv_bridge (class_ros.data.images, the converter's decoder),
crops / resizes and republishes on `~/image` (the first camera) and `~/image_<i>` for camera i > 0.
An unsupported encoding is reported once per topic, not per frame.
"""
from __future__ import annotations

from dataclasses import dataclass

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from class_ros.errors import ClassRosError
from class_ros.nodes.common import RateMeter, declare_params, param, require, run_node


def output_topic(i: int) -> str:
    """The output topic of camera i."""
    return "~/image" if i == 0 else f"~/image_{i}"


@dataclass(frozen=True)
class CameraParams:
    """camera_node's parameters, read once at start-up (all read-only)."""

    input_topics: tuple[str, ...] = param(["/camera/image_raw"], "camera topics to subscribe to")
    compressed: bool = param(False, "inputs are sensor_msgs/CompressedImage")
    image_size: tuple[int, ...] = param([96, 96], "output (height, width): the model input")
    crop: tuple[int, ...] = param([0, 0, 0, 0],
                                  "crop box (top, left, height, width) before resizing; all zeros for none")

    def __post_init__(self):
        topics = list(self.input_topics)
        require(len(topics) > 0 and all(topics), f"input_topics must list at least one topic, got {topics}.")
        require(len(self.image_size) == 2 and min(self.image_size) > 0,
                f"image_size must be two positive integers (height, width), got {list(self.image_size)}.")
        require(len(self.crop) == 4, f"crop must be (top, left, height, width), got {list(self.crop)}.")


class CameraNode(Node):
    """Decode, crop, resize and republish camera frames."""

    def __init__(self, **kwargs):
        super().__init__("camera_node", **kwargs)
        self.p = p = declare_params(self, CameraParams)
        topics = list(p.input_topics)
        self.size = tuple(int(v) for v in p.image_size)
        self.crop = None if not any(p.crop) else tuple(int(v) for v in p.crop)
        self.reported: set[str] = set()  # topics whose bad encoding was already reported
        self.rate = RateMeter()
        msg_type = CompressedImage if p.compressed else Image
        self.pubs = []
        for i, topic in enumerate(topics):
            pub = self.create_publisher(Image, output_topic(i), qos_profile_sensor_data)
            self.pubs.append(pub)
            self.create_subscription(msg_type, topic, lambda msg, t=topic, pub=pub: self._on_image(msg, t, pub),
                                     qos_profile_sensor_data)
        self.get_logger().info(f"{topics} -> {self.size[0]}x{self.size[1]} rgb8")

    def _on_image(self, msg, topic: str, pub) -> None:
        # Decoding is cheap (about a millisecond) next to inference, so it is done right here.
        from class_ros.data.images import decode_compressed, decode_image, preprocess
        try:
            if isinstance(msg, CompressedImage):
                rgb = decode_compressed(msg.format, msg.data)
            else:
                rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))
            out = preprocess(rgb, self.size, self.crop)
        except ClassRosError as err:
            if topic not in self.reported:
                self.reported.add(topic)
                self.get_logger().error(f"{topic}: {err} (reported once; later frames are dropped quietly)")
            return
        h, w, _ = out.shape
        pub.publish(Image(header=msg.header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
                          data=out.tobytes()))
        self.rate.tick()


def main(args=None) -> int:
    """Entry point `camera_node`."""
    return run_node(CameraNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
