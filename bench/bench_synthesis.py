#!/usr/bin/env python3
"""Throughput of the stage-1 synthesis pipeline (warp + EA inpainting + augmentation) at 640x480.

Mono depth is excluded (it is the same cost whatever the pipeline does). Input: the real Middlebury
motorcycle pair (skimage), resized to 640x480 with its ground-truth disparity scaled accordingly. Printed
beside a naive numpy nearest-pixel forward warp (no z-order, no inpainting) run in the same process, so
the numbers can be compared on a loaded machine.

    python bench/bench_synthesis.py [--threads 2] [--batch 1 8] [--seconds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

from mono2stereo_core.synthesis import AugmentConfig, SynthesisConfig, synthesize_batch  # noqa: E402
from mono2stereo_core.synthesis.inpaint import disparity_edges, edge_aware_inpaint  # noqa: E402
from mono2stereo_core.synthesis.pipeline import sharpen_disparity_edges  # noqa: E402
from mono2stereo_core.synthesis.warp import forward_splat  # noqa: E402

WIDTH, HEIGHT = 640, 480


def naive_numpy_warp(left: np.ndarray, disparity: np.ndarray) -> np.ndarray:
    """Reference: nearest-pixel forward warp in numpy, last write wins, holes stay black."""
    h, w = disparity.shape
    out = np.zeros_like(left)
    ys, xs = np.nonzero(np.isfinite(disparity))
    xt = np.rint(xs - disparity[ys, xs]).astype(np.int64)
    ok = (xt >= 0) & (xt < w)
    out[ys[ok], xt[ok]] = left[ys[ok], xs[ok]]
    return out


CPU_RATES: dict[str, float] = {}


def rate(fn, items_per_call: int, seconds: float, *, name: str | None = None) -> float:
    """Items per wall-clock second of ``fn`` over at least ``seconds`` (after one warm-up call).

    With ``name``, also records items per second of this process's CPU time in ``CPU_RATES``: on a shared
    machine (other jobs on the same cores) that is what one otherwise idle core would deliver.
    """
    fn()
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and calls >= 3:
            if name is not None:
                CPU_RATES[name] = calls * items_per_call / max(time.process_time() - cpu_start, 1e-9)
            return calls * items_per_call / elapsed


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    left, _, disparity = data.stereo_motorcycle()
    sx = WIDTH / left.shape[1]
    left = cv2.resize(left, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    disparity = cv2.resize(disparity, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST) * sx
    return left, disparity


def _worker_pairs(args: tuple[int, float, float]) -> int:
    """One worker process of the multi-process measurement: batch-1 pipeline, 1 torch thread, until ``until``
    (a shared wall-clock deadline); returns the pairs it finished."""
    seed, start_at, until = args
    torch.set_num_threads(1)
    left, disparity = _inputs()
    img = torch.from_numpy(left).permute(2, 0, 1)[None].float() / 255.0
    disp = torch.from_numpy(disparity)[None, None]
    config = SynthesisConfig(augment=AugmentConfig())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        synthesize_batch(img, disp, config=config, generator=gen)  # warm-up
        while time.time() < start_at:
            time.sleep(0.01)
        done = 0
        while time.time() < until:
            synthesize_batch(img, disp, config=config, generator=gen)
            done += 1
    return done


def processes_rate(processes: int, seconds: float) -> float:
    """Aggregate pairs/s of ``processes`` single-threaded worker processes, the way
    ``training/synthesize.py --workers N`` runs (spawned processes, one torch thread each)."""
    import multiprocessing as mp

    start_at = time.time() + 20.0  # spawning and the warm-up pair happen before the common start
    until = start_at + seconds
    with mp.get_context("spawn").Pool(processes) as pool:
        counts = pool.map(_worker_pairs, [(i, start_at, until) for i in range(processes)])
    return sum(counts) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2: this machine's cores)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes to time (default 1 8)")
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum timing window per measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--processes", type=int, default=2,
                        help="also time N single-threaded worker processes together, as synthesize.py --workers N "
                             "runs (default 2: this machine's cores; 0 = skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    left, disparity = _inputs()

    results: dict[str, float] = {}
    results["naive_numpy_warp_pairs_per_s"] = rate(
        lambda: naive_numpy_warp(left, disparity), 1, args.seconds, name="naive_numpy_warp"
    )

    config = SynthesisConfig(augment=AugmentConfig())
    gen = torch.Generator().manual_seed(0)
    for n in args.batch:
        img = (torch.from_numpy(left).permute(2, 0, 1)[None].float() / 255.0).repeat(n, 1, 1, 1).to(args.device)
        disp = torch.from_numpy(disparity)[None, None].repeat(n, 1, 1, 1).to(args.device)

        def full(img=img, disp=disp):
            with torch.no_grad():
                out = synthesize_batch(img, disp, config=config, generator=gen)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return out

        results[f"pipeline_batch{n}_pairs_per_s"] = rate(full, n, args.seconds, name=f"pipeline_batch{n}")

    # Stage breakdown at batch 1 (ms per pair).
    img = torch.from_numpy(left).permute(2, 0, 1)[None].float().div(255.0).to(args.device)
    disp = torch.from_numpy(disparity)[None, None].to(args.device)
    ok = torch.isfinite(disp)
    clean = torch.nan_to_num(disp, posinf=0.0) * ok
    splat = forward_splat(torch.cat([img, ok.float()], 1), clean, valid=ok)
    stages = {
        "sharpen": lambda: sharpen_disparity_edges(disp, valid=ok),
        "edges+splat": lambda: forward_splat(torch.cat([img, disparity_edges(clean, valid=ok).float()], 1), clean, valid=ok),
        "ea_inpaint": lambda: edge_aware_inpaint(splat.image[:, :3], splat.disparity, ~splat.coverage,
                                                 edges=splat.image[:, 3:] > 0.25),
    }
    for name, fn in stages.items():
        results[f"stage_{name}_ms"] = 1000.0 / rate(fn, 1, args.seconds / 2)

    if args.processes > 0 and args.device == "cpu":
        results[f"pipeline_{args.processes}_processes_pairs_per_s"] = processes_rate(args.processes, args.seconds * 2)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"stage-1 synthesis at {WIDTH}x{HEIGHT}, torch threads {args.threads}, device {args.device}, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    for key, value in results.items():
        unit = "ms" if key.endswith("_ms") else "pairs/s"
        print(f"  {key:<36s} {value:8.1f} {unit}")
    for key, value in CPU_RATES.items():
        print(f"  {key + ' per CPU-second':<36s} {value:8.1f} pairs/s  (all threads' CPU time)")
    results.update({f"{k}_pairs_per_cpu_s": v for k, v in CPU_RATES.items()})
    best = max(v for k, v in results.items() if k.startswith("pipeline") and k.endswith("_pairs_per_s"))
    print(f"  best full pipeline: {best:.1f} pairs/s (goal >= 15); naive numpy warp alone: "
          f"{results['naive_numpy_warp_pairs_per_s']:.1f} pairs/s")
    if args.json:
        args.json.write_text(json.dumps({"load_average": load, "threads": args.threads, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
