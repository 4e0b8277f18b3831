"""Tests for mono2stereo_core.evaluation (metrics, occlusion, SGBM) and mono2stereo_core.datasets_gt."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mono2stereo_core.datasets_gt import (
    ALOE_DIR,
    GTDataset,
    GTSample,
    load_aloe,
    load_gt_dataset,
    load_gt_folder,
    load_middlebury_scene,
    read_middlebury_calib,
    read_pfm,
    write_middlebury_scene,
    write_pfm,
)
from mono2stereo_core.evaluation import (
    DisparityMetrics,
    depth_edge_mask,
    disparity_metrics,
    evaluate_dataset,
    evaluate_disparity,
    flying_pixel_mask,
    occlusion_from_disparity,
    sgbm_disparity,
    sgbm_num_disparities,
    stereo_image_proc_disparity,
)
from mono2stereo_core.geometry import MOTORCYCLE_CAMERA


@pytest.fixture(scope="module")
def motorcycle():
    return load_gt_dataset("motorcycle")[0]


@pytest.fixture(scope="module")
def sgbm(motorcycle):
    gt = motorcycle.disparity
    num = sgbm_num_disparities(float(np.nanmax(gt)))
    return sgbm_disparity(motorcycle.left, motorcycle.right, num_disparities=num)


# --------------------------------------------------------------------------------------------- metrics


def test_metrics_on_hand_made_arrays_count_holes_and_ignore_unknown_gt():
    gt = np.array([[10.0, 10.0, 10.0, 10.0, 100.0, np.inf, np.nan, 10.0]], np.float32)
    pred = np.array([[10.5, 11.5, 12.5, np.nan, 104.0, 3.0, 3.0, 13.5]], np.float32)
    m = disparity_metrics(pred, gt)
    # Scored: the 6 finite-GT pixels; errors 0.5, 1.5, 2.5, hole, 4.0, 3.5.
    assert m.n_scored == 6 and m.n_predicted == 5
    assert m.density == pytest.approx(100 * 5 / 6)
    assert m.bad1 == pytest.approx(100 * 5 / 6)  # 1.5, 2.5, hole, 4, 3.5
    assert m.bad2 == pytest.approx(100 * 4 / 6)  # 2.5, hole, 4, 3.5
    assert m.bad3 == pytest.approx(100 * 3 / 6)  # hole, 4, 3.5
    # d1: > 3 px and > 5 % of gt: 4.0 vs gt 100 is only 4 %, so not an outlier; 3.5 vs 10 is.
    assert m.d1_all == pytest.approx(100 * 2 / 6)  # hole, 3.5
    assert m.epe == pytest.approx((0.5 + 1.5 + 2.5 + 4.0 + 3.5) / 5)


def test_metrics_all_holes_and_empty_gt():
    gt = np.full((4, 4), 5.0, np.float32)
    m = disparity_metrics(np.full_like(gt, np.nan), gt)
    assert m.bad2 == 100.0 and m.d1_all == 100.0 and m.density == 0.0 and np.isnan(m.epe)
    empty = disparity_metrics(gt, np.full_like(gt, np.inf))
    assert empty.n_scored == 0 and np.isnan(empty.bad2)
    assert empty.as_dict()["n_pixels"] == 0


def test_metric_counts_pool_by_addition():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 50, (2, 30, 40)).astype(np.float32)
    pred = gt + rng.normal(0, 2, gt.shape).astype(np.float32)
    pred[rng.random(gt.shape) < 0.1] = np.nan
    pooled = disparity_metrics(pred[0], gt[0]) + disparity_metrics(pred[1], gt[1])
    whole = disparity_metrics(pred.reshape(60, 40), gt.reshape(60, 40))
    assert pooled == whole
    assert isinstance(pooled, DisparityMetrics)


def test_metric_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match=r"\(4, 5\) differs from ground truth \(4, 6\)"):
        disparity_metrics(np.zeros((4, 5)), np.zeros((4, 6)))


def test_region_mask_and_both_region():
    gt = np.full((1, 6), 10.0, np.float32)
    ours = np.array([[10, 10, 20, np.nan, 10, 10]], np.float32)
    other = np.array([[13, np.nan, 10, 10, 10, 10]], np.float32)
    occ = np.array([[False, False, False, False, True, True]])
    r = evaluate_disparity(ours, gt, compare=other, occlusion=occ)
    assert r["all"].bad2 == pytest.approx(100 * 2 / 6)
    assert r["noc"].n_scored == 4 and r["noc"].bad2 == pytest.approx(50.0)
    # Both predict at columns 0, 2, 4, 5.
    assert r["both"].n_scored == 4 and r["both"].density == 100.0
    assert r["both"].bad2 == pytest.approx(25.0)  # column 2
    assert r["compare_both"].bad2 == pytest.approx(25.0)  # column 0
    assert r["compare_all"].bad2 == pytest.approx(100 * 2 / 6)  # column 0 and its hole at 1


# --------------------------------------------------------------------------------------------- occlusion


def test_occlusion_of_a_foreground_block_is_exactly_the_covered_band():
    gt = np.full((3, 60), 2.0, np.float32)
    gt[:, 20:30] = 10.0  # foreground lands at right-view x 10..19 and covers background left pixels 12..19
    occ = occlusion_from_disparity(gt)
    expected = np.zeros(60, bool)
    expected[[0, 1]] = True  # out of the right view (x - 2 < -0.5)
    expected[12:20] = True
    assert np.array_equal(occ[0], expected)


def test_occluded_regions_split_the_all_pixel_errors():
    """``occ`` is the GT occlusion mask, ``occ_border`` its part left of the right image; a prediction that
    continues the foreground into its occlusion is wrong there and nowhere else."""
    gt = np.full((3, 60), 2.0, np.float32)
    gt[:, 20:30] = 10.0  # occluded: columns 0-1 (out of the right view) and 12-19 (behind the block)
    pred = gt.copy()
    pred[:, 12:20] = 10.0  # the foreground continued leftwards
    pred[:, 1] = 5.0  # a wrong guess at the left border
    r = evaluate_disparity(pred, gt, compare=gt)
    assert r["occ"].n_scored == 3 * 10 and r["occ"].bad2 == pytest.approx(90.0)
    assert r["occ_border"].n_scored == 3 * 2 and r["occ_border"].bad2 == pytest.approx(50.0)
    assert r["noc"].bad2 == 0.0 and r["all"].n_bad2 == r["occ"].n_bad2
    assert r["compare_occ"].bad2 == 0.0 and r["compare_occ_border"].n_scored == 6


def test_occlusion_slanted_surface_does_not_occlude_itself():
    gt = np.tile(np.linspace(10, 40, 200, dtype=np.float32), (4, 1))  # slope 0.15 px/px, one surface
    occ = occlusion_from_disparity(gt)
    land = np.arange(200) - gt[0]
    assert np.array_equal(occ[0], land < -0.5)


def _occlusion_by_loops(d: np.ndarray, s: int = 4, jump: float = 1.0, margin: float = 1.0) -> np.ndarray:
    """occlusion_from_disparity's definition written out pixel by pixel (its docstring), for small maps."""
    h, w = d.shape
    out = np.zeros((h, w), bool)
    for r in range(h):
        zbuf = {}
        for x in range(w):
            if not np.isfinite(d[r, x]):
                continue
            for j in range(s):
                off = np.float32((j + 0.5) / s - 0.5)
                nx = x - 1 if off < 0 else x + 1
                nb = d[r, min(max(nx, 0), w - 1)]
                same = np.isfinite(nb) and abs(nb - d[r, x]) <= jump
                sd = np.float32(d[r, x] + abs(off) * (nb - d[r, x])) if same else d[r, x]
                b = int(np.rint((np.float32(x + off - sd) + 1.0) * s))
                if 0 <= b < (w + 2) * s:
                    zbuf[b] = max(zbuf.get(b, -np.inf), sd)
        for x in range(w):
            if not np.isfinite(d[r, x]):
                continue
            land = np.float32(x - d[r, x])
            b = int(np.clip(np.rint((land + 1.0) * s), 0, (w + 2) * s - 1))
            nearest = max(zbuf.get(k, -np.inf) for k in (b - 1, b, b + 1))
            out[r, x] = land < -0.5 or nearest > d[r, x] + margin
    return out


