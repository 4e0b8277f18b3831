"""Message building of the stereo node's outputs with reused buffers: identical bytes, no copies, no growth."""

from __future__ import annotations

import array
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import ros_helpers  # noqa: F401  (puts the ROS package on sys.path)
from mono2stereo.conversions import (
    OutputBuffers,
    array_to_image,
    buffer_view,
    disparity_image,
    point_cloud,
    set_uint8_data,
)
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


def test_disparity_image_written_into_a_dirty_buffer_equals_the_reference():
    _, _, disparity = stereo_motorcycle()
    d = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    header = Header(frame_id="left_optical")
    buffer = array.array("B", b"\xff") * d.nbytes  # stale bytes from an earlier frame
    msg = disparity_image(d, header=header, camera=CAM, max_disparity=270.0, delta_d=0.25, buffer=buffer)
    assert msg.image.data is buffer
    # stereo_image_proc convention: d + doffs, invalid = min_disparity - 1 (min_disparity = doffs).
    expected = np.where(np.isfinite(d), d + np.float32(CAM.doffs), np.float32(CAM.doffs) - 1).astype("<f4")
    assert buffer.tobytes() == expected.tobytes()
    assert msg.min_disparity == pytest.approx(CAM.doffs) and msg.max_disparity == pytest.approx(270.0 + CAM.doffs)
    rows, cols = np.flatnonzero(np.isfinite(d).any(1)), np.flatnonzero(np.isfinite(d).any(0))
    assert (msg.valid_window.x_offset, msg.valid_window.width) == (cols[0], cols[-1] - cols[0] + 1)
    assert (msg.valid_window.y_offset, msg.valid_window.height) == (rows[0], rows[-1] - rows[0] + 1)
    assert buffer_view(buffer, d.shape, np.float32).base is not None
    with pytest.raises(ValueError, match="does not hold"):
        buffer_view(buffer, (10, 10), np.float32)


# Allocates 20 MB with malloc and prints how much of it glibc mmap-ed (mallinfo2().hblkhd grows by the
# block when mmap-ed; a block served from the heap is reused after free instead of page-faulted in again).
ALLOCATION_PROBE = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
from mono2stereo.allocator import tune_allocator
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
status = tune_allocator() if sys.argv[2] == "tune" else "untouched"
before = libc.mallinfo2().hblkhd
block = libc.malloc(20 << 20)
print(status, "|", libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc mallopt only")
def test_tune_allocator_keeps_large_message_buffers_on_the_heap():
    package = str(ros_helpers.PACKAGE_SRC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def probe(mode, extra_env=None):
        out = subprocess.run(
            [sys.executable, "-c", ALLOCATION_PROBE, package, mode],
            env={**env, **(extra_env or {})}, capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
        status, mmapped = out.split("|")
        return status.strip(), int(mmapped)

    status, mmapped = probe("plain")
    assert mmapped >= 20 << 20  # glibc default: a 20 MB block is mmap-ed (and unmapped on free)
    status, mmapped = probe("tune")
    assert status.startswith("glibc ") and "mmap threshold 32 MiB" in status
    assert mmapped == 0
    status, mmapped = probe("tune", {"MALLOC_TRIM_THRESHOLD_": "1000000"})
    assert status == "left to the environment (MALLOC_TRIM_THRESHOLD_)" and mmapped >= 20 << 20
