"""Background fill in occlusions for a network's disparity: the runner's ``occlusion_fill`` (one pass, the
default) and ``lr_check`` (a second, mirrored pass).

A stereo network asked for the left view's disparity answers everywhere, also where the left pixel has no
match: pixels occluded in the right view (the strip left of every foreground object) and the left border that
the right camera does not see. There it tends to continue the foreground leftwards (measured on the shipped
``m2s_rt``, sixth session: occluded pixels are 9-12 % of the ground truth of the real pairs, 60-70 % of them are
wrong by more than 2 px, mostly too near), which makes objects look wider than they are.

The classical remedy, the one SGM implementations use: run the matcher a second time for the *right* view,
keep the left disparities that the right view confirms (``|dL(x) - dR(x - dL(x))| <= tolerance``), and fill
every other pixel with the *background* disparity: the smaller of the nearest confirmed disparities to its left
and right on the same row (an occluded pixel belongs to the surface behind the object that hides it), then a
small median over the filled pixels only, which removes the streaks a row-wise fill leaves. The right view's
disparity comes from the same network run on the mirrored pair (``left' = flip(right)``, ``right' =
flip(left)``): a rectified rig seen in a mirror is again a rectified rig with the cameras' roles swapped, which
is also how training mirrors its pairs. Costs a second network pass; the check and fill are a few ms of numpy.

``occlusion_fill`` (:func:`occlusion_fill`, on by default) needs no second pass: the left disparity itself says
which left pixels the right camera cannot see, by the z-buffer the evaluation uses on the ground truth
(:func:`~mono2stereo_core.evaluation.occlusion_from_disparity`: forward-warp every left pixel to ``x - d``, the
nearest surface wins; plus the pixels that land left of the right image). Those pixels, and the ``trim`` pixels
right of each such run (where the network tends to let the occluder start one pixel early), get the same
background fill. Measured on the shipped default (thirteenth session, docs/training.md): motorcycle all-pixel
bad-2 10.77 -> 9.97 %, Aloe 11.65 -> 10.42 %, the 16 held-out procedural scenes 19.13 -> 18.39 %, for about 15 ms
of numpy per 640 x 480 frame on this 2-core CPU (1.04x the ONNX Runtime frame with the stereo node's malloc
thresholds, 1.09x with glibc's defaults, whose page faults on the temporaries cost more than the work). After
``lr_check``'s fill it made Aloe and the held-out scenes worse, so the runner applies one or the other.
"""

from __future__ import annotations

import cv2
import numpy as np

from mono2stereo_core.evaluation import occlusion_from_disparity

__all__ = [
    "DEFAULT_LR_TOLERANCE",
    "DEFAULT_OCCLUSION_TRIM",
    "fill_background",
    "left_right_inconsistent",
    "lr_check_fill",
    "occlusion_fill",
    "self_occlusion",
]

# Measured on the two real pairs and 16 held-out procedural scenes (docs/inference.md, sixth session): 1.5 and
# 2.5 px moved the sets in different directions by a few tenths of a point; 2 px is the one in the middle.
DEFAULT_LR_TOLERANCE = 2.0
_FILL_MEDIAN = 5  # cv2.medianBlur on float32 supports 3 and 5
# Chosen on the 16 held-out procedural scenes (all-pixel + non-occluded bad-2, 4 sub-samples; 0 / 1 / 2 px:
# 18.46 + 12.03, 18.36 + 12.08, 18.30 + 12.15) before the real pairs were looked at, and again the smallest sum
# at the shipped 2 sub-samples (0 / 1 / 2 / 3 px: 30.53, 30.52, 30.56, 30.66); docs/training.md, thirteenth session.
DEFAULT_OCCLUSION_TRIM = 1
# Sub-samples per pixel of the z-buffer: 2 instead of the evaluation's 4 halves its time (640 x 480: 13 vs 25 ms)
# for the same accuracy within a few hundredths of a point on every set (held-out all-pixel 18.39 vs 18.36 %,
# 150 more procedural scenes 26.10 vs 26.12 %, motorcycle 9.97 vs 9.99 %).
OCCLUSION_SAMPLES = 2


def _check_map(array: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(array, dtype=np.float32)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"{name} disparity must be a non-empty H x W array, instead got shape {a.shape}")
    return a


def left_right_inconsistent(
    left_disparity: np.ndarray, right_disparity: np.ndarray, *, tolerance: float = DEFAULT_LR_TOLERANCE
) -> np.ndarray:
    """``H x W`` bool: left pixels the right view does not confirm, or whose match lies outside the right image.

    ``left_disparity`` (left view) and ``right_disparity`` (right view, same size) in pixels; a left pixel
    ``x`` with disparity ``d`` lands at ``round(x - d)`` in the right view. Non-finite values never confirm.
    """
    dl = _check_map(left_disparity, "left")
    dr = _check_map(right_disparity, "right")
    if dl.shape != dr.shape:
        raise ValueError(f"left disparity {dl.shape} and right disparity {dr.shape} must have the same size")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, instead got {tolerance}")
    h, w = dl.shape
    x = np.arange(w, dtype=np.float32)[None, :]
    with np.errstate(invalid="ignore"):
        land = x - dl
        target = np.clip(np.rint(np.nan_to_num(land, nan=-1.0)), 0, w - 1).astype(np.intp)
        seen = np.take_along_axis(dr, target, axis=1)
        agree = np.abs(dl - seen) <= tolerance
    return ~(agree & (land >= -0.5))


