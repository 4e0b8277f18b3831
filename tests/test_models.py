"""Stereo network family: shapes and contracts, building blocks on real data, compute budget, ONNX parity."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import perturbed_tiny
from skimage import data

from mono2stereo_core.models import MODEL_NAMES, StereoOutput, build_from_config, build_model, count_macs
from mono2stereo_core.models.blocks import (
    Hourglass3d,
    channel_log_softmax,
    convex_upsample,
    cost_volume_row_bands,
    discontinuity_upsample,
    groupwise_cost_volume,
    local_soft_argmax,
    matched_discontinuity_upsample,
    upsample_trilinear_2x,
    warp_correlation,
    windowed_soft_argmax,
)

torch.set_num_threads(2)
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.fixture(scope="module")
def motorcycle():
    """Half-resolution Middlebury motorcycle pair as N x 3 x H x W tensors and the GT disparity (NaN invalid)."""
    left, right, disp = data.stereo_motorcycle()
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    gt = torch.from_numpy(np.where(np.isfinite(disp), disp, np.nan).astype(np.float32))[None, None]
    return to_t(left), to_t(right), gt


def test_variants_build_and_rebuild_from_config():
    assert set(MODEL_NAMES) >= {"m2s_tiny", "m2s_rt", "m2s_large"}
    for name in MODEL_NAMES:
        model = build_model(name, max_disparity=128)
        assert model.config["name"] == name and model.config["max_disparity"] == 128
        assert model.max_disparity == 128 and model.stride >= 8
        rebuilt = build_from_config(model.config)
        assert rebuilt.config == model.config
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }
    assert build_model("m2s_tiny", refine_iterations=2).config["refine_iterations"] == 2


def test_configs_written_before_the_context_branch_existed_rebuild_the_same_network():
    legacy = {k: v for k, v in build_model("m2s_tiny").config.items() if k != "context_channels"}
    rebuilt = build_from_config(legacy)
    assert rebuilt.encoder.context is None
    assert rebuilt.config == legacy  # the off value is not written, so old and new sidecars compare equal
    assert build_model("m2s_rt").config.get("context_channels") is None
    assert build_model("m2s_rt", context_channels=48).encoder.context is not None


def test_build_rejects_bad_names_settings_and_disparity_ranges():
    with pytest.raises(ValueError, match="unknown stereo model 'psmnet'"):
        build_model("psmnet")
    with pytest.raises(ValueError, match="unknown settings \\['widht'\\]"):
        build_model("m2s_rt", widht=3)
    with pytest.raises(ValueError, match="multiple of 8 .*instead got 100"):
        build_model("m2s_rt", max_disparity=100)


@pytest.mark.parametrize("height,width", [(64, 128), (96, 64)])
def test_forward_contract_on_non_square_inputs(height, width):
    torch.manual_seed(0)
    model = build_model("m2s_tiny", max_disparity=64).eval()
    left, right = torch.rand(2, 3, height, width), torch.rand(2, 3, height, width)
    with torch.no_grad():
        disparity, confidence = model(left, right)
        out = model.forward_train(left, right)
    assert disparity.shape == confidence.shape == (2, 1, height, width)
    assert disparity.min() >= 0 and 0 <= confidence.min() and confidence.max() <= 1
    assert isinstance(out, StereoOutput)
    assert torch.equal(out.disparity, disparity) and torch.equal(out.predictions[-1], disparity)
    assert len(out.predictions) == 3 + model.config["refine_iterations"]
    assert all(p.shape == (2, 1, height, width) for p in out.predictions)
    d = model.max_disparity // out.downsample
    assert out.log_prob.shape == (2, d, height // out.downsample, width // out.downsample)
    assert torch.allclose(out.log_prob.exp().sum(1), torch.ones(1), atol=1e-5)
    assert torch.equal(out.bin_values, torch.arange(d, dtype=torch.float32) * out.downsample)


def test_forward_rejects_inputs_that_are_not_stride_multiples():
    model = build_model("m2s_tiny", max_disparity=64).eval()
    with pytest.raises(ValueError, match="multiples of the network stride 8.*instead got 60 x 64"):
        model(torch.rand(1, 3, 60, 64), torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match="same shape"):
        model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 72))


def test_cost_volume_bins_correlate_left_x_with_right_x_minus_d():
    torch.manual_seed(0)
    left, right = torch.randn(1, 8, 5, 20), torch.randn(1, 8, 5, 20)
    volume = groupwise_cost_volume(left, right, num_bins=6, groups=2)
    assert volume.shape == (1, 2, 6, 5, 20)
    for d in (0, 3, 5):
        expected = (left[..., d:] * right[..., : 20 - d]).reshape(1, 2, 4, 5, 20 - d).mean(2)
        assert torch.allclose(volume[:, :, d, :, d:], expected, atol=1e-6)
        assert torch.all(volume[:, :, d, :, :d] == 0)
    # More bins than columns (a narrow crop): the bins past the width are all zero.
    narrow = groupwise_cost_volume(left[..., :4], right[..., :4], num_bins=6, groups=2)
    assert narrow.shape == (1, 2, 6, 5, 4) and torch.all(narrow[:, :, 4:] == 0)
    torch.testing.assert_close(narrow[:, :, :4], volume[..., :4][:, :, :4], rtol=0, atol=1e-6)


def test_cost_volume_in_row_bands_is_the_same_volume_to_the_bit():
    torch.manual_seed(3)
    left, right = torch.randn(2, 8, 11, 24), torch.randn(2, 8, 11, 24)
    whole = groupwise_cost_volume(left, right, num_bins=7, groups=4)
    # Uneven bands (11 rows into 3 and 4), one row per band, and more bands than rows (clamped to the rows).
    for bands in (2, 3, 4, 11, 50):
        banded = groupwise_cost_volume(left, right, num_bins=7, groups=4, row_bands=bands)
        assert banded.shape == whole.shape
        assert torch.equal(banded, whole), f"{bands} bands changed the volume"
    with pytest.raises(ValueError, match="row_bands must be >= 1, instead got 0"):
        groupwise_cost_volume(left, right, num_bins=7, groups=4, row_bands=0)


def test_cost_volume_bands_only_in_onnx_exports_unless_overridden():
    features = torch.zeros(1, 32, 178, 238)  # the default network's 1/4 map at 640 x 480
    assert cost_volume_row_bands(features, training=False) == 1  # eager torch: one piece
    assert cost_volume_row_bands(features, training=False, override=6) == 6
    with pytest.raises(ValueError, match="cost volume bands must be >= 1, instead got 0"):
        cost_volume_row_bands(features, training=False, override=0)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append((cost_volume_row_bands(features, training=False), cost_volume_row_bands(features, training=True)))
            return x + 1

    torch.onnx.export(Probe(), (torch.zeros(1),), io.BytesIO(), dynamo=False)
    assert seen == [(4, 1)]


def test_warp_correlation_peaks_at_the_true_disparity_on_motorcycle(motorcycle):
    left, right, gt = motorcycle
    # Zero-mean local intensities as features: correlation then measures match quality, not brightness.
    feat = lambda im: im - F.avg_pool2d(im, 9, stride=1, padding=4, count_include_pad=False)  # noqa: E731
    valid = torch.isfinite(gt)
    # Single-pixel products are noisy; a 7x7 box sum of the correlation is the classic block-matching cost.
    correct = warp_correlation(feat(left), feat(right), torch.nan_to_num(gt), radius=3, groups=1)
    assert correct.shape == (1, 7, *gt.shape[-2:])
    peak = F.avg_pool2d(correct, 7, stride=1, padding=3).argmax(dim=1, keepdim=True)
    # Offset 0 (index 3) is where right(x - gt) is sampled: most textured GT pixels must peak there
    # (chance level is 1/7).
    textured = valid & (feat(left).abs().sum(1, keepdim=True) > 0.1)
    share = (peak[textured] == 3).float().mean().item()
    assert share > 0.55, f"only {share:.0%} of textured pixels peak at the ground-truth disparity"
    # The same with the sign of the disparity flipped must fail: this is what catches a wrong warp direction.
    wrong = warp_correlation(feat(left), feat(right), -torch.nan_to_num(gt), radius=3, groups=1)
    wrong_peak = F.avg_pool2d(wrong, 7, stride=1, padding=3).argmax(dim=1, keepdim=True)
    assert (wrong_peak[textured] == 3).float().mean().item() < 0.25


def _grid_sample_warp_correlation(left, right, disparity, *, radius, groups):
    """The definition warp_correlation implements: bilinear grid_sample of the right features (zeros padding,
    align_corners=True) at x - disparity - k for each offset k, then group-wise correlation."""
    n, c, h, w = left.shape
    k = 2 * radius + 1
    offsets = torch.arange(-radius, radius + 1, dtype=left.dtype).view(1, k, 1, 1)
    x_src = torch.arange(w, dtype=left.dtype).view(1, 1, 1, w) - disparity - offsets
    gx = x_src * (2.0 / (w - 1)) - 1.0
    gy = (torch.arange(h, dtype=left.dtype).view(1, 1, h, 1) * (2.0 / (h - 1)) - 1.0).expand(n, k, h, w)
    grid = torch.stack((gx, gy), dim=-1).reshape(n, k * h, w, 2)
    warped = F.grid_sample(right, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    warped = warped.reshape(n, c, k, h, w)
    prod = left.unsqueeze(2) * warped
    return prod.reshape(n, groups, c // groups, k, h, w).mean(2).reshape(n, groups * k, h, w)


def test_warp_correlation_equals_bilinear_grid_sample_values_and_gradients():
    torch.manual_seed(3)
    n, c, h, w = 2, 8, 6, 40
    left = torch.randn(n, c, h, w, requires_grad=True)
    right = torch.randn(n, c, h, w, requires_grad=True)
    # Disparities cover fractional values, integers, and shifts that leave the image on both sides.
    disparity = torch.rand(n, 1, h, w) * 50 - 5
    disparity[0, 0, 0, :4] = torch.tensor([0.0, 1.0, 2.0, 39.0])
    disparity.requires_grad_(True)
    ours = warp_correlation(left, right, disparity, radius=2, groups=4)
    reference = _grid_sample_warp_correlation(left, right, disparity, radius=2, groups=4)
    assert ours.shape == reference.shape == (n, 4 * 5, h, w)
    assert torch.allclose(ours, reference, atol=1e-5)
    weights = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * weights).sum(), (left, right, disparity))
    ref_grads = torch.autograd.grad((reference * weights).sum(), (left, right, disparity))
    for name, a, b in zip(("left", "right", "disparity"), grads, ref_grads):
        # Disparity gradients differ only where a sample lands exactly on a column (a kink of bilinear).
        close = torch.isclose(a, b, atol=1e-4)
        assert close.float().mean().item() > (0.98 if name == "disparity" else 0.999), name
    # A NaN or absurd estimate (a diverging fine-tune, a bad input) samples nothing instead of indexing garbage.
    wild = disparity.detach().clone()
    wild[0, 0, 1, :3] = torch.tensor([float("nan"), 1e9, -1e9])
    out = warp_correlation(left, right, wild, radius=2, groups=4)
    assert torch.isfinite(out).all() and (out[0, :, 1, :2] == 0).all()
    with pytest.raises(ValueError, match="divisible by the correlation groups"):
        warp_correlation(left, right, disparity, radius=2, groups=3)


def test_local_soft_argmax_ignores_a_distant_second_mode():
    bins = torch.arange(32, dtype=torch.float32)
    prob = 0.6 * torch.exp(-((bins - 5.3) ** 2)) + 0.4 * torch.exp(-((bins - 25.0) ** 2))
    logits = prob.clamp_min(1e-9).log().view(1, 32, 1, 1)
    index, log_prob, confidence = local_soft_argmax(logits, radius=2)
    plain = (log_prob.exp() * bins.view(1, 32, 1, 1)).sum(1)
    assert abs(index.item() - 5.3) < 0.1, index.item()
    assert plain.item() > 10  # what a plain soft-argmax would have returned
    assert 0.5 < confidence.item() < 0.7


def test_windowed_soft_argmax_matches_the_mask_form_including_peaks_at_the_ends():
    torch.manual_seed(5)
    for scale in (0.1, 3.0, 30.0):  # flat, ordinary and sharply peaked distributions
        logits = torch.randn(2, 48, 9, 11) * scale
        logits[0, 0, 0, 0] = logits[0, 47, 0, 1] = logits[1, 1, 2, 2] = 200.0  # arg-max at or next to an end
        index, _, confidence = local_soft_argmax(logits, radius=2)
        windowed_index, windowed_log_prob, windowed_confidence = windowed_soft_argmax(logits, radius=2)
        torch.testing.assert_close(windowed_index, index, rtol=0, atol=5e-5)
        torch.testing.assert_close(windowed_confidence, confidence, rtol=0, atol=1e-6)
        assert torch.equal(windowed_log_prob, channel_log_softmax(logits))
    # A peak at bin 0 with its window cut off by the end: bins 0-2 only, weights 1, e^-1, e^-4.
    logits = torch.full((1, 48, 1, 1), -1e4)
    logits[0, :3, 0, 0] = torch.tensor([0.0, -1.0, -4.0])
    index, _, confidence = windowed_soft_argmax(logits, radius=2)
    weights = torch.tensor([1.0, np.exp(-1.0), np.exp(-4.0)])
    assert abs(index.item() - float((weights * torch.arange(3)).sum() / weights.sum())) < 1e-6
    assert abs(confidence.item() - 1.0) < 1e-6


def test_convex_upsample_weights_and_shapes():
    disparity = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    up = convex_upsample(disparity, torch.zeros(1, 36, 3, 4), factor=2)
    assert up.shape == (1, 1, 6, 8)
    # Equal weights = 3x3 box filter of the replicate-padded input, repeated on each 2x2 sub-pixel block.
    box = F.avg_pool2d(F.pad(disparity, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert torch.allclose(up[..., ::2, ::2], box) and torch.allclose(up[..., 1::2, 1::2], box)
    # A decisive mask picks a single neighbour exactly (here the centre): no blur across edges.
    centre = torch.full((1, 9, 4, 3, 4), -50.0)
    centre[:, 4] = 50.0
    assert torch.allclose(convex_upsample(disparity, centre.view(1, 36, 3, 4), factor=2),
                          F.interpolate(disparity, scale_factor=2, mode="nearest"))
    with pytest.raises(ValueError, match="needs 36 mask channels, instead got 9"):
        convex_upsample(disparity, torch.zeros(1, 9, 3, 4), factor=2)


def test_discontinuity_upsample_keeps_steps_sharp_and_ramps_bilinear():
    # A vertical depth step 10 -> 40 px between coarse columns 3 and 4, upsampled to a non-integer size.
    step = torch.full((1, 1, 5, 8), 10.0)
    step[..., 4:] = 40.0
    size = (14, 23)
    bilinear = F.interpolate(step, size=size, mode="bilinear", align_corners=False)
    sharp = discontinuity_upsample(step, size=size, threshold=6.0)
    assert sharp.shape == (1, 1, *size)
    # Bilinear puts pixels between the surfaces (flying points); the sharp output has only the two surfaces,
    # with the edge where the cells meet (pixel-centre aligned, as torch's nearest-exact).
    assert ((bilinear > 11) & (bilinear < 39)).sum() > 0
    # (to float rounding: bilinear weights of a constant neighbourhood sum to 1 only within 1e-6)
    assert (((sharp - 10).abs() < 1e-4) | ((sharp - 40).abs() < 1e-4)).all()
    torch.testing.assert_close(sharp, F.interpolate(step, size=size, mode="nearest-exact"), rtol=0, atol=1e-4)
    # A ramp whose 3x3 neighbourhoods span 4 px (< 6) stays exactly bilinear: no terraces on slanted floors.
    ramp = torch.arange(8, dtype=torch.float32).mul(2.0).expand(1, 1, 5, 8).contiguous()
    torch.testing.assert_close(discontinuity_upsample(ramp, size=size, threshold=6.0),
                               F.interpolate(ramp, size=size, mode="bilinear", align_corners=False), rtol=0, atol=0)
    # Threshold 0 on a random map: every neighbourhood is a "discontinuity", so the output is the nearest cell's
    # value everywhere; the index arithmetic matches nearest-exact on every size tried.
    noise = torch.rand(2, 1, 7, 11) * 50
    for out_size in ((7, 11), (20, 31), (28, 44), (9, 13)):
        torch.testing.assert_close(discontinuity_upsample(noise, size=out_size, threshold=0.0),
                                   F.interpolate(noise, size=out_size, mode="nearest-exact"), rtol=0, atol=1e-4)


def test_discontinuity_px_sharpens_only_the_no_refinement_networks_output():
    from mono2stereo_core.models.stereo_net import convert_state_dict

    lean = build_model("m2s_tiny", refine_iterations=0, edge_refinement=False).eval()
    with torch.no_grad():
        lean.volume_out.weight.mul_(50.0)  # a decisive (trained-like) cost volume: real discontinuities
    sharp = build_model("m2s_tiny", refine_iterations=0, edge_refinement=False, discontinuity_px=4).eval()
    assert sharp.config["discontinuity_px"] == 4.0 and "discontinuity_px" not in lean.config  # 0 is not written
    assert build_from_config(sharp.config).config == sharp.config
    converted = convert_state_dict(lean.state_dict(), lean.config, sharp.config)  # no weights change
    assert converted.keys() == lean.state_dict().keys()
    sharp.load_state_dict(converted, strict=True)
    never = build_model("m2s_tiny", refine_iterations=0, edge_refinement=False, discontinuity_px=1e9).eval()
    never.load_state_dict(converted, strict=True)
    left, right = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b, c = (net.forward_train(left, right) for net in (lean, sharp, never))
    assert len(b.predictions) == 2
    torch.testing.assert_close(b.predictions[0], a.predictions[0], rtol=0, atol=0)
    # A threshold nothing exceeds gives the bilinear network exactly; 4 px changes pixels (a random network's
    # estimate jumps almost everywhere), within the network's range.
    torch.testing.assert_close(c.disparity, a.disparity, rtol=0, atol=0)
    assert ((b.disparity - a.disparity).abs() > 1e-3).any()
    assert b.disparity.min() >= 0 and b.disparity.max() <= sharp.max_disparity
    assert count_macs(sharp) == count_macs(lean)
    with pytest.raises(ValueError, match="discontinuity_px > 0 needs refine_iterations=0"):
        build_model("m2s_tiny", discontinuity_px=4)
    for bad in (-1.0, "4", True, float("inf")):
        with pytest.raises(ValueError, match="discontinuity_px must be a number >= 0"):
            build_model("m2s_tiny", refine_iterations=0, edge_refinement=False, discontinuity_px=bad)


def _square_in_front_of_a_wall(*, height=48, width=96, x0=37, x1=70, near=16.0, far=4.0, seed=0):
    """A textured square (disparity ``near``) over a textured wall (``far``), rendered in both views exactly:
    the left view, the right view and the left ground truth as N x 3 x H x W / N x 1 x H x W tensors."""
    rng = np.random.default_rng(seed)
    wall = rng.random((3, height, width + 32), dtype=np.float32)
    square = rng.random((3, height, width + 32), dtype=np.float32)
    xs = np.arange(width)
    inside = (xs >= x0) & (xs < x1)
    left = np.where(inside, square[:, :, :width], wall[:, :, xs + int(far)])
    gt = np.where(inside, near, far).astype(np.float32)[None].repeat(height, 0)
    # Right view: the square moved left by `near`, the wall by `far` (wall texture indexed by left x).
    right_inside = (xs >= x0 - near) & (xs < x1 - near)
    right = np.where(right_inside, square[:, :, np.clip(xs + int(near), 0, None)], wall[:, :, xs + int(2 * far)])
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None]  # noqa: E731
    return as_t(left), as_t(right), as_t(gt[None])


def test_matched_discontinuity_upsample_puts_the_edge_where_the_images_match():
    """A coarse map places a depth edge only to within a cell; the matched upsampling moves it to where the pair
    agrees with each surface, never outputs a depth between the two, and is bilinear on a single surface."""
    left, right, gt = _square_in_front_of_a_wall()
    size = tuple(gt.shape[-2:])
    # The coarse map a 1/4-resolution matcher would give: one value per 4 x 4 cell (its centre's).
    coarse = gt[..., 2::4, 2::4].contiguous()
    nearest = discontinuity_upsample(coarse, size=size, threshold=6.0)
    matched = matched_discontinuity_upsample(coarse, left, right, size=size, threshold=6.0)
    assert matched.shape == gt.shape
    assert (((matched - 16).abs() < 1e-4) | ((matched - 4).abs() < 1e-4)).all()  # only the two surfaces
    # Visible pixels (the band left of the square, [x0 - 12, x0), is hidden behind it in the right view).
    visible = torch.ones_like(gt, dtype=torch.bool)
    visible[..., 37 - 12 : 37] = False
    wrong = lambda d: int(((d - gt).abs() > 1)[visible].sum())  # noqa: E731
    assert wrong(nearest) > 0 and wrong(matched) < wrong(nearest) / 4, (wrong(matched), wrong(nearest))
    # One surface, no discontinuity: exactly bilinear (a slanted plane keeps its slope).
    ramp = torch.linspace(4.0, 9.0, 24).expand(1, 1, 12, 24).contiguous()
    torch.testing.assert_close(
        matched_discontinuity_upsample(ramp, left, right, size=size, threshold=6.0),
        F.interpolate(ramp, size=size, mode="bilinear", align_corners=False),
        rtol=0,
        atol=0,
    )
    # Cells within 1 px are one surface: float noise on them must not pick between them (backend parity).
    jittered = coarse + 0.3 * torch.rand_like(coarse)
    out = matched_discontinuity_upsample(jittered, left, right, size=size, threshold=6.0)
    far_side = out < 10
    smooth = F.interpolate(jittered, size=size, mode="bilinear", align_corners=False)
    interior = (gt == 4) & (F.max_pool2d((gt > 10).float(), 17, stride=1, padding=8) == 0)
    torch.testing.assert_close(out[interior], smooth[interior], rtol=0, atol=1e-5)
    assert far_side[interior].all()
    with pytest.raises(ValueError, match="left and right must be"):
        matched_discontinuity_upsample(coarse, left[..., :-1], right[..., :-1], size=size, threshold=6.0)
    with pytest.raises(ValueError, match="window must be an odd number"):
        matched_discontinuity_upsample(coarse, left, right, size=size, threshold=6.0, window=2)


def test_discontinuity_match_is_a_weightless_setting_that_exports_with_parity():
    import onnxruntime as ort

    from mono2stereo_core.models.stereo_net import convert_state_dict

    settings = dict(refine_iterations=0, edge_refinement=False, discontinuity_px=4.0)
    plain = build_model("m2s_tiny", **settings).eval()
    with torch.no_grad():
        plain.volume_out.weight.mul_(50.0)  # decisive, trained-like: real discontinuities
    matched = build_model("m2s_tiny", **settings, discontinuity_match=True).eval()
    assert matched.config["discontinuity_match"] is True and "discontinuity_match" not in plain.config
    assert build_from_config(matched.config).config == matched.config
    matched.load_state_dict(convert_state_dict(plain.state_dict(), plain.config, matched.config), strict=True)
    assert count_macs(matched) == count_macs(plain)
    left, right, _ = _square_in_front_of_a_wall(height=64, width=96)
    with torch.no_grad():
        a, b = plain(left, right)[0], matched(left, right)[0]
    # Same coarse estimate, other values at its discontinuities (a random network's jumps almost everywhere).
    assert ((a - b).abs() > 1e-3).any()
    assert b.min() >= 0 and b.max() <= matched.max_disparity
    buffer = io.BytesIO()
    torch.onnx.export(matched, (left, right), buffer, opset_version=17, dynamo=False, input_names=["l", "r"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    onnx_disparity = session.run(None, {"l": left.numpy(), "r": right.numpy()})[0]
    np.testing.assert_allclose(onnx_disparity, b.numpy(), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="discontinuity_match needs discontinuity_px > 0"):
        build_model("m2s_tiny", refine_iterations=0, edge_refinement=False, discontinuity_match=True)
    with pytest.raises(ValueError, match="discontinuity_match must be true or false"):
        build_model("m2s_tiny", **settings, discontinuity_match=1)


def test_discontinuity_px_network_trains_at_a_working_scale():
    from mono2stereo_core.training.losses import sequence_loss

    torch.manual_seed(0)
    net = build_model("m2s_tiny", max_disparity=64, refine_iterations=0, edge_refinement=False,
                      working_scale=1.25, discontinuity_px=6)
    left, right = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    out = net.forward_train(left, right)
    assert all(p.shape == (2, 1, 64, 96) for p in out.predictions)
    loss = sequence_loss(out, torch.full((2, 1, 64, 96), 20.0), None, max_disparity=net.max_disparity)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.volume_out.parameters())


def test_mac_counts_fit_the_budgets():
    macs = {name: count_macs(build_model(name), height=480, width=640) for name in MODEL_NAMES}
    for name, value in macs.items():
        params = build_model(name).num_parameters
        print(f"{name}: {value / 1e9:.2f} GMAC at 640x480, {params / 1e6:.3f} M parameters")
    assert macs["m2s_rt"] <= 25e9, "the real-time variant must stay within the Jetson budget of 25 GMAC"
    assert macs["m2s_tiny"] < macs["m2s_rt"] < macs["m2s_large"]
    # Padding: 500 x 741 is counted at the padded 504 x 744, i.e. more than 480 x 640.
    assert count_macs(build_model("m2s_tiny"), height=500, width=741) > macs["m2s_tiny"]


def _onnx_parity(name: str, **overrides) -> float:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = build_model(name, max_disparity=64, **overrides).eval()
    # A random network's cost logits are almost flat, so its arg-max can flip between bins under 1e-6
    # numerical differences; sharpening the output layer makes it as decisive as a trained network.
    with torch.no_grad():
        model.volume_out.weight.mul_(50.0)
    left, right = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (left, right), buffer, opset_version=17, dynamo=False,
        input_names=["left", "right"], output_names=["disparity", "confidence"],
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    disparity_ort, confidence_ort = session.run(None, {"left": left.numpy(), "right": right.numpy()})
    with torch.no_grad():
        disparity, confidence = model(left, right)
    assert disparity_ort.shape == (1, 1, 64, 96)
    assert np.abs(confidence_ort - confidence.numpy()).max() < 1e-4
    return float(np.abs(disparity_ort - disparity.numpy()).max())


@pytest.mark.parametrize("name", ["m2s_tiny", "m2s_rt"])
def test_onnx_export_matches_torch(name):
    assert _onnx_parity(name) < 1e-3


def test_onnx_export_of_the_fast_aggregation_matches_torch():
    assert _onnx_parity("m2s_rt", **FAST) < 1e-3


def test_onnx_export_of_a_working_scale_network_without_refinement_matches_torch():
    # The shipped default's settings (eighth session): the resize in and out is part of the graph.
    assert _onnx_parity("m2s_rt", **FAST, refine_iterations=0, edge_refinement=False, working_scale=1.4) < 1e-3
    # ... and with the discontinuity-preserving upsampling (ninth session): its nearest lookup is two Gathers.
    assert _onnx_parity(
        "m2s_rt", **FAST, refine_iterations=0, edge_refinement=False, working_scale=1.4, discontinuity_px=6
    ) < 1e-3


@pytest.mark.slow
def test_onnx_export_matches_torch_large():
    assert _onnx_parity("m2s_large") < 1e-3


FAST = dict(volume_in_kernel=1, volume_out_kernel=1, hourglass_upsample="trilinear")


def test_fast_aggregation_settings_round_trip_and_cost_less():
    fast = build_model("m2s_rt", **FAST)
    assert {k: fast.config[k] for k in FAST} == FAST
    assert build_from_config(fast.config).config == fast.config
    # Sidecars written before the settings existed (no keys) rebuild the 3x3x3 / transposed-conv network.
    legacy = build_model("m2s_rt")
    assert not set(FAST) & set(legacy.config)
    assert isinstance(build_from_config(legacy.config).hourglasses[0].up[0], torch.nn.ConvTranspose3d)
    assert count_macs(fast, height=480, width=640) < 0.8 * count_macs(legacy, height=480, width=640)
    out = build_model("m2s_tiny", **FAST).eval().forward_train(torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96))
    assert out.disparity.shape == (1, 1, 64, 96) and torch.isfinite(out.disparity).all()
    with pytest.raises(ValueError, match="volume_in_kernel must be 1 or 3"):
        build_model("m2s_rt", volume_in_kernel=5)
    with pytest.raises(ValueError, match="'deconv' or 'trilinear'"):
        build_model("m2s_rt", hourglass_upsample="nearest")


def test_trilinear_hourglass_upsampling_reordered_gives_the_textbook_values():
    """The hourglass convolves (and, in eval mode, batch-normalises) before its 2x trilinear upsampling: the same
    values as upsample -> conv -> batch norm in both modes, at 1/8 of the conv's voxels."""
    torch.manual_seed(0)
    hourglass = Hourglass3d(channels=4, feature_channels=8, upsample="trilinear")
    norm = hourglass.up[1]
    norm.running_mean.uniform_(-1.0, 1.0)
    norm.running_var.uniform_(0.5, 2.0)
    norm.weight.data.uniform_(0.5, 1.5)
    norm.bias.data.uniform_(-1.0, 1.0)
    low = torch.randn(2, 8, 6, 10, 12)
    for training in (False, True):
        hourglass.train(training)
        textbook = norm(hourglass.up[0].conv(F.interpolate(low, scale_factor=2, mode="trilinear", align_corners=False)))
        assert torch.allclose(hourglass._upsample(low), textbook, atol=1e-5)
    # Batch statistics of the low-resolution volume differ from the upsampled one's: training keeps the order.
    hourglass.train(True)
    early = F.interpolate(norm(hourglass.up[0].conv(low)), scale_factor=2, mode="trilinear", align_corners=False)
    assert not torch.allclose(early, hourglass._upsample(low), atol=1e-3)


