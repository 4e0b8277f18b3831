"""Stage-1 stereo synthesis: one image + (monocular) depth -> a stereo training pair.

Steps, in order (see docs/synthesis.md for the why and the measured numbers):
1. :func:`depth_to_training_disparity`: relative depth / inverse depth -> disparity in pixels with a random
   scale (the nearest point's disparity), rarely beyond the network's range so it learns to saturate.
2. :func:`sharpen_disparity_edges`: monocular depth smears depth edges into ramps; warping a ramp leaves
   "flying pixels" hanging between foreground and background. Pixels in a high-contrast window are snapped
   to the nearer of the window's minimum or maximum, which cuts the ramp into two clean layers.
3. :func:`~mono2stereo_core.synthesis.warp.forward_splat`: z-ordered sub-pixel splatting left -> right,
   giving the right view, its disparity, the hole mask (right pixels nobody reaches) and the occlusion
   mask (left pixels not visible on the right).
4. Inpainting of the holes: ``"ea"`` (:func:`~mono2stereo_core.synthesis.inpaint.edge_aware_inpaint`, the
   default), ``"naive"`` (nearest neighbour on the row, for the ablation) or ``"telea"`` (OpenCV).
5. Optional augmentation (:func:`~mono2stereo_core.synthesis.augment.augment_pair`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment_pair
from .inpaint import disparity_edges, edge_aware_inpaint, nearest_fill, running_extreme, telea_inpaint
from .warp import forward_splat

__all__ = [
    "INPAINT_METHODS",
    "OUTPUT_KINDS",
    "SynthesisConfig",
    "SyntheticPair",
    "depth_to_training_disparity",
    "sharpen_disparity_edges",
    "synthesize_batch",
    "synthesize_pair",
]

INPAINT_METHODS = ("ea", "naive", "telea")
OUTPUT_KINDS = ("inverse_depth", "depth", "disparity")


@dataclass(frozen=True)
class SynthesisConfig:
    """All knobs of the stage-1 pipeline; :meth:`from_dict` reads the ``synthesis:`` YAML section.

    Disparity scale (pixels at the synthesis resolution): the nearest point of a scene gets
    ``m * U(scale_range)``, and with probability ``out_of_range_prob`` ``m * U(out_of_range_scale)`` instead
    (beyond the network's range), where ``m = min(max_disparity, max_width_fraction * image width)`` so small
    images do not get disparities no rig could produce.
    """

    max_disparity: float = 192.0
    max_width_fraction: float = 0.5
    scale_range: tuple[float, float] = (0.1, 1.0)
    out_of_range_prob: float = 0.02
    out_of_range_scale: tuple[float, float] = (1.0, 1.5)
    robust_percentile: float = 99.5
    sharpen: bool = True
    sharpen_radius: int = 2
    sharpen_relative_jump: float = 0.1
    sharpen_min_jump: float = 1.0
    z_tolerance: float = 1.0
    min_weight: float = 0.5
    edge_tau: float = 1.5
    edge_width: int = 1
    surface_tolerance: float = 1.0
    background_radius: int = 8
    texture_mix: float = 0.3
    texture_alpha: float = 0.0
    augment: AugmentConfig | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.max_disparity > 0:
            raise ValueError(f"max_disparity must be > 0 px, instead got {self.max_disparity}")
        for name in ("scale_range", "out_of_range_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, instead got {(lo, hi)}")
        if not 0.0 < self.max_width_fraction <= 1.0:
            raise ValueError(f"max_width_fraction must be in (0, 1], instead got {self.max_width_fraction}")
        if not 0.0 <= self.out_of_range_prob <= 1.0:
            raise ValueError(f"out_of_range_prob must be in [0, 1], instead got {self.out_of_range_prob}")
        if not 50.0 <= self.robust_percentile <= 100.0:
            raise ValueError(f"robust_percentile must be in [50, 100], instead got {self.robust_percentile}")

    @classmethod
    def from_dict(cls, values: Mapping | None) -> SynthesisConfig:
        """Builds a config from a mapping (YAML); ``augment`` may be a mapping, ``true`` (defaults) or null."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown synthesis option(s) {unknown}; known: {sorted(known)}")
        aug = values.pop("augment", None)
        if aug is True:
            values["augment"] = AugmentConfig()
        elif aug not in (None, False):
            values["augment"] = AugmentConfig.from_dict(aug)
        for key, value in list(values.items()):
            if isinstance(value, list):
                values[key] = tuple(value)
        return cls(**values)

    def with_augment(self, augment: AugmentConfig | None) -> SynthesisConfig:
        return replace(self, augment=augment)