def test_occlusion_matches_its_definition_on_random_maps_with_holes():
    """The vectorized z-buffer (one sub-sample offset at a time, sentinel bins) is the definition, pixel for
    pixel, also with unknown pixels, landings far outside the right view and 2 sub-samples per pixel."""
    rng = np.random.default_rng(7)
    for trial in range(12):
        d = (rng.random((3, 40)) * rng.choice([5.0, 30.0, 80.0])).astype(np.float32)
        d[:, 10:18] = d[:, 10:18] * 0.1 + rng.random() * 40  # a smooth block
        d[rng.random(d.shape) < 0.1] = np.nan
        d[rng.random(d.shape) < 0.05] = np.inf
        for s in (2, 4):
            np.testing.assert_array_equal(
                occlusion_from_disparity(d, samples_per_pixel=s), _occlusion_by_loops(d, s=s), err_msg=f"{trial} {s}"
            )


def test_occlusion_on_motorcycle_matches_photometric_evidence(motorcycle):
    gt = motorcycle.disparity
    occ = occlusion_from_disparity(gt)
    valid = np.isfinite(gt)
    assert 5.0 < 100 * occ[valid].mean() < 15.0
    h, w = gt.shape
    xs = (np.arange(w)[None] - np.where(valid, gt, 0)).astype(np.float32)
    ys = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)
    warped = cv2.remap(motorcycle.right.astype(np.float32), xs, ys, cv2.INTER_LINEAR)
    photo = np.abs(warped - motorcycle.left).mean(axis=-1)
    noc_err, occ_err = photo[valid & ~occ].mean(), photo[valid & occ].mean()
    # Visible pixels re-project onto the same colour; occluded ones land on the occluder.
    assert noc_err < 8.0 and occ_err > 5 * noc_err


