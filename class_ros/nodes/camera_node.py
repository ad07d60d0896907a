"""camera_node: camera images in any supported encoding -> rgb8 at the model's input size, same header.

Usage:
    camera_node --ros-args --params-file config/policy.yaml -p input_topics:="[/camera/image_raw]"

Subscribes with sensor-data QoS to each of `input_topics` (sensor_msgs/Image, or CompressedImage with
`compressed:=true`), decodes without cv_bridge (class_ros.data.images, the converter's decoder),
crops / resizes and republishes on `~/image` (the first camera) and `~/image_<i>` for camera i > 0.
A frame it cannot decode is dropped and counted per topic and reason (`decode_errors_*` on
/diagnostics, once a second; the status message names the last failure), and logged once per topic
and reason, never per frame; arm_command_node reads those counts to say why the camera is silent.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from class_ros.errors import ClassRosError
from class_ros.data.images import UnsupportedEncoding
from class_ros.nodes import topology
from class_ros.nodes.common import NEWEST, RateMeter, declare_params, key_values, param, require, run_node


output_topic = topology.image_topic  # the output topic of camera i


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
        self.errors: Counter = Counter()  # (topic, reason) -> frames dropped
        self.last_error = ""  # the newest decode failure, for the diagnostics message
        self.rate = RateMeter()
        msg_type = CompressedImage if p.compressed else Image
        self.pubs = []
        for i, topic in enumerate(topics):
            pub = self.create_publisher(Image, output_topic(i), qos_profile_sensor_data)
            self.pubs.append(pub)
            self.create_subscription(msg_type, topic, lambda msg, t=topic, pub=pub: self._on_image(msg, t, pub),
                                     NEWEST)  # behind, it converts the newest frame next, not a backlog
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics)
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
        except Exception as err:  # noqa: BLE001 - a bad frame is dropped and counted, never fatal
            reason = "unsupported_encoding" if isinstance(err, UnsupportedEncoding) else \
                "malformed" if isinstance(err, ClassRosError) else "error"
            self.errors[(topic, reason)] += 1
            self.last_error = f"{topic}: {err}"
            if self.errors[(topic, reason)] == 1:
                self.get_logger().error(f"{topic}: {err} (reported once per reason; later frames are counted on "
                                        f"/diagnostics)")
            return
        h, w, _ = out.shape
        pub.publish(Image(header=msg.header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=3 * w,
                          data=out.tobytes()))
        self.rate.tick()

    def _publish_diagnostics(self) -> None:
        total = sum(self.errors.values())
        values = {"rate_hz": self.rate.rate(), "decode_errors": total, "last_decode_error": self.last_error}
        for (topic, reason), n in sorted(self.errors.items()):
            values[f"decode_errors_{reason} {topic}"] = n
        level = DiagnosticStatus.WARN if total else DiagnosticStatus.OK
        message = f"{total} frames undecodable; last: {self.last_error}" if total else "decoding frames"
        msg = DiagnosticArray(status=[DiagnosticStatus(level=level, name=f"{self.get_name()}: decoder",
                                                       hardware_id="camera", message=message,
                                                       values=key_values(values))])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def main(args=None) -> int:
    """Entry point `camera_node`."""
    return run_node(CameraNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
