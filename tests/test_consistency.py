"""Tests for mono2stereo_core.inference.consistency and the runners' lr_check (second, mirrored pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mono2stereo_core.datasets_gt import load_gt_dataset
from mono2stereo_core.evaluation import evaluate_disparity
from mono2stereo_core.inference.consistency import fill_background, left_right_inconsistent, lr_check_fill
from mono2stereo_core.inference.runner import StereoRunner, load_runner

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "m2s_rt.safetensors"
BG, FG, FG_COLS, FATTEN = 10.0, 30.0, (100, 150), 8


def block_scene(height: int = 6, width: int = 203):
    """A fronto-parallel block (30 px) before a wall (10 px): exact left and right disparities, and a left
    disparity as a network gets it wrong: the block continued FATTEN px leftwards into its occlusion."""
    x = np.arange(width)
    left_true = np.where((x >= FG_COLS[0]) & (x < FG_COLS[1]), FG, BG).astype(np.float32)
    # The right camera sees the block shifted left by its disparity.
    right = np.where((x >= FG_COLS[0] - FG) & (x < FG_COLS[1] - FG), FG, BG).astype(np.float32)
    fattened = np.where((x >= FG_COLS[0] - FATTEN) & (x < FG_COLS[1]), FG, BG).astype(np.float32)
    tile = lambda row: np.repeat(row[None], height, axis=0)  # noqa: E731
    return tile(left_true), tile(right), tile(fattened)


def test_inconsistent_pixels_are_exactly_the_occlusion_and_the_unseen_border():
    truth, right, fattened = block_scene()
    bad = left_right_inconsistent(fattened, right, tolerance=2.0)
    x = np.arange(truth.shape[1])
    # Out of the right view: x - 10 < -0.5. Occluded: the band left of the block that lands on it in the right
    # view, [100 - (30 - 10), 100), both its true background pixels and the fattened ones.
    expected = (x < BG) | ((x >= FG_COLS[0] - (FG - BG)) & (x < FG_COLS[0]))
    np.testing.assert_array_equal(bad, np.repeat(expected[None], truth.shape[0], axis=0))
    # The exact left disparity is consistent everywhere but in the occlusion and the border.
    np.testing.assert_array_equal(left_right_inconsistent(truth, right), bad)


def test_background_fill_restores_the_true_disparity_and_zeroes_confidence():
    truth, right, fattened = block_scene()
    confidence = np.full(truth.shape, 0.9, np.float32)
    filled, conf, bad = lr_check_fill(fattened, confidence, right)
    np.testing.assert_array_equal(filled, truth)
    np.testing.assert_array_equal(conf == 0, bad)
    assert (conf[~bad] == np.float32(0.9)).all()
    # A marked run takes the farther of its two confirmed ends; a marked pixel is only ever lowered.
    marked = np.zeros_like(bad)
    marked[:, 95:130] = True  # from the wall (10) into the block (30): both ends' minimum is the wall
    np.testing.assert_array_equal(fill_background(truth, marked, median=0)[:, 95:130], np.full((6, 35), BG))
    dip = truth.copy()
    dip[:, 40] = 4.0
    marked = np.zeros_like(bad)
    marked[:, 40] = True
    assert (fill_background(dip, marked, median=0)[:, 40] == 4.0).all()
    # Nothing to fill: unchanged copy.
    out = fill_background(truth, np.zeros_like(bad))
    np.testing.assert_array_equal(out, truth)
    assert out is not truth


def test_consistency_arguments_are_checked():
    truth, right, _ = block_scene()
    with pytest.raises(ValueError, match="same size"):
        left_right_inconsistent(truth, right[:, :-1])
    with pytest.raises(ValueError, match="tolerance must be positive"):
        left_right_inconsistent(truth, right, tolerance=0)
    with pytest.raises(ValueError, match="non-empty H x W"):
        left_right_inconsistent(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="median must be 0, 3 or 5"):
        fill_background(truth, np.zeros(truth.shape, bool), median=7)
    with pytest.raises(ValueError, match="invalid mask"):
        fill_background(truth, np.zeros((2, 2), bool))


class DisparityInTheImage(StereoRunner):
    """A stand-in network that reads its answer from the left image's red channel (value = disparity px):
    shows which image the runner passes as 'left' in each pass, padded and flipped as the runner does it."""

    backend = "torch"

    def __init__(self):
        super().__init__(stride=8, max_disparity=64, input_size=None, description="red channel")
        self.calls = 0

    def infer(self, left, right):
        self.calls += 1
        disparity = np.round(left[:, :1] * 255.0)
        return disparity, np.ones_like(disparity)


def test_runner_second_pass_runs_the_mirrored_pair_and_maps_it_back():
    truth, right, fattened = block_scene(height=13, width=203)  # neither a multiple of the stride 8: padded

    def image(disparity):
        rgb = np.zeros(disparity.shape + (3,), np.uint8)
        rgb[..., 0] = disparity.astype(np.uint8)
        return rgb

    runner = DisparityInTheImage()
    plain, _ = runner(image(fattened), image(right))
    np.testing.assert_array_equal(plain, fattened)
    assert runner.calls == 1
    runner.lr_check = True
    checked, conf = runner(image(fattened), image(right))
    assert runner.calls == 3
    # The right view's disparity came from the mirrored pass (flip(right) as the left image) and was flipped
    # back: with it the check finds exactly the fattened band and the border, and the fill is the truth.
    np.testing.assert_array_equal(checked, truth)
    np.testing.assert_array_equal(conf == 0, left_right_inconsistent(truth, right))


@pytest.mark.skipif(not SHIPPED.is_file(), reason="weights/m2s_rt.safetensors not in this checkout")
def test_lr_check_makes_the_shipped_network_better_in_occlusions_on_both_real_pairs():
    torch.set_num_threads(2)
    plain = load_runner(SHIPPED, backend="torch")
    checked = load_runner(SHIPPED, backend="torch", lr_check=True)
    assert "left-right check" in checked.description and not plain.lr_check
    for sample in load_gt_dataset("real"):
        base = evaluate_disparity(plain(sample.left, sample.right)[0], sample.disparity)
        disparity, confidence = checked(sample.left, sample.right)
        better = evaluate_disparity(disparity, sample.disparity)
        # All-pixel bad-2 (occlusions count) drops (measured 2026-11-26: motorcycle 12.18 -> 11.31, Aloe
        # 14.35 -> 11.39); visible pixels do not get worse.
        assert better["all"].bad2 < base["all"].bad2 - 0.5, (sample.name, base["all"].bad2, better["all"].bad2)
        assert better["noc"].bad2 < base["noc"].bad2 + 0.1, sample.name
        assert better["all"].density == 100.0 and 0.02 < (confidence == 0).mean() < 0.3
