"""Image decoding shared by the bag converter and the camera node: ROS image fields in, RGB uint8 out.

Plain arguments only (no message types), so rosbags messages and rclpy messages both fit:

    rgb = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
    rgb = decode_compressed(msg.format, msg.data)
    img = preprocess(rgb, size=(96, 96), crop=(0, 80, 480, 480))

Every decoder returns (H, W, 3) uint8 RGB. One-channel encodings are replicated to 3 channels, and
encodings wider than 8 bits are scaled to 0..255 by this rule:
- mono16: an intensity image over the full 16-bit range, so value / 257 (65535 -> 255).
- 16UC1: a depth image in millimetres (REP 118), 32FC1: a depth image in metres. Both map
  0 .. max_depth_m linearly to 0 .. 255 and clip beyond it; NaN / inf (no return) become 0.
"""
from __future__ import annotations

import numpy as np

from class_ros.errors import ClassRosError

DEFAULT_MAX_DEPTH_M = 4.0  # a RealSense D4xx indoors rarely sees past this

# encoding -> (numpy dtype, channels, order of the colour channels or None for one channel)
_RAW = {
    "rgb8": ("u1", 3, "rgb"),
    "bgr8": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgb"),
    "bgra8": ("u1", 4, "bgr"),
    "mono8": ("u1", 1, None),
    "8uc1": ("u1", 1, None),
    "mono16": ("u2", 1, None),
    "16uc1": ("u2", 1, None),
    "32fc1": ("f4", 1, None),
}
SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1")


class CropOutside(ClassRosError):
    """A crop box that does not fit inside the image (a setting to fix, not a corrupt frame)."""


class UnsupportedEncoding(ClassRosError):
    """An image encoding or compressed format this decoder does not handle."""

    def __init__(self, encoding: str, topic: str = ""):
        self.encoding, self.topic = encoding, topic
        where = f"on topic {topic} " if topic else ""
        super().__init__(f"image encoding {encoding!r} {where}is not supported; use one of "
                         f"{', '.join(SUPPORTED_ENCODINGS)} or a jpeg/png CompressedImage.")


def _as_bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    if isinstance(data, (list, tuple)):
        return np.asarray(data, dtype=np.uint8)
    return np.frombuffer(data, dtype=np.uint8)  # bytes, bytearray, array.array, memoryview


