"""Z-ordered sub-pixel forward splatting (left -> right) and backward warping (right -> left).

Convention (see ``mono2stereo_core.geometry``): ``disparity`` is the left-view disparity in pixels, so the
left pixel at column ``x`` appears in the right image at column ``x - d`` on the same row.

Forward splatting is a scatter: every left pixel sends its colour to the two right-image columns that
bracket ``x - d`` with linear (bilinear-in-x) weights. Several left pixels can land on one right pixel; a
hard z-buffer (``scatter_reduce`` amax of disparity per target pixel) decides which surface is in front and
only splats within ``z_tolerance`` of the winner are accumulated, so a background pixel can never blend
into the foreground that hides it. Everything is a handful of ``index_add_``/``scatter_reduce_`` calls on
flattened tensors: batched, CPU or CUDA, no Python loops over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SplatResult", "backward_warp", "forward_splat"]


@dataclass(frozen=True)
class SplatResult:
    """Output of :func:`forward_splat`; all tensors are on the input's device.

    Attributes:
        image: N x C x H x W warped (right-view) image; zeros where ``coverage`` is False.
        coverage: N x 1 x H x W bool, right pixels that received enough z-test-surviving weight.
            ``~coverage`` is the hole (disocclusion / out-of-view) mask.
        disparity: N x 1 x H x W float, right-view disparity (weighted mean of the surviving splats);
            zeros where not covered.
        weight: N x 1 x H x W float, accumulated surviving splat weight (about 1 inside surfaces).
        occlusion: N x 1 x H x W bool, *left* pixels that are not visible in the right view: they lose the
            z-test (hidden behind a nearer surface) or land outside the right image. Invalid input pixels
            are not flagged here; combine with your own valid mask.
    """

    image: torch.Tensor
    coverage: torch.Tensor
    disparity: torch.Tensor
    weight: torch.Tensor
    occlusion: torch.Tensor

    @property
    def holes(self) -> torch.Tensor:
        """N x 1 x H x W bool, right pixels nobody reaches."""
        return ~self.coverage


def _check_pair(image: torch.Tensor, disparity: torch.Tensor, valid: torch.Tensor | None) -> None:
    if image.ndim != 4:
        raise ValueError(f"image must be N x C x H x W, instead got shape {tuple(image.shape)}")
    n, _, h, w = image.shape
    if disparity.shape != (n, 1, h, w):
        raise ValueError(
            f"disparity must be N x 1 x H x W = {(n, 1, h, w)} to match the image, instead got {tuple(disparity.shape)}"
        )
    if valid is not None and valid.shape != (n, 1, h, w):
        raise ValueError(f"valid must be N x 1 x H x W = {(n, 1, h, w)}, instead got {tuple(valid.shape)}")
    if disparity.device != image.device:
        raise ValueError(f"image is on {image.device} but disparity is on {disparity.device}")


def forward_splat(
    image: torch.Tensor,
    disparity: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    z_tolerance: float = 1.0,
    min_weight: float = 0.5,
    occlusion_weight: float = 0.5,
) -> SplatResult:
    """Warps the left image to the right view by z-ordered linear splatting.

    Args:
        image: N x C x H x W float tensor (any range; typically [0, 1]).
        disparity: N x 1 x H x W left-view disparity in pixels. Non-finite values are treated as invalid.
        valid: optional N x 1 x H x W bool mask of left pixels to splat (e.g. ground-truth-valid pixels).
        z_tolerance: splats whose disparity is within this many pixels of the nearest surface landing on a
            target pixel count as the same surface. It must exceed the disparity change between adjacent
            pixels of a slanted surface (about |dD/dx|), and stay below the foreground/background jump.
        min_weight: a right pixel is covered when the surviving splat weight reaches this value. Below it the
            colour would come from the faint tail of a single neighbour, which is better treated as a hole.
        occlusion_weight: a left pixel is occluded when less than this fraction of its splat weight
            survives the z-test inside the image.

    Returns:
        A :class:`SplatResult`.
    """
    _check_pair(image, disparity, valid)
    if not z_tolerance > 0:
        raise ValueError(f"z_tolerance must be > 0 pixels, instead got {z_tolerance}")
    n, c, h, w = image.shape
    device = image.device
    dtype = image.dtype if image.is_floating_point() else torch.float32
    image = image.to(dtype)
    disp = disparity.to(dtype)

    finite = torch.isfinite(disp)
    source_ok = finite if valid is None else finite & valid.to(torch.bool)
    # Arithmetic masking instead of torch.where: several times faster on CPU for full image planes.
    disp = torch.nan_to_num(disp, nan=0.0, posinf=0.0, neginf=0.0) * source_ok

    xs = torch.arange(w, device=device, dtype=dtype).view(1, 1, 1, w)
    target_x = xs - disp
    x0 = torch.floor(target_x)
    # Two taps per source pixel, stacked on a new leading axis: (x0, 1 - frac) and (x0 + 1, frac).
    frac = target_x - x0
    tap_w = torch.stack([1.0 - frac, frac])
    tap_x = torch.stack([x0, x0 + 1.0])
    # A zero-weight tap (integer target) must not claim a z-buffer slot it does not draw into.
    tap_ok = (tap_x >= 0) & (tap_x <= w - 1) & (tap_w > 1e-6) & source_ok.unsqueeze(0)
    base = (torch.arange(n * h, device=device) * w).view(1, n, 1, h, 1)
    # Out-of-image taps are clamped onto the border and neutralized below (zero weight, -inf depth):
    # cheaper than routing them to a dump slot.
    idx = (base + tap_x.clamp(0, w - 1).long()).reshape(-1)

    tap_disp = disp.unsqueeze(0).expand_as(tap_w)
    # Taps that must not vote get a hugely negative depth key (finite, so the arithmetic select is exact).
    z_key = torch.lerp(torch.full_like(tap_w, -1e9), tap_disp, tap_ok.to(dtype))
    zbuffer = torch.full((n * h * w,), -1e9, dtype=dtype, device=device)
    zbuffer.scatter_reduce_(0, idx, z_key.reshape(-1), reduce="amax")
    winner = zbuffer.gather(0, idx).view_as(tap_w)
    survives = tap_ok & (tap_disp >= winner - z_tolerance)
    w_eff = tap_w * survives

    # One scatter for everything: colour channels, a ones channel (-> weight) and the disparity.
    # Channel-major (C+2) x (N*H*W) rows scatter along dim 1, about 3x faster on CPU than pixel-major.
    m = n * h * w
    feats = torch.cat([image, torch.ones_like(disp), disp], dim=1).transpose(0, 1).reshape(c + 2, 1, m)
    acc = torch.zeros(c + 2, m, dtype=dtype, device=device)
    acc.index_add_(1, idx, (feats * w_eff.reshape(1, 2, m)).reshape(c + 2, 2 * m))
    acc = acc.view(c + 2, n, h, w).transpose(0, 1)

    weight = acc[:, c : c + 1]
    coverage = weight >= min_weight
    inv = coverage / weight.clamp_min(1e-12)
    warped = acc[:, :c] * inv
    right_disp = acc[:, c + 1 :] * inv

    # Visible fraction of each source pixel: its surviving weight inside the image (out of 1).
    occlusion = source_ok & (w_eff.sum(0) < occlusion_weight)
    return SplatResult(
        image=warped,
        coverage=coverage,
        disparity=right_disp,
        weight=weight.contiguous(),
        occlusion=occlusion,
    )


def backward_warp(
    right: torch.Tensor, disparity: torch.Tensor, *, mode: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples the right image at ``x - d`` to reconstruct the left view (``grid_sample``).

    Args:
        right: N x C x H x W float tensor.
        disparity: N x 1 x H x W left-view disparity in pixels; non-finite values give invalid samples.
        mode: ``"bilinear"`` or ``"nearest"`` (``grid_sample`` modes).

    Returns:
        ``(warped, in_view)``: the N x C x H x W left-view reconstruction and an N x 1 x H x W bool mask of
        pixels whose sample fell inside the right image with a finite disparity.
    """
    _check_pair(right, disparity, None)
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', instead got {mode!r}")
    n, _, h, w = right.shape
    dtype = right.dtype if right.is_floating_point() else torch.float32
    disp = disparity.to(dtype)
    finite = torch.isfinite(disp)
    disp = torch.where(finite, disp, torch.zeros((), dtype=dtype, device=right.device))
    xs = torch.arange(w, device=right.device, dtype=dtype).view(1, 1, 1, w)
    ys = torch.arange(h, device=right.device, dtype=dtype).view(1, 1, h, 1)
    sample_x = xs - disp
    # align_corners=True maps -1/+1 to the centres of the first/last pixel: x_norm = x * 2 / (W - 1) - 1.
    gx = sample_x * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys * (2.0 / max(h - 1, 1)) - 1.0).expand(n, 1, h, w)
    grid = torch.cat([gx, gy], dim=1).permute(0, 2, 3, 1)
    warped = F.grid_sample(right.to(dtype), grid, mode=mode, padding_mode="border", align_corners=True)
    in_view = finite & (sample_x >= 0) & (sample_x <= w - 1)
    return warped, in_view