def fill_background(disparity: np.ndarray, invalid: np.ndarray, *, median: int = _FILL_MEDIAN) -> np.ndarray:
    """``disparity`` with every ``invalid`` pixel replaced by the background disparity of its row.

    Background = the smaller of the nearest valid disparities to the left and to the right (one side when the
    row ends); a pixel is only ever lowered, never raised. Then a ``median`` x ``median`` median (0 = none) is
    taken over the filled pixels only. Rows with no valid pixel keep their values.
    """
    d = _check_map(disparity, "")
    bad = np.asarray(invalid, dtype=bool)
    if bad.shape != d.shape:
        raise ValueError(f"invalid mask {bad.shape} and disparity {d.shape} must have the same size")
    if median not in (0, 3, 5):
        raise ValueError(f"median must be 0, 3 or 5, instead got {median}")
    out = d.copy()
    if not bad.any():
        return out
    h, w = d.shape
    cols = np.arange(w)[None, :]
    good = ~bad & np.isfinite(d)
    last_left = np.maximum.accumulate(np.where(good, cols, -1), axis=1)
    next_right = np.minimum.accumulate(np.where(good, cols, w)[:, ::-1], axis=1)[:, ::-1]
    # Gathers at the invalid pixels only (typically a tenth of the frame; 640 x 480: 9.1 instead of 11.5 ms).
    ys, xs = np.nonzero(bad)
    left_x, right_x = last_left[ys, xs], next_right[ys, xs]
    from_left = np.where(left_x >= 0, d[ys, np.clip(left_x, 0, w - 1)], np.inf)
    from_right = np.where(right_x < w, d[ys, np.clip(right_x, 0, w - 1)], np.inf)
    background = np.minimum(from_left, from_right)
    ok = np.isfinite(background)
    ys, xs = ys[ok], xs[ok]
    with np.errstate(invalid="ignore"):
        out[ys, xs] = np.fmin(d[ys, xs], background[ok])
    if median:
        smoothed = cv2.medianBlur(np.ascontiguousarray(out), median)
        out[ys, xs] = smoothed[ys, xs]
    return out


def self_occlusion(disparity: np.ndarray, *, trim: int = DEFAULT_OCCLUSION_TRIM) -> np.ndarray:
    """``H x W`` bool: left pixels that ``disparity`` itself puts out of the right camera's view.

    Hidden behind a nearer pixel or landing left of the right image
    (:func:`~mono2stereo_core.evaluation.occlusion_from_disparity` with :data:`OCCLUSION_SAMPLES`), each run of
    them extended by ``trim`` pixels to the right: into the occluder's first columns, which a network that
    continues the foreground into its occlusion gets wrong as well.
    """
    d = _check_map(disparity, "")
    if isinstance(trim, bool) or not isinstance(trim, (int, np.integer)) or trim < 0:
        raise ValueError(f"trim must be an integer >= 0, instead got {trim!r}")
    hidden = occlusion_from_disparity(d, samples_per_pixel=OCCLUSION_SAMPLES)
    mask = hidden.copy()
    for shift in range(1, min(int(trim), d.shape[1] - 1) + 1):
        mask[:, shift:] |= hidden[:, :-shift]
    return mask


def occlusion_fill(
    disparity: np.ndarray, confidence: np.ndarray, *, trim: int = DEFAULT_OCCLUSION_TRIM
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runner's ``occlusion_fill``: ``(filled disparity, confidence with 0 where filled, mask)``.

    One pass: the pixels :func:`self_occlusion` marks get :func:`fill_background` (never raised, only lowered
    to their row's background) and confidence 0, so ``confidence_threshold > 0`` drops them instead.
    """
    mask = self_occlusion(disparity, trim=trim)
    return (*_filled_with_confidence(disparity, confidence, mask), mask)


def _filled_with_confidence(
    disparity: np.ndarray, confidence: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fill_background` of the ``mask`` pixels and a copy of ``confidence`` with 0 there."""
    filled = fill_background(disparity, mask)
    conf = np.array(confidence, dtype=np.float32, copy=True)
    if conf.shape != filled.shape:
        raise ValueError(f"confidence {conf.shape} and disparity {filled.shape} must have the same size")
    conf[mask] = 0.0
    return filled, conf


def lr_check_fill(
    left_disparity: np.ndarray,
    confidence: np.ndarray,
    right_disparity: np.ndarray,
    *,
    tolerance: float = DEFAULT_LR_TOLERANCE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runner's ``lr_check``: ``(filled disparity, confidence with 0 where filled, inconsistent mask)``."""
    inconsistent = left_right_inconsistent(left_disparity, right_disparity, tolerance=tolerance)
    return (*_filled_with_confidence(left_disparity, confidence, inconsistent), inconsistent)
