"""sensor_msgs/Image payloads <-> numpy, without rclpy or cv_bridge.

The ROS nodes pass the message fields (``encoding``, ``height``, ``width``, ``step``, ``data``,
``is_bigendian``); bag readers pass the same fields of a deserialized ``rosbags`` message. PyPI's
``cv-bridge`` is ROS 1 code that decodes 16UC1 wrongly on numpy 2, hence this module.

Conventions:
- Colour images come out of :func:`to_rgb8` as H x W x 3 ``uint8`` RGB (the project-wide convention).
- Depth images follow REP 118: ``32FC1`` in metres, ``16UC1`` in millimetres with 0 = no measurement.
  :func:`depth_image_to_metres` turns both into float32 metres with NaN where there is no depth.
- ``8UC3`` carries no colour order; like cv_bridge we read it as BGR (OpenCV's native order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ImageEncoding:
    """Memory layout of one ``sensor_msgs/Image`` encoding: element type and channels per pixel."""

    name: str
    dtype: np.dtype
    channels: int

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


ENCODINGS: dict[str, ImageEncoding] = {
    e.name: e
    for e in (
        ImageEncoding("rgb8", np.dtype(np.uint8), 3),
        ImageEncoding("bgr8", np.dtype(np.uint8), 3),
        ImageEncoding("rgba8", np.dtype(np.uint8), 4),
        ImageEncoding("bgra8", np.dtype(np.uint8), 4),
        ImageEncoding("mono8", np.dtype(np.uint8), 1),
        ImageEncoding("mono16", np.dtype(np.uint16), 1),
        ImageEncoding("8UC1", np.dtype(np.uint8), 1),
        ImageEncoding("8UC3", np.dtype(np.uint8), 3),
        ImageEncoding("16UC1", np.dtype(np.uint16), 1),
        ImageEncoding("32FC1", np.dtype(np.float32), 1),
    )
}

DEPTH_ENCODINGS = ("16UC1", "32FC1")


def lookup_encoding(encoding: str) -> ImageEncoding:
    """The layout of ``encoding``; ``ValueError`` naming the encoding when it is not supported."""
    layout = ENCODINGS.get(encoding)
    if layout is not None:
        return layout
    if encoding.lower().startswith("bayer_"):
        raise ValueError(
            f"image encoding {encoding!r} is a raw Bayer mosaic; debayer and rectify it first "
            "(image_proc / stereo_image_proc publish image_rect_color) and feed rgb8/bgr8"
        )
    raise ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")


def message_bytes(data) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` (no copy for buffer-protocol objects)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        # Some rclpy builds hand uint8[] out as a list of ints.
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def decode_image(
    *, encoding: str, height: int, width: int, step: int, data, is_bigendian: int | bool = 0
) -> np.ndarray:
    """Decodes the payload of a ``sensor_msgs/Image`` into a numpy array.

    Args:
        encoding, height, width, step, data, is_bigendian: the message fields. ``data`` may be ``bytes``,
            ``bytearray``, ``memoryview``, ``array.array`` (rclpy) or a numpy ``uint8`` array (rosbags).

    Returns:
        A native-endian array that owns its memory: H x W for one-channel encodings, H x W x C otherwise,
        with the encoding's dtype (``uint8``, ``uint16`` or ``float32``). Row padding (``step`` larger than
        ``width * bytes_per_pixel``) is removed.

    Raises:
        ValueError: unsupported encoding, empty image, ``step`` too small, or ``data`` shorter than
            ``step * height``.
    """
    layout = lookup_encoding(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ValueError(f"image has zero size: {width}x{height} ({encoding})")
    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise ValueError(
            f"image step {step} is smaller than width {width} x {layout.bytes_per_pixel} bytes per pixel "
            f"= {row_bytes} for encoding {encoding!r}"
        )
    buffer = message_bytes(data)
    if buffer.size < step * height:
        raise ValueError(
            f"image data has {buffer.size} bytes, fewer than step*height = {step}*{height} = {step * height} "
            f"({encoding!r}, {width}x{height})"
        )
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]
    dtype = layout.dtype.newbyteorder(">" if is_bigendian else "<")
    # A padded-row view is not contiguous, and .view() across dtypes needs a contiguous last axis.
    pixels = np.ascontiguousarray(rows).view(dtype).astype(layout.dtype, copy=True)
    if layout.channels == 1:
        return pixels.reshape(height, width)
    return pixels.reshape(height, width, layout.channels)


def encode_image(array: np.ndarray, encoding: str, *, out=None) -> tuple[int, Any]:
    """Encodes a numpy image as the ``(step, data)`` fields of a little-endian ``sensor_msgs/Image``.

    Args:
        array: H x W (one channel) or H x W x C, with the encoding's dtype and channel count
            (e.g. ``rgb8``: H x W x 3 ``uint8``; ``32FC1``: H x W ``float32``).
        encoding: the target encoding; the message must carry ``is_bigendian = 0``.
        out: optional writable buffer of exactly ``height * step`` bytes (e.g. the ``array.array('B')`` a
            message will carry): the pixels are written into it and it is returned as ``data``, which saves
            the copy (and, for a reused buffer, the page faults) of a fresh ``bytes`` object per frame.

    Returns:
        ``(step, data)`` with ``step = width * bytes_per_pixel`` (no padding); ``data`` is ``bytes``, or
        ``out`` when given.
    """
    layout = lookup_encoding(encoding)
    a = np.asarray(array)
    channels = 1 if a.ndim == 2 else (a.shape[2] if a.ndim == 3 else -1)
    if a.ndim == 3 and a.shape[2] == 1:
        a, channels = a[..., 0], 1
    if channels != layout.channels:
        raise ValueError(
            f"encoding {encoding!r} needs {layout.channels} channel(s), instead got an array of shape {a.shape}"
        )
    if a.dtype != layout.dtype:
        raise ValueError(f"encoding {encoding!r} needs dtype {layout.dtype}, instead got {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"cannot encode an empty image of shape {a.shape}")
    step = a.shape[1] * layout.bytes_per_pixel
    if out is not None:
        target = np.frombuffer(out, dtype=np.uint8)
        if target.size != step * a.shape[0]:
            raise ValueError(f"out must hold {step * a.shape[0]} bytes for this image, instead got {target.size}")
        view = target.view(layout.dtype.newbyteorder("<")).reshape(a.shape)
        # Already there (the caller computed straight into the buffer's view): nothing to copy.
        same = a.dtype == view.dtype and a.__array_interface__["data"][0] == view.__array_interface__["data"][0]
        if not (same and a.flags.c_contiguous):
            view[...] = a
        return step, out
    little = np.ascontiguousarray(a, dtype=layout.dtype.newbyteorder("<"))
    return step, little.tobytes()


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Converts a decoded colour or grey image to H x W x 3 ``uint8`` RGB (a new array).

    ``mono16`` keeps its 8 most significant bits. Depth encodings (``16UC1``, ``32FC1``) are rejected:
    they carry distances, not intensities.
    """
    layout = lookup_encoding(encoding)
    if encoding in DEPTH_ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is a depth image, not a colour image; use depth_image_to_metres")
    a = np.asarray(array)
    if layout.channels == 1:
        matches = a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1)
    else:
        matches = a.ndim == 3 and a.shape[2] == layout.channels
    if not matches:
        raise ValueError(f"array of shape {a.shape} does not match encoding {encoding!r}")
    if encoding == "rgb8":
        return a.astype(np.uint8, copy=True)
    if encoding in ("bgr8", "8UC3"):
        return np.ascontiguousarray(a[..., ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(a[..., :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(a[..., 2::-1])
    grey = a.reshape(a.shape[0], a.shape[1])
    if encoding == "mono16":
        grey = (grey >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def depth_image_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """H x W float32 depth in metres from a decoded depth image, NaN where there is no measurement.

    ``16UC1`` is millimetres with 0 meaning "no return" (REP 118) and becomes NaN; ``32FC1`` is already
    metres and is returned unchanged (NaN / inf keep their REP 118 meaning).
    """
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"depth images must be 16UC1 (mm) or 32FC1 (m), instead got encoding {encoding!r}")
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"depth image must be H x W, instead got shape {a.shape}")
    if encoding == "32FC1":
        return a.astype(np.float32, copy=True)
    depth = a.astype(np.float32) * np.float32(1e-3)
    depth[a == 0] = np.nan
    return depth