# --------------------------------------------------------------------------------------------- SGBM


def test_sgbm_on_motorcycle_anchors_the_baseline(motorcycle, sgbm):
    assert sgbm_num_disparities(float(np.nanmax(motorcycle.disparity))) == 80
    r = evaluate_disparity(sgbm, motorcycle.disparity, compare=sgbm)
    assert r["all"].bad2 == pytest.approx(20.0, abs=0.3)
    assert r["all"].density == pytest.approx(85.2, abs=0.5)
    assert r["both"].bad2 == pytest.approx(6.1, abs=0.2)
    assert r["noc"].bad2 < r["all"].bad2
    # Holes are NaN, valid values lie inside the search range.
    finite = sgbm[np.isfinite(sgbm)]
    assert finite.min() >= 0 and finite.max() <= 80
    # Edge/interior split of the same pixels: SGBM's answers are far worse at object boundaries.
    assert r["edge"].n_scored + r["interior"].n_scored == r["all"].n_scored
    assert r["both_edge"].n_scored + r["both_interior"].n_scored == r["both"].n_scored
    assert r["both_edge"].bad2 > 3 * r["both_interior"].bad2


def test_bundled_aloe_is_the_documented_middlebury_pair_and_sgbm_agrees_with_its_ground_truth():
    """The second bundled real pair: files as SOURCE.md lists them, sizes and scales as documented, and the
    ground truth's scale and the view order confirmed by an independent matcher (SGBM is right on >95 % of
    the pixels it answers only if GT, left and right belong together at that scale)."""
    import hashlib
    import re

    listed = dict(re.findall(r"`(aloe\w+\.\w+)`.*?`([0-9a-f]{64})`", (ALOE_DIR / "SOURCE.md").read_text()))
    assert sorted(listed) == ["aloeGT.png", "aloeL.jpg", "aloeR.jpg"]
    for name, digest in listed.items():
        assert hashlib.sha256((ALOE_DIR / name).read_bytes()).hexdigest() == digest, name
    half = load_aloe()
    assert half.name == "aloe" and half.left.shape == half.right.shape == (555, 641, 3)
    assert half.left.dtype == np.uint8 and half.disparity.dtype == np.float32
    assert np.nanmax(half.disparity) == pytest.approx(105.5) and np.isnan(half.disparity).mean() == pytest.approx(0.034, abs=0.002)
    assert half.camera.width == 641 and half.camera.fx == pytest.approx(1870.0)
    full, third = load_aloe(scale=1), load_aloe(scale=3)
    assert full.left.shape == (1110, 1282, 3) and np.nanmax(full.disparity) == 211.0
    assert third.left.shape == (370, 427, 3)
    np.testing.assert_array_equal(half.disparity, full.disparity[::2, ::2] / 2)
    for sample, most in ((half, 0.05), (third, 0.07)):
        gt = sample.disparity
        s = sgbm_disparity(sample.left, sample.right, num_disparities=sgbm_num_disparities(float(np.nanmax(gt))))
        r = evaluate_disparity(s, gt, compare=s)
        assert r["both"].bad2 < 100 * most and 0.65 < r["all"].density / 100 < 0.8, r
        # Swapped views match nothing: the order is left, right.
        swapped = sgbm_disparity(sample.right, sample.left, num_disparities=sgbm_num_disparities(float(np.nanmax(gt))))
        assert evaluate_disparity(swapped, gt)["all"].bad2 > 80
    with pytest.raises(ValueError, match="scale must be 1"):
        load_aloe(scale=4)