@dataclass(frozen=True)
class SyntheticPair:
    """A synthesized stereo pair (numpy).

    Attributes:
        left, right: H x W x 3 uint8 RGB.
        disparity: H x W float32 left-view disparity in pixels, NaN where invalid.
        valid: H x W bool, left pixels with a disparity label.
        occlusion: H x W bool, left pixels not visible in the right view (behind a nearer surface or out of
            the right image).
        right_disparity: H x W float32 right-view disparity (holes filled with the background's; 0 on rows
            with nothing to fill from).
        holes: H x W bool, right pixels that were inpainted (not seen by the left camera).
        scale: the disparity scale drawn by :func:`depth_to_training_disparity`, if known (else NaN).
    """

    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray
    valid: np.ndarray
    occlusion: np.ndarray
    right_disparity: np.ndarray
    holes: np.ndarray
    scale: float = float("nan")


def depth_to_training_disparity(
    prediction: np.ndarray,
    *,
    kind: str,
    config: SynthesisConfig | None = None,
    rng: np.random.Generator | None = None,
    source: str = "prediction",
) -> tuple[np.ndarray, float]:
    """Turns a monocular prediction into a disparity map with a random, plausible scale.

    Monocular depth is only known up to scale (and Depth Anything's "relative" output is an inverse depth
    up to an affine map), so the prediction is normalized to a relative inverse depth in [0, 1] (robust
    maximum at ``config.robust_percentile``) and multiplied by a random scale: the nearest point's
    disparity, ``max_disparity * U(scale_range)``. With probability ``out_of_range_prob`` the scale is drawn
    from ``out_of_range_scale`` instead, so a few pairs exceed the network's range and it learns to
    saturate rather than wrap around. The reference is capped at ``max_width_fraction`` of the image width.

    Args:
        prediction: H x W float array.
        kind: ``"inverse_depth"`` (relative, e.g. Depth Anything; slightly negative values are clipped to 0),
            ``"depth"`` (must be positive; converted to 1/depth) or ``"disparity"`` (treated like inverse depth).
        config: scale settings; defaults to :class:`SynthesisConfig`.
        rng: numpy Generator for the scale draw.
        source: name used in error messages (e.g. the image path).

    Returns:
        ``(disparity, scale)``: H x W float32 disparity in pixels and the drawn scale.

    Raises:
        ValueError: non-2-D input, NaN or infinite values, non-positive depth, or a constant map.
    """
    config = config or SynthesisConfig()
    rng = rng if rng is not None else np.random.default_rng()
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}, instead got {kind!r} for {source}")
    pred = np.asarray(prediction, dtype=np.float32)
    if pred.ndim != 2:
        raise ValueError(f"{source}: {kind} must be a 2-D H x W map, instead got shape {pred.shape}")
    bad = ~np.isfinite(pred)
    if bad.any():
        raise ValueError(
            f"{source}: {kind} contains {int(np.isnan(pred).sum())} NaN and {int(np.isinf(pred).sum())} infinite "
            f"values (of {pred.size}); fix the depth source or mask them out before synthesis"
        )
    if kind == "depth":
        if (pred <= 0).any():
            raise ValueError(
                f"{source}: depth must be > 0 everywhere, instead got {int((pred <= 0).sum())} values <= 0 "
                f"(minimum {float(pred.min()):.4g})"
            )
        inv = 1.0 / pred
    else:
        inv = np.clip(pred, 0.0, None)
    top = float(np.percentile(inv, config.robust_percentile))
    if not top > 0 or float(inv.max() - inv.min()) <= 1e-6 * max(top, 1e-12):
        raise ValueError(
            f"{source}: {kind} is constant or non-positive (robust max {top:.4g}); no depth structure to warp"
        )
    relative = np.clip(inv / top, 0.0, 1.0)
    lo, hi = config.out_of_range_scale if rng.random() < config.out_of_range_prob else config.scale_range
    reference = min(config.max_disparity, config.max_width_fraction * pred.shape[1])
    scale = float(reference * rng.uniform(lo, hi))
    return (relative * scale).astype(np.float32), scale


