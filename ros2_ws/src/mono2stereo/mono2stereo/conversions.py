"""rclpy messages <-> mono2stereo_core arrays.

The payload codecs (image encodings, PointCloud2 packing) live in ``mono2stereo_core`` so they are tested
without ROS; this module only moves fields between messages and those functions. Every function raises
``ValueError`` naming the offending topic/field so the node can report it and carry on.
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField, RegionOfInterest
from std_msgs.msg import Header
from stereo_msgs.msg import DisparityImage

from mono2stereo_core.arrays import fill_masked
from mono2stereo_core.geometry import StereoCamera
from mono2stereo_core.image_encoding import decode_image, encode_image, to_rgb8
from mono2stereo_core.pointcloud import XYZRGB_POINT_STEP, pack_xyzrgb

FLOAT_ENCODINGS = ("32FC1", "64FC1", "32FC3", "64FC3")


def uint8_array(data: bytes) -> array.array:
    """``data`` as the ``array.array('B')`` rclpy stores in ``uint8[]`` fields.

    Assigning bytes makes the generated setter validate every element in Python on distros that always
    check fields (seconds for a 640x480 cloud); an ``array.array`` is taken as is.
    """
    out = array.array("B")
    out.frombytes(data)
    return out


def set_uint8_data(msg, data: array.array) -> None:
    """Stores ``data`` (an ``array.array('B')``) in ``msg.data`` without a copy.

    The generated setter keeps an ``array.array`` as is on Humble/Iron, but from Jazzy on (field checks off
    by default) it always runs ``array.array('B', value)``: one more full copy of every image and cloud, per
    frame. The slot behind the property (``_data``) is where every rosidl_generator_py version keeps the
    field, so writing it directly is exact; anything else goes through the setter.
    """
    if isinstance(data, array.array) and data.typecode == "B" and "_data" in getattr(type(msg), "__slots__", ()):
        msg._data = data
    else:
        msg.data = data


def new_uint8_buffer(nbytes: int) -> array.array:
    """A zeroed ``array.array('B')`` of ``nbytes``: what messages carry, writable through ``np.frombuffer``."""
    return array.array("B", bytes(1)) * nbytes


def buffer_view(buffer: array.array, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A writable numpy view of ``buffer`` (an ``array.array('B')``) as a C-contiguous ``shape`` array of
    ``dtype`` (little-endian, what the messages declare): compute into it, then wrap it in a message."""
    view = np.frombuffer(buffer, dtype=np.dtype(dtype).newbyteorder("<"))
    if view.size != int(np.prod(shape)):
        raise ValueError(f"buffer of {len(buffer)} bytes does not hold a {shape} {np.dtype(dtype)} array")
    return view.reshape(shape)