def _to_rgb8(values: np.ndarray, encoding: str, max_depth_m: float) -> np.ndarray:
    """(H, W) of any supported one-channel encoding -> (H, W, 3) uint8 by the module-docstring rule."""
    enc = encoding.lower()
    if enc in ("mono8", "8uc1"):
        gray = values
    elif enc == "mono16":
        gray = (values.astype(np.uint32) * 255 + 32767) // 65535  # rounded value / 257
    else:
        metres = values.astype(np.float32) / (1000.0 if enc == "16uc1" else 1.0)
        metres = np.nan_to_num(metres, nan=0.0, posinf=0.0, neginf=0.0)
        gray = np.rint(np.clip(metres / max_depth_m, 0.0, 1.0) * 255.0)
    gray = gray.astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def decode_image(encoding: str, height: int, width: int, step: int, data, is_bigendian: bool = False, *,
                 topic: str = "", max_depth_m: float = DEFAULT_MAX_DEPTH_M) -> np.ndarray:
    """sensor_msgs/Image fields -> (H, W, 3) uint8 RGB, honouring row padding (`step`) and endianness."""
    enc = encoding.lower()
    if enc not in _RAW:
        raise UnsupportedEncoding(encoding, topic)
    kind, channels, order = _RAW[enc]
    height, width, step = int(height), int(width), int(step)
    itemsize = np.dtype(kind).itemsize
    row_bytes = width * channels * itemsize
    buf = _as_bytes(data)
    where = f" on topic {topic}" if topic else ""
    if height <= 0 or width <= 0:
        raise ClassRosError(f"image{where} has size {height}x{width}; a camera image needs positive sizes.")
    if step < row_bytes or buf.size < step * (height - 1) + row_bytes:
        raise ClassRosError(f"{encoding} image{where} of {height}x{width} needs rows of {row_bytes} bytes, but "
                            f"step is {step} and data holds {buf.size} bytes; the message is malformed.")
    if buf.size < step * height:  # some drivers omit the last row's padding
        buf = np.concatenate([buf, np.zeros(step * height - buf.size, np.uint8)])
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]  # drop per-row padding
    dtype = np.dtype(kind).newbyteorder(">" if is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
    if order is None:
        return _to_rgb8(pixels[:, :, 0], enc, max_depth_m)
    rgb = pixels[:, :, :3] if order == "rgb" else pixels[:, :, 2::-1]
    return np.ascontiguousarray(rgb)


def decode_compressed(fmt: str, data, *, topic: str = "", max_depth_m: float = DEFAULT_MAX_DEPTH_M) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> (H, W, 3) uint8 RGB.

    `fmt` is the message's format string: "jpeg", "png", or image_transport's
    "<source encoding>; <jpeg|png> compressed <encoding>" (e.g. "rgb8; jpeg compressed bgr8").
    """
    import cv2

    text = fmt.lower().strip()
    source, _, rest = text.partition(";")
    if not rest:  # plain "jpeg" / "png": no source encoding given
        source, rest = "", text
    if "compresseddepth" in rest or not any(f in rest for f in ("jpeg", "jpg", "png")):
        raise UnsupportedEncoding(fmt, topic)
    stored = rest.split("compressed")[-1].strip() if "compressed" in rest else ""
    img = cv2.imdecode(_as_bytes(data), cv2.IMREAD_UNCHANGED)
    if img is None:
        where = f" on topic {topic}" if topic else ""
        raise ClassRosError(f"compressed image{where} (format {fmt!r}) could not be decoded; the data is corrupt.")
    if img.ndim == 2 or img.shape[2] == 1:
        gray = img.reshape(img.shape[0], img.shape[1])
        if gray.dtype == np.uint16:
            # A 16-bit png keeps its source encoding's meaning: intensity (mono16) or depth in mm.
            return _to_rgb8(gray, "mono16" if source.strip() == "mono16" else "16uc1", max_depth_m)
        return _to_rgb8(gray.astype(np.uint8), "mono8", max_depth_m)
    if img.dtype != np.uint8:
        raise UnsupportedEncoding(fmt, topic)
    # OpenCV decodes to BGR(A) order; a stream stored as "rgb8" already had its channels in RGB order.
    color = img[:, :, :3]
    rgb = color if stored.startswith("rgb") else color[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def preprocess(img: np.ndarray, size: tuple[int, int], crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """(H0, W0, 3) uint8 -> (H, W, 3) uint8: optional crop box (top, left, height, width) in pixels, then an area resize."""
    import cv2

    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, (img.shape, img.dtype)
    if crop is not None:
        top, left, h, w = (int(v) for v in crop)
        if top < 0 or left < 0 or h <= 0 or w <= 0 or top + h > img.shape[0] or left + w > img.shape[1]:
            raise CropOutside(f"crop box (top, left, height, width) = {tuple(crop)} does not fit inside the "
                                f"{img.shape[0]}x{img.shape[1]} image; fix the crop in the mapping or parameters.")
        img = img[top: top + h, left: left + w]
    out_h, out_w = int(size[0]), int(size[1])
    if out_h <= 0 or out_w <= 0:
        raise ClassRosError(f"image size {tuple(size)} must be two positive integers (height, width).")
    if img.shape[:2] == (out_h, out_w):
        return np.ascontiguousarray(img)
    return cv2.resize(np.ascontiguousarray(img), (out_w, out_h), interpolation=cv2.INTER_AREA)