def sharpen_disparity_edges(
    disparity: torch.Tensor,
    *,
    radius: int = 2,
    relative_jump: float = 0.1,
    min_jump: float = 1.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Snaps pixels near depth discontinuities to the nearer of the local min/max disparity.

    Only horizontal ramps make flying pixels in a horizontal warp, so the window is a row segment of
    ``2r+1`` pixels. A pixel is on a discontinuity when that window spans more than ``min_jump`` pixels and
    more than ``relative_jump`` of the window's maximum, and more than twice what the slope just outside
    the window would explain (a plane spreads by ``2r`` times its slope), and the pixel itself lies between
    the extremes (not within 10 % of the spread from either). Planes keep their slope, clean steps stay
    put, and ramps between layers become a clean step at their midpoint. Invalid pixels (NaN/inf or ``~valid``) neither change nor vote.

    Args:
        disparity: N x 1 x H x W disparity in pixels.
        radius: window radius in pixels (about the width of the smeared band).
        relative_jump, min_jump: discontinuity thresholds (fraction of the local max, pixels).
        valid: optional N x 1 x H x W bool mask.

    Returns:
        N x 1 x H x W sharpened disparity (invalid pixels unchanged).
    """
    if disparity.ndim != 4 or disparity.shape[1] != 1:
        raise ValueError(f"disparity must be N x 1 x H x W, instead got shape {tuple(disparity.shape)}")
    if radius < 1:
        raise ValueError(f"radius must be >= 1, instead got {radius}")
    ok = torch.isfinite(disparity) if valid is None else valid.to(torch.bool) & torch.isfinite(disparity)
    d = torch.nan_to_num(disparity, nan=0.0, posinf=0.0, neginf=0.0)
    okf = ok.to(d.dtype)
    # Invalid pixels must not vote: they enter the max as -1e9 and the min as +1e9 (finite, exact lerp).
    local_max = running_extreme(torch.lerp(torch.full_like(d, -1e9), d, okf), radius)
    local_min = running_extreme(torch.lerp(torch.full_like(d, 1e9), d, okf), radius, largest=False)
    spread = local_max - local_min
    # Slope just outside the window on either side: a plane spreads by about 2r times its slope and is left
    # alone; a ramp between two layers spreads far more than the surfaces around it slope.
    grad = (d[..., 1:] - d[..., :-1]).abs() * (ok[..., 1:] & ok[..., :-1])
    padded = F.pad(grad, (radius + 1, radius + 1), value=1e9)  # beyond the border: no evidence of flatness
    w = d.shape[-1]
    outer = torch.minimum(padded[..., :w], padded[..., 2 * radius + 1 : 2 * radius + 1 + w])
    # Only pixels hanging *between* the layers move; pixels already on one side of a clean step stay.
    between = torch.minimum(d - local_min, local_max - d) > 0.1 * spread
    on_edge = (
        ok
        & between
        & (spread > min_jump)
        & (spread > relative_jump * local_max.abs())
        & (spread > 2.0 * (2 * radius) * outer)
    )
    snapped = torch.lerp(local_min, local_max, (local_max - d < d - local_min).to(d.dtype))
    return torch.where(on_edge, snapped, disparity)


def _as_generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def synthesize_batch(
    left: torch.Tensor,
    disparity: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    inpaint: str = "ea",
    generator: torch.Generator | None = None,
    config: SynthesisConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Synthesizes right views for a batch, on the batch's device (used on the fly in training).

    Args:
        left: N x 3 x H x W float in [0, 1].
        disparity: N x 1 x H x W left-view disparity in pixels; NaN/inf/negative = invalid.
        valid: optional N x 1 x H x W bool label mask (ANDed with the finite, non-negative test).
        inpaint: ``"ea"``, ``"naive"`` or ``"telea"``.
        generator: CPU ``torch.Generator`` for the augmentation draws.
        config: :class:`SynthesisConfig`; augmentation runs when ``config.augment`` is set.

    Returns:
        Dict of tensors with :data:`~mono2stereo_core.synthesis.augment.STEREO_KEYS`: ``left``, ``right``
        (N x 3 x H x W in [0, 1]), ``disparity`` (N x 1 x H x W, 0 where invalid), ``valid``, ``occlusion``,
        ``right_disparity``, ``right_valid`` (right pixels seen by the left camera), ``right_occlusion``
        (the inpainted holes).
    """
    config = config or SynthesisConfig()
    if inpaint not in INPAINT_METHODS:
        raise ValueError(f"inpaint must be one of {INPAINT_METHODS}, instead got {inpaint!r}")
    if left.ndim != 4 or left.shape[1] != 3:
        raise ValueError(f"left must be N x 3 x H x W, instead got shape {tuple(left.shape)}")
    n, _, h, w = left.shape
    if tuple(disparity.shape) != (n, 1, h, w):
        raise ValueError(
            f"disparity must be N x 1 x H x W = {(n, 1, h, w)}, instead got {tuple(disparity.shape)}"
        )
    left = left if left.is_floating_point() else left.float() / 255.0
    disp = disparity.to(left.device, left.dtype)
    ok = torch.isfinite(disp) & (disp >= 0)
    if valid is not None:
        ok &= valid.to(left.device, torch.bool)
    if config.sharpen:
        disp = sharpen_disparity_edges(
            disp,
            radius=config.sharpen_radius,
            relative_jump=config.sharpen_relative_jump,
            min_jump=config.sharpen_min_jump,
            valid=ok,
        )
    disp = torch.nan_to_num(disp, nan=0.0, posinf=0.0, neginf=0.0) * ok

    # The left-view edge mask travels with the colours, so mixed-colour pixels on *both* sides of each
    # depth edge are known in the right view, including those bordering a hole.
    edges_left = disparity_edges(disp, tau=config.edge_tau, width=config.edge_width, valid=ok)
    splat = forward_splat(
        torch.cat([left, edges_left.to(left.dtype)], dim=1),
        disp,
        valid=ok,
        z_tolerance=config.z_tolerance,
        min_weight=config.min_weight,
    )
    warped, edges_right = splat.image[:, :3], splat.image[:, 3:] > 0.25
    holes = ~splat.coverage
    if inpaint == "ea":
        texture = None
        if config.texture_alpha > 0:
            # Detail from another image of the batch (or, alone, the same image upside down).
            texture = left.roll(1, dims=0) if n > 1 else left.flip(-2)
        filled = edge_aware_inpaint(
            warped,
            splat.disparity,
            holes,
            edges=edges_right,
            surface_tolerance=config.surface_tolerance,
            background_radius=config.background_radius,
            texture_mix=config.texture_mix,
            texture=texture,
            texture_alpha=config.texture_alpha,
        )
    elif inpaint == "naive":
        filled = nearest_fill(warped, splat.disparity, holes)
    else:
        filled = telea_inpaint(warped, splat.disparity, holes)

    out = {
        "left": left,
        "right": filled.image.clamp(0, 1),
        "disparity": disp,
        "valid": ok,
        "occlusion": splat.occlusion,
        "right_disparity": filled.disparity,
        "right_valid": splat.coverage,
        "right_occlusion": holes,
    }
    if config.augment is not None:
        out = augment_pair(out, config=config.augment, generator=generator)
    return out


def synthesize_pair(
    left: np.ndarray,
    disparity: np.ndarray,
    *,
    inpaint: str = "ea",
    seed: int | None = None,
    config: SynthesisConfig | None = None,
    device: str | torch.device = "cpu",
) -> SyntheticPair:
    """Synthesizes the right view of ``left`` given its disparity (the public, numpy entry point).

    Args:
        left: H x W x 3 uint8 RGB image.
        disparity: H x W left-view disparity in pixels; NaN/inf (Middlebury's unknown) and negative values
            are invalid and are not warped.
        inpaint: ``"ea"`` (Edge-Aware, default), ``"naive"`` or ``"telea"``.
        seed: seed of the augmentation draws (only used when ``config.augment`` is set).
        config: :class:`SynthesisConfig`; no augmentation by default.
        device: where to run (``"cuda"`` works as well).

    Returns:
        A :class:`SyntheticPair`.
    """
    img = np.asarray(left)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(
            f"left must be an H x W x 3 uint8 RGB image, instead got shape {img.shape} dtype {img.dtype}"
        )
    disp = np.asarray(disparity, dtype=np.float32)
    if disp.shape != img.shape[:2]:
        raise ValueError(f"disparity shape {disp.shape} does not match the image size {img.shape[:2]}")
    if not np.isfinite(disp).any():
        raise ValueError("disparity has no finite value; nothing to warp")
    left_t = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float() / 255.0
    disp_t = torch.from_numpy(disp).to(device)[None, None]
    with torch.no_grad():
        out = synthesize_batch(left_t, disp_t, inpaint=inpaint, generator=_as_generator(seed), config=config)

    def image(t: torch.Tensor) -> np.ndarray:
        return (t[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def mask(t: torch.Tensor) -> np.ndarray:
        return t[0, 0].cpu().numpy().astype(bool)

    valid = mask(out["valid"])
    disp_out = out["disparity"][0, 0].cpu().numpy().astype(np.float32)
    disp_out[~valid] = np.nan
    right_disp = out["right_disparity"][0, 0].cpu().numpy().astype(np.float32)
    holes = mask(out["right_occlusion"])
    return SyntheticPair(
        left=image(out["left"]),
        right=image(out["right"]),
        disparity=disp_out,
        valid=valid,
        occlusion=mask(out["occlusion"]) & valid,
        right_disparity=right_disp,
        holes=holes,
    )
