"""Tests for mono2stereo_core.viz: colour maps, contact sheets, PNG / PLY writers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from mono2stereo_core.geometry import MOTORCYCLE_CAMERA
from mono2stereo_core.viz import (
    colorize_depth,
    colorize_disparity,
    colorize_error,
    contact_sheet,
    save_png,
    write_ply,
)


@pytest.fixture(scope="module")
def motorcycle():
    left, right, disp = data.stereo_motorcycle()
    return left, right, disp


def test_colorize_disparity_marks_invalid_and_orders_near_red(motorcycle):
    _, _, disp = motorcycle
    rgb = colorize_disparity(disp, invalid_color=(255, 0, 255))
    assert rgb.shape == disp.shape + (3,) and rgb.dtype == np.uint8
    invalid = ~np.isfinite(disp)
    assert invalid.any()
    assert np.all(rgb[invalid] == (255, 0, 255))
    # Turbo: the nearest pixel (largest disparity) is red-dominant, the farthest blue-dominant.
    near = np.unravel_index(np.nanargmax(np.where(invalid, np.nan, disp)), disp.shape)
    far = np.unravel_index(np.nanargmin(np.where(invalid, np.nan, disp)), disp.shape)
    assert rgb[near][0] > rgb[near][2]
    assert rgb[far][2] > rgb[far][0]


def test_colorize_disparity_fixed_range_clips():
    d = np.array([[0.0, 10.0, 20.0, np.nan]], np.float32)
    a = colorize_disparity(d, vmin=0, vmax=10)
    assert np.array_equal(a[0, 1], a[0, 2])  # 20 is clipped to the top of the range
    assert not np.array_equal(a[0, 0], a[0, 1])
    assert np.array_equal(a[0, 3], (0, 0, 0))


def test_colorize_depth_matches_disparity_look(motorcycle):
    _, _, disp = motorcycle
    depth = MOTORCYCLE_CAMERA.disparity_to_depth(disp)
    rgb = colorize_depth(depth, min_depth=float(np.nanmin(depth)), max_depth=float(np.nanmax(depth)))
    assert np.all(rgb[np.isnan(depth)] == 0)
    # Linear in inverse depth: depth with doffs is an affine function of disparity so close to identical.
    ref = colorize_disparity(disp + np.float32(MOTORCYCLE_CAMERA.doffs))
    valid = np.isfinite(depth)
    diff = np.abs(rgb[valid].astype(int) - ref[valid].astype(int))
    assert np.percentile(diff, 99) <= 8
    with pytest.raises(ValueError, match="min_depth"):
        colorize_depth(depth, min_depth=5.0, max_depth=1.0)


def test_colorize_error_distinguishes_holes_from_unknown():
    e = np.array([[0.0, 1.0, 100.0, np.nan, np.inf]], np.float32)
    rgb = colorize_error(e, max_error=4.0)
    assert np.array_equal(rgb[0, 3], (0, 0, 0))
    assert np.array_equal(rgb[0, 4], (255, 255, 255))
    assert rgb[0, 0, 2] > rgb[0, 0, 0]  # small error: blue
    assert rgb[0, 2, 0] > rgb[0, 2, 2]  # large error: red
    with pytest.raises(ValueError, match="max_error"):
        colorize_error(e, max_error=0)


def test_contact_sheet_layout_and_labels(motorcycle):
    left, right, disp = motorcycle
    grey = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY)
    rows = [[left, right, colorize_disparity(disp)], [grey, None]]
    sheet = contact_sheet(rows, tile_width=200, gap=2)
    tile_h = round(500 * 200 / 741)
    assert sheet.shape == (2 * tile_h + 2, 3 * 200 + 2 * 2, 3)
    assert sheet.dtype == np.uint8
    # Unlabelled tile content equals a plain resize of the input.
    ref = cv2.resize(left, (200, tile_h), interpolation=cv2.INTER_AREA)
    assert np.array_equal(sheet[:tile_h, :200], ref)
    # Grey input is expanded to three equal channels.
    g = sheet[tile_h + 2 :, :200]
    assert np.array_equal(g[..., 0], g[..., 1])
    labelled = contact_sheet(rows, labels=[["left", "right", "disp"], ["grey", ""]], tile_width=200)
    assert not np.array_equal(labelled[:20, :60], sheet[:20, :60])  # text drawn there
    assert np.array_equal(labelled[tile_h // 2 :, 300:], sheet[tile_h // 2 :, 300:])  # nowhere else in row 0


def test_contact_sheet_rejects_bad_input(motorcycle):
    left, _, disp = motorcycle
    with pytest.raises(ValueError, match="uint8"):
        contact_sheet([[disp]])
    with pytest.raises(ValueError, match="labels"):
        contact_sheet([[left, left]], labels=[["one"]])
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet([])


def test_save_png_roundtrip_is_rgb(tmp_path, motorcycle):
    left, _, _ = motorcycle
    out = save_png(tmp_path / "sub" / "left.png", left)
    back = cv2.cvtColor(cv2.imread(str(out), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, left)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["left.png"]  # no temp file left behind
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "bad.png", left.astype(np.float32))


def test_write_ply_drops_nans_and_reads_back(tmp_path, motorcycle):
    left, _, disp = motorcycle
    points = MOTORCYCLE_CAMERA.reproject(np.where(np.isfinite(disp), disp, np.nan))
    n = write_ply(tmp_path / "cloud.ply", points, left)
    valid = np.isfinite(points).all(axis=-1)
    assert n == int(valid.sum()) and 0 < n < disp.size
    raw = (tmp_path / "cloud.ply").read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    assert f"element vertex {n}".encode() in header
    vtx = np.frombuffer(
        body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")]
    )
    assert len(vtx) == n
    assert np.allclose(vtx["z"], points[valid][:, 2])
    assert np.array_equal(vtx["r"], left[valid][:, 0])
    with pytest.raises(ValueError, match="colors"):
        write_ply(tmp_path / "bad.ply", points, left[:10])
