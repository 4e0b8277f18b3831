#!/usr/bin/env python3
"""Writes held-out procedural scenes as Middlebury-2014 folders, for `training/evaluate.py --data`.

    python scripts/write_procedural_benchmark.py --out runs/heldout_procedural [--first-seed 910000 --count 16]
    python training/evaluate.py --checkpoint weights/m2s_rt.safetensors --data runs/heldout_procedural --out eval_heldout/

The motorcycle pair is the one real evaluation pair this machine has, so choosing between two trained
networks on it alone tunes to it. These scenes are a second, synthetic check with dense exact ground truth:
seeds far from every training recipe's (training seeds start at 0, 100000, 200000 and 300000 and use at most
a few thousand scenes), rendered by ``synthesis.procedural.render_scene`` at a robot camera's 640 x 480 with
its default scene settings and the render's own camera. Each folder is ``scene_<seed>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mono2stereo_core.datasets_gt import GTSample, write_middlebury_scene  # noqa: E402
from mono2stereo_core.synthesis.procedural import render_scene  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write scene_<seed>/ folders into")
    parser.add_argument("--first-seed", type=int, default=910000)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--max-disparity", type=float, default=128.0,
                        help="largest disparity of a scene's nearest surface (render_scene's max_disparity)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    for seed in tqdm(range(args.first_seed, args.first_seed + args.count), desc="scenes"):
        scene = render_scene(seed, width=args.width, height=args.height, max_disparity=args.max_disparity)
        sample = GTSample(
            name=f"scene_{seed}",
            left=np.asarray(scene.left),
            right=np.asarray(scene.right),
            disparity=np.asarray(scene.disparity, dtype=np.float32),
            camera=scene.camera,
        )
        write_middlebury_scene(args.out / sample.name, sample)
    print(f"wrote {args.count} scenes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
