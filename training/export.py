#!/usr/bin/env python3
"""Export a stereo checkpoint to a static-shape ONNX (and optionally a TensorRT engine).

    python training/export.py --checkpoint weights/m2s_rt.safetensors --height 480 --width 640 \
        --onnx m2s_rt_640x480.onnx [--engine m2s_rt_640x480.engine --fp16 --workspace-gb 2] [--opset 17]

The ONNX has inputs ``left``/``right`` (1 x 3 x H x W float32 RGB in [0, 1]) and outputs
``disparity``/``confidence`` (1 x 1 x H x W); its metadata carries the checkpoint sidecar. After export the
ONNX is checked with ``onnx.checker`` and run against torch on the Middlebury motorcycle pair (resized to the
export size); the max abs difference is printed. Re-running with the same checkpoint and size skips the
export (``--force`` redoes it). ``--engine`` builds on *this* GPU with TensorRT >= 10; for deployment prefer
building on the target with ``python -m mono2stereo_core.inference.engine_cache`` (engines are GPU-specific).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mono2stereo_core.cli_config import apply_yaml_config  # noqa: E402
from mono2stereo_core.inference.engine_cache import build_engine_file, file_sha256  # noqa: E402
from mono2stereo_core.inference.export import DEFAULT_OPSET, export_onnx, onnx_io_spec, onnx_parity  # noqa: E402
from mono2stereo_core.inference.runner import resolve_model_path  # noqa: E402

PARITY_TOLERANCE_PX = 0.01
# Above this fraction of pixels off by > PARITY_TOLERANCE_PX the export is broken, not merely tie-flipped.
ARGMAX_TIE_FRACTION = 0.001


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, parents=[pre]
    )
    parser.add_argument("--checkpoint", type=Path, help="X.safetensors with X.json sidecar (default: shipped weights)")
    parser.add_argument("--height", type=int, help="network input height (multiple of the model stride)")
    parser.add_argument("--width", type=int, help="network input width (multiple of the model stride)")
    parser.add_argument("--onnx", type=Path, help="output ONNX (default: <checkpoint>_<W>x<H>.onnx)")
    parser.add_argument("--engine", type=Path, help="also build a TensorRT engine here (needs GPU + TensorRT 10)")
    parser.add_argument("--fp16", action="store_true", help="FP16 TensorRT engine")
    parser.add_argument("--workspace-gb", type=float, default=1.0, help="TensorRT builder workspace limit (GiB)")
    parser.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (default: beside the engine)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "--cost-volume-bands",
        type=int,
        help="row bands of the cost volume in the graph (default: the network's rule, ~10^4 1/4-map pixels per "
        "band, faster in ONNX Runtime on the CPU; 1 = one piece); the same values either way",
    )
    parser.add_argument("--skip-parity", action="store_true", help="skip the torch vs ONNX Runtime check")
    parser.add_argument("--force", action="store_true", help="re-export even if the ONNX is up to date")
    if known.config is not None:
        apply_yaml_config(parser, known.config)
    args = parser.parse_args(argv)
    if args.height is None or args.width is None:
        parser.error("--height and --width are required (on the command line or in --config)")
    for name in ("checkpoint", "onnx", "engine", "timing_cache"):
        if getattr(args, name) is not None:
            setattr(args, name, Path(getattr(args, name)))
    return args


def motorcycle_inputs(*, height: int, width: int):
    """The Middlebury motorcycle pair resized to the export size, as network tensors."""
    import skimage.data

    from mono2stereo_core.inference.preprocess import plan_input, to_network

    left, right, _ = skimage.data.stereo_motorcycle()
    plan = plan_input(height=left.shape[0], width=left.shape[1], stride=1, input_size=(width, height))
    return to_network(left, right, plan)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    import torch

    from mono2stereo_core.models import load_model

    checkpoint = resolve_model_path(args.checkpoint)
    onnx_path = args.onnx or checkpoint.with_name(f"{checkpoint.stem}_{args.width}x{args.height}.onnx")
    checkpoint_sha = file_sha256(checkpoint)
    steps = ["load", "export", "parity"] + (["engine"] if args.engine else [])
    progress = tqdm(steps, desc="export", unit="step", file=sys.stderr)
    progress.set_postfix_str("load")
    model, sidecar = load_model(checkpoint, device=torch.device("cpu"))
    progress.update()
    up_to_date = False
    if onnx_path.is_file() and not args.force:
        try:
            spec = onnx_io_spec(onnx_path)
            up_to_date = (
                spec.metadata.get("checkpoint_sha256") == checkpoint_sha
                and spec.input_size == (args.width, args.height)
                and spec.metadata.get("opset") == str(args.opset)
                and spec.metadata.get("cost_volume_bands", "1")
                == ("auto" if args.cost_volume_bands is None else str(args.cost_volume_bands))
            )
        except (ValueError, RuntimeError):
            up_to_date = False
    progress.set_postfix_str("export")
    if up_to_date:
        print(f"{onnx_path} is up to date with {checkpoint} at {args.width}x{args.height} (--force re-exports)")
    else:
        export_onnx(
            model,
            onnx_path,
            height=args.height,
            width=args.width,
            opset=args.opset,
            sidecar=sidecar,
            extra_metadata={"checkpoint_sha256": checkpoint_sha, "checkpoint": checkpoint.name},
            cost_volume_bands=args.cost_volume_bands,
        )
        print(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB, opset {args.opset}, onnx.checker ok)")
    progress.update()
    progress.set_postfix_str("parity")
    status = 0
    if not args.skip_parity:
        left, right = motorcycle_inputs(height=args.height, width=args.width)
        parity = onnx_parity(model, onnx_path, left, right, tolerance=PARITY_TOLERANCE_PX)
        over = parity["disparity_fraction_over_tolerance"]
        if parity["disparity_max_abs"] < PARITY_TOLERANCE_PX:
            verdict = "ok"
        elif over < ARGMAX_TIE_FRACTION:
            verdict = f"ok except {over * 100:.3f} % of pixels (arg-max near-ties, typical of untrained weights)"
        else:
            verdict = "MISMATCH"
            status = 3
        print(
            f"parity torch vs onnxruntime (motorcycle at {args.width}x{args.height}): disparity max abs "
            f"{parity['disparity_max_abs']:.2e} px, confidence max abs {parity['confidence_max_abs']:.2e} -> {verdict}"
        )
    progress.update()
    if args.engine:
        progress.set_postfix_str("engine")
        precision = "fp16" if args.fp16 else "fp32"
        timing_cache = args.timing_cache or args.engine.with_name("timing.cache")
        try:
            build_engine_file(
                onnx_path, args.engine, precision=precision, workspace_gb=args.workspace_gb, timing_cache_path=timing_cache
            )
        except RuntimeError as error:
            progress.close()
            print(f"export: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.engine} ({precision}); timing cache {timing_cache}")
        progress.update()
    progress.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
