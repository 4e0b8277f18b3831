"""Training losses: the stage-1 sequence loss and stage-2 Sparse-to-Dense Knowledge Distillation (S2DKD).

Shapes: disparity maps are N x 1 x H x W or N x H x W tensors in full-resolution pixels; valid masks are
bool (or 0/1) tensors of the same shape. Distributions over disparity bins are N x D x h x w at the network's
cost-volume resolution (h = H / downsample) with bin ``d`` standing for ``bin_values[d]`` full-resolution pixels.
docs/s2dkd.md explains how S2DKD reads the Mono2Stereo paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mono2stereo_core.models.stereo_net import StereoOutput


def _as_map(x: Tensor, *, name: str) -> Tensor:
    """N x H x W or N x 1 x H x W -> N x 1 x H x W."""
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4 and x.shape[1] == 1:
        return x
    raise ValueError(f"{name} must be N x H x W or N x 1 x H x W, instead got shape {tuple(x.shape)}")


def _valid_targets(target: Tensor, valid: Tensor | None, *, max_disparity: float, name: str) -> tuple[Tensor, Tensor]:
    """Returns (target with invalid entries zeroed, float mask) where the mask also drops non-finite and
    out-of-range targets, so callers may pass Middlebury-style +inf holes unmasked."""
    target = _as_map(target, name=name)
    finite = torch.isfinite(target)
    mask = finite & (target >= 0) & (target < max_disparity)
    if valid is not None:
        valid = _as_map(valid, name=f"{name} valid mask")
        if valid.shape != target.shape:
            raise ValueError(
                f"{name} valid mask shape {tuple(valid.shape)} does not match {name} shape {tuple(target.shape)}"
            )
        mask = mask & valid.bool()
    return torch.where(mask, target, torch.zeros_like(target)), mask.to(target.dtype)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    # Dividing by at least 1 keeps a batch with no valid pixels finite (loss 0, zero gradient).
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def downsample_disparity(
    disparity: Tensor,
    valid: Tensor,
    *,
    factor: float,
    mode: str = "nearest",
    size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Brings a full-resolution disparity map and its mask down to the cost-volume grid without blending.

    ``disparity``, ``valid``: N x 1 x H x W. Returns N x 1 x H/factor x W/factor, or N x 1 x ``size`` when the
    grid is given (a network with a ``working_scale`` has a cost volume of a size no integer factor gives).
    ``"nearest"`` takes the pixel at ``factor * i`` -- the centre of the encoder's strided convolutions, so the
    target sits where the network computed its cost (with ``size``: the pixel at ``round(i * H / h)``, the same
    point for an integer factor); ``"max"`` takes the largest valid disparity in each cell (nearest surface,
    i.e. min-pool of depth), which keeps thin foreground structures that nearest sampling can skip. Averaging is
    never used: across a depth edge it invents a disparity that belongs to neither surface.
    """
    if mode not in ("nearest", "max"):
        raise ValueError(f"downsample mode must be 'nearest' or 'max', instead got {mode!r}")
    height, width = disparity.shape[-2:]
    if float(factor).is_integer() and (size is None or tuple(size) == (height // int(factor), width // int(factor))):
        factor = int(factor)
        if mode == "nearest":
            return disparity[..., ::factor, ::factor], valid[..., ::factor, ::factor]
        masked = torch.where(valid > 0, disparity, torch.full_like(disparity, -1.0))
        pooled = F.max_pool2d(masked, factor)
        return pooled.clamp_min(0.0), (pooled >= 0).to(disparity.dtype)
    if size is None:
        raise ValueError(f"a non-integer factor {factor} needs the target grid size")
    h, w = int(size[0]), int(size[1])
    if mode == "nearest":
        rows = (torch.arange(h, device=disparity.device) * (height / h)).round().long().clamp_max(height - 1)
        cols = (torch.arange(w, device=disparity.device) * (width / w)).round().long().clamp_max(width - 1)
        return disparity[..., rows[:, None], cols], valid[..., rows[:, None], cols]
    masked = torch.where(valid > 0, disparity, torch.full_like(disparity, -1.0))
    pooled = F.adaptive_max_pool2d(masked, (h, w))
    return pooled.clamp_min(0.0), (pooled >= 0).to(disparity.dtype)


def teacher_distribution(teacher_disparity: Tensor, bin_values: Tensor, *, spread: float) -> Tensor:
    """Discretised Laplacian over disparity bins centred on a (teacher) disparity.

    ``teacher_disparity``: N x h x w or N x 1 x h x w, full-resolution pixels; ``bin_values``: D values.
    Returns N x D x h x w probabilities, p_d proportional to exp(-|bin_values[d] - t| / spread), summing to 1
    over d. A target between two bins splits its mass between them, so the student's sub-bin soft-argmax can
    reproduce it exactly. ``spread`` (pixels) is the Laplacian scale b: small = trust the teacher sharply.
    """
    if not spread > 0:
        raise ValueError(f"teacher spread must be > 0 pixels, instead got {spread}")
    t = _as_map(teacher_disparity, name="teacher_disparity")
    bins = bin_values.to(t).view(1, -1, 1, 1)
    return torch.softmax(-(bins - t).abs() / spread, dim=1)


def distribution_kl(teacher_prob: Tensor, student_log_prob: Tensor) -> Tensor:
    """Per-pixel KL(teacher || student) over the bin axis: N x D x h x w (both) -> N x 1 x h x w.

    Bins where the teacher has zero mass contribute exactly 0 (not 0 * -inf), and the result is exactly 0 when
    ``student_log_prob == log(teacher_prob)``.
    """
    if teacher_prob.shape != student_log_prob.shape:
        raise ValueError(
            f"teacher distribution {tuple(teacher_prob.shape)} and student log-distribution "
            f"{tuple(student_log_prob.shape)} must have the same shape"
        )
    positive = teacher_prob > 0
    log_p = torch.log(torch.where(positive, teacher_prob, torch.ones_like(teacher_prob)))
    terms = torch.where(positive, teacher_prob * (log_p - student_log_prob), torch.zeros_like(teacher_prob))
    return terms.sum(dim=1, keepdim=True)


def _distribution_term(
    log_prob: Tensor,
    bin_values: Tensor,
    target: Tensor,
    mask: Tensor,
    *,
    downsample: float,
    spread: float,
    mode: str,
) -> Tensor:
    """Mean KL between a Laplacian around ``target`` (full-res, N x 1 x H x W) and the student's distribution."""
    size = None if float(downsample).is_integer() else tuple(log_prob.shape[-2:])
    target_low, mask_low = downsample_disparity(target, mask, factor=downsample, mode=mode, size=size)
    if target_low.shape[-2:] != log_prob.shape[-2:]:
        raise ValueError(
            f"target at 1/{downsample} resolution is {tuple(target_low.shape[-2:])} but the student's distribution "
            f"is {tuple(log_prob.shape[-2:])}; full-resolution maps must be {downsample} x the cost volume"
        )
    prob = teacher_distribution(target_low, bin_values, spread=spread)
    return _masked_mean(distribution_kl(prob, log_prob), mask_low)


def sequence_loss(
    predictions: Sequence[Tensor] | StereoOutput,
    gt: Tensor,
    valid: Tensor | None,
    *,
    gamma: float = 0.8,
    max_disparity: float,
    distribution_weight: float = 0.0,
    spread: float = 2.0,
) -> Tensor:
    """Stage-1 loss on pairs with dense ground truth (synthesised or procedural).

    ``predictions``: full-resolution N x 1 x H x W maps, coarse -> fine, or a :class:`StereoOutput`. Each gets a
    smooth-L1 (beta 1 px) over pixels that are valid, finite and below ``max_disparity``, weighted
    ``gamma ** (n - 1 - i)`` so the final prediction counts 1 and earlier ones progressively less (RAFT).
    With ``distribution_weight > 0`` (needs a StereoOutput) it adds that weight times KL(Laplacian(gt, spread)
    || student distribution) at the cost-volume resolution: regressing the soft-argmax alone lets the network
    put mass on a second mode and still hit the mean, and such bimodal distributions make the confidence
    meaningless and the arg-max window jump; the KL term makes the distribution itself unimodal around the
    truth. Returns a scalar tensor.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], instead got {gamma}")
    output = predictions if isinstance(predictions, StereoOutput) else None
    preds = list(output.predictions if output is not None else predictions)
    if not preds:
        raise ValueError("sequence_loss needs at least one prediction, instead got an empty list")
    target, mask = _valid_targets(gt, valid, max_disparity=max_disparity, name="gt")
    n = len(preds)
    loss = target.new_zeros(())
    for i, pred in enumerate(preds):
        pred = _as_map(pred, name=f"predictions[{i}]")
        if pred.shape != target.shape:
            raise ValueError(f"predictions[{i}] shape {tuple(pred.shape)} does not match gt shape {tuple(target.shape)}")
        err = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0)
        loss = loss + gamma ** (n - 1 - i) * _masked_mean(err, mask)
    if distribution_weight > 0:
        if output is None or output.log_prob is None or output.bin_values is None:
            raise ValueError("distribution_weight > 0 needs a StereoOutput with log_prob and bin_values")
        loss = loss + distribution_weight * _distribution_term(
            output.log_prob, output.bin_values, target, mask, downsample=output.downsample, spread=spread, mode="nearest"
        )
    return loss


def _weighted_affine_fit(m: Tensor, d: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Closed-form weighted least squares of d ~ s m + t per row. m, d, w: N x P -> (s, t): N each."""
    sw = w.sum(1).clamp_min(1e-12)
    mm = (w * m).sum(1) / sw
    md = (w * d).sum(1) / sw
    cov = (w * (m - mm[:, None]) * (d - md[:, None])).sum(1)
    var = (w * (m - mm[:, None]) ** 2).sum(1)
    s = cov / var.clamp_min(1e-12)
    return s, md - s * mm


def align_to_sparse(
    mono_inverse_depth: Tensor | np.ndarray,
    sparse_disparity: Tensor | np.ndarray,
    valid: Tensor | np.ndarray,
    *,
    iterations: int = 10,
    hypotheses: int = 256,
    tukey_c: float = 4.685,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Robust per-image affine alignment of a monocular inverse-depth map to sparse disparity.

    ``mono_inverse_depth``, ``sparse_disparity``, ``valid``: H x W or N x H x W (N x 1 x H x W accepted).
    Returns ``(scale, shift)`` (scalars for H x W input, else N-vectors, float32) such that
    ``scale * mono + shift`` approximates the sparse disparity on the valid pixels.

    Monocular networks predict inverse depth only up to an unknown scale and shift, and sparse ground truth
    (LiDAR through an imperfect extrinsic, depth-camera speckle) carries gross outliers, which pull an ordinary
    least-squares fit far off. So: (1) least-median-of-squares over ``hypotheses`` random point pairs (50 %
    breakdown point, tolerates up to half the points being outliers); (2) ``iterations`` of iteratively
    reweighted least squares with Tukey's biweight (zero weight beyond ``tukey_c`` robust standard deviations,
    scale from the median absolute residual), which turns the LMedS estimate into an efficient fit on the
    inliers. Vectorised over the batch; ``seed`` makes the random pairs reproducible.
    """
    m = torch.as_tensor(mono_inverse_depth)
    d = torch.as_tensor(sparse_disparity)
    v = torch.as_tensor(valid)
    single = m.dim() == 2
    if m.dim() == 4 and m.shape[1] == 1:
        m, d, v = m[:, 0], d[:, 0] if d.dim() == 4 else d, v[:, 0] if v.dim() == 4 else v
    if single:
        m, d, v = m[None], d[None], v[None]
    if m.dim() != 3 or d.shape != m.shape or v.shape != m.shape:
        raise ValueError(
            "mono_inverse_depth, sparse_disparity and valid must all be H x W or N x H x W with equal shapes, "
            f"instead got {tuple(m.shape)}, {tuple(d.shape)}, {tuple(v.shape)}"
        )
    device = m.device
    m = m.to(torch.float64).flatten(1)
    d = d.to(device=device, dtype=torch.float64).flatten(1)
    ok = v.to(device).bool().flatten(1) & torch.isfinite(m) & torch.isfinite(d)
    counts = ok.sum(1)
    if bool((counts < 2).any()):
        bad = torch.nonzero(counts < 2).flatten().tolist()
        raise ValueError(
            f"align_to_sparse needs at least 2 valid sparse points per image; images {bad} have "
            f"{counts[counts < 2].tolist()}"
        )
    m = torch.where(ok, m, torch.zeros_like(m))
    d = torch.where(ok, d, torch.zeros_like(d))
    w_ok = ok.to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    # (1) LMedS: score every pair hypothesis by the median absolute residual on (a subsample of) the points.
    pairs = torch.multinomial(w_ok.cpu(), 2 * hypotheses, replacement=True, generator=gen).to(device)
    mi, mj = m.gather(1, pairs[:, :hypotheses]), m.gather(1, pairs[:, hypotheses:])
    di, dj = d.gather(1, pairs[:, :hypotheses]), d.gather(1, pairs[:, hypotheses:])
    dm = mi - mj
    degenerate = dm.abs() < 1e-9
    s_h = (di - dj) / torch.where(degenerate, torch.ones_like(dm), dm)
    t_h = di - s_h * mi
    probe_count = min(int(counts.min()), 4096)
    probe = torch.multinomial(w_ok.cpu(), probe_count, replacement=False, generator=gen).to(device)
    pm, pd = m.gather(1, probe), d.gather(1, probe)  # N x S
    residuals = (s_h[:, :, None] * pm[:, None, :] + t_h[:, :, None] - pd[:, None, :]).abs()  # N x K x S
    score = residuals.median(dim=2).values
    score = torch.where(degenerate, torch.full_like(score, float("inf")), score)
    best = score.argmin(dim=1, keepdim=True)
    scale = s_h.gather(1, best)[:, 0]
    shift = t_h.gather(1, best)[:, 0]
    if bool(torch.isinf(score.gather(1, best)).any()):
        # Every hypothesis degenerate (constant mono values): fall back to ordinary least squares.
        scale, shift = _weighted_affine_fit(m, d, w_ok)

    # (2) Tukey-biweight IRLS from the LMedS estimate.
    span = (d.amax(1) - torch.where(ok, d, torch.full_like(d, float("inf"))).amin(1)).clamp_min(1e-6)
    for _ in range(iterations):
        r = scale[:, None] * m + shift[:, None] - d
        abs_r = torch.where(ok, r.abs(), torch.full_like(r, float("nan")))
        # 1.4826 * MAD estimates the inliers' standard deviation; the floor keeps noise-free data from
        # collapsing the window to zero width.
        sigma = (1.4826 * abs_r.nanmedian(dim=1).values).clamp_min(1e-6 * span)
        u = r / (tukey_c * sigma[:, None])
        w = torch.where(u.abs() < 1, (1 - u**2) ** 2, torch.zeros_like(u)) * w_ok
        scale, shift = _weighted_affine_fit(m, d, w)
    scale, shift = scale.to(torch.float32), shift.to(torch.float32)
    if single:
        return scale[0], shift[0]
    return scale, shift


class S2DKDLoss(nn.Module):
    """Sparse-to-Dense Knowledge Distillation loss (stage 2 of Mono2Stereo).

    ``total = sparse_l1 + alpha * (kl + second_teacher_weight * kl_second)`` where

    - ``sparse_l1``: L1 between the student's full-resolution predictions and the sparse ground truth on its
      valid pixels, sequence-weighted with ``gamma`` like the stage-1 loss (the final prediction weighs 1);
    - ``kl``: mean over pixels of KL(teacher || student) between a discretised Laplacian (scale ``spread``
      pixels) around the *aligned* dense monocular teacher disparity and the student's distribution over the
      cost-volume bins; the teacher map is brought to the cost-volume grid by ``downsample_mode`` ("nearest" or
      "max"), never by averaging, so depth edges do not produce phantom disparities;
    - ``kl_second``: the same against an optional second teacher (e.g. the frozen stage-1 stereo network),
      which is metrically right where the monocular teacher's affine alignment is not.

    forward(student: StereoOutput, sparse_disparity, sparse_valid, teacher_disparity, *,
    second_teacher_disparity=None, teacher_valid=None) -> dict of scalar tensors ``total``, ``sparse_l1``,
    ``kl``, ``kl_second`` (0 without a second teacher), ``sparse_fraction`` (share of pixels with ground truth,
    detached, for logging). All disparity maps are full resolution, N x 1 x H x W or N x H x W.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        spread: float = 2.0,
        second_teacher_weight: float = 0.0,
        gamma: float = 0.8,
        downsample_mode: str = "nearest",
    ) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, instead got {alpha}")
        if not spread > 0:
            raise ValueError(f"spread must be > 0 pixels, instead got {spread}")
        if second_teacher_weight < 0:
            raise ValueError(f"second_teacher_weight must be >= 0, instead got {second_teacher_weight}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], instead got {gamma}")
        if downsample_mode not in ("nearest", "max"):
            raise ValueError(f"downsample_mode must be 'nearest' or 'max', instead got {downsample_mode!r}")
        self.alpha = float(alpha)
        self.spread = float(spread)
        self.second_teacher_weight = float(second_teacher_weight)
        self.gamma = float(gamma)
        self.downsample_mode = downsample_mode

    def forward(
        self,
        student: StereoOutput,
        sparse_disparity: Tensor,
        sparse_valid: Tensor,
        teacher_disparity: Tensor,
        *,
        second_teacher_disparity: Tensor | None = None,
        teacher_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if student.log_prob is None or student.bin_values is None:
            raise ValueError("S2DKDLoss needs the student's forward_train output (log_prob and bin_values)")
        bins = student.bin_values
        # Bins cover [0, max_disparity): the last bin's value plus one bin width.
        max_disparity = float(bins[-1]) + float(student.downsample)
        target, mask = _valid_targets(sparse_disparity, sparse_valid, max_disparity=max_disparity, name="sparse_disparity")
        preds = student.predictions or [student.disparity]
        n = len(preds)
        sparse_l1 = target.new_zeros(())
        for i, pred in enumerate(preds):
            pred = _as_map(pred, name=f"student.predictions[{i}]")
            if pred.shape != target.shape:
                raise ValueError(
                    f"student prediction shape {tuple(pred.shape)} does not match sparse_disparity {tuple(target.shape)}"
                )
            sparse_l1 = sparse_l1 + self.gamma ** (n - 1 - i) * _masked_mean((pred - target).abs(), mask)

        def kl_to(teacher: Tensor) -> Tensor:
            t, t_mask = _valid_targets(teacher, teacher_valid, max_disparity=max_disparity, name="teacher_disparity")
            return _distribution_term(
                student.log_prob,
                bins,
                t,
                t_mask,
                downsample=student.downsample,
                spread=self.spread,
                mode=self.downsample_mode,
            )

        kl = kl_to(teacher_disparity)
        kl_second = kl_to(second_teacher_disparity) if second_teacher_disparity is not None else kl.new_zeros(())
        total = sparse_l1 + self.alpha * (kl + self.second_teacher_weight * kl_second)
        return {
            "total": total,
            "sparse_l1": sparse_l1,
            "kl": kl,
            "kl_second": kl_second,
            "sparse_fraction": mask.mean().detach(),
        }