def test_dataset_lists_join_bundled_pairs_and_folders(tmp_path, motorcycle):
    real = load_gt_dataset("real")
    assert real.names == ["motorcycle", "aloe"] and len(real) == 2
    assert real[1].left.shape == (555, 641, 3)
    write_middlebury_scene(tmp_path / "mine", motorcycle)
    mixed = load_gt_dataset(f"aloe,{tmp_path / 'mine'}")
    assert mixed.names == ["aloe", "mine"]
    np.testing.assert_array_equal(mixed[1].left, motorcycle.left)
    with pytest.raises(ValueError, match="more than once"):
        load_gt_dataset("aloe,real")
    with pytest.raises(ValueError, match="empty entry"):
        load_gt_dataset("motorcycle,")
    with pytest.raises(FileNotFoundError):
        load_gt_dataset("motorcycle,/no/such/folder")


def test_stereo_image_proc_defaults_are_weaker_than_the_3way_baseline(motorcycle, sgbm):
    """SGBM and block matching as ROS 2 stereo_image_proc runs them out of the box (mono8, 15 px window):
    what its users compare against. Both are less accurate than the 3-way baseline the accuracy goals use."""
    ref = evaluate_disparity(sgbm, motorcycle.disparity)["all"]
    results = {}
    for algorithm in ("sgbm", "bm"):
        d = stereo_image_proc_disparity(motorcycle.left, motorcycle.right, num_disparities=80, algorithm=algorithm)
        assert d.dtype == np.float32 and d.shape == motorcycle.disparity.shape
        finite = d[np.isfinite(d)]
        assert finite.min() >= 0 and finite.max() <= 80
        results[algorithm] = evaluate_disparity(d, motorcycle.disparity)["all"]
    assert results["sgbm"].bad2 == pytest.approx(22.9, abs=0.5)
    assert results["bm"].bad2 == pytest.approx(29.4, abs=0.5)
    assert ref.bad2 < results["sgbm"].bad2 < results["bm"].bad2
    assert results["bm"].density < results["sgbm"].density < ref.density
    with pytest.raises(ValueError, match="'sgbm' or 'bm'"):
        stereo_image_proc_disparity(motorcycle.left, motorcycle.right, num_disparities=80, algorithm="hh")
    with pytest.raises(ValueError, match="multiple of 16"):
        stereo_image_proc_disparity(motorcycle.left, motorcycle.right, num_disparities=70)


def test_depth_edge_mask_marks_boundaries_not_slanted_surfaces():
    x = np.arange(40, dtype=np.float32)
    # A floor slanting 0.5 px/px with a box 10 px nearer in columns 20..29, and an unknown column.
    d = np.tile(5.0 + 0.5 * x, (12, 1))
    d[:, 20:30] += 10.0
    d[:, 35] = np.nan
    mask = depth_edge_mask(d, radius=2)
    edges = np.flatnonzero(mask[6])
    assert edges.tolist() == [17, 18, 19, 20, 21, 22, 27, 28, 29, 30, 31, 32]
    assert not depth_edge_mask(d, radius=0)[:, 34:37].any()  # NaN neighbours never mark
    d[:, 35] = np.inf  # Middlebury's "unknown" marker behaves like NaN
    assert not depth_edge_mask(d, radius=0)[:, 34:37].any()
    assert depth_edge_mask(d, radius=0).sum() == 4 * 12