def test_separable_trilinear_upsampling_matches_torch_trilinear_and_exports_without_5d_resize():
    """upsample_trilinear_2x (disparity axis first, then height and width) gives torch's trilinear values, its
    gradient too, and exports as 4-D Resizes only (ONNX Runtime's fast path), with the same values there."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    for shape in ((1, 8, 24, 11, 15), (2, 3, 5, 7, 4), (1, 1, 1, 1, 1)):
        volume = torch.randn(*shape, requires_grad=True)
        reference = F.interpolate(volume, scale_factor=2, mode="trilinear", align_corners=False)
        ours = upsample_trilinear_2x(volume)
        assert ours.shape == reference.shape
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
        weights = torch.randn_like(reference)
        (grad_ours,) = torch.autograd.grad((ours * weights).sum(), volume)
        (grad_reference,) = torch.autograd.grad((reference * weights).sum(), volume)
        torch.testing.assert_close(grad_ours, grad_reference, atol=1e-4, rtol=0)
    # A step along the disparity axis only must stay a step in D (no bleeding into height/width).
    step = torch.zeros(1, 1, 4, 3, 3)
    step[:, :, 2:] = 1.0
    up = upsample_trilinear_2x(step)
    assert torch.allclose(up[0, 0, :, 0, 0], torch.tensor([0, 0, 0, 0.25, 0.75, 1, 1, 1.0]))
    assert torch.equal(up.amax(dim=(3, 4)), up.amin(dim=(3, 4)))

    class Up(torch.nn.Module):
        def forward(self, x):
            return upsample_trilinear_2x(x)

    volume = torch.randn(1, 8, 6, 9, 13)
    buffer = io.BytesIO()
    torch.onnx.export(Up(), (volume,), buffer, opset_version=17, dynamo=False, input_names=["v"])
    graph = onnx.shape_inference.infer_shapes(onnx.load_from_string(buffer.getvalue())).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input)}
    resized = [ranks[node.input[0]] for node in graph.node if node.op_type == "Resize"]
    assert resized == [4, 4], resized
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"v": volume.numpy()})
    reference = F.interpolate(volume, scale_factor=2, mode="trilinear", align_corners=False).numpy()
    np.testing.assert_allclose(out, reference, atol=1e-5, rtol=0)


def test_converted_weights_keep_the_response_to_constant_volumes(tmp_path):
    from mono2stereo_core.models import save_checkpoint
    from mono2stereo_core.models.checkpoint import CheckpointError
    from mono2stereo_core.models.stereo_net import convert_state_dict
    from mono2stereo_core.training.trainer import load_network_weights

    old = perturbed_tiny(1)
    new = build_model("m2s_tiny", **FAST).eval()
    new.load_state_dict(convert_state_dict(old.state_dict(), old.config, new.config), strict=True)
    # Every weight outside the three converted layers is carried over unchanged.
    for key, value in new.state_dict().items():
        if key in old.state_dict() and not key.startswith(("volume_in.0", "volume_out", "hourglasses.0.up.0")):
            assert torch.equal(value, old.state_dict()[key]), key
    constant = torch.full((1, old.corr_groups, 8, 6, 10), 0.7)
    with torch.no_grad():
        # 3x3x3 vs its 1x1x1 sum of taps: equal away from the zero-padded borders.
        a = old.volume_in(constant)[..., 1:-1, 1:-1, 1:-1]
        b = new.volume_in(constant)[..., 1:-1, 1:-1, 1:-1]
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        low = torch.full((1, 2 * old.hourglasses[0].up[1].num_features, 4, 3, 5), 0.3)
        up_old = old.hourglasses[0].up[0](low)[..., 2:-2, 2:-2, 2:-2].mean(dim=(2, 3, 4))
        up_new = new.hourglasses[0].up[0](low)[..., 2:-2, 2:-2, 2:-2].mean(dim=(2, 3, 4))
        torch.testing.assert_close(up_old, up_new, rtol=1e-4, atol=1e-5)
    # Training warm starts convert on load; other architecture differences are still refused.
    path = save_checkpoint(tmp_path / "old.safetensors", old, sidecar={})
    fresh = build_model("m2s_tiny", **FAST)
    load_network_weights(fresh, path)
    torch.testing.assert_close(fresh.volume_out.weight, new.volume_out.weight)
    with pytest.raises(CheckpointError, match="differs from"):
        load_network_weights(build_model("m2s_tiny", agg_channels=8, **FAST), path)
    with pytest.raises(ValueError, match="only 3 -> 1"):
        convert_state_dict(new.state_dict(), new.config, old.config)


def test_network_without_edge_refinement_ends_at_the_convex_upsampling(tmp_path):
    from mono2stereo_core.models import save_checkpoint
    from mono2stereo_core.models.stereo_net import convert_state_dict
    from mono2stereo_core.training.trainer import load_network_weights

    old = perturbed_tiny(3)
    new = build_model("m2s_tiny", edge_refinement=False).eval()
    assert new.edge_refinement is None and new.config["edge_refinement"] is False
    assert "edge_refinement" not in old.config  # legacy sidecars keep rebuilding the network with the stage
    assert build_from_config(new.config).edge_refinement is None
    assert build_from_config(old.config).edge_refinement is not None
    tensors = convert_state_dict(old.state_dict(), old.config, new.config)
    assert not [k for k in tensors if k.startswith("edge_refinement.")]
    new.load_state_dict(tensors, strict=True)
    left, right = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = old.forward_train(left, right), new.forward_train(left, right)
    # Everything up to the full-resolution stage is the same network: its input is the new output, exactly.
    assert len(b.predictions) == len(a.predictions) - 1
    assert torch.equal(b.disparity, a.predictions[-2]) and not torch.equal(b.disparity, a.disparity)
    assert count_macs(new, height=480, width=640) < count_macs(old, height=480, width=640)
    # A training warm start converts on load.
    fresh = build_model("m2s_tiny", edge_refinement=False)
    load_network_weights(fresh, save_checkpoint(tmp_path / "old.safetensors", old, sidecar={}))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().forward_train(left, right).disparity, b.disparity, rtol=0, atol=0)
    with pytest.raises(ValueError, match="only 3 -> 1, deconv -> trilinear, true -> false, refine_iterations and working_scale convert"):
        convert_state_dict(new.state_dict(), new.config, old.config)
    with pytest.raises(ValueError, match="edge_refinement must be true or false"):
        build_model("m2s_rt", edge_refinement="no")


def test_more_refinement_iterations_start_as_copies_and_inference_upsamples_only_the_last(tmp_path):
    from mono2stereo_core.models import save_checkpoint
    from mono2stereo_core.models.stereo_net import convert_state_dict
    from mono2stereo_core.training.trainer import load_network_weights

    old = perturbed_tiny(5)
    assert old.config["refine_iterations"] == 1
    new = build_model("m2s_tiny", refine_iterations=2).eval()
    new.load_state_dict(convert_state_dict(old.state_dict(), old.config, new.config), strict=True)
    for prefix in ("refinements", "upsample_masks"):
        first = {k[len(prefix) + 3:]: v for k, v in new.state_dict().items() if k.startswith(f"{prefix}.0.")}
        second = {k[len(prefix) + 3:]: v for k, v in new.state_dict().items() if k.startswith(f"{prefix}.1.")}
        assert first and first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    left, right = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = old.forward_train(left, right), new.forward_train(left, right)
        disparity, _ = new(left, right)
        lean = new.forward_train(left, right, intermediate=False)
    # The first iteration is the old network's; the copy refines its output once more.
    torch.testing.assert_close(b.predictions[2], a.predictions[2], rtol=0, atol=0)
    assert len(b.predictions) == len(a.predictions) + 1 and not torch.equal(b.disparity, a.disparity)
    # Inference skips the intermediate full-resolution upsampling: same output, fewer MACs.
    torch.testing.assert_close(disparity, b.disparity, rtol=0, atol=0)
    assert len(lean.predictions) == len(b.predictions) - 1

    class EveryIteration(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.stride = net, net.stride

        def forward(self, left, right):
            return self.net.forward_train(left, right).disparity

    # Exactly the first iteration's mask head (two convolutions at 1/2 resolution) is saved.
    mask_macs = sum(m.weight.numel() for m in new.upsample_masks[0] if isinstance(m, torch.nn.Conv2d)) * 32 * 48
    assert count_macs(EveryIteration(new), height=64, width=96) - count_macs(new, height=64, width=96) == mask_macs
    # A warm start converts on load; fewer iterations drop the last ones (back to the old network, exactly).
    fresh = build_model("m2s_tiny", refine_iterations=2)
    load_network_weights(fresh, save_checkpoint(tmp_path / "old.safetensors", old, sidecar={}))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().forward_train(left, right).disparity, b.disparity, rtol=0, atol=0)
    back = build_model("m2s_tiny").eval()
    back.load_state_dict(convert_state_dict(new.state_dict(), new.config, old.config), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(left, right)[0], a.disparity, rtol=0, atol=0)


def test_no_refinement_ends_at_the_cost_volume_estimate_and_converts_from_a_refined_network():
    from mono2stereo_core.models.stereo_net import convert_state_dict

    old = perturbed_tiny(6)
    lean = build_model("m2s_tiny", refine_iterations=0, edge_refinement=False).eval()
    assert lean.config["refine_iterations"] == 0 and len(lean.refinements) == 0 and len(lean.upsample_masks) == 0
    lean.load_state_dict(convert_state_dict(old.state_dict(), old.config, lean.config), strict=True)
    left, right = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        a, b = old.forward_train(left, right), lean.forward_train(left, right)
        disparity, confidence = lean(left, right)
    # global and local soft-argmax only; the local one (bilinear from 1/4) is the output.
    assert len(b.predictions) == 2
    torch.testing.assert_close(b.predictions[1], a.predictions[1], rtol=0, atol=0)
    torch.testing.assert_close(disparity, a.predictions[1], rtol=0, atol=0)
    torch.testing.assert_close(confidence, a.confidence, rtol=0, atol=0)
    assert count_macs(lean) < count_macs(build_model("m2s_tiny", edge_refinement=False))
    with pytest.raises(ValueError, match="refine_iterations=0 needs edge_refinement=false"):
        build_model("m2s_tiny", refine_iterations=0)
    with pytest.raises(ValueError, match="refine_iterations must be >= 0"):
        build_model("m2s_tiny", refine_iterations=-1, edge_refinement=False)
    grown = build_model("m2s_tiny", edge_refinement=False)
    with pytest.raises(ValueError, match="cannot grow from 0"):
        convert_state_dict(lean.state_dict(), lean.config, grown.config)


def test_working_scale_runs_the_same_network_on_the_resized_pair_and_answers_in_input_pixels():
    import torch.nn.functional as F

    from mono2stereo_core.models.stereo_net import convert_state_dict

    base = perturbed_tiny(7)
    scaled = build_model("m2s_tiny", working_scale=1.5).eval()
    assert scaled.config["working_scale"] == 1.5 and "working_scale" not in base.config  # 1.0 is not written
    assert build_from_config(scaled.config).config == scaled.config
    # No weights change: the conversion is the identity on the tensors.
    converted = convert_state_dict(base.state_dict(), base.config, scaled.config)
    assert converted.keys() == base.state_dict().keys()
    scaled.load_state_dict(converted, strict=True)
    assert scaled.max_disparity == pytest.approx(base.max_disparity / 1.5)
    assert scaled.working_size(64, 96) == (96, 144) and scaled.working_size(56, 80) == (80, 120)
    left, right = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        out = scaled.forward_train(left, right)
        big = base.forward_train(
            *(F.interpolate(x, size=(96, 144), mode="bilinear", align_corners=False) for x in (left, right))
        )
    assert all(p.shape == (2, 1, 64, 96) for p in out.predictions) and out.confidence.shape == (2, 1, 64, 96)
    # The same to float rounding: the network normalises the pair before resizing it (linear, so the same
    # values), the reference resized first.
    for ours, theirs in zip(out.predictions, big.predictions):
        expected = F.interpolate(theirs, size=(64, 96), mode="bilinear", align_corners=False) * (96 / 144)
        torch.testing.assert_close(ours, expected, rtol=2e-6, atol=1e-5)
    torch.testing.assert_close(out.log_prob, big.log_prob, rtol=0, atol=2e-5)  # on the network's own 1/4 grid
    assert out.log_prob.shape[-2:] == (24, 36) and out.downsample == pytest.approx(64 / 24)
    torch.testing.assert_close(out.bin_values, big.bin_values * (96 / 144))
    # The cost is the enlarged pair's.
    assert count_macs(scaled, height=480, width=640) == count_macs(base, height=720, width=960)
    for bad in (0.1, 5.0, "1.5", True):
        with pytest.raises(ValueError, match="working_scale must be a number in"):
            build_model("m2s_tiny", working_scale=bad)


def test_working_scale_network_trains_with_the_distribution_loss_and_its_range():
    from mono2stereo_core.training.config import load_config, output_max_disparity
    from mono2stereo_core.training.losses import sequence_loss

    torch.manual_seed(0)
    net = build_model("m2s_tiny", max_disparity=64, working_scale=1.25)
    left, right = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    gt = torch.full((2, 1, 64, 96), 20.0)
    out = net.forward_train(left, right)
    loss = sequence_loss(out, gt, None, max_disparity=net.max_disparity, distribution_weight=0.5)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in net.volume_out.parameters())
    config = load_config(None, overrides=["model.max_disparity=192", "model.overrides={working_scale: 1.5}"])
    assert output_max_disparity(config) == 128.0
    assert output_max_disparity(load_config(None)) == float(load_config(None)["model"]["max_disparity"])
