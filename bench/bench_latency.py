#!/usr/bin/env python3
"""CPU latency and peak memory of every available backend and model size, beside OpenCV SGBM.

    python bench/bench_latency.py [--width 640 --height 480] [--models m2s_tiny m2s_rt m2s_large]
        [--backends torch onnxruntime] [--min-iterations 5 --max-seconds 30 --rounds 3] [--markdown out.md]

Every configuration runs in its own subprocess so peak memory (Linux ``VmHWM``) belongs to that backend
alone; the images are the Middlebury motorcycle pair resized to the benchmark size, and the classical
baselines run at each network's own disparity range (rounded up to 16; one set per distinct range, and each
row's ratios are against the set at its range): the 3-way SGBM the accuracy comparisons use
(``mono2stereo_core.evaluation.sgbm_disparity``, the ratio the goal is stated against) and OpenCV SGBM / block
matching exactly as ROS 2 ``stereo_image_proc`` runs them with its default parameters
(``stereo_image_proc_disparity``: MODE_SGBM or StereoBM, mono8, 15 px window). Latency is the whole ``runner(left, right)`` call: validation, resize/pad,
inference and mapping back (and the runner's default ``occlusion_fill``), i.e. what the ROS node pays per frame;
the measured processes get the node's glibc malloc thresholds (``--allocator node``, the default since the
thirteenth session: with glibc's own the fill's temporaries were page-faulted in again every frame, 45 instead of
13 ms of it in one alternated run). The configurations run in turn, ``--rounds``
times (fresh processes each round), and each row pools its rounds' samples: on a shared VM whose speed drifts
over minutes (the CI-class machine: SGBM 41 ms at one hour, 59-67 ms the next) a single pass per configuration
made the ratios depend on which configuration ran in the slow minutes. Weights: ``weights/<model>.safetensors``
when present, else random initialisation (identical latency: same graph, same shapes).

A model may carry inference options: ``NAME@S`` runs the network on the pair resized by S (the runner's
``input_scale``; ONNX exported at the scaled size, so every frame is resized to it), ``NAME+lr`` adds the
left-right consistency check (a second, mirrored pass), ``NAME+raw`` turns the runner's default occlusion fill
off (the network's own values), e.g. ``--models m2s_rt m2s_rt+raw m2s_rt@1.5 m2s_rt+lr``.
``NAME`` may also be a checkpoint path ending in ``.safetensors`` (a training run's step, before shipping).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mono2stereo_core.inference.preprocess import check_input_scale, scaled_input_size  # noqa: E402

# Classical baselines: backend name -> description. "sgbm" is the one the goal ratio is stated against.
CLASSICAL = {
    "sgbm": "SGBM 3-way (colour, 5 px window)",
    "sgbm_sip": "SGBM as stereo_image_proc runs it (MODE_SGBM, mono8, 15 px)",
    "bm_sip": "block matching, stereo_image_proc's default algorithm (mono8, 15 px)",
}
GOAL_RATIO = 5.0  # m2s_rt through ONNX Runtime must stay within this factor of SGBM's latency
STRETCH_RATIO = 2.0


def proc_status_kib(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB; NaN where /proc is unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the peak measured next is this phase's alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def benchmark_images(*, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    import cv2
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    size = (width, height)
    return (cv2.resize(left, size, interpolation=cv2.INTER_AREA), cv2.resize(right, size, interpolation=cv2.INTER_AREA))


def time_call(fn, *, min_iterations: int, max_seconds: float, warmup: int = 2) -> dict[str, float]:
    """Median / p90 wall time (ms) of ``fn()`` after ``warmup`` calls; runs until both limits are met."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iterations or (time.perf_counter() - start < max_seconds and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_iterations and time.perf_counter() - start > max_seconds:
            break
    ms = np.asarray(times) * 1000.0
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "iterations": len(times),
        "times_ms": [round(float(t), 3) for t in ms],
    }


def pooled(results: list[dict]) -> dict:
    """One row from the same configuration's rounds: latency over all their samples, the highest peak memory,
    and each round's median (``round_ms``) for per-round ratios."""
    ms = np.concatenate([r["times_ms"] for r in results])
    return {
        **results[-1],
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "iterations": int(ms.size),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "model_mem_mb": max(r["model_mem_mb"] for r in results),
        "round_ms": [r["median_ms"] for r in results],
    }