def test_flying_pixels_are_predictions_between_two_surfaces():
    # A wall at 10 px with a box at 40 px in columns 20..29; one unknown column.
    gt = np.full((12, 40), 10.0, np.float32)
    gt[:, 20:30] = 40.0
    gt[:, 35] = np.inf
    blurred = cv2.blur(np.where(np.isfinite(gt), gt, 10.0), (7, 1))  # what interpolating across the edge does
    flying = flying_pixel_mask(blurred, gt)
    # The ramps on both sides of the box (values strictly between 12 and 38) and nothing elsewhere.
    ramp = (blurred > 12) & (blurred < 38) & (np.abs(blurred - gt) > 2)
    assert flying.sum() > 0 and (flying == (ramp & np.isfinite(gt))).all()
    # A sharp but misplaced edge (the box 2 px too wide) is wrong, not flying; neither are holes, a uniform error
    # of less than the margin, or a wrong value outside the window's range.
    fat = gt.copy()
    fat[:, 18:32] = 40.0
    assert not flying_pixel_mask(fat, gt).any()
    holes = np.where(blurred > 20, np.nan, blurred)
    assert not (flying_pixel_mask(holes, gt) & np.isnan(holes)).any()
    assert not flying_pixel_mask(gt + 1.5, gt).any()
    assert not flying_pixel_mask(np.full_like(gt, 60.0), gt).any()
    with pytest.raises(ValueError, match="differs from ground truth"):
        flying_pixel_mask(gt[:, 1:], gt)


def test_sgbm_rejects_bad_arguments(motorcycle):
    with pytest.raises(ValueError, match="multiple of 16, instead got 70"):
        sgbm_disparity(motorcycle.left, motorcycle.right, num_disparities=70)
    with pytest.raises(ValueError, match="differs from right"):
        sgbm_disparity(motorcycle.left, motorcycle.right[:-1], num_disparities=80)


def test_evaluate_dataset_with_injected_predictor_writes_pngs(tmp_path, motorcycle):
    rng = np.random.default_rng(1)

    def noisy_gt(sample):
        pred = sample.disparity + rng.normal(0, 0.5, sample.disparity.shape).astype(np.float32)
        return np.where(np.isfinite(pred), pred, 20.0), np.ones_like(pred)

    def sgbm_fn(sample):
        return sgbm_disparity(sample.left, sample.right, num_disparities=80)

    report = evaluate_dataset([motorcycle], noisy_gt, compare_fn=sgbm_fn, out_dir=tmp_path, progress=False)
    assert report["density"] == pytest.approx(100.0)
    assert report["bad2"] < 1.0 and report["compare"]["all"]["bad2"] == pytest.approx(20.0, abs=0.3)
    assert report["both"]["n_pixels"] == report["compare"]["both"]["n_pixels"]
    assert report["scenes"][0]["name"] == "motorcycle"
    # Noise of 0.5 px around the ground truth puts nothing between surfaces; SGBM's speckle at edges does a little.
    assert report["flying"] == pytest.approx(0.0, abs=0.05)
    assert 0.0 <= report["compare"]["flying"] < 5.0
    assert report["scenes"][0]["flying"] == report["flying"]
    sheet = cv2.imread(str(tmp_path / "motorcycle_side_by_side.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 480 + 3 * 2
    assert (tmp_path / "motorcycle_disparity.png").is_file()


# --------------------------------------------------------------------------------------------- datasets


def test_pfm_roundtrip_keeps_inf_and_orientation(tmp_path, motorcycle):
    write_pfm(tmp_path / "d.pfm", np.where(np.isfinite(motorcycle.disparity), motorcycle.disparity, np.inf))
    back = read_pfm(tmp_path / "d.pfm")
    assert back.dtype == np.float32 and back.shape == motorcycle.disparity.shape
    assert np.array_equal(np.isinf(back), np.isnan(motorcycle.disparity))
    np.testing.assert_array_equal(back[np.isfinite(back)], motorcycle.disparity[np.isfinite(back)])
    # Big-endian (positive scale) files, as some tools write them, read the same.
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "be.pfm").write_bytes(b"Pf\n4 3\n1.0\n" + arr[::-1].astype(">f4").tobytes())
    np.testing.assert_array_equal(read_pfm(tmp_path / "be.pfm"), arr)
    (tmp_path / "bad.pfm").write_bytes(b"P6\n4 3\n255\n")
    with pytest.raises(ValueError, match="bad.pfm is not a PFM file"):
        read_pfm(tmp_path / "bad.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n4 3\n-1.0\n" + b"\0" * 8)
    with pytest.raises(ValueError, match="truncated"):
        read_pfm(tmp_path / "short.pfm")


def _write_middlebury_scene(folder, left, right, disparity, *, doffs=31.086, baseline=193.001):
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "im0.png"), cv2.cvtColor(left, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "im1.png"), cv2.cvtColor(right, cv2.COLOR_RGB2BGR))
    write_pfm(folder / "disp0GT.pfm", np.where(np.isfinite(disparity), disparity, np.inf))
    h, w = disparity.shape
    (folder / "calib.txt").write_text(
        "cam0=[994.978 0 311.193; 0 994.978 254.877; 0 0 1]\n"
        f"cam1=[994.978 0 {311.193 + doffs}; 0 994.978 254.877; 0 0 1]\n"
        f"doffs={doffs}\nbaseline={baseline}\nwidth={w}\nheight={h}\nndisp=80\nisint=0\nvmin=7\nvmax=60\n"
    )


