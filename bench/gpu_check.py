#!/usr/bin/env python3
"""GPU check: every CUDA path against the CPU result, with latency, in one table.

    python bench/gpu_check.py [--model m2s_rt] [--width 640 --height 480] [--markdown out.md]

Runs on a CUDA machine: torch CUDA fp32 / fp16 (each with and without CUDA graphs), ONNX Runtime with the
CUDA (and TensorRT) execution provider when the installed onnxruntime has them, and native TensorRT fp32 /
fp16 engines built through the engine cache when the tensorrt package is present. Each row reports latency
(median / p90 of the full ``runner(left, right)`` call) and the disparity difference against torch fp32 on the
CPU: max and median abs difference and the share of pixels within 0.5 px. Rows that cannot run here say why.
Every runner has the default ``occlusion_fill`` off: the rows compare the networks (the fill is the same numpy on
the host after every backend, and a pixel at its z-buffer margin could flip between backends).
Weights: ``weights/<model>.safetensors`` when present, else seeded random initialisation.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_latency import REPO, benchmark_images, time_call  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="m2s_rt")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--min-iterations", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=5.0)
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch; run this on an NVIDIA machine", file=sys.stderr)
        return 2
    from mono2stereo_core.inference.export import export_onnx
    from mono2stereo_core.inference.onnx_runner import OnnxRunner
    from mono2stereo_core.inference.torch_runner import TorchRunner
    from mono2stereo_core.models import build_from_config, build_model, load_model

    shipped = REPO / "weights" / f"{args.model}.safetensors"
    if shipped.is_file():
        model, sidecar = load_model(shipped, device="cpu")
        weights = "shipped"
    else:
        torch.manual_seed(0)
        model, sidecar, weights = build_model(args.model).eval(), {}, "random"
    size = (args.width, args.height)
    left, right = benchmark_images(width=args.width, height=args.height)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def fresh():
        net = build_from_config(model.config)
        net.load_state_dict(state)
        return net.eval()

    def network_only(runner):
        runner.occlusion_fill = False
        return runner

    reference = network_only(TorchRunner(fresh(), device="cpu", input_size=size))(left, right)[0]
    rows: list[tuple[str, str]] = []
    results: list[dict] = []

    def measure(label: str, make_runner) -> None:
        try:
            runner = network_only(make_runner())
            disparity = runner(left, right)[0]
            timing = time_call(lambda: runner(left, right), min_iterations=args.min_iterations,
                               max_seconds=args.max_seconds, warmup=3)
        except Exception as error:  # a row that cannot run reports why; the others still run
            rows.append((label, f"not run: {type(error).__name__}: {str(error)[:160]}"))
            return
        diff = np.abs(disparity - reference)
        results.append(dict(label=label, **timing, max=float(diff.max()), median=float(np.median(diff)),
                            within=float(np.mean(diff <= 0.5) * 100)))

    measure("torch cuda fp32", lambda: TorchRunner(fresh(), device="cuda", input_size=size))
    measure("torch cuda fp32 + graphs", lambda: TorchRunner(fresh(), device="cuda", input_size=size, cuda_graphs=True))
    measure("torch cuda fp16", lambda: TorchRunner(fresh(), device="cuda", precision="fp16", input_size=size))
    measure("torch cuda fp16 + graphs",
            lambda: TorchRunner(fresh(), device="cuda", precision="fp16", input_size=size, cuda_graphs=True))
    with tempfile.TemporaryDirectory(prefix="m2s_gpu_check_") as workdir:
        onnx_path = export_onnx(fresh(), Path(workdir) / "model.onnx", height=args.height, width=args.width,
                                sidecar=sidecar)
        measure("onnxruntime cpu", lambda: OnnxRunner(onnx_path, execution_provider="cpu"))
        measure("onnxruntime cuda EP", lambda: OnnxRunner(onnx_path, execution_provider="cuda"))
        measure("onnxruntime tensorrt EP fp16", lambda: OnnxRunner(
            onnx_path, execution_provider="tensorrt", precision="fp16", trt_cache_dir=workdir))
        if importlib.util.find_spec("tensorrt") is None:
            rows.append(("tensorrt fp32 / fp16", "not run: the tensorrt Python package is not installed"))
        else:
            from mono2stereo_core.inference.engine_cache import build_or_reuse
            from mono2stereo_core.inference.tensorrt_runner import TensorRTRunner

            for precision in ("fp32", "fp16"):
                measure(f"tensorrt {precision}", lambda p=precision: TensorRTRunner(
                    build_or_reuse(onnx_path, cache_dir=Path(workdir) / "engines", precision=p)))

    device = torch.cuda.get_device_name(0)
    lines = [
        f"{args.model} ({weights} weights) at {args.width}x{args.height} on {device}, torch {torch.__version__}, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; difference vs torch fp32 on CPU",
        "",
        "| backend | median ms | p90 ms | max abs diff px | median abs diff px | % within 0.5 px |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['label']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['max']:.3g} | "
                     f"{r['median']:.3g} | {r['within']:.2f} |")
    for label, why in rows:
        lines.append(f"| {label} | {why} | | | | |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
