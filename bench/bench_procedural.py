#!/usr/bin/env python3
"""Throughput of the procedural stereo scene generator (``mono2stereo_core.synthesis.procedural``).

    python bench/bench_procedural.py [--scenes 8] [--sizes 640x480 320x256] [--sheet out.png]

Renders ``--scenes`` seeded scenes per size on one core (numpy/OpenCV threads pinned to 1, which is how the
training data loader runs it: one scene per worker) and prints scenes/s from wall-clock time and from
process CPU time; on a shared machine the CPU figure is the one to trust. The first scene of a run warms
the photo-texture cache and is not timed. ``--sheet`` writes a contact sheet (left, right, disparity,
occlusion per row) to look at the scenes.
"""

from __future__ import annotations

import os

# Single-threaded before numpy/OpenCV load: the generator is meant to run one scene per worker process.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mono2stereo_core.synthesis.procedural import render_scene  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, instead got {text!r}") from exc
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8, instead got {text!r}")
    return w, h


def bench_size(width: int, height: int, *, scenes: int, first_seed: int) -> dict[str, float]:
    # Scale the disparity range with the width, as a training crop of a 640-px 192-disparity setup would.
    max_disparity = 192.0 * width / 640
    render_scene(first_seed + 10_000, width=width, height=height, max_disparity=max_disparity)  # warm-up
    wall0, cpu0 = time.perf_counter(), time.process_time()
    per_scene = []
    for seed in range(first_seed, first_seed + scenes):
        t0 = time.process_time()
        render_scene(seed, width=width, height=height, max_disparity=max_disparity)
        per_scene.append(time.process_time() - t0)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "wall_scenes_per_s": scenes / wall,
        "cpu_scenes_per_s": scenes / cpu,
        "cpu_s_median": float(np.median(per_scene)),
        "cpu_s_max": float(np.max(per_scene)),
    }


def write_sheet(path: Path, *, seeds: range, width: int, height: int) -> None:
    rows = []
    for seed in seeds:
        s = render_scene(seed, width=width, height=height, max_disparity=192.0 * width / 640)
        disp = np.clip(s.disparity / max(float(s.disparity.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
        disp_rgb = cv2.applyColorMap(disp, cv2.COLORMAP_TURBO)[..., ::-1]
        occ = np.repeat((s.occlusion * 255).astype(np.uint8)[..., None], 3, axis=2)
        rows.append(np.concatenate([s.left, s.right, disp_rgb, occ], axis=1))
    sheet = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(sheet[..., ::-1])):
        raise OSError(f"could not write the contact sheet to {path}")
    print(f"contact sheet: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenes", type=int, default=8, help="scenes timed per size (default 8)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(640, 480), (320, 256)])
    parser.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG here")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes must be >= 1, instead got {args.scenes}")
    cv2.setNumThreads(1)
    print(
        f"{'size':>9}  {'scenes/s (cpu)':>14}  {'scenes/s (wall)':>15}  {'cpu s/scene median':>18}  {'max':>6}"
    )
    for w, h in args.sizes:
        r = bench_size(w, h, scenes=args.scenes, first_seed=args.first_seed)
        print(
            f"{w:>4}x{h:<4}  {r['cpu_scenes_per_s']:>14.2f}  {r['wall_scenes_per_s']:>15.2f}  "
            f"{r['cpu_s_median']:>18.3f}  {r['cpu_s_max']:>6.3f}"
        )
    if args.sheet is not None:
        write_sheet(args.sheet, seeds=range(args.first_seed, args.first_seed + 6), width=320, height=240)
    return 0


if __name__ == "__main__":
    sys.exit(main())