class OutputBuffers:
    """One reusable ``array.array('B')`` per output, so publishing allocates nothing per frame.

    ``publish()`` serializes the message before it returns, so once it has, the buffer may be overwritten by
    the next frame. Reuse saves the page faults of a fresh multi-megabyte buffer every frame (~2.5 ms for a
    640x480 cloud). Only the node's single worker thread may use one instance; a message built from a buffer
    must not be kept after publishing.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, array.array] = {}

    def get(self, key: str, nbytes: int) -> array.array:
        buf = self._buffers.get(key)
        if buf is None or len(buf) != nbytes:
            buf = new_uint8_buffer(nbytes)
            self._buffers[key] = buf
        return buf


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def image_to_array(msg: Image, *, topic: str) -> np.ndarray:
    """Decodes ``msg`` to H x W (x C) numpy, rejecting 0 x 0 images and non-finite float pixels."""
    if msg.height == 0 or msg.width == 0:
        raise ValueError(f"{topic}: empty image, instead got {msg.width}x{msg.height}")
    try:
        array = decode_image(
            encoding=msg.encoding,
            height=msg.height,
            width=msg.width,
            step=msg.step,
            data=msg.data,
            is_bigendian=msg.is_bigendian,
        )
    except ValueError as exc:
        raise ValueError(f"{topic}: {exc}") from exc
    if msg.encoding in FLOAT_ENCODINGS and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{topic}: {msg.encoding} image has {bad} non-finite (NaN/inf) pixels; expected intensities")
    return array


def image_pair_to_rgb8(left: Image, right: Image, *, left_topic: str, right_topic: str) -> tuple[np.ndarray, np.ndarray]:
    """Both images as H x W x 3 uint8 RGB, after checking the pair is consistent (encoding, size)."""
    if left.encoding != right.encoding:
        raise ValueError(
            f"encoding mismatch: {left_topic} is {left.encoding!r} but {right_topic} is {right.encoding!r}"
        )
    if (left.height, left.width) != (right.height, right.width):
        raise ValueError(
            f"size mismatch: {left_topic} is {left.width}x{left.height} but {right_topic} is "
            f"{right.width}x{right.height}; a rectified pair has one size"
        )
    left_array = image_to_array(left, topic=left_topic)
    right_array = image_to_array(right, topic=right_topic)
    try:
        return to_rgb8(left_array, left.encoding), to_rgb8(right_array, right.encoding)
    except ValueError as exc:
        raise ValueError(f"{left_topic}/{right_topic}: {exc}") from exc


def stereo_camera_from_infos(
    left: CameraInfo, right: CameraInfo, *, width: int, height: int, left_topic: str, right_topic: str
) -> StereoCamera:
    """Rectified stereo model from a CameraInfo pair; baseline from the right ``P[3] = -fx * B``."""
    for info, topic in ((left, left_topic), (right, right_topic)):
        if not any(info.p):
            raise ValueError(f"{topic}: projection matrix P is all zeros (uncalibrated camera)")
        if (info.width, info.height) not in ((0, 0), (width, height)):
            raise ValueError(
                f"{topic}: camera_info is for {info.width}x{info.height} images, instead got {width}x{height} images "
                "(binning/ROI are not supported; publish the rectified size)"
            )
    try:
        return StereoCamera.from_projection(left.p, right.p, width=width, height=height)
    except ValueError as exc:
        raise ValueError(f"{left_topic}/{right_topic}: {exc}") from exc


def array_to_image(array: np.ndarray, *, encoding: str, header: Header, buffer: array.array | None = None) -> Image:
    """Encodes an H x W (x C) array; the caller guarantees it matches ``encoding``.

    The pixels are written into ``buffer`` (an ``array.array('B')`` of exactly the image's size, see
    :class:`OutputBuffers`), or into a fresh one, and the message carries it: no intermediate copies.
    """
    if buffer is None:
        buffer = new_uint8_buffer(int(np.asarray(array).nbytes))
    step, data = encode_image(array, encoding, out=buffer)
    msg = Image(
        header=header,
        height=int(array.shape[0]),
        width=int(array.shape[1]),
        encoding=encoding,
        is_bigendian=0,
        step=int(step),
    )
    set_uint8_data(msg, data)
    return msg


def valid_window(valid: np.ndarray) -> RegionOfInterest:
    """Bounding box of the valid pixels of an H x W mask (an empty ROI when nothing is valid)."""
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return RegionOfInterest()
    return RegionOfInterest(
        x_offset=int(cols[0]),
        y_offset=int(rows[0]),
        width=int(cols[-1] - cols[0] + 1),
        height=int(rows[-1] - rows[0] + 1),
    )


def disparity_image(
    disparity: np.ndarray,
    *,
    header: Header,
    camera: StereoCamera,
    max_disparity: float,
    delta_d: float,
    buffer: array.array | None = None,
) -> DisparityImage:
    """``stereo_msgs/DisparityImage`` from an H x W float32 left-view disparity (pixels, NaN = invalid).

    Follows stereo_image_proc: the published values are pre-adjusted for the principal-point offset,
    ``d' = d + doffs`` with ``doffs = cx_r - cx_l``, so every consumer gets depth as ``Z = f * T / d'``.
    Invalid pixels are written as ``min_disparity - 1`` ("any disparity less than min_disparity is invalid").
    ``buffer``: optional reusable image buffer (:func:`array_to_image`).
    """
    if disparity.ndim != 2:
        raise ValueError(f"disparity must be H x W, instead got shape {disparity.shape}")
    valid = np.isfinite(disparity)
    min_disparity = np.float32(camera.doffs)
    if buffer is None:
        buffer = new_uint8_buffer(disparity.size * 4)
    # Computed straight into the message's buffer.
    adjusted = buffer_view(buffer, disparity.shape, np.float32)
    np.add(disparity, np.float32(camera.doffs), out=adjusted, dtype=np.float32)
    fill_masked(adjusted, ~valid, min_disparity - 1)
    msg = DisparityImage(header=header)
    msg.image = array_to_image(adjusted, encoding="32FC1", header=header, buffer=buffer)
    msg.f = float(camera.fx)
    msg.t = float(camera.baseline)
    msg.min_disparity = float(min_disparity)
    msg.max_disparity = float(max_disparity + camera.doffs)
    msg.delta_d = float(delta_d)
    msg.valid_window = valid_window(valid)
    return msg


def depth_camera_info(left: CameraInfo, *, header: Header) -> CameraInfo:
    """The left camera_info restamped for the depth image (depth is registered to the left camera)."""
    info = CameraInfo()
    info.header = header
    info.height, info.width = left.height, left.width
    info.distortion_model = left.distortion_model
    info.d, info.k, info.r, info.p = list(left.d), left.k, left.r, left.p
    info.binning_x, info.binning_y, info.roi = left.binning_x, left.binning_y, left.roi
    return info


def point_cloud(
    points: np.ndarray | None,
    colors: np.ndarray,
    *,
    header: Header,
    buffers: OutputBuffers | None = None,
    depth: np.ndarray | None = None,
    rays: np.ndarray | None = None,
) -> PointCloud2:
    """Organized ``PointCloud2`` (x, y, z float32 + packed rgb) from H x W x 3 points and H x W x 3 uint8 colours.

    Invalid points stay NaN, so the cloud keeps the image layout and ``is_dense`` is False. With ``buffers``
    the cloud is packed straight into a reused buffer (``buffers.get("points2", ...)``). ``points=None`` with
    ``depth`` (H x W) and ``rays`` (H x W x 3) back-projects straight into the packed cloud
    (:func:`mono2stereo_core.pointcloud.pack_xyzrgb`).
    """
    shape = points.shape if points is not None else (rays.shape if rays is not None else None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or colors.shape != shape:
        raise ValueError(
            f"points (or rays) and colors must both be H x W x 3, instead got {shape} and {colors.shape}"
        )
    nbytes = shape[0] * shape[1] * XYZRGB_POINT_STEP
    out = new_uint8_buffer(nbytes) if buffers is None else buffers.get("points2", nbytes)
    packed = pack_xyzrgb(points, colors, out=out, depth=depth, rays=rays)
    msg = PointCloud2(
        header=header,
        height=int(shape[0]),
        width=int(shape[1]),
        fields=[
            PointField(name=f.name, offset=int(f.offset), datatype=int(f.datatype), count=int(f.count))
            for f in packed.fields
        ],
        is_bigendian=False,
        point_step=int(packed.point_step),
        row_step=int(packed.row_step),
        is_dense=False,
    )
    set_uint8_data(msg, out)
    return msg
