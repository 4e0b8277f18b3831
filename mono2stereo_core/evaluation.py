"""Disparity accuracy metrics, ground-truth occlusion masks and the OpenCV SGBM baseline.

Definitions (``docs/evaluation.md`` repeats them; ``../shared/DESIGN.md`` "Evaluation" is the contract).
All metrics are computed at full resolution over the *scored* pixels: ground truth finite (Middlebury's
``+inf`` and NaN are unknown) and inside the optional region mask. A pixel is *predicted* when the
method's disparity there is finite.

- ``badN`` (N = 1, 2, 3): percent of scored pixels with ``|pred - gt| > N`` **or no prediction** (holes
  count as errors, so sparse methods are not flattered).
- ``epe``: mean ``|pred - gt|`` over scored pixels that are predicted (NaN when none are).
- ``d1_all``: percent of scored pixels with ``|pred - gt| > 3`` **and** ``> 0.05 * |gt|``, or no prediction
  (KITTI's outlier rule, holes counted).
- ``density``: percent of scored pixels that are predicted.

Regions: ``all`` (every GT-valid pixel), ``noc`` (GT-valid and visible in the right view, see
:func:`occlusion_from_disparity`), ``occ`` (the rest: not visible in the right view) and ``occ_border`` (the
part of ``occ`` left of the right camera's view, ``x - gt < -0.5``), ``both`` (GT-valid and predicted by *both*
the method and a comparison method; density is 100 there by construction, so the comparison is purely about
accuracy).

Metrics are kept as pixel counts (:class:`DisparityMetrics`), so several scenes pool exactly by adding
counts; the pooled numbers weight every scored pixel equally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

__all__ = [
    "DisparityMetrics",
    "disparity_metrics",
    "evaluate_dataset",
    "evaluate_disparity",
    "flying_pixel_mask",
    "metrics_json",
    "occlusion_from_disparity",
    "sgbm_disparity",
    "sgbm_num_disparities",
    "side_by_side_image",
    "stereo_image_proc_disparity",
    "METRIC_KEYS",
]

METRIC_KEYS = ("epe", "bad1", "bad2", "bad3", "d1_all", "density")


@dataclass(frozen=True)
class DisparityMetrics:
    """Pixel counts behind the metrics over one region; ``+`` pools regions or scenes exactly."""

    n_scored: int = 0
    n_predicted: int = 0
    n_bad1: int = 0
    n_bad2: int = 0
    n_bad3: int = 0
    n_d1: int = 0
    abs_error_sum: float = 0.0

    def __add__(self, other: DisparityMetrics) -> DisparityMetrics:
        if not isinstance(other, DisparityMetrics):
            return NotImplemented
        return DisparityMetrics(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def _percent(self, count: int) -> float:
        return 100.0 * count / self.n_scored if self.n_scored else math.nan

    @property
    def epe(self) -> float:
        return self.abs_error_sum / self.n_predicted if self.n_predicted else math.nan

    @property
    def bad1(self) -> float:
        return self._percent(self.n_bad1)

    @property
    def bad2(self) -> float:
        return self._percent(self.n_bad2)

    @property
    def bad3(self) -> float:
        return self._percent(self.n_bad3)

    @property
    def d1_all(self) -> float:
        return self._percent(self.n_d1)

    @property
    def density(self) -> float:
        return self._percent(self.n_predicted)

    def as_dict(self) -> dict[str, float | int]:
        """The six metrics (``METRIC_KEYS``, percent / pixels) plus ``n_pixels`` scored; NaN stays NaN."""
        out: dict[str, float | int] = {k: float(getattr(self, k)) for k in METRIC_KEYS}
        out["n_pixels"] = int(self.n_scored)
        return out


def _as_disparity(array: np.ndarray, *, name: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{name} disparity must be an H x W array, instead got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} disparity must be numeric, instead got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def disparity_metrics(
    pred: np.ndarray, gt: np.ndarray, *, mask: np.ndarray | None = None
) -> DisparityMetrics:
    """Counts for the metrics of ``pred`` against ``gt`` (both ``H x W`` disparity in pixels).

    Scored pixels: ``gt`` finite and ``mask`` true (when given). ``pred`` may hold NaN / inf holes. Read
    the percentages from the result's properties or :meth:`DisparityMetrics.as_dict`.
    """
    p = _as_disparity(pred, name="predicted")
    g = _as_disparity(gt, name="ground-truth")
    if p.shape != g.shape:
        raise ValueError(
            f"predicted disparity shape {p.shape} differs from ground truth {g.shape}; "
            "metrics are defined at the ground truth's full resolution (resize and scale the prediction first)"
        )
    scored = np.isfinite(g)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != g.shape:
            raise ValueError(f"region mask shape {m.shape} differs from ground truth {g.shape}")
        scored &= m.astype(bool)
    gs = g[scored]
    ps = p[scored]
    predicted = np.isfinite(ps)
    with np.errstate(invalid="ignore"):
        err = np.abs(ps - gs)
    err_pred = err[predicted]
    # Holes are errors for every outlier count: comparing "not predicted" as inf does that in one step.
    err_or_inf = np.where(predicted, err, np.inf)
    return DisparityMetrics(
        n_scored=int(gs.size),
        n_predicted=int(predicted.sum()),
        n_bad1=int((err_or_inf > 1.0).sum()),
        n_bad2=int((err_or_inf > 2.0).sum()),
        n_bad3=int((err_or_inf > 3.0).sum()),
        n_d1=int(((err_or_inf > 3.0) & (err_or_inf > 0.05 * np.abs(gs))).sum()),
        abs_error_sum=float(err_pred.sum(dtype=np.float64)),
    )


def evaluate_disparity(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    compare: np.ndarray | None = None,
    occlusion: np.ndarray | None = None,
) -> dict[str, DisparityMetrics]:
    """Metrics of ``pred`` on the ``all``, ``noc``, ``occ``, ``occ_border``, ``edge``, ``interior`` and (with
    ``compare``) ``both`` regions.

    ``occlusion`` (``H x W`` bool, True = not visible in the right view) defaults to
    :func:`occlusion_from_disparity` of ``gt``; ``occ`` is that mask, ``occ_border`` its pixels whose match would
    lie left of the right image (``x - gt < -0.5``: no method can match them, only guess). ``edge`` are the
    GT-valid pixels within ``EDGE_RADIUS`` px of a ground-truth depth discontinuity (:func:`depth_edge_mask`), ``interior`` the rest:
    they say whether errors come from localising object boundaries or from matching surfaces. With
    ``compare`` (another method's ``H x W`` disparity) the result also has ``both`` (pred's metrics where
    both predict), ``both_edge`` / ``both_interior`` (the same split) and ``compare_*`` (the comparison
    method's metrics on the same regions).
    """
    g = _as_disparity(gt, name="ground-truth")
    occ = occlusion_from_disparity(g) if occlusion is None else np.asarray(occlusion, dtype=bool)
    if occ.shape != g.shape:
        raise ValueError(f"occlusion mask shape {occ.shape} differs from ground truth {g.shape}")
    edge = depth_edge_mask(g)
    with np.errstate(invalid="ignore"):
        border = occ & (np.arange(g.shape[1], dtype=np.float32)[None, :] - g < -0.5)
    out = {
        "all": disparity_metrics(pred, g),
        "noc": disparity_metrics(pred, g, mask=~occ),
        "occ": disparity_metrics(pred, g, mask=occ),
        "occ_border": disparity_metrics(pred, g, mask=border),
        "edge": disparity_metrics(pred, g, mask=edge),
        "interior": disparity_metrics(pred, g, mask=~edge),
    }
    if compare is not None:
        c = _as_disparity(compare, name="comparison")
        if c.shape != g.shape:
            raise ValueError(f"comparison disparity shape {c.shape} differs from ground truth {g.shape}")
        both = np.isfinite(_as_disparity(pred, name="predicted")) & np.isfinite(c)
        regions = {"both": both, "both_edge": both & edge, "both_interior": both & ~edge}
        for name, mask in regions.items():
            out[name] = disparity_metrics(pred, g, mask=mask)
        for name, mask in {
            "all": None, "noc": ~occ, "occ": occ, "occ_border": border, "edge": edge, "interior": ~edge, **regions
        }.items():
            out[f"compare_{name}"] = disparity_metrics(c, g, mask=mask)
    return out


# Pixels this close to a ground-truth depth discontinuity count as "edge" pixels.
EDGE_RADIUS = 2
# A jump of more than this many pixels between 4-neighbours' GT disparities is a discontinuity.
EDGE_JUMP = 2.0


def depth_edge_mask(disparity: np.ndarray, *, radius: int = EDGE_RADIUS, jump: float = EDGE_JUMP) -> np.ndarray:
    """``H x W`` bool: pixels within ``radius`` px (Chebyshev) of a depth discontinuity of ``disparity``.

    A discontinuity lies between two 4-neighbours whose finite disparities differ by more than ``jump``
    pixels (a slanted floor changes by well under a pixel per pixel; object boundaries by several); both
    pixels of the pair are marked, then the mask is dilated by ``radius``. Unknown pixels never mark.
    """
    d = _as_disparity(disparity, name="ground-truth")
    d = np.where(np.isfinite(d), d, np.nan)  # +inf (Middlebury's "unknown") must not mark its neighbours
    seeds = np.zeros(d.shape, bool)
    with np.errstate(invalid="ignore"):
        horizontal = np.abs(d[:, 1:] - d[:, :-1]) > jump
        vertical = np.abs(d[1:, :] - d[:-1, :]) > jump
    seeds[:, 1:] |= horizontal
    seeds[:, :-1] |= horizontal
    seeds[1:, :] |= vertical
    seeds[:-1, :] |= vertical
    if radius > 0:
        import cv2

        kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
        seeds = cv2.dilate(seeds.astype(np.uint8), kernel).astype(bool)
    return seeds


# A predicted disparity counts as "flying" (a point floating between an object and what lies behind it) when
# it is more than FLYING_MARGIN px inside the range of the ground truth within FLYING_RADIUS px.
FLYING_RADIUS = 3
FLYING_MARGIN = 2.0


def flying_pixel_mask(
    pred: np.ndarray, gt: np.ndarray, *, radius: int = FLYING_RADIUS, margin: float = FLYING_MARGIN
) -> np.ndarray:
    """``H x W`` bool: GT-valid pixels whose prediction lies *between* two ground-truth surfaces.

    That is: more than ``margin`` px above the smallest and below the largest finite GT disparity within
    ``radius`` px (Chebyshev), and more than ``margin`` px from the pixel's own GT. Such pixels become points
    floating in the empty space between an object and its background in the point cloud (what interpolating
    across a depth edge produces); a wrong but surface-like answer is a bad pixel, not a flying one. Holes in
    ``pred`` are never flying.
    """
    p = _as_disparity(pred, name="predicted")
    g = _as_disparity(gt, name="ground-truth")
    if p.shape != g.shape:
        raise ValueError(f"predicted disparity shape {p.shape} differs from ground truth {g.shape}")
    valid = np.isfinite(g)
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    big = np.float32(1e9)  # stands in for "no ground truth here" in the min / max filters
    low = cv2.erode(np.where(valid, g, big).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(np.where(valid, g, -big).astype(np.float32), kernel, borderType=cv2.BORDER_REPLICATE)
    with np.errstate(invalid="ignore"):
        return valid & np.isfinite(p) & (p > low + margin) & (p < high - margin) & (np.abs(p - g) > margin)


def occlusion_from_disparity(
    disparity: np.ndarray,
    *,
    samples_per_pixel: int = 4,
    surface_jump: float = 1.0,
    depth_margin: float = 1.0,
) -> np.ndarray:
    """Pixels of the left view not visible in the right view, from a left disparity map, by z-buffering.

    Returns an ``H x W`` bool mask (True = occluded or out of the right view). Unknown disparities
    (non-finite) are never marked and never occlude, since nothing is known about them.

    Method, per row, vectorized over the image: the left scene is treated as a piecewise surface. Each
    left pixel ``x`` covers ``[x - 0.5, x + 0.5)``; ``samples_per_pixel`` (S) sub-samples across it carry a
    disparity interpolated linearly towards the horizontal neighbour when the two differ by at most
    ``surface_jump`` pixels (same surface, e.g. a slanted floor), and the pixel's own disparity otherwise
    (a depth edge: nothing is interpolated across it). A sample at ``u`` with disparity ``d`` lands at
    ``u - d`` in the right view; each right position keeps the largest (nearest) disparity landing in its
    1/S-pixel bin. On one surface adjacent samples land at most ``2/S`` apart (``|slope| <= 1`` px/px), so a
    window of +-1 bin around a position closes the gaps a stretched surface leaves. The left pixel ``x``
    is occluded when the nearest disparity within that window of its own landing position ``x - d(x)``
    exceeds ``d(x) + depth_margin``: the margin keeps a steeply slanted surface from occluding itself.
    Pixels landing left of the right image (``x - d(x) < -0.5``) are out of view and marked too, as
    Middlebury's ``mask0nocc`` does.
    """
    if samples_per_pixel < 2:
        raise ValueError(f"samples_per_pixel must be >= 2, instead got {samples_per_pixel}")
    d = _as_disparity(disparity, name="ground-truth")
    h, w = d.shape
    # Rows are independent: process blocks of about 4 M samples to bound memory on full-size Middlebury.
    block = max(1, (1 << 22) // max(1, w * int(samples_per_pixel)))
    return (
        np.concatenate(
            [
                _occlusion_rows(
                    d[r : r + block], s=int(samples_per_pixel), jump=surface_jump, margin=depth_margin
                )
                for r in range(0, h, block)
            ]
        )
        if h
        else np.zeros(d.shape, bool)
    )


def _occlusion_rows(d: np.ndarray, *, s: int, jump: float, margin: float) -> np.ndarray:
    """:func:`occlusion_from_disparity` on a block of rows (``d``: float32 H x W).

    One sub-sample offset at a time over the whole block (2-D arrays only; no boolean gathers), unknown samples
    write ``-inf`` (a no-op for the maximum) and landings beyond the one-pixel pads go to a sentinel bin either
    side that is never read: about 3x faster than one H x W x S pass (motorcycle: 80 -> 28 ms), the same mask
    (the runner's :func:`~mono2stereo_core.inference.consistency.occlusion_fill` calls it on every frame).
    """
    h, w = d.shape
    known = np.isfinite(d)
    n_bins = (w + 2) * s  # right-view x in [-1, w + 1) in 1/S-pixel bins
    # Plus one sentinel bin either side, never read: it collects the landings beyond the pads.
    zbuf = np.full(h * (n_bins + 2), -np.inf, dtype=np.float32)
    row_start = (np.arange(h, dtype=np.int64) * (n_bins + 2))[:, None] + 1
    x = np.arange(w, dtype=np.float32)[None, :]
    everywhere = bool(known.all())  # a network's output: no masking needed
    with np.errstate(invalid="ignore"):
        # Neighbour minus own disparity towards x-1 and x+1, 0 across a depth edge or an unknown pixel.
        steps = (np.zeros_like(d), np.zeros_like(d))
        steps[0][:, 1:] = d[:, :-1] - d[:, 1:]
        steps[1][:, :-1] = d[:, 1:] - d[:, :-1]
        for step in steps:
            step[~(np.abs(step) <= jump)] = 0.0
        for j in range(s):
            offset = np.float32((j + 0.5) / s - 0.5)  # the first half interpolates towards x-1, the second x+1
            sample_d = d + abs(offset) * steps[int(offset > 0)]
            land = x + offset - (sample_d if everywhere else np.where(known, sample_d, 0.0))
            bins = np.clip(np.rint((land + 1.0) * s), -1, n_bins).astype(np.int64) + row_start
            values = sample_d if everywhere else np.where(known, sample_d, -np.inf).astype(np.float32)
            np.maximum.at(zbuf, bins.ravel(), values.ravel())
    zbuf = zbuf.reshape(h, n_bins + 2)[:, 1:-1]
    # +-1 bin window: the largest gap between adjacent same-surface samples is 2/S px.
    window = zbuf.copy()
    np.maximum(window[:, 1:], zbuf[:, :-1], out=window[:, 1:])
    np.maximum(window[:, :-1], zbuf[:, 1:], out=window[:, :-1])
    with np.errstate(invalid="ignore"):
        own_land = x - np.where(known, d, 0.0)
        out_of_view = known & (own_land < -0.5)
        own_bin = np.clip(np.rint((own_land + 1.0) * s), 0, n_bins - 1).astype(np.int64)
        nearest = np.take_along_axis(window, own_bin, axis=1)
        occluded = known & (nearest > d + margin)
    return occluded | out_of_view


def sgbm_num_disparities(max_disparity: float) -> int:
    """The baseline's disparity range for a scene: ``max_disparity + 8`` rounded up to a multiple of 16."""
    if not (np.isfinite(max_disparity) and max_disparity >= 0):
        raise ValueError(f"max_disparity must be a finite number >= 0, instead got {max_disparity}")
    return int(math.ceil((float(max_disparity) + 8.0) / 16.0) * 16)


_SGBM_MODES = {
    "sgbm": cv2.STEREO_SGBM_MODE_SGBM,
    "hh": cv2.STEREO_SGBM_MODE_HH,
    "3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    "hh4": cv2.STEREO_SGBM_MODE_HH4,
}


def sgbm_disparity(
    left: np.ndarray,
    right: np.ndarray,
    *,
    num_disparities: int,
    min_disparity: int = 0,
    block_size: int = 5,
    p1: int | None = None,
    p2: int | None = None,
    uniqueness_ratio: int = 10,
    speckle_window_size: int = 100,
    speckle_range: int = 2,
    disp12_max_diff: int = 0,
    pre_filter_cap: int = 0,
    mode: str = "3way",
) -> np.ndarray:
    """OpenCV StereoSGBM (3-way, colour, 5 px window): the classical baseline we must beat.

    ``left`` / ``right``: rectified ``H x W x 3`` RGB (or ``H x W`` grey) uint8 images. Returns ``H x W``
    float32 left disparity in pixels, NaN where SGBM gives no answer (uniqueness / speckle rejections and
    the left border). ``p1`` / ``p2`` default to ``8 * C * block_size**2`` and ``32 * C * block_size**2``
    (C = channels), the smoothness penalties OpenCV's documentation recommends. stereo_image_proc's own
    defaults (mono8, 15 px window, MODE_SGBM) are :func:`stereo_image_proc_disparity`.
    With the defaults and ``num_disparities=80`` the Middlebury motorcycle pair scores all-pixel bad-2
    20.0 %, density 85.2 %, bad-2 6.1 % on its own predictions (``tests/test_evaluation.py`` pins this).
    """
    lt, rt = np.asarray(left), np.asarray(right)
    if lt.shape != rt.shape:
        raise ValueError(f"left image shape {lt.shape} differs from right image shape {rt.shape}")
    if lt.dtype != np.uint8 or not (lt.ndim == 2 or (lt.ndim == 3 and lt.shape[2] in (1, 3))):
        raise ValueError(f"SGBM needs H x W or H x W x 3 uint8 images, instead got {lt.shape} {lt.dtype}")
    _check_num_disparities(num_disparities)
    if block_size < 1 or block_size % 2 == 0:
        raise ValueError(f"block_size must be odd and >= 1, instead got {block_size}")
    if mode not in _SGBM_MODES:
        raise ValueError(f"mode must be one of {sorted(_SGBM_MODES)}, instead got {mode!r}")
    channels = 1 if lt.ndim == 2 else lt.shape[2]
    area = block_size * block_size
    matcher = cv2.StereoSGBM_create(
        minDisparity=int(min_disparity),
        numDisparities=int(num_disparities),
        blockSize=int(block_size),
        P1=int(8 * channels * area if p1 is None else p1),
        P2=int(32 * channels * area if p2 is None else p2),
        disp12MaxDiff=int(disp12_max_diff),
        preFilterCap=int(pre_filter_cap),
        uniquenessRatio=int(uniqueness_ratio),
        speckleWindowSize=int(speckle_window_size),
        speckleRange=int(speckle_range),
        mode=_SGBM_MODES[mode],
    )
    # OpenCV's colour cost is channel-order agnostic, but feed BGR anyway so results match cv2.imread users.
    if lt.ndim == 3 and channels == 3:
        lt, rt = lt[..., ::-1], rt[..., ::-1]
    return _compute_disparity(matcher, lt, rt, min_disparity=int(min_disparity))


def _check_num_disparities(num_disparities: int) -> None:
    if num_disparities <= 0 or num_disparities % 16:
        raise ValueError(f"num_disparities must be a positive multiple of 16, instead got {num_disparities}")


def _compute_disparity(matcher, left: np.ndarray, right: np.ndarray, *, min_disparity: int) -> np.ndarray:
    """Runs an OpenCV StereoSGBM / StereoBM: float32 disparity in pixels, NaN where it gave no answer."""
    fixed = matcher.compute(np.ascontiguousarray(left), np.ascontiguousarray(right))
    disp = fixed.astype(np.float32) / 16.0  # 4-bit fixed point
    # Rejected pixels come back as (min_disparity - 1) * 16.
    disp[fixed < min_disparity * 16] = np.nan
    return disp


# stereo_image_proc's disparity_node defaults (ROS 2 image_pipeline, parameters declared in
# disparity_node.cpp): stereo_algorithm 0 = block matching, 1 = SGBM; both on mono8 images.
STEREO_IMAGE_PROC_DEFAULTS = {
    "correlation_window_size": 15,
    "prefilter_size": 9,  # BM only
    "prefilter_cap": 31,
    "texture_threshold": 10,  # BM only
    "uniqueness_ratio": 15,
    "speckle_size": 100,
    "speckle_range": 4,
    "disp12_max_diff": 0,  # SGBM only
    "P1": 200,  # SGBM only
    "P2": 400,  # SGBM only
    "full_dp": False,  # SGBM only: False -> cv::StereoSGBM::MODE_SGBM, True -> MODE_HH
}


def stereo_image_proc_disparity(
    left: np.ndarray, right: np.ndarray, *, num_disparities: int, algorithm: str = "sgbm"
) -> np.ndarray:
    """OpenCV block matching exactly as ROS 2 ``stereo_image_proc`` runs it with its default parameters.

    ``algorithm``: ``"sgbm"`` (``stereo_algorithm: 1``: StereoSGBM, MODE_SGBM, 15 px window, P1 200, P2 400)
    or ``"bm"`` (``stereo_algorithm: 0``, the node's default: StereoBM). Images are converted to mono8 first,
    as the node does. Returns ``H x W`` float32 disparity, NaN where rejected. :func:`sgbm_disparity` (3-way,
    colour, 5 px window) is the stronger configuration the accuracy comparisons use; this one is what a
    ``stereo_image_proc`` user gets out of the box (``bench/bench_latency.py`` times both).
    """
    lt, rt = np.asarray(left), np.asarray(right)
    if lt.shape != rt.shape or lt.dtype != np.uint8 or lt.ndim not in (2, 3):
        raise ValueError(f"need two H x W (x 3) uint8 images of one shape, instead got {lt.shape} {lt.dtype} / {rt.shape}")
    _check_num_disparities(num_disparities)
    grey = [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) if im.ndim == 3 else im for im in (lt, rt)]
    p = STEREO_IMAGE_PROC_DEFAULTS
    if algorithm == "sgbm":
        matcher = cv2.StereoSGBM_create(
            minDisparity=0,
            numDisparities=int(num_disparities),
            blockSize=p["correlation_window_size"],
            P1=p["P1"],
            P2=p["P2"],
            disp12MaxDiff=p["disp12_max_diff"],
            preFilterCap=p["prefilter_cap"],
            uniquenessRatio=p["uniqueness_ratio"],
            speckleWindowSize=p["speckle_size"],
            speckleRange=p["speckle_range"],
            mode=cv2.STEREO_SGBM_MODE_HH if p["full_dp"] else cv2.STEREO_SGBM_MODE_SGBM,
        )
    elif algorithm == "bm":
        matcher = cv2.StereoBM_create(numDisparities=int(num_disparities), blockSize=p["correlation_window_size"])
        matcher.setPreFilterSize(p["prefilter_size"])
        matcher.setPreFilterCap(p["prefilter_cap"])
        matcher.setTextureThreshold(p["texture_threshold"])
        matcher.setUniquenessRatio(p["uniqueness_ratio"])
        matcher.setSpeckleWindowSize(p["speckle_size"])
        matcher.setSpeckleRange(p["speckle_range"])
    else:
        raise ValueError(f"algorithm must be 'sgbm' or 'bm', instead got {algorithm!r}")
    return _compute_disparity(matcher, grey[0], grey[1], min_disparity=0)


# ---------------------------------------------------------------------------------------------------------
# Dataset-level evaluation (training/evaluate.py is the command-line front end)


def _json_number(value: float) -> float | None:
    # JSON has no NaN; an undefined metric (e.g. EPE with no prediction) is written as null.
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def metrics_json(metrics: DisparityMetrics) -> dict[str, float | int | None]:
    """``DisparityMetrics`` as a JSON-ready dict: ``METRIC_KEYS`` (NaN -> None) and ``n_pixels``."""
    return {k: (_json_number(v) if k != "n_pixels" else v) for k, v in metrics.as_dict().items()}


def _as_prediction(result, *, what: str, shape: tuple[int, int]) -> np.ndarray:
    disparity = result[0] if isinstance(result, tuple) else result
    disparity = np.asarray(disparity, dtype=np.float32)
    if disparity.shape != shape:
        raise ValueError(
            f"{what} returned disparity of shape {disparity.shape}, expected the scene's {shape}"
        )
    return disparity


def side_by_side_image(
    sample,
    prediction: np.ndarray,
    *,
    metrics: dict[str, DisparityMetrics],
    occlusion: np.ndarray,
    compare: np.ndarray | None = None,
    method_name: str = "ours",
    compare_name: str = "sgbm",
    max_error: float = 4.0,
    tile_width: int = 480,
) -> np.ndarray:
    """The labelled comparison sheet for one scene (RGB uint8).

    Row 1: left image | ground truth | method | comparison. Row 2: GT occlusion (white = not visible in
    the right view) | bad-2 pixels of the method (red) | method error | comparison error. Disparities share
    the ground truth's colour range; errors run 0 .. ``max_error`` px, white = hole (no prediction where
    the ground truth is known), black = no ground truth.
    """
    from .viz import colorize_disparity, colorize_error, contact_sheet

    gt = sample.disparity
    known = np.isfinite(gt)
    vmin, vmax = (float(gt[known].min()), float(gt[known].max())) if known.any() else (None, None)

    def error_map(pred: np.ndarray) -> np.ndarray:
        err = np.abs(pred - gt)
        err[known & ~np.isfinite(pred)] = np.inf
        err[~known] = np.nan
        return err

    def caption(name: str, m: DisparityMetrics) -> str:
        return f"{name}: bad2 {m.bad2:.1f}% epe {m.epe:.2f} dens {m.density:.0f}%"

    ours_err = error_map(prediction)
    bad2 = np.zeros(gt.shape + (3,), np.uint8)
    bad2[known] = 64
    bad2[known & ~(ours_err <= 2.0)] = (255, 0, 0)
    row1 = [
        sample.left,
        colorize_disparity(gt, vmin=vmin, vmax=vmax),
        colorize_disparity(prediction, vmin=vmin, vmax=vmax),
    ]
    lab1 = [sample.name, "ground truth", caption(method_name, metrics["all"])]
    row2 = [occlusion, bad2, colorize_error(ours_err, max_error=max_error)]
    lab2 = ["GT occlusion (white)", f"{method_name} bad-2 (red)", f"{method_name} |error| 0..{max_error:g}px"]
    if compare is not None:
        row1.append(colorize_disparity(compare, vmin=vmin, vmax=vmax))
        lab1.append(caption(compare_name, metrics["compare_all"]))
        row2.append(colorize_error(error_map(compare), max_error=max_error))
        lab2.append(f"{compare_name} |error| 0..{max_error:g}px")
    return contact_sheet([row1, row2], labels=[lab1, lab2], tile_width=tile_width)


def evaluate_dataset(
    samples,
    predict_fn,
    *,
    compare_fn=None,
    method_name: str = "ours",
    compare_name: str = "sgbm",
    out_dir=None,
    progress: bool = True,
) -> dict:
    """Scores ``predict_fn`` on every sample of a ground-truth dataset; returns the report dict.

    ``samples``: iterable of :class:`~mono2stereo_core.datasets_gt.GTSample` (``len()`` used for the
    progress bar when available). ``predict_fn(sample)`` / ``compare_fn(sample)`` return an ``H x W``
    disparity (or a ``(disparity, confidence)`` tuple) at the sample's resolution, NaN = no prediction.
    With ``out_dir`` each scene gets ``<scene>_side_by_side.png`` (:func:`side_by_side_image`) and
    ``<scene>_disparity.png`` (the method's colorized disparity).

    The report has the pooled all-pixel metrics at the top level (``METRIC_KEYS``), ``noc``, ``occ``,
    ``occ_border``, ``edge``, ``interior`` and (with ``compare_fn``) ``both``, ``both_edge``, ``both_interior``
    sub-dicts, ``flying`` (percent of GT-valid pixels predicted between two GT surfaces, :func:`flying_pixel_mask`), ``compare`` (the comparison
    method's metrics on each of those regions, and its ``flying``), ``scenes`` (the same per scene, plus timing)
    and ``timing``. Pooling adds pixel counts, so every scored pixel of every scene weighs the same.
    """
    import time
    from pathlib import Path

    from tqdm import tqdm

    from .viz import colorize_disparity, save_png

    out_path = Path(out_dir) if out_dir is not None else None
    totals: dict[str, DisparityMetrics] = {}
    flying_totals: dict[str, int] = {}
    scenes = []
    total = len(samples) if hasattr(samples, "__len__") else None
    predict_seconds = 0.0
    compare_seconds = 0.0
    started = time.perf_counter()
    for sample in tqdm(
        samples, total=total, desc=f"evaluate {method_name}", unit="scene", disable=not progress
    ):
        gt = np.asarray(sample.disparity, dtype=np.float32)
        t0 = time.perf_counter()
        pred = _as_prediction(predict_fn(sample), what=f"{method_name} on {sample.name}", shape=gt.shape)
        t1 = time.perf_counter()
        compare = None
        if compare_fn is not None:
            compare = _as_prediction(
                compare_fn(sample), what=f"{compare_name} on {sample.name}", shape=gt.shape
            )
        t2 = time.perf_counter()
        predict_seconds += t1 - t0
        compare_seconds += t2 - t1
        occlusion = occlusion_from_disparity(gt)
        metrics = evaluate_disparity(pred, gt, compare=compare, occlusion=occlusion)
        for key, value in metrics.items():
            totals[key] = totals.get(key, DisparityMetrics()) + value
        flying = {"ours": int(flying_pixel_mask(pred, gt).sum())}
        if compare is not None:
            flying["compare"] = int(flying_pixel_mask(compare, gt).sum())
        for key, count in flying.items():
            flying_totals[key] = flying_totals.get(key, 0) + count
        scene = _report_section(metrics)
        _add_flying(scene, flying, metrics["all"].n_scored)
        scene.update(
            name=sample.name,
            height=int(gt.shape[0]),
            width=int(gt.shape[1]),
            gt_valid_percent=_json_number(100.0 * float(np.isfinite(gt).mean())),
            occluded_percent=_json_number(
                100.0 * float(occlusion[np.isfinite(gt)].mean()) if np.isfinite(gt).any() else math.nan
            ),
            predict_seconds=round(t1 - t0, 4),
        )
        if compare is not None:
            scene["compare_seconds"] = round(t2 - t1, 4)
        if out_path is not None:
            sheet = side_by_side_image(
                sample,
                pred,
                metrics=metrics,
                occlusion=occlusion,
                compare=compare,
                method_name=method_name,
                compare_name=compare_name,
            )
            scene["side_by_side"] = save_png(out_path / f"{sample.name}_side_by_side.png", sheet).name
            known = np.isfinite(gt)
            vmin, vmax = (float(gt[known].min()), float(gt[known].max())) if known.any() else (None, None)
            colored = colorize_disparity(pred, vmin=vmin, vmax=vmax)
            scene["disparity_png"] = save_png(out_path / f"{sample.name}_disparity.png", colored).name
        scenes.append(scene)
    if not scenes:
        raise ValueError("evaluate_dataset got no samples to score")
    report = _report_section(totals)
    _add_flying(report, flying_totals, totals["all"].n_scored)
    report.update(
        method=method_name,
        compare_method=compare_name if compare_fn is not None else None,
        num_scenes=len(scenes),
        scenes=scenes,
        timing={
            "total_seconds": round(time.perf_counter() - started, 3),
            "predict_seconds_per_scene": round(predict_seconds / len(scenes), 4),
            **({"compare_seconds_per_scene": round(compare_seconds / len(scenes), 4)} if compare_fn else {}),
        },
    )
    return report


def _add_flying(section: dict, counts: dict[str, int], n_valid: int) -> None:
    """``flying`` (percent of the ``n_valid`` GT-valid pixels, i.e. the all-pixel region's ``n_scored``;
    :func:`flying_pixel_mask`) for the method and the comparison."""
    percent = lambda count: _json_number(100.0 * count / n_valid if n_valid else math.nan)  # noqa: E731
    section["flying"] = percent(counts["ours"])
    if "compare" in counts and "compare" in section:
        section["compare"]["flying"] = percent(counts["compare"])


def _report_section(metrics: dict[str, DisparityMetrics]) -> dict:
    section: dict = dict(metrics_json(metrics["all"]))
    for region in ("noc", "occ", "occ_border", "edge", "interior", "both", "both_edge", "both_interior"):
        if region in metrics:
            section[region] = metrics_json(metrics[region])
    if "both" in metrics:
        section["compare"] = {
            key[len("compare_") :]: metrics_json(value) for key, value in metrics.items() if key.startswith("compare_")
        }
    return section