def test_middlebury_two_scene_folder_reads_back(tmp_path, motorcycle):
    m = motorcycle
    _write_middlebury_scene(tmp_path / "Motorcycle-perfect", m.left, m.right, m.disparity)
    _write_middlebury_scene(
        tmp_path / "Crop-imperfect",
        m.left[:200, :300].copy(),
        m.right[:200, :300].copy(),
        m.disparity[:200, :300],
    )
    (tmp_path / "notes.txt").write_text("not a scene")
    dataset = load_gt_folder(tmp_path)
    assert isinstance(dataset, GTDataset) and dataset.names == ["Crop-imperfect", "Motorcycle-perfect"]
    crop, full = list(dataset)
    assert crop.left.shape == (200, 300, 3) and full.left.shape == (500, 741, 3)
    assert np.array_equal(full.left, m.left) and np.array_equal(full.right, m.right)
    np.testing.assert_array_equal(np.isnan(full.disparity), np.isnan(m.disparity))
    np.testing.assert_array_equal(
        full.disparity[np.isfinite(full.disparity)], m.disparity[np.isfinite(m.disparity)]
    )
    cam = full.camera
    assert cam.fx == pytest.approx(MOTORCYCLE_CAMERA.fx) and cam.doffs == pytest.approx(
        MOTORCYCLE_CAMERA.doffs
    )
    assert cam.baseline == pytest.approx(MOTORCYCLE_CAMERA.baseline)
    assert (cam.width, cam.height) == (741, 500)
    # A single scene folder is a one-scene dataset.
    single = load_gt_folder(tmp_path / "Motorcycle-perfect")
    assert single.names == ["Motorcycle-perfect"]
    calib = read_middlebury_calib(tmp_path / "Crop-imperfect" / "calib.txt")
    assert calib["ndisp"] == 80 and calib["cam1"][0, 2] == pytest.approx(311.193 + 31.086)


def test_write_middlebury_scene_round_trips_the_motorcycle_pair(tmp_path, motorcycle):
    m = motorcycle
    folder = write_middlebury_scene(tmp_path / "Motorcycle-copy", m)
    back = load_middlebury_scene(folder)
    assert back.name == "Motorcycle-copy"
    assert np.array_equal(back.left, m.left) and np.array_equal(back.right, m.right)
    np.testing.assert_array_equal(np.isnan(back.disparity), np.isnan(m.disparity))
    valid = np.isfinite(m.disparity)
    np.testing.assert_array_equal(back.disparity[valid], m.disparity[valid])
    for field in ("fx", "fy", "cx", "cy", "doffs", "baseline"):
        assert getattr(back.camera, field) == pytest.approx(getattr(MOTORCYCLE_CAMERA, field), rel=1e-8), field
    # Unknown ground truth is +inf in the file, as in Middlebury's own (the loader turns it into NaN).
    np.testing.assert_array_equal(np.isposinf(read_pfm(folder / "disp0GT.pfm")), ~valid)
    calib = read_middlebury_calib(folder / "calib.txt")
    # Middlebury's own motorcycle calib.txt says ndisp=270 (its search range); the writer derives it from the GT.
    assert calib["ndisp"] == int(np.ceil(np.nanmax(m.disparity) / 16)) * 16
    assert calib["cam1"][0, 2] == pytest.approx(MOTORCYCLE_CAMERA.cx + MOTORCYCLE_CAMERA.doffs, rel=1e-5)


def test_write_middlebury_scene_refuses_what_it_cannot_write(tmp_path, motorcycle):
    m = motorcycle
    no_camera = GTSample(name="x", left=m.left, right=m.right, disparity=m.disparity)
    with pytest.raises(ValueError, match="has no camera"):
        write_middlebury_scene(tmp_path / "a", no_camera)
    gray = GTSample(name="x", left=m.left[..., 0], right=m.right[..., 0], disparity=m.disparity, camera=m.camera)
    with pytest.raises(ValueError, match="RGB uint8"):
        write_middlebury_scene(tmp_path / "b", gray)
    cropped = GTSample(name="x", left=m.left, right=m.right, disparity=m.disparity[:10], camera=m.camera)
    with pytest.raises(ValueError, match="differs from the images"):
        write_middlebury_scene(tmp_path / "c", cropped)


