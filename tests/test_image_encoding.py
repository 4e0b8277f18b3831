"""Image payload decoding/encoding on the real Middlebury motorcycle images and depth."""

import array

import numpy as np
import pytest
from skimage.data import stereo_motorcycle

from mono2stereo_core.geometry import MOTORCYCLE_CAMERA
from mono2stereo_core.image_encoding import (
    ENCODINGS,
    decode_image,
    depth_image_to_metres,
    encode_image,
    to_rgb8,
)


@pytest.fixture(scope="module")
def motorcycle():
    left, _, disparity = stereo_motorcycle()
    depth = MOTORCYCLE_CAMERA.disparity_to_depth(np.where(np.isfinite(disparity), disparity, np.nan))
    return left, depth


def roundtrip(array, encoding, **kwargs):
    step, data = encode_image(array, encoding)
    return decode_image(encoding=encoding, height=array.shape[0], width=array.shape[1], step=step, data=data, **kwargs)


def test_colour_encodings_round_trip_to_rgb(motorcycle):
    rgb = motorcycle[0]
    variants = {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "8UC3": rgb[..., ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]),
        "bgra8": np.dstack([rgb[..., ::-1], np.zeros(rgb.shape[:2], np.uint8)]),
    }
    for encoding, image in variants.items():
        decoded = roundtrip(np.ascontiguousarray(image), encoding)
        np.testing.assert_array_equal(decoded, image)
        np.testing.assert_array_equal(to_rgb8(decoded, encoding), rgb, err_msg=encoding)


def test_grey_encodings(motorcycle):
    grey = motorcycle[0][..., 1]
    for encoding in ("mono8", "8UC1"):
        decoded = roundtrip(grey, encoding)
        assert decoded.shape == grey.shape
        np.testing.assert_array_equal(to_rgb8(decoded, encoding), np.dstack([grey] * 3))
    wide = grey.astype(np.uint16) * 257
    np.testing.assert_array_equal(to_rgb8(roundtrip(wide, "mono16"), "mono16")[..., 0], grey)


def test_step_padding_and_big_endian(motorcycle):
    depth = motorcycle[1][:50, :70]
    mm = np.where(np.isfinite(depth), np.round(depth * 1000), 0).astype(np.uint16)
    # Rows padded to a 256-byte boundary (as some drivers do), stored big-endian.
    step = 256
    rows = np.zeros((mm.shape[0], step), np.uint8)
    rows[:, : mm.shape[1] * 2] = mm.astype(">u2").view(np.uint8).reshape(mm.shape[0], -1)
    decoded = decode_image(encoding="16UC1", height=50, width=70, step=step, data=rows.tobytes(), is_bigendian=1)
    assert decoded.dtype == np.uint16 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, mm)
    # Works with the array.array rclpy hands out.

    decoded = decode_image(encoding="16UC1", height=50, width=70, step=step, data=array.array("B", rows.tobytes()), is_bigendian=1)
    np.testing.assert_array_equal(decoded, mm)
    # The result owns its memory: writing to it leaves the message buffer alone.
    source = bytearray(rows.tobytes())
    decoded = decode_image(encoding="16UC1", height=50, width=70, step=step, data=source, is_bigendian=1)
    decoded[:] = 0
    assert bytes(source) == rows.tobytes()


def test_depth_to_metres(motorcycle):
    depth = motorcycle[1]
    valid = np.isfinite(depth)
    mm = np.where(valid, np.round(depth * 1000), 0).astype(np.uint16)
    metres = depth_image_to_metres(roundtrip(mm, "16UC1"), "16UC1")
    assert metres.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(metres), ~valid)
    assert np.abs(metres[valid] - depth[valid]).max() <= 0.0005 + 1e-6
    f32 = depth_image_to_metres(roundtrip(depth.astype(np.float32), "32FC1"), "32FC1")
    np.testing.assert_array_equal(f32, depth)
    with pytest.raises(ValueError, match="16UC1 \\(mm\\) or 32FC1"):
        depth_image_to_metres(mm, "mono16")


def test_clear_errors():
    data = bytes(100)
    with pytest.raises(ValueError, match="Bayer"):
        decode_image(encoding="bayer_rggb8", height=10, width=10, step=10, data=data)
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        decode_image(encoding="yuv422", height=10, width=10, step=20, data=data)
    with pytest.raises(ValueError, match="zero size: 0x0"):
        decode_image(encoding="rgb8", height=0, width=0, step=0, data=b"")
    with pytest.raises(ValueError, match=r"fewer than step\*height = 30\*10 = 300"):
        decode_image(encoding="rgb8", height=10, width=10, step=30, data=data)
    with pytest.raises(ValueError, match="step 20 is smaller than width 10 x 3"):
        decode_image(encoding="rgb8", height=10, width=10, step=20, data=bytes(1000))
    with pytest.raises(ValueError, match="needs dtype float32"):
        encode_image(np.zeros((4, 4), np.float64), "32FC1")
    with pytest.raises(ValueError, match="needs 3 channel"):
        encode_image(np.zeros((4, 4), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="depth image, not a colour image"):
        to_rgb8(np.zeros((4, 4), np.float32), "32FC1")
    assert set(ENCODINGS) >= {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "8UC1", "8UC3"}


@pytest.mark.parametrize("encoding", ["rgb8", "32FC1", "16UC1", "mono16"])
def test_encode_into_a_caller_buffer_matches_the_bytes_path(motorcycle, encoding):
    left, depth = motorcycle
    image = {
        "rgb8": left,
        "32FC1": depth.astype(np.float32),
        "16UC1": np.nan_to_num(depth * 1000, nan=0).astype(np.uint16),
        "mono16": (left[..., 0].astype(np.uint16) * 257),
    }[encoding]
    step, expected = encode_image(image, encoding)
    buffer = array.array("B", bytes(1)) * len(expected)
    out_step, data = encode_image(image, encoding, out=buffer)
    assert data is buffer and out_step == step and buffer.tobytes() == expected
    with pytest.raises(ValueError, match="out must hold"):
        encode_image(image, encoding, out=bytearray(len(expected) - 1))
