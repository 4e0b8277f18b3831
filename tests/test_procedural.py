"""Procedural stereo scenes: determinism, exact geometry, photo-consistency of the true right view, occlusion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage

from mono2stereo_core.geometry import MOTORCYCLE_CAMERA, StereoCamera
from mono2stereo_core.synthesis.procedural import (
    PRIMITIVE_KINDS,
    ProceduralScene,
    SceneConfig,
    render_scene,
    render_sequence,
)
from mono2stereo_core.synthesis.textures import (
    COLOUR_PHOTOS,
    GREY_PHOTOS,
    SYNTHETIC_KINDS,
    Texture,
    photo_texture,
    synthetic_texture,
)

W, H, MAXD = 320, 240, 64.0
SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def scenes() -> dict[int, ProceduralScene]:
    return {seed: render_scene(seed, width=W, height=H, max_disparity=MAXD) for seed in SEEDS}


def _warp_right_to_left(scene: ProceduralScene) -> np.ndarray:
    """Left view rebuilt from the true right view and the true disparity (bilinear), H x W x 3 float32."""
    h, w = scene.disparity.shape
    map_x = (np.arange(w, dtype=np.float32)[None, :] - scene.disparity).astype(np.float32)
    map_y = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, axis=1)
    return cv2.remap(
        scene.right.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _depth_edges(disparity: np.ndarray, *, grow: int = 1) -> np.ndarray:
    d = disparity
    jump = np.abs(np.diff(d, axis=1, append=d[:, -1:])) + np.abs(np.diff(d, axis=0, append=d[-1:]))
    return ndimage.binary_dilation(jump > 1.0, iterations=grow)


def test_same_seed_gives_identical_arrays_and_other_seeds_differ():
    a = render_scene(11, width=160, height=120, max_disparity=48)
    b = render_scene(11, width=160, height=120, max_disparity=48)
    c = render_scene(12, width=160, height=120, max_disparity=48)
    for name in ("left", "right", "depth", "disparity", "disparity_right", "occlusion"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.camera == b.camera
    assert not np.array_equal(a.left, c.left)
    assert not np.array_equal(a.depth, c.depth)


def test_shapes_dtypes_and_ranges(scenes):
    for seed, s in scenes.items():
        assert s.left.shape == s.right.shape == (H, W, 3), seed
        assert s.left.dtype == s.right.dtype == np.uint8
        for name in ("depth", "disparity", "disparity_right"):
            arr = getattr(s, name)
            assert arr.shape == (H, W) and arr.dtype == np.float32, (seed, name)
            assert np.all(np.isfinite(arr)) and np.all(arr > 0), (seed, name)
        assert s.occlusion.shape == (H, W) and s.occlusion.dtype == bool
        assert (s.camera.width, s.camera.height, s.camera.doffs) == (W, H, 0.0)
        # Images use the dynamic range: neither black nor blown out.
        assert 25 < s.left.mean() < 230 and s.left.std() > 10, seed


def test_disparity_is_focal_times_baseline_over_depth(scenes):
    for s in scenes.values():
        fb = np.float32(s.camera.fx * s.camera.baseline)
        np.testing.assert_allclose(s.disparity, fb / s.depth, rtol=1e-6)
        np.testing.assert_allclose(s.camera.disparity_to_depth(s.disparity), s.depth, rtol=1e-5)


def test_disparity_range_is_honoured_with_a_realistic_distribution(scenes):
    cfg = SceneConfig()
    for seed, s in scenes.items():
        assert s.disparity.max() <= MAXD and s.disparity_right.max() <= MAXD, seed
        assert s.disparity.max() >= cfg.max_disparity_fraction[0] * MAXD * 0.99, seed
    all_disp = np.concatenate([s.disparity.ravel() / MAXD for s in scenes.values()])
    # Most pixels at small-to-medium disparity (far background, mid-range objects), a tail of near ones.
    assert np.median(all_disp) < 0.4
    assert np.mean(all_disp > 0.5) > 0.01


def test_fixed_camera_is_used_as_given():
    cam = MOTORCYCLE_CAMERA.scaled(W / MOTORCYCLE_CAMERA.width, H / MOTORCYCLE_CAMERA.height)
    cam = StereoCamera(fx=cam.fx, fy=cam.fy, cx=cam.cx, cy=cam.cy, baseline=cam.baseline, width=W, height=H)
    s = render_scene(3, width=W, height=H, max_disparity=40, camera=cam)
    assert (s.camera.fx, s.camera.fy, s.camera.cx, s.camera.cy) == (cam.fx, cam.fy, cam.cx, cam.cy)
    assert s.camera.baseline == pytest.approx(cam.baseline)
    assert s.disparity.max() <= 40


def test_true_right_view_reproduces_left_except_where_occluded(scenes):
    for seed, s in scenes.items():
        err = np.abs(_warp_right_to_left(s) - s.left.astype(np.float32)).mean(axis=2)
        occ = s.occlusion
        noc_err = err[~occ].mean()
        assert noc_err < 6.0, f"seed {seed}: mean |warp(right) - left| on visible pixels = {noc_err:.2f}"
        if occ.sum() > 200:
            assert err[occ].mean() > 3 * noc_err, f"seed {seed}: occluded pixels are not where the warp fails"
        # Large errors away from depth edges (anti-aliased mixtures) and specular spots happen only where the
        # mask says the point is hidden: fewer than 0.3 % of the pixels.
        unexplained = (err > 40) & ~ndimage.binary_dilation(occ | _depth_edges(s.disparity), iterations=1)
        assert unexplained.mean() < 0.003, (
            f"seed {seed}: {unexplained.sum()} unexplained photo-inconsistencies"
        )


def test_occlusion_mask_agrees_with_the_right_views_own_depth(scenes):
    # Independent check: a left pixel is visible iff the right view, at x - d, sees the same disparity.
    for seed, s in scenes.items():
        h, w = s.disparity.shape
        x_right = np.arange(w)[None, :] - s.disparity
        col = np.clip(np.rint(x_right), 0, w - 1).astype(np.intp)
        seen = np.take_along_axis(s.disparity_right, col, axis=1)
        hidden = (seen > s.disparity * 1.01 + 0.5) | (x_right < -0.5) | (x_right > w - 0.5)
        away = ~_depth_edges(s.disparity) & ~_depth_edges(seen)
        agreement = (hidden == s.occlusion)[away].mean()
        assert agreement > 0.98, f"seed {seed}: occlusion mask agrees on {agreement:.2%} only"
        # Out-of-view pixels on the left border are always flagged.
        assert s.occlusion[:, 0][s.disparity[:, 0] > 1].all(), seed


def _thin_foreground(disparity: np.ndarray, *, gap: int = 3, ratio: float = 1.3) -> np.ndarray:
    """Pixels nearer than the pixels ``gap`` away on *both* sides (horizontally or vertically): structures
    thinner than ~2*gap px with the background visible around them."""
    d = np.pad(disparity, gap, mode="edge")
    c = d[gap:-gap, gap:-gap]
    horizontal = (c > ratio * d[gap:-gap, : -2 * gap]) & (c > ratio * d[gap:-gap, 2 * gap :])
    vertical = (c > ratio * d[: -2 * gap, gap:-gap]) & (c > ratio * d[2 * gap :, gap:-gap])
    return horizontal | vertical


def test_thin_perforated_structures_show_the_background_through_them(scenes):
    thin_only = SceneConfig(primitive_weights={"fence": 1.0, "wheel": 1.0, "wires": 1.0, "bars": 1.0})
    counts = [
        int(
            _thin_foreground(
                render_scene(seed, width=W, height=H, max_disparity=MAXD, config=thin_only).disparity
            ).sum()
        )
        for seed in (0, 1)
    ]
    assert min(counts) > 100, counts
    # And the default mix has them in a good share of the scenes too.
    default_counts = [int(_thin_foreground(s.disparity).sum()) for s in scenes.values()]
    assert sum(c > 30 for c in default_counts) >= len(default_counts) // 2, default_counts


def test_each_primitive_kind_renders_alone():
    for kind in PRIMITIVE_KINDS:
        cfg = SceneConfig(
            primitive_weights={kind: 1.0}, num_objects=(4, 4), p_ground=0, p_side_wall=0, p_ceiling=0
        )
        s = render_scene(5, width=96, height=72, max_disparity=24, config=cfg)
        assert np.all(np.isfinite(s.depth)) and s.disparity.max() <= 24, kind
        assert np.unique(np.round(s.disparity, 1)).size > 3, f"{kind}: nothing but the background rendered"


def test_sequence_moves_smoothly_with_a_fixed_rig():
    frames = list(render_sequence(4, num_frames=5, width=160, height=120, max_disparity=40))
    assert len(frames) == 5
    assert all(f.camera == frames[0].camera for f in frames)
    for f in frames:
        assert f.disparity.max() <= 40 and np.all(np.isfinite(f.depth))
    for a, b in zip(frames, frames[1:]):
        change = np.abs(a.disparity - b.disparity)
        # The camera moves (things change) but little per frame (most pixels by well under a pixel).
        assert not np.array_equal(a.left, b.left)
        assert np.median(change) < 1.0 and np.mean(change > 0) > 0.2
    # Motion 0 gives the same geometry every frame, only fresh sensor noise.
    static = list(render_sequence(4, num_frames=2, width=96, height=72, max_disparity=30, motion=0.0))
    np.testing.assert_array_equal(static[0].depth, static[1].depth)
    assert not np.array_equal(static[0].left, static[1].left)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"p_ground": 1.5}, "p_ground"),
        ({"primitive_weights": {"teapot": 1.0}}, "teapot"),
        ({"supersample": 0}, "supersample"),
        ({"depth_ratio": (1.0, 2.0)}, "depth_ratio"),
    ],
)
def test_config_validation_names_the_offending_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        SceneConfig(**kwargs)


def test_request_validation():
    with pytest.raises(ValueError, match="max_disparity"):
        render_scene(0, width=64, height=48, max_disparity=100)
    bad_cam = StereoCamera(fx=50, fy=50, cx=32, cy=24, baseline=0.1, doffs=3)
    with pytest.raises(ValueError, match="doffs"):
        render_scene(0, width=64, height=48, max_disparity=20, camera=bad_cam)
    with pytest.raises(ValueError, match="num_frames"):
        next(render_sequence(0, num_frames=0))


def test_texture_sampling_is_bilinear_with_mirrored_repeat():
    img = np.zeros((4, 6, 3), dtype=np.float32)
    img[..., 0] = np.arange(6)[None, :]
    img[..., 1] = np.arange(4)[:, None]
    tex = Texture(img)
    u = np.array([0.0, 2.5, -1.0, 6.0, 11.0, 12.0, 2.0])
    v = np.array([0.0, 1.5, 0.0, 0.0, 0.0, 0.0, -1.0])
    got = tex.sample(u, v, 0)
    # Mirrored repeat: texel -1 is texel 0, texel 6 is texel 5, texel 11 is texel 0, texel 12 is texel 0.
    np.testing.assert_allclose(got[:, 0], [0.0, 2.5, 0.0, 5.0, 0.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(got[:, 1], [0.0, 1.5, 0.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6)
    # Coarser mip levels average: the top level of a constant-mean texture is that mean.
    coarse = tex.sample(np.array([1.0]), np.array([1.0]), 10)
    assert coarse.shape == (1, 3) and np.all(np.isfinite(coarse))


def test_photo_and_synthetic_textures():
    for name in (COLOUR_PHOTOS[0], GREY_PHOTOS[0]):
        tex = photo_texture(name)
        assert tex is photo_texture(name)  # cached
        assert max(tex.shape) <= 512 and tex.levels[0].dtype == np.float32
        assert tex.levels[0].std() > 0.05
    with pytest.raises(ValueError, match="stereo_motorcycle"):
        photo_texture("stereo_motorcycle")
    rng = np.random.default_rng(0)
    for kind in SYNTHETIC_KINDS:
        tex = synthetic_texture(kind, rng, size=64)
        level0 = tex.levels[0]
        assert level0.shape == (64, 64, 3) and 0 <= level0.min() and level0.max() <= 1
        spread = level0.std(axis=(0, 1)).max()
        if kind == "flat":
            assert spread < 0.01
        elif kind != "gradient":
            assert spread > 0.02, kind


def test_cast_shadows_darken_the_scene_without_moving_anything():
    lit = render_scene(21, width=160, height=120, max_disparity=40, config=SceneConfig(p_shadows=0.0))
    shadowed = render_scene(21, width=160, height=120, max_disparity=40, config=SceneConfig(p_shadows=1.0))
    np.testing.assert_array_equal(lit.depth, shadowed.depth)
    darker = shadowed.left.astype(np.float32).mean(axis=2) < lit.left.astype(np.float32).mean(axis=2) - 8
    # Auto-exposure may brighten the whole frame a little; shadows still leave clearly darker regions.
    assert 0.01 < darker.mean() < 0.8, darker.mean()
