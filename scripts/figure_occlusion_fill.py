#!/usr/bin/env python3
"""The picture of the runner's occlusion fill on a real pair: the network alone beside the default runner.

    python scripts/figure_occlusion_fill.py --out docs/img/occlusion_fill.png [--data motorcycle] [--checkpoint C]

Row 1: left image | ground truth | network alone (``occlusion_fill=False``) | default runner. Row 2: the pixels the
network's own disparity hides from the right camera (what the fill replaces, white) | the ground truth's
occlusion (white) | bad-2 pixels of the network alone (red) | bad-2 pixels with the fill (red). Torch backend,
so the figure is the same on every machine; captions carry each map's bad-2 over all ground-truth pixels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mono2stereo_core.datasets_gt import load_gt_dataset  # noqa: E402
from mono2stereo_core.evaluation import evaluate_disparity, occlusion_from_disparity  # noqa: E402
from mono2stereo_core.inference import load_runner  # noqa: E402
from mono2stereo_core.inference.consistency import occlusion_fill  # noqa: E402
from mono2stereo_core.viz import colorize_disparity, contact_sheet, save_png  # noqa: E402


def bad2_tile(prediction: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Grey where the ground truth is known and the prediction within 2 px, red where not, black = no GT."""
    known = np.isfinite(gt)
    tile = np.zeros(gt.shape + (3,), np.uint8)
    tile[known] = 64
    with np.errstate(invalid="ignore"):
        tile[known & ~(np.abs(prediction - gt) <= 2.0)] = (255, 0, 0)
    return tile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--data", default="motorcycle", help='"motorcycle" or "aloe" (default motorcycle)')
    parser.add_argument("--checkpoint", help="model file; default: the shipped weights")
    parser.add_argument("--tile-width", type=int, default=240, help="pixels per tile (default 240: a 390 KB PNG)")
    args = parser.parse_args(argv)
    if args.data not in ("motorcycle", "aloe"):
        parser.error(f"--data must be motorcycle or aloe, instead got {args.data!r}")
    (sample,) = list(load_gt_dataset(args.data))
    gt = np.asarray(sample.disparity, np.float32)
    # One network pass; the default runner applies exactly this fill to the same output.
    alone, confidence = load_runner(args.checkpoint, backend="torch", occlusion_fill=False)(sample.left, sample.right)
    filled, _, hidden = occlusion_fill(alone, confidence)
    known = np.isfinite(gt)
    vmin, vmax = float(gt[known].min()), float(gt[known].max())
    score = {name: evaluate_disparity(d, gt)["all"].bad2 for name, d in (("alone", alone), ("filled", filled))}
    sheet = contact_sheet(
        [
            [sample.left, colorize_disparity(gt, vmin=vmin, vmax=vmax),
             colorize_disparity(alone, vmin=vmin, vmax=vmax), colorize_disparity(filled, vmin=vmin, vmax=vmax)],
            [hidden, occlusion_from_disparity(gt), bad2_tile(alone, gt), bad2_tile(filled, gt)],
        ],
        labels=[
            [sample.name, "ground truth", f"network alone: bad-2 {score['alone']:.2f}%",
             f"+ occlusion fill: bad-2 {score['filled']:.2f}%"],
            ["hidden by its own disparity (filled)", "GT occlusion", "bad-2, network alone", "bad-2, with the fill"],
        ],
        tile_width=args.tile_width,
    )
    path = save_png(args.out, sheet)
    size_kb = path.stat().st_size / 1024
    print(f"wrote {path} ({size_kb:.0f} KB): bad-2 all {score['alone']:.2f} -> {score['filled']:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
