"""The in-place per-frame kernels of the stereo node's outputs, against plain numpy references.

``fill_masked`` (OpenCV masked copy), ``colorize_disparity(out=)``, ``disparity_to_depth(out=)`` and
``pack_xyzrgb`` replaced boolean indexing, ``np.where`` and uint32 shifts to cut the node's per-frame overhead;
these tests pin their results to the straightforward numpy formulations, including invalid values and
dirty reused buffers.
"""

from __future__ import annotations

import array

import numpy as np
import pytest
from skimage.data import stereo_motorcycle

from mono2stereo_core.arrays import fill_masked
from mono2stereo_core.geometry import MOTORCYCLE_CAMERA as CAM
from mono2stereo_core.geometry import disparity_to_depth
from mono2stereo_core.pointcloud import pack_xyzrgb
from mono2stereo_core.viz import _turbo_lut, colorize_disparity


@pytest.fixture(scope="module")
def motorcycle():
    left, _, disparity = stereo_motorcycle()
    return left, disparity.astype(np.float32)  # +inf where invalid


@pytest.mark.parametrize(
    "shape, dtype, value",
    [
        ((500, 741), np.float32, np.nan),
        ((500, 741), np.float64, -1.5),
        ((500, 741, 3), np.uint8, (255, 0, 128)),
        ((500, 741, 4), np.uint16, 7),
        ((500, 741), np.int32, -3),
    ],
)
def test_fill_masked_equals_boolean_assignment(shape, dtype, value):
    rng = np.random.default_rng(3)
    a = (rng.random(shape) * 200).astype(dtype)
    mask = rng.random(shape[:2]) < 0.3
    expected = a.copy()
    expected[mask] = value
    out = fill_masked(a, mask, value)
    assert out is a
    np.testing.assert_array_equal(a, expected)


def test_fill_masked_falls_back_to_numpy_for_layouts_opencv_cannot_write():
    rng = np.random.default_rng(4)
    base = rng.random((60, 80)).astype(np.float32)
    for array_, mask in (
        (base[:, ::2], rng.random((60, 40)) < 0.5),  # strided view: OpenCV would write into a copy
        (base.reshape(-1), rng.random(4800) < 0.5),  # 1-D
        (base.reshape(2, 30, 80), rng.random((2, 30, 80)) < 0.5),  # element mask on a 3-D array
        (base.astype(">f4"), rng.random((60, 80)) < 0.5),  # non-native byte order
    ):
        expected = array_.copy()
        expected[mask] = -2.0
        assert fill_masked(array_, mask, -2.0) is array_
        np.testing.assert_array_equal(array_, expected)
    with pytest.raises(ValueError, match="boolean"):
        fill_masked(base, np.zeros((60, 80), np.uint8), 0)
    with pytest.raises(ValueError, match="does not fit"):
        fill_masked(base, np.zeros((60, 79), bool), 0)


def test_colorize_disparity_equals_the_table_lookup_and_writes_into_out(motorcycle):
    _, disparity = motorcycle
    d = disparity.copy()
    d[100:110, :] = np.nan
    d[200, :50] = -5.0  # below vmin: clipped to the first colour
    vmin, vmax = 10.0, 250.0
    lut = _turbo_lut()[:, 0]
    finite = np.isfinite(d)
    index = np.round(np.clip((np.where(finite, d, vmin) - vmin) / (vmax - vmin), 0.0, 1.0) * 255.0).astype(int)
    expected = lut[index]
    expected[~finite] = (12, 200, 34)
    out = np.full((*d.shape, 3), 77, np.uint8)  # dirty buffer: every byte must be written
    rgb = colorize_disparity(d, vmin=vmin, vmax=vmax, invalid_color=(12, 200, 34), out=out)
    assert rgb is out
    assert np.all(rgb[~finite] == (12, 200, 34))
    # Same colour, or the neighbouring table entry where a value sits on a rounding boundary in float32.
    got_index = np.abs(lut[None, None, :, :].astype(int) - rgb[..., None, :].astype(int)).sum(-1).argmin(-1)
    assert np.abs(got_index - index)[finite].max() <= 1
    assert np.mean(np.all(rgb == expected, axis=-1)) > 0.999
    with pytest.raises(ValueError, match="out must be"):
        colorize_disparity(d, vmin=vmin, vmax=vmax, out=np.zeros((10, 10, 3), np.uint8))


def test_disparity_to_depth_into_out_marks_every_invalid_case_nan():
    d = np.array([[40.0, np.nan, np.inf, -np.inf, 0.0, -0.0, -3.0, 1e-30, 2.5]], np.float32)
    expected = np.float32(CAM.fx * CAM.baseline) / (d + np.float32(CAM.doffs))
    expected[~(np.isfinite(d + np.float32(CAM.doffs)) & (d + np.float32(CAM.doffs) > 0))] = np.nan
    out = np.full_like(d, 123.0)
    got = CAM.disparity_to_depth(d, out=out)
    assert got is out
    np.testing.assert_array_equal(got, expected)
    # Without doffs, d <= 0, +-0 and non-finite disparities are all invalid.
    plain = disparity_to_depth(d, 100.0, 0.1)
    np.testing.assert_array_equal(np.isfinite(plain), [[True, False, False, False, False, False, False, True, True]])
    assert plain[0, 0] == pytest.approx(100.0 * 0.1 / 40.0)


def test_pack_xyzrgb_bytes_equal_a_structured_reference_in_a_dirty_buffer(motorcycle):
    left, disparity = motorcycle
    depth = CAM.disparity_to_depth(disparity)
    v, u = np.mgrid[0:500, 0:741].astype(np.float32)
    rays = np.stack(((u - CAM.cx) / CAM.fx, (v - CAM.cy) / CAM.fy, np.ones_like(u)), axis=-1).astype(np.float32)
    reference = np.zeros(500 * 741, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<u4")])
    points = (depth[..., None] * rays).reshape(-1, 3)
    reference["x"], reference["y"], reference["z"] = points[:, 0], points[:, 1], points[:, 2]
    c = left.reshape(-1, 3).astype(np.uint32)
    reference["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    buffer = array.array("B", b"\xff") * (500 * 741 * 16)  # a reused buffer full of stale bytes
    packed = pack_xyzrgb(depth=depth, rays=rays, colors=left, out=buffer)
    assert packed.data.tobytes() == reference.tobytes()
    assert pack_xyzrgb(points.reshape(500, 741, 3), left).data == reference.tobytes()
