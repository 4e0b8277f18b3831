"""Tests for mono2stereo_core.synthesis.inpaint on procedural scenes whose true right view is rendered.

Setup shared by the headline tests: render a procedural scene, forward-splat its left image with its exact
disparity (so only the inpainting differs between methods), fill the holes with each method and compare
with the rendered right view on *disoccluded* pixels: splat holes whose true content lies inside the left
image (right pixel x with x + true right disparity < W - 1), i.e. background that the left camera could
not see because something nearer hid it, not the band beyond the left image's border.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mono2stereo_core.synthesis.inpaint import (
    disparity_edges,
    edge_aware_inpaint,
    nearest_fill,
    push_pull_fill,
    running_extreme,
    telea_inpaint,
)
from mono2stereo_core.synthesis.procedural import render_scene
from mono2stereo_core.synthesis.warp import forward_splat

SEEDS = range(8)
WIDTH, HEIGHT, MAX_DISPARITY = 256, 192, 48.0


def _setup(scene):
    left = torch.from_numpy(scene.left).permute(2, 0, 1)[None].float() / 255.0
    disp = torch.from_numpy(scene.disparity)[None, None]
    edges = disparity_edges(disp, tau=1.5, width=1)
    splat = forward_splat(torch.cat([left, edges.float()], dim=1), disp)
    return splat, splat.image[:, :3], splat.image[:, 3:] > 0.25, ~splat.coverage


def _bleed_mask_and_colours(scene, splat, warped, disoccluded):
    """Pixels where foreground bleed is measurable, and the occluder colour for each.

    For a disoccluded right pixel p, the occluder is the nearest covered pixel to its left on the same row
    in the warped view, provided it is a nearer surface (its splatted disparity exceeds p's true right
    disparity by > 1 px) and its colour differs from p's true colour by > 30 (L1 over RGB, 0..255), so that
    "closer to the foreground than to the truth" is decidable.
    """
    h, w = scene.disparity.shape
    xs = np.arange(w)[None].repeat(h, 0)
    ys = np.arange(h)[:, None].repeat(w, 1)
    covered = splat.coverage[0, 0].numpy()
    nearest_left = np.maximum.accumulate(np.where(covered, xs, -1), axis=1)
    col = nearest_left.clip(0)
    fg_disp = splat.disparity[0, 0].numpy()[ys, col]
    fg_colour = warped[0].permute(1, 2, 0).numpy()[ys, col] * 255.0
    truth = scene.right.astype(np.float64)
    measurable = (
        disoccluded
        & (nearest_left >= 0)
        & (fg_disp > scene.disparity_right + 1.0)
        & (np.abs(fg_colour - truth).sum(-1) > 30)
    )
    return measurable, fg_colour


@pytest.fixture(scope="module")
def evaluation():
    """Per method: pooled MAE on disoccluded pixels and the foreground-bleed rate over all scenes."""
    methods = {
        "ea": lambda img, d, holes, edges: edge_aware_inpaint(img, d, holes, edges=edges),
        "naive": lambda img, d, holes, edges: nearest_fill(img, d, holes),
        "telea": lambda img, d, holes, edges: telea_inpaint(img, d, holes),
    }
    abs_err = {m: [] for m in methods}
    bleed = {m: [] for m in methods}
    anchor_right = []
    on_background = {"ea": [], "naive": []}
    for seed in SEEDS:
        scene = render_scene(seed, width=WIDTH, height=HEIGHT, max_disparity=MAX_DISPARITY)
        splat, warped, edges, holes = _setup(scene)
        xs = np.arange(WIDTH)[None]
        disoccluded = holes[0, 0].numpy() & (xs + scene.disparity_right < WIDTH - 1)
        measurable, fg_colour = _bleed_mask_and_colours(scene, splat, warped, disoccluded)
        truth = scene.right.astype(np.float64)
        for name, fill in methods.items():
            result = fill(warped, splat.disparity, holes, edges)
            out = (result.image[0].permute(1, 2, 0).numpy() * 255.0).round()
            abs_err[name].append(np.abs(out - truth)[disoccluded].ravel())
            closer_to_fg = np.abs(out - fg_colour).sum(-1) < np.abs(out - truth).sum(-1)
            bleed[name].append(closer_to_fg[measurable])
            if name in ("ea", "naive"):
                anchor = result.source_x[0, 0].numpy()
                rows = np.nonzero(disoccluded)
                anchor_disp = splat.disparity[0, 0].numpy()[rows[0], anchor[rows]]
                on_background[name].append(anchor_disp <= scene.disparity_right[rows] + 1.0)
                if name == "ea":
                    anchor_right.append(anchor[rows] > rows[1])
    summary = {
        "mae": {m: float(np.concatenate(v).mean()) for m, v in abs_err.items()},
        "bleed": {m: float(np.concatenate(v).mean()) for m, v in bleed.items()},
        "bleed_pixels": int(np.concatenate(bleed["ea"]).size),
        "anchor_right": float(np.concatenate(anchor_right).mean()),
        "on_background": {m: float(np.concatenate(v).mean()) for m, v in on_background.items()},
    }
    print("inpainting on procedural scenes:", summary)
    return summary


def test_ea_beats_telea_on_disoccluded_pixels(evaluation):
    """Mean absolute error (0..255 per channel) against the true right view on disoccluded pixels, pooled
    over 8 scenes (256x192). Measured: EA 19.3, Telea 24.9, naive 27.6."""
    mae = evaluation["mae"]
    assert mae["ea"] < 0.92 * mae["telea"], mae
    assert mae["ea"] < mae["naive"], mae


def test_ea_has_lower_foreground_bleed_than_naive_fill(evaluation):
    """Foreground-bleed rate: among disoccluded pixels next to a distinguishable occluder (see
    `_bleed_mask_and_colours`), the fraction whose filled colour is closer (L1 RGB) to the occluder's
    colour than to the true background colour. Measured: EA 0.13, Telea 0.51, naive 0.61."""
    bleed = evaluation["bleed"]
    assert evaluation["bleed_pixels"] > 500
    assert bleed["ea"] < 0.5 * bleed["naive"], bleed
    assert bleed["ea"] < 0.3, bleed


def test_ea_anchors_on_the_background_side(evaluation):
    """In a left->right warp disocclusions open to the right of the foreground, so EA's row anchor (the
    hole end with the smaller disparity) should mostly be the right end, and should lie on the true
    background surface (splatted disparity <= true right disparity + 1 px) far more often than the naive
    fill's nearest neighbour. Measured: right end 0.88, on background 0.88 (EA) vs 0.62 (naive).
    Multi-layer holes and thin structures account for the rest."""
    assert evaluation["anchor_right"] > 0.75, evaluation["anchor_right"]
    on_bg = evaluation["on_background"]
    assert on_bg["ea"] > 0.75 and on_bg["ea"] > on_bg["naive"] + 0.2, on_bg


def test_ea_never_copies_foreground_into_a_two_layer_hole():
    """A textured foreground bar over a flat-grey background: the hole must come out grey."""
    h, w = 32, 96
    rng = np.random.default_rng(0)
    image = torch.full((1, 3, h, w), 0.5)
    disp = torch.full((1, 1, h, w), 3.0)
    image[:, :, :, 30:50] = torch.from_numpy(rng.random((3, h, 20))).float()
    disp[:, :, :, 30:50] = 15.0
    edges = disparity_edges(disp, tau=1.5, width=1)
    splat = forward_splat(torch.cat([image, edges.float()], 1), disp)
    holes = ~splat.coverage
    assert holes[0, 0, :, 40:46].all()  # hole right of the bar: columns 50-15 .. 50-3-1
    ea = edge_aware_inpaint(splat.image[:, :3], splat.disparity, holes, edges=splat.image[:, 3:] > 0.25)
    naive = nearest_fill(splat.image[:, :3], splat.disparity, holes)
    hole = holes[0, 0, :, 30:60]
    ea_err = (ea.image[0, :, :, 30:60] - 0.5).abs().amax(0)[hole]
    naive_err = (naive.image[0, :, :, 30:60] - 0.5).abs().amax(0)[hole]
    assert ea_err.max() < 0.02, ea_err.max()
    assert naive_err.max() > 0.2  # the naive fill does smear the bar (the test can tell them apart)
    assert torch.allclose(ea.disparity[holes], torch.tensor(3.0))


def test_texture_blending_adds_matched_detail():
    """With a texture image, holes get detail whose mean stays the background colour."""
    h, w = 32, 96
    image = torch.full((1, 3, h, w), 0.5)
    image[:, :, ::2, :] = 0.6  # background has horizontal stripes: std 0.05
    disp = torch.full((1, 1, h, w), 3.0)
    disp[:, :, :, 30:50] = 15.0
    splat = forward_splat(image, disp)
    holes = ~splat.coverage
    texture = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    plain = edge_aware_inpaint(splat.image, splat.disparity, holes)
    textured = edge_aware_inpaint(splat.image, splat.disparity, holes, texture=texture, texture_alpha=1.0)
    inner = holes[0, 0] & (torch.arange(w) < 80)
    assert textured.image[0, 0][inner].std() > 2 * plain.image[0, 0][inner].std()
    assert abs(textured.image[0, 0][inner].mean() - plain.image[0, 0][inner].mean()) < 0.02


def test_helpers():
    x = torch.tensor([[[[0.0, 5.0, 1.0, 0.0, 0.0, 2.0]]]])
    assert running_extreme(x, 1).flatten().tolist() == [5.0, 5.0, 5.0, 1.0, 2.0, 2.0]
    assert running_extreme(x, 1, largest=False).flatten().tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    values = torch.arange(16.0).view(1, 1, 4, 4)
    weight = torch.ones(1, 1, 4, 4)
    weight[0, 0, 1:3, 1:3] = 0
    filled = push_pull_fill(values, weight)
    assert torch.equal(filled[weight > 0], values[weight > 0])
    assert 0 < filled[0, 0, 1, 1] < 15
    d = torch.tensor([[[[1.0, 1.0, 9.0, 9.0, 9.5]]]])
    assert disparity_edges(d, tau=1.5, width=0).flatten().tolist() == [False, True, True, False, False]


def test_bad_inputs_raise():
    img = torch.zeros(1, 3, 8, 8)
    d = torch.zeros(1, 1, 8, 8)
    holes = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"holes must be N x 1 x H x W = \(1, 1, 8, 8\), instead got \(1, 1, 8, 7\)"):
        edge_aware_inpaint(img, d, holes[..., :7])
    with pytest.raises(ValueError, match="open_side"):
        edge_aware_inpaint(img, d, holes, open_side="up")
    with pytest.raises(ValueError, match="texture_mix"):
        edge_aware_inpaint(img, d, holes, texture_mix=1.5)
    with pytest.raises(ValueError, match="tau"):
        disparity_edges(d, tau=0)
