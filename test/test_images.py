"""Image decoding: every raw encoding, row padding, endianness, depth scaling, jpeg/png, crop + resize."""
import array

import cv2
import numpy as np
import pytest

from class_ros.data.images import UnsupportedEncoding, decode_compressed, decode_image, preprocess
from class_ros.errors import ClassRosError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _padded(pixels: np.ndarray, pad: int) -> tuple[int, bytes]:
    """Row-major bytes of (H, W, C) pixels with `pad` junk bytes after every row."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], pad), 0xAB, np.uint8)
    return rows.shape[1] + pad, np.concatenate([rows, junk], axis=1).tobytes()


@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_with_padding(pad):
    alpha = np.full((5, 7, 1), 9, np.uint8)
    cases = {"rgb8": RGB, "bgr8": RGB[:, :, ::-1], "rgba8": np.concatenate([RGB, alpha], 2),
             "bgra8": np.concatenate([RGB[:, :, ::-1], alpha], 2)}
    for enc, pixels in cases.items():
        step, data = _padded(np.ascontiguousarray(pixels), pad)
        out = decode_image(enc, 5, 7, step, data)
        assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
        np.testing.assert_array_equal(out, RGB, err_msg=enc)


def test_accepts_numpy_and_array_buffers():
    step, data = _padded(RGB, 0)
    np.testing.assert_array_equal(decode_image("rgb8", 5, 7, step, np.frombuffer(data, np.uint8)), RGB)
    np.testing.assert_array_equal(decode_image("rgb8", 5, 7, step, array.array("B", data)), RGB)


def test_mono_and_depth_scaling_and_endianness():
    gray = RGB[:, :, 0]
    out = decode_image("mono8", 5, 7, 8, _padded(gray[:, :, None], 1)[1])
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, 2))

    m16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    for big in (False, True):
        raw = m16.astype(">u2" if big else "<u2").tobytes()
        np.testing.assert_array_equal(decode_image("mono16", 1, 4, 8, raw, big)[0, :, 0], [0, 1, 255, 128])

    depth_mm = np.array([[0, 1000, 2000, 9000]], np.uint16)  # 4 m range: 0, 1/4, 1/2, clipped
    out = decode_image("16UC1", 1, 4, 8, depth_mm.astype(">u2").tobytes(), True)
    np.testing.assert_array_equal(out[0, :, 1], [0, 64, 128, 255])

    depth_m = np.array([[0.0, 1.0, np.nan, 2.0]], np.float32)
    out = decode_image("32FC1", 1, 4, 16, depth_m.tobytes(), max_depth_m=2.0)
    np.testing.assert_array_equal(out[0, :, 2], [0, 128, 0, 255])


def test_unsupported_and_malformed():
    with pytest.raises(UnsupportedEncoding, match="bayer_rggb8.*/cam"):
        decode_image("bayer_rggb8", 2, 2, 2, bytes(4), topic="/cam")
    assert issubclass(UnsupportedEncoding, ClassRosError)
    with pytest.raises(ClassRosError, match="malformed"):
        decode_image("rgb8", 5, 7, 21, bytes(50))
    with pytest.raises(ClassRosError, match="malformed"):
        decode_image("rgb8", 5, 7, 10, bytes(500))  # step shorter than a row


def test_compressed_jpeg_png():
    ok, png = cv2.imencode(".png", RGB[:, :, ::-1])  # OpenCV encodes BGR
    assert ok
    for fmt in ("png", "rgb8; png compressed bgr8", "bgr8; png compressed bgr8"):
        np.testing.assert_array_equal(decode_compressed(fmt, png.tobytes()), RGB, err_msg=fmt)
    # An image_transport stream stored in rgb8 order is not swapped.
    ok, png_rgb = cv2.imencode(".png", RGB)
    np.testing.assert_array_equal(decode_compressed("rgb8; png compressed rgb8", png_rgb.tobytes()), RGB)

    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[..., 0] = 200  # red
    ok, jpg = cv2.imencode(".jpg", smooth[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = decode_compressed("rgb8; jpeg compressed bgr8", np.frombuffer(jpg.tobytes(), np.uint8))
    assert np.abs(out.astype(int) - smooth).max() <= 3

    ok, p16 = cv2.imencode(".png", np.array([[0, 2000]], np.uint16))
    np.testing.assert_array_equal(decode_compressed("16UC1; png compressed 16UC1", p16.tobytes())[0, :, 0], [0, 128])

    with pytest.raises(UnsupportedEncoding, match="compressedDepth"):
        decode_compressed("16UC1; compressedDepth png", png.tobytes(), topic="/depth")
    with pytest.raises(ClassRosError, match="corrupt"):
        decode_compressed("jpeg", b"\xff\xd8 not a jpeg")


def test_preprocess_crop_then_area_resize():
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:30, 20:40] = 255  # a white square the crop keeps exactly
    out = preprocess(img, size=(4, 4), crop=(10, 20, 20, 20))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8 and (out == 255).all()
    out = preprocess(img, size=(4, 6))  # area averaging: corner cells are black, centre cells white
    assert out[0, 0, 0] == 0 and out[2, 2, 0] == 255
    with pytest.raises(ClassRosError, match="crop box"):
        preprocess(img, size=(4, 4), crop=(30, 0, 20, 20))