def parse_model(spec: str) -> tuple[str, float, bool, bool]:
    """``NAME[@SCALE][+lr][+raw]`` -> (name, input scale, lr_check, occlusion_fill)."""
    name, lr, fill = spec, False, True
    while name.endswith(("+lr", "+raw")):
        name, _, suffix = name.rpartition("+")
        lr, fill = (True, fill) if suffix == "lr" else (lr, False)
    scale = 1.0
    if "@" in name:
        name, text = name.split("@", 1)
        try:
            scale = check_input_scale(float(text))
        except ValueError as exc:
            raise SystemExit(f"bench_latency.py: model {spec!r} (NAME[@SCALE][+lr][+raw]): {exc}") from None
    return name, scale, lr, fill


def checkpoint_of(model: str) -> Path:
    """``weights/<model>.safetensors``, or ``model`` itself when it names a ``.safetensors`` checkpoint."""
    if model.endswith(".safetensors"):
        path = Path(model).expanduser().resolve()
        if not path.is_file():
            raise SystemExit(f"bench_latency.py: model checkpoint {model} does not exist")
        return path
    return REPO / "weights" / f"{model}.safetensors"


def model_max_disparity(model: str) -> int:
    """The search range in input pixels (SGBM gets the same) of ``model``: a variant name (``m2s_rt``), the stem
    of a file shipped in weights/ (``m2s_rt_fast``) or a checkpoint path (``runs/x/checkpoints/step_0001500.safetensors``),
    with its options. A network with a ``working_scale`` covers its architecture's range divided by the scale,
    and ``@S`` (the pair enlarged by S before the network) divides it by S again."""
    from mono2stereo_core.models import build_from_config, build_model, read_sidecar

    model, scale, _, _ = parse_model(model)
    shipped = checkpoint_of(model)
    network = build_from_config(read_sidecar(shipped)["architecture"]) if shipped.is_file() else build_model(model)
    return math.ceil(network.max_disparity / scale - 1e-9)


