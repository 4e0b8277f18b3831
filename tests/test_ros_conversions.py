"""Message building of the stereo node's outputs with reused buffers: identical bytes, no copies, no growth."""

from __future__ import annotations

import array

import numpy as np
import pytest
import ros_helpers  # noqa: F401  (puts the ROS package on sys.path)
from mono2stereo.conversions import OutputBuffers, array_to_image, point_cloud, set_uint8_data
from sensor_msgs.msg import Image
from skimage.data import stereo_motorcycle
from std_msgs.msg import Header

from mono2stereo_core.geometry import MOTORCYCLE_CAMERA as CAM
from mono2stereo_core.pointcloud import unpack_xyzrgb


@pytest.fixture(scope="module")
def motorcycle():
    left, _, disparity = stereo_motorcycle()
    points = CAM.reproject(np.where(np.isfinite(disparity), disparity, np.nan))
    return left, points.astype(np.float32)


def test_buffered_cloud_and_image_equal_the_plain_messages_and_reuse_memory(motorcycle):
    rgb, points = motorcycle
    header = Header(frame_id="left_optical")
    buffers = OutputBuffers()
    plain = point_cloud(points, rgb, header=header)
    first = point_cloud(points, rgb, header=header, buffers=buffers)
    assert first == plain  # every field, data included
    held = first.data
    assert held is buffers.get("points2", len(held))  # the message carries the buffer itself, not a copy
    # The next frame reuses the same memory and fully overwrites it.
    moved = points + np.float32(0.5)
    second = point_cloud(moved, rgb, header=header, buffers=buffers)
    assert second.data is held
    xyz, colours = unpack_xyzrgb(fields=second.fields, point_step=16, data=second.data, height=500, width=741)
    np.testing.assert_array_equal(xyz, moved)
    np.testing.assert_array_equal(colours, rgb)
    # A different size (decimation changed at run time) gets a fresh buffer of the right size.
    small = point_cloud(points[::2, ::2], rgb[::2, ::2], header=header, buffers=buffers)
    assert small.data is not held and len(small.data) == 16 * small.width * small.height

    depth = CAM.disparity_to_depth(np.full((500, 741), 40.0, np.float32)).astype(np.float32)
    buffer = buffers.get("depth", depth.nbytes)
    image = array_to_image(depth, encoding="32FC1", header=header, buffer=buffer)
    assert image == array_to_image(depth, encoding="32FC1", header=header)
    assert image.data is buffer


def test_set_uint8_data_keeps_arrays_and_converts_anything_else():
    msg = Image()
    buf = array.array("B", b"\x01\x02\x03")
    set_uint8_data(msg, buf)
    assert msg.data is buf
    set_uint8_data(msg, b"\x04\x05")
    assert isinstance(msg.data, array.array) and msg.data.tolist() == [4, 5]