def test_procedural_benchmark_writer_gives_scenes_evaluate_reads(tmp_path):
    import importlib.util
    from pathlib import Path

    from mono2stereo_core.synthesis.procedural import render_scene

    script = Path(__file__).resolve().parents[1] / "scripts" / "write_procedural_benchmark.py"
    spec = importlib.util.spec_from_file_location("write_procedural_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path), "--first-seed", "910000", "--count", "2", "--width", "160",
                        "--height", "120", "--max-disparity", "40"]) == 0
    dataset = load_gt_folder(tmp_path)
    assert dataset.names == ["scene_910000", "scene_910001"]
    scene = render_scene(910001, width=160, height=120, max_disparity=40)
    sample = dataset[1]
    assert np.array_equal(sample.left, scene.left) and np.array_equal(sample.right, scene.right)
    np.testing.assert_array_equal(sample.disparity, scene.disparity)
    assert sample.camera.fx == pytest.approx(scene.camera.fx, rel=1e-5)
    assert sample.camera.baseline == pytest.approx(scene.camera.baseline, rel=1e-5)


def test_middlebury_errors_name_the_problem(tmp_path, motorcycle):
    m = motorcycle
    scene = tmp_path / "scene"
    _write_middlebury_scene(scene, m.left, m.right, m.disparity)
    (scene / "disp0GT.pfm").unlink()
    with pytest.raises(FileNotFoundError, match="scene has no ground truth"):
        list(load_gt_folder(scene))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gt_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="unrecognized dataset layout"):
        load_gt_folder(tmp_path / "empty")


@pytest.mark.parametrize(
    "layout,calib",
    [
        (("image_2", "image_3", "disp_occ_0"), ("calib_cam_to_cam", "P_rect_02", "P_rect_03")),
        (("colored_0", "colored_1", "disp_occ"), ("calib", "P0", "P1")),
    ],
)
def test_kitti_folder_reads_back(tmp_path, motorcycle, layout, calib):
    m = motorcycle
    root = tmp_path / "kitti" / "training"
    for d in layout:
        (root / d).mkdir(parents=True)
    # KITTI stores disparity * 256 in 16-bit PNG, 0 = unknown.
    disp16 = np.where(np.isfinite(m.disparity), np.round(m.disparity * 256), 0).astype(np.uint16)
    for name in ("000000_10.png", "000001_10.png"):
        cv2.imwrite(str(root / layout[0] / name), cv2.cvtColor(m.left, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / layout[1] / name), cv2.cvtColor(m.right, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / layout[2] / name), disp16)
    (root / calib[0]).mkdir()
    (root / calib[0] / "000000.txt").write_text(
        f"{calib[1]}: 721.5 0 609.6 0 0 721.5 172.9 0 0 0 1 0\n"
        f"{calib[2]}: 721.5 0 609.6 -387.6 0 721.5 172.9 0 0 0 1 0\n"
    )
    dataset = load_gt_dataset(tmp_path / "kitti")  # the archive root, one level above training/
    assert dataset.names == ["000000_10", "000001_10"]
    first, second = dataset[0], dataset[1]
    assert np.array_equal(first.left, m.left)
    np.testing.assert_array_equal(np.isnan(first.disparity), ~np.isfinite(m.disparity))
    np.testing.assert_allclose(
        first.disparity[np.isfinite(m.disparity)], m.disparity[np.isfinite(m.disparity)], atol=1 / 512
    )
    assert first.camera.baseline == pytest.approx(387.6 / 721.5) and first.camera.cx == pytest.approx(609.6)
    assert second.camera is None  # no calibration file for sequence 000001


def test_kitti_missing_image_is_reported(tmp_path, motorcycle):
    root = tmp_path / "k"
    for d in ("image_2", "image_3", "disp_occ_0"):
        (root / d).mkdir(parents=True)
    cv2.imwrite(str(root / "disp_occ_0" / "000007_10.png"), np.ones((4, 4), np.uint16))
    with pytest.raises(FileNotFoundError, match="000007_10.png"):
        load_gt_folder(root)