def sgbm_range(model: str) -> int:
    """The classical baselines' ``num_disparities`` for ``model``: its search range rounded up to OpenCV's
    multiple of 16. Every model is compared with the baselines at its own range: SGBM's time grows with the
    range, so a baseline searching a wider range than the network would flatter the network's ratio."""
    return -(-model_max_disparity(model) // 16) * 16


def baseline_row(rows: list[dict], backend: str, num_disparities: int) -> dict | None:
    """The classical ``backend`` row that searched ``num_disparities``, if it ran."""
    return next((r for r in rows if r["backend"] == backend and r.get("num_disparities") == num_disparities), None)


def model_file(model: str, backend: str, *, width: int, height: int, workdir: Path) -> tuple[Path, str]:
    """The shipped checkpoint (or a random one) for ``model``, exported to ONNX when the backend needs it."""
    import torch

    from mono2stereo_core.inference.export import export_onnx
    from mono2stereo_core.models import build_model, load_model, save_checkpoint

    shipped = checkpoint_of(model)
    if shipped.is_file():
        checkpoint, weights = shipped, "shipped" if shipped.parent == REPO / "weights" else "file"
    else:
        torch.manual_seed(0)
        checkpoint = save_checkpoint(workdir / f"{model}.safetensors", build_model(model))
        weights = "random"
    if backend == "torch":
        return checkpoint, weights
    net, sidecar = load_model(checkpoint, device="cpu")
    onnx_path = workdir / f"{Path(model).stem}_{width}x{height}.onnx"
    if not onnx_path.is_file():
        export_onnx(net, onnx_path, height=height, width=width, sidecar=sidecar)
    return onnx_path, weights


def run_one(config: dict) -> dict:
    """Child process: one backend x model (or SGBM); returns latency and memory."""
    width, height = config["width"], config["height"]
    left, right = benchmark_images(width=width, height=height)
    if config["backend"] in CLASSICAL:
        from mono2stereo_core.evaluation import sgbm_disparity, stereo_image_proc_disparity

        base_rss = proc_status_kib("VmRSS")
        num = config["num_disparities"]
        if config["backend"] == "sgbm":

            def fn():
                return sgbm_disparity(left, right, num_disparities=num)

        else:
            algorithm = "sgbm" if config["backend"] == "sgbm_sip" else "bm"

            def fn():
                return stereo_image_proc_disparity(left, right, num_disparities=num, algorithm=algorithm)

        weights, description = "-", f"OpenCV {__import__('cv2').__version__} {CLASSICAL[config['backend']]}, {num} disp"
    else:
        from mono2stereo_core.inference import load_runner

        workdir = Path(config["workdir"])
        name, scale, lr_check, fill = parse_model(config["model"])
        # The size the runner's input_scale would run at (every m2s network's stride is 8).
        net_w, net_h = scaled_input_size(height=height, width=width, scale=scale, stride=8)
        path, weights = model_file(name, config["backend"], width=net_w, height=net_h, workdir=workdir)
        if config.get("prepare_only"):
            return {"weights": weights}
        base_rss = proc_status_kib("VmRSS")
        runner = load_runner(
            path, backend=config["backend"], input_size=(net_w, net_h), lr_check=lr_check, occlusion_fill=fill
        )

        def fn():
            return runner(left, right)

        description = runner.description.split(" /")[0]
    if config.get("paired"):
        return paired_times(config, fn, left, right)
    # Peak from here on includes the runner's lazy first-call allocations (arenas, workspaces).
    reset_peak_rss()
    timing = time_call(fn, min_iterations=config["min_iterations"], max_seconds=config["max_seconds"])
    peak = proc_status_kib("VmHWM")
    return {
        **timing,
        "peak_rss_mb": peak / 1024.0,
        "model_mem_mb": (peak - base_rss) / 1024.0,
        "weights": weights,
        "description": description,
    }


def paired_times(config: dict, fn, left: np.ndarray, right: np.ndarray) -> dict:
    """Child process: the model's call (``fn``) and the 3-way SGBM at the same range, alternately, one frame
    each, for ``paired_seconds``: both see the same machine state. On the shared CI-class VM the separate rows'
    SGBM medians moved by up to 1.4x between runs minutes apart (once even 192 disparities measured faster than
    96), which alone decides whether a ratio lands under or over the goal."""
    from mono2stereo_core.evaluation import sgbm_disparity

    num = config["num_disparities"]

    def sgbm():
        return sgbm_disparity(left, right, num_disparities=num)

    for _ in range(2):
        fn(), sgbm()
    model_ms, sgbm_ms = [], []
    deadline = time.perf_counter() + float(config["paired_seconds"])
    while time.perf_counter() < deadline or len(model_ms) < 5:
        for call, out in ((fn, model_ms), (sgbm, sgbm_ms)):
            start = time.perf_counter()
            call()
            out.append((time.perf_counter() - start) * 1000.0)
    return {"model_ms": model_ms, "sgbm_ms": sgbm_ms}


def paired_summary(model_ms: list[float], sgbm_ms: list[float]) -> dict:
    """Ratio of the medians, and the quartiles of the per-pair ratios (model frame / the SGBM frame after it)."""
    pairs = np.asarray(model_ms) / np.asarray(sgbm_ms)
    return {
        "ratio": float(np.median(model_ms) / np.median(sgbm_ms)),
        "pair_q1": float(np.percentile(pairs, 25)),
        "pair_q3": float(np.percentile(pairs, 75)),
        "model_median_ms": float(np.median(model_ms)),
        "sgbm_median_ms": float(np.median(sgbm_ms)),
        "pairs": int(pairs.size),
    }


ALLOCATOR_MODULE = REPO / "ros2_ws" / "src" / "mono2stereo" / "mono2stereo" / "allocator.py"


def allocator_env(choice: str) -> tuple[dict[str, str], str]:
    """The measured processes' environment and a one-line description: with ``"node"`` glibc's
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set to the stereo node's ``tune_allocator`` values
    (read from its module), which the node applies by default; an existing setting of either is kept."""
    env = dict(os.environ)
    if choice == "default":
        return env, "glibc defaults"
    spec = importlib.util.spec_from_file_location("m2s_allocator", ALLOCATOR_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if any(name in env for name in module.ENV_OVERRIDES):
        return env, "left to the environment (" + ", ".join(n for n in module.ENV_OVERRIDES if n in env) + ")"
    env["MALLOC_MMAP_THRESHOLD_"] = str(module.MMAP_THRESHOLD_BYTES)
    env["MALLOC_TRIM_THRESHOLD_"] = str(module.TRIM_THRESHOLD_BYTES)
    return env, (
        f"the stereo node's thresholds (mmap {module.MMAP_THRESHOLD_BYTES >> 20} MiB, "
        f"trim {module.TRIM_THRESHOLD_BYTES >> 20} MiB)"
    )


def available_backends() -> list[str]:
    import importlib.util

    found = [name for name in ("torch", "onnxruntime") if importlib.util.find_spec(name) is not None]
    if importlib.util.find_spec("tensorrt") is not None:
        found.append("tensorrt")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["m2s_tiny", "m2s_rt", "m2s_large"],
        help="variant names, or stems of files shipped in weights/ (e.g. m2s_rt_fast)",
    )
    parser.add_argument("--backends", nargs="+", default=None, help="default: every importable backend")
    parser.add_argument("--min-iterations", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=20.0, help="per configuration, after warm-up")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the configurations in turn this many times (each round max-seconds / rounds) and pool the "
        "samples, so a machine whose speed drifts (shared VMs) slows every row alike (default 3)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument(
        "--goal-model", default="m2s_rt", help="the model whose ONNX Runtime ratio is checked against the goal"
    )
    parser.add_argument(
        "--paired-seconds",
        type=float,
        default=60.0,
        help="also time the goal model and the 3-way SGBM at its range alternately in one process for this long; "
        "the goal verdict uses that ratio (both see the same machine state); 0 = off (default 60)",
    )
    parser.add_argument(
        "--allocator",
        choices=("node", "default"),
        default="node",
        help="glibc malloc thresholds of the measured processes: 'node' = the stereo node's tune_allocator values "
        "(its default: per-frame buffers stay in the heap instead of being page-faulted in again), 'default' = "
        "glibc's own (default node)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return 0

    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, instead got {args.rounds}")
    backends = args.backends or available_backends()
    child_env, allocator = allocator_env(args.allocator)
    rows = []
    with tempfile.TemporaryDirectory(prefix="m2s_bench_") as workdir:
        configs = []
        ranges = {model: sgbm_range(model) for model in args.models}
        for num in sorted(set(ranges.values())):
            for name in CLASSICAL:
                configs.append(dict(backend=name, model=name, num_disparities=num))
        for model in args.models:
            for backend in backends:
                configs.append(dict(backend=backend, model=model, num_disparities=ranges[model]))
        for config in configs:
            config.update(width=args.width, height=args.height, workdir=workdir,
                          min_iterations=-(-args.min_iterations // args.rounds),
                          max_seconds=args.max_seconds / args.rounds)
        results: list[list[dict]] = [[] for _ in configs]
        failed: set[int] = set()
        # Checkpoints and ONNX exports first, in their own processes: every measured process then starts alike
        # (an export in a measured process would import torch before the "+MB over imports" baseline).
        for i, config in enumerate(configs):
            if config["backend"] in CLASSICAL:
                continue
            result = subprocess.run([sys.executable, __file__, "--child", json.dumps({**config, "prepare_only": True})],
                                    capture_output=True, text=True, env=child_env)
            if result.returncode != 0:
                print(f"  {config['model']} / {config['backend']} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
                failed.add(i)
        for round_index in range(args.rounds):
            for i, config in enumerate(configs):
                if i in failed:
                    continue
                label = f"{config['model']} / {config['backend']}"
                print(f"round {round_index + 1}/{args.rounds}: running {label} ...", file=sys.stderr, flush=True)
                result = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)],
                                        capture_output=True, text=True, env=child_env)
                if result.returncode != 0:
                    print(f"  {label} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
                    failed.add(i)
                    continue
                results[i].append(json.loads(result.stdout.strip().splitlines()[-1]))
        rows = [{**config, **pooled(found)} for i, (config, found) in enumerate(zip(configs, results))
                if found and i not in failed]
        goal = next((r for r in rows if r["model"] == args.goal_model and r["backend"] == "onnxruntime"), None)
        paired = None
        if goal and args.paired_seconds > 0:
            # In the same work directory: the goal model's ONNX exported above is reused.
            print(f"paired: {args.goal_model} / onnxruntime and SGBM, alternately, {args.paired_seconds:g} s ...",
                  file=sys.stderr, flush=True)
            goal_config = next(c for c in configs if c["model"] == args.goal_model and c["backend"] == "onnxruntime")
            config = {**goal_config, "paired": True, "paired_seconds": args.paired_seconds}
            result = subprocess.run([sys.executable, __file__, "--child", json.dumps(config)],
                                    capture_output=True, text=True, env=child_env)
            if result.returncode == 0:
                times = json.loads(result.stdout.strip().splitlines()[-1])
                paired = paired_summary(times["model_ms"], times["sgbm_ms"])
            else:
                print(f"  paired run failed:\n{result.stderr[-2000:]}", file=sys.stderr)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"{args.width}x{args.height}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load avg {load:.1f} at start of report, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{args.rounds} round(s) of {args.max_seconds / args.rounds:g} s per configuration, samples pooled; "
        f"each row's ratios are against the baselines run at its own disparity range; malloc: {allocator}"
    )
    lines = [
        header,
        "",
        "| model | backend | weights | range px | median ms | p90 ms | x SGBM 3-way | x stereo_image_proc SGBM "
        "| peak RSS MB | +MB over imports | iters |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio_to(row: dict, backend: str) -> float:
        base = baseline_row(rows, backend, row["num_disparities"])
        return row["median_ms"] / base["median_ms"] if base else float("nan")

    for r in rows:
        lines.append(
            f"| {r['model']} | {r['description'] if r['backend'] in CLASSICAL else r['backend']} | {r['weights']} | "
            f"{r['num_disparities']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {ratio_to(r, 'sgbm'):.2f} | "
            f"{ratio_to(r, 'sgbm_sip'):.2f} | {r['peak_rss_mb']:.0f} | {r['model_mem_mb']:.0f} | {r['iterations']} |"
        )
    sgbm = baseline_row(rows, "sgbm", goal["num_disparities"]) if goal else None
    sgbm_sip = baseline_row(rows, "sgbm_sip", goal["num_disparities"]) if goal else None
    if goal and paired:
        verdict = "meets" if paired["ratio"] <= GOAL_RATIO else "MISSES"
        lines += ["", f"{args.goal_model} via ONNX Runtime = {paired['ratio']:.2f} x SGBM 3-way latency at the same "
                      f"range ({goal['num_disparities']} disparities), timed alternately in one process "
                      f"({paired['pairs']} pairs, {paired['model_median_ms']:.1f} vs {paired['sgbm_median_ms']:.1f} ms; "
                      f"per-pair ratios {paired['pair_q1']:.2f}-{paired['pair_q3']:.2f} between the quartiles): "
                      f"{verdict} the <= {GOAL_RATIO:g}x goal (stretch {STRETCH_RATIO:g}x)."]
    if goal and sgbm:
        ratio = goal["median_ms"] / sgbm["median_ms"]
        verdict = "meets" if ratio <= GOAL_RATIO else "MISSES"
        lines += ["",
                  f"From the table's rows: {args.goal_model} via ONNX Runtime = {ratio:.2f} x SGBM 3-way latency at "
                  f"the same range ({goal['num_disparities']} disparities)"
                  + ("." if paired else f": {verdict} the <= {GOAL_RATIO:g}x goal (stretch {STRETCH_RATIO:g}x).")]
        if args.rounds > 1:
            per_round = ", ".join(f"{a / b:.2f}" for a, b in zip(goal["round_ms"], sgbm["round_ms"]))
            lines.append(f"Per round (each its own medians): {per_round}.")
        if sgbm_sip:
            ratio_sip = goal["median_ms"] / sgbm_sip["median_ms"]
            verdict_sip = "within" if ratio_sip <= GOAL_RATIO else "outside"
            lines.append(f"Against SGBM as stereo_image_proc configures it: {ratio_sip:.2f} x ({verdict_sip} {GOAL_RATIO:g}x).")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
