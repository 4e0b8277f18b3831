"""Stage-1 sequence loss and S2DKD: robust alignment, teacher distributions, KL, gradients, real training steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from mono2stereo_core.models import StereoOutput, build_model
from mono2stereo_core.training.losses import (
    S2DKDLoss,
    align_to_sparse,
    distribution_kl,
    downsample_disparity,
    sequence_loss,
    teacher_distribution,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def motorcycle_gt():
    """Middlebury motorcycle ground-truth disparity (500 x 741, NaN where unknown) as float64 numpy."""
    _, _, disp = data.stereo_motorcycle()
    return np.where(np.isfinite(disp), disp, np.nan).astype(np.float64)


@pytest.fixture(scope="module")
def motorcycle_crop():
    """A half-resolution 128 x 256 crop of the real pair with its GT disparity (tensors, N = 1)."""
    left, right, disp = data.stereo_motorcycle()
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    left_t = F.avg_pool2d(to_t(left), 2)[..., 60:188, 80:336]
    right_t = F.avg_pool2d(to_t(right), 2)[..., 60:188, 80:336]
    gt = torch.from_numpy(disp[::2, ::2][60:188, 80:336].copy())[None, None] * 0.5  # +inf stays +inf
    return left_t, right_t, gt


def _sparse_with_outliers(gt: np.ndarray, *, scale: float, shift: float, density: float, outliers: float, seed: int):
    """Mono inverse depth that maps onto gt through (scale, shift), sparse samples with gross outliers."""
    rng = np.random.default_rng(seed)
    valid_gt = np.isfinite(gt)
    mono = (np.where(valid_gt, gt, np.nanmedian(gt)) - shift) / scale
    sparse_valid = valid_gt & (rng.random(gt.shape) < density)
    sparse = np.where(valid_gt, gt, 0.0) + rng.normal(0.0, 0.3, gt.shape)  # sub-pixel measurement noise
    gross = sparse_valid & (rng.random(gt.shape) < outliers)
    sparse[gross] = rng.uniform(0.0, 80.0, gross.sum())  # LiDAR bleeding / wrong extrinsics: anything goes
    return mono, sparse, sparse_valid


@pytest.mark.parametrize("outliers", [0.2, 0.3])
def test_alignment_recovers_scale_and_shift_under_gross_outliers(motorcycle_gt, outliers):
    mono, sparse, valid = _sparse_with_outliers(
        motorcycle_gt, scale=37.5, shift=-4.0, density=0.05, outliers=outliers, seed=1
    )
    scale, shift = align_to_sparse(mono, sparse, valid)
    assert scale.shape == () and shift.shape == ()
    assert scale.item() == pytest.approx(37.5, rel=0.01)
    assert shift.item() == pytest.approx(-4.0, abs=0.3)
    # Plain least squares on the same points is far off: the test data really does defeat a naive fit.
    m, d = mono[valid], sparse[valid]
    naive_scale, naive_shift = np.polyfit(m, d, 1)
    assert abs(naive_scale - 37.5) / 37.5 > 0.1 and abs(naive_shift + 4.0) > 2.0


def test_alignment_is_per_image_in_a_batch(motorcycle_gt):
    params = [(10.0, 3.0), (55.0, -12.0), (0.8, 20.0)]
    batch = [_sparse_with_outliers(motorcycle_gt, scale=s, shift=t, density=0.03, outliers=0.25, seed=i)
             for i, (s, t) in enumerate(params)]
    mono, sparse, valid = (torch.from_numpy(np.stack(x)) for x in zip(*batch))
    scale, shift = align_to_sparse(mono, sparse, valid)
    assert scale.shape == shift.shape == (3,)
    for (s, t), s_hat, t_hat in zip(params, scale.tolist(), shift.tolist()):
        assert s_hat == pytest.approx(s, rel=0.01)
        assert t_hat == pytest.approx(t, abs=0.3)


def test_alignment_needs_two_points():
    mono = np.random.default_rng(0).random((2, 8, 8))
    valid = np.zeros((2, 8, 8), bool)
    valid[0, :2, :2] = True
    valid[1, 0, 0] = True
    with pytest.raises(ValueError, match="at least 2 valid sparse points per image; images \\[1\\] have \\[1\\]"):
        align_to_sparse(mono, mono, valid)


def test_teacher_distribution_is_a_normalised_laplacian_on_the_bins():
    bins = torch.arange(48, dtype=torch.float32) * 4
    teacher = torch.tensor([[[10.0, 101.0], [0.0, 150.0]]])  # N x h x w
    prob = teacher_distribution(teacher, bins, spread=2.0)
    assert prob.shape == (1, 48, 2, 2)
    assert torch.allclose(prob.sum(1), torch.ones(1, 2, 2))
    # Mass sits on the bins around the target: 10 px -> bins 2 and 3 (8 and 12 px), equal split at the midpoint.
    assert set(prob[0, :, 0, 0].topk(2).indices.tolist()) == {2, 3}
    assert prob[0, 2, 0, 0] == pytest.approx(prob[0, 3, 0, 0].item(), rel=1e-6)
    assert prob[0, :, 1, 1].argmax().item() == 37  # 150 px -> 148 px is the nearest bin
    # Laplacian: the ratio between neighbouring bins away from the target is exp(-4 / spread).
    assert (prob[0, 30, 0, 0] / prob[0, 29, 0, 0]).item() == pytest.approx(np.exp(-2.0), rel=1e-4)
    with pytest.raises(ValueError, match="spread must be > 0 pixels, instead got 0"):
        teacher_distribution(teacher, bins, spread=0)


def test_kl_is_exactly_zero_for_identical_distributions_and_positive_otherwise():
    bins = torch.arange(24, dtype=torch.float32) * 4
    teacher = torch.rand(2, 1, 5, 7) * 90
    prob = teacher_distribution(teacher, bins, spread=1.0)
    prob[0, :, 0, 0] = 0.0  # zero-mass bins must contribute 0, not nan
    prob[0, 5, 0, 0] = 1.0
    assert torch.equal(distribution_kl(prob, prob.log()), torch.zeros(2, 1, 5, 7))
    shifted = teacher_distribution(teacher + 3.0, bins, spread=1.0)
    kl = distribution_kl(prob, shifted.log())
    assert torch.all(kl[:, :, 1:] > 0) and torch.isfinite(kl[:, :, 1:]).all()


def test_downsampling_never_blends_across_edges():
    disparity = torch.zeros(1, 1, 8, 8)
    disparity[..., :, 3:] = 40.0  # a vertical edge inside the first 4x4 cell
    valid = torch.ones_like(disparity)
    nearest, _ = downsample_disparity(disparity, valid, factor=4, mode="nearest")
    maximum, _ = downsample_disparity(disparity, valid, factor=4, mode="max")
    assert set(nearest.unique().tolist()) <= {0.0, 40.0}
    assert maximum[0, 0].tolist() == [[40.0, 40.0], [40.0, 40.0]]  # the nearer surface wins
    hole = torch.zeros_like(valid)
    _, mask = downsample_disparity(disparity, hole, factor=4, mode="max")
    assert mask.sum() == 0


def test_downsampling_to_a_grid_no_integer_factor_gives():
    # A working_scale network's cost volume: 8 x 12 input pixels onto a 3 x 5 grid.
    disparity = torch.arange(96, dtype=torch.float32).view(1, 1, 8, 12)
    valid = torch.ones_like(disparity)
    nearest, mask = downsample_disparity(disparity, valid, factor=8 / 3, mode="nearest", size=(3, 5))
    rows, cols = [0, 3, 5], [0, 2, 5, 7, 10]  # round(i * 8 / 3), round(j * 12 / 5)
    assert nearest[0, 0].tolist() == [[float(12 * r + c) for c in cols] for r in rows] and mask.sum() == 15
    maximum, _ = downsample_disparity(disparity, valid, factor=8 / 3, mode="max", size=(3, 5))
    assert maximum.shape == (1, 1, 3, 5) and maximum[0, 0, -1, -1] == 95.0
    # An integer factor with its own grid is the plain strided sampling.
    for mode in ("nearest", "max"):
        a, _ = downsample_disparity(disparity, valid, factor=4, mode=mode)
        b, _ = downsample_disparity(disparity, valid, factor=4, mode=mode, size=(2, 3))
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs the target grid size"):
        downsample_disparity(disparity, valid, factor=2.5)


def _output(predictions, log_prob=None, bins=None) -> StereoOutput:
    return StereoOutput(
        disparity=predictions[-1], confidence=torch.ones_like(predictions[-1]), predictions=predictions,
        log_prob=log_prob, bin_values=bins, downsample=4,
    )


def test_sequence_loss_weights_later_predictions_more_and_masks_invalid_pixels():
    gt = torch.full((1, 1, 8, 8), 10.0)
    gt[..., 0, 0] = float("inf")  # Middlebury-style unknown
    gt[..., 0, 1] = 500.0  # beyond max_disparity
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[..., 1, :] = False
    coarse, fine = gt.nan_to_num(posinf=0) + 3.0, gt.nan_to_num(posinf=0) + 0.5
    # smooth-L1 (beta 1): 3 px -> 2.5, 0.5 px -> 0.125; the unknown / out-of-range / masked pixels are ignored
    loss = sequence_loss([coarse, fine], gt, valid, gamma=0.5, max_disparity=192)
    assert loss.item() == pytest.approx(0.5 * 2.5 + 0.125)
    swapped = sequence_loss([fine, coarse], gt, valid, gamma=0.5, max_disparity=192)
    assert swapped.item() > loss.item()
    with pytest.raises(ValueError, match="does not match gt shape"):
        sequence_loss([fine[..., :4]], gt, valid, max_disparity=192)


def test_sequence_loss_distribution_term_prefers_a_distribution_centred_on_gt():
    bins = torch.arange(16, dtype=torch.float32) * 4
    gt = torch.full((1, 1, 8, 8), 20.0)
    pred = [gt.clone()]
    good = teacher_distribution(torch.full((1, 1, 2, 2), 20.0), bins, spread=2.0).log()
    bad = teacher_distribution(torch.full((1, 1, 2, 2), 44.0), bins, spread=2.0).log()
    loss_good = sequence_loss(_output(pred, good, bins), gt, None, max_disparity=64, distribution_weight=1.0)
    loss_bad = sequence_loss(_output(pred, bad, bins), gt, None, max_disparity=64, distribution_weight=1.0)
    assert loss_good.item() == pytest.approx(0.0, abs=1e-6)
    assert loss_bad.item() > 1.0
    with pytest.raises(ValueError, match="needs a StereoOutput"):
        sequence_loss(pred, gt, None, max_disparity=64, distribution_weight=1.0)


def test_s2dkd_terms_and_gradients_reach_the_student(motorcycle_crop):
    left, right, gt = motorcycle_crop
    torch.manual_seed(0)
    student = build_model("m2s_tiny", max_disparity=64)
    out = student.forward_train(left, right)
    out.log_prob.retain_grad()
    rng = np.random.default_rng(0)
    sparse_valid = torch.from_numpy(rng.random(gt.shape) < 0.05) & torch.isfinite(gt)
    teacher = torch.nan_to_num(gt, posinf=0.0) * 1.02 + 0.5  # an aligned but imperfect dense teacher
    loss = S2DKDLoss(alpha=0.5, spread=2.0, second_teacher_weight=0.5)
    terms = loss(out, gt, sparse_valid, teacher, second_teacher_disparity=out.disparity.detach())
    assert set(terms) >= {"total", "sparse_l1", "kl", "kl_second"}
    assert terms["kl"] > 0 and terms["kl_second"] > 0 and terms["sparse_l1"] > 0
    expected = terms["sparse_l1"] + 0.5 * (terms["kl"] + 0.5 * terms["kl_second"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["sparse_fraction"].item() == pytest.approx(sparse_valid.float().mean().item(), rel=1e-6)
    terms["total"].backward()
    assert out.log_prob.grad is not None and out.log_prob.grad.abs().sum() > 0
    assert student.volume_out.weight.grad.abs().sum() > 0  # through the distribution (KL)
    assert student.edge_refinement.delta.weight.grad.abs().sum() > 0  # through the sparse L1 on the output
    # The sparse term only looks at sparse pixels: corrupting the GT elsewhere changes nothing.
    corrupted = torch.where(sparse_valid, gt, torch.full_like(gt, 3.0))
    with torch.no_grad():
        again = S2DKDLoss(alpha=0.0)(out, corrupted, sparse_valid, teacher)
    assert again["total"].item() == pytest.approx(terms["sparse_l1"].item(), rel=1e-6)


def test_s2dkd_rejects_bad_settings():
    with pytest.raises(ValueError, match="alpha must be >= 0, instead got -1"):
        S2DKDLoss(alpha=-1)
    with pytest.raises(ValueError, match="downsample_mode must be 'nearest' or 'max', instead got 'mean'"):
        S2DKDLoss(downsample_mode="mean")


def test_adamw_steps_on_the_real_pair_lower_the_sequence_loss(motorcycle_crop):
    left, right, gt = (x[..., 32:96, 64:192] for x in motorcycle_crop)  # 64 x 128 keeps the test fast
    torch.manual_seed(0)
    model = build_model("m2s_tiny", max_disparity=64).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def loss_now():
        out = model.forward_train(left, right)
        return sequence_loss(out, gt, None, max_disparity=64, distribution_weight=0.5)

    losses = []
    for _ in range(20):
        loss = loss_now()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses
