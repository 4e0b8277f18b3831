#!/usr/bin/env python3
"""Re-estimate a checkpoint's batch-norm statistics on a recipe's training data, without training.

    python training/recalibrate_bn.py --checkpoint runs/convert/m2s_rt_ws149_dc6.safetensors \\
        --config config/train/pretrain_rt_ws_cpu.yaml --batches 300 --out runs/convert/m2s_rt_ws149_dc6_bn.safetensors

For a network converted to another geometry (``training/convert.py --set working_scale=...``): the weights
stay, the running means and variances of every batch-norm layer become their plain average over ``--batches``
batches of the recipe's data at the network's own settings (``mono2stereo_core.training.batchnorm``). From the
recipe only the data are used: its ``data`` section, ``seed`` (batch order), ``optim.batch_size`` and
``trainer.workers`` (each overridable here); the network is the checkpoint's. Procedural scenes come from the
recipe's scene cache when it has them and are rendered otherwise. Photographs (``data.photos``) are not mixed in.

The new sidecar keeps the source's and adds ``bn_recalibrated`` (source file and sha256, recipe, its hash,
batches, batch size, seed) and ``reproduce`` (the source's command, then this one). ``--evaluate`` scores
source and result on the motorcycle pair as the trainer's validation does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from common import check_output_checkpoint, derived_sidecar, set_threads  # also puts the checkout on sys.path

from mono2stereo_core.models import load_model, save_checkpoint  # noqa: E402
from mono2stereo_core.models.checkpoint import CheckpointError, read_sidecar  # noqa: E402
from mono2stereo_core.training.batchnorm import recalibrate_batchnorm  # noqa: E402
from mono2stereo_core.training.config import config_hash, load_config  # noqa: E402
from mono2stereo_core.training.datasets import build_dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="source X.safetensors (with X.json)")
    parser.add_argument("--config", type=Path, required=True, help="training recipe whose data to use")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    parser.add_argument("--batches", type=int, default=300, help="batches to average over (default 300)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's optim.batch_size")
    parser.add_argument("--seed", type=int, default=None, help="batch order; default: the recipe's seed")
    parser.add_argument("--workers", type=int, default=None, help="data workers; default: the recipe's")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads; default: the recipe's")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--evaluate", action="store_true", help="score source and result on the motorcycle pair")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    check_output_checkpoint(parser, args.out, force=args.force)
    if args.out.resolve() == args.checkpoint.resolve():
        parser.error("--out must differ from --checkpoint (the source stays as it is)")
    for name in ("batches", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, instead got {value}")
    return args


def recalibrate(args: argparse.Namespace) -> Path:
    """Writes the recalibrated checkpoint; returns its path."""
    from mono2stereo_core.inference.engine_cache import file_sha256

    sidecar = read_sidecar(args.checkpoint)
    config = load_config(args.config)
    network, _ = load_model(args.checkpoint, device=args.device)
    # The dataset's valid-disparity range is the network's, not the recipe's.
    config["model"]["max_disparity"] = int(sidecar["architecture"]["max_disparity"])
    set_threads(args.threads, config)
    batch_size = args.batch_size or int(config["optim"]["batch_size"])
    seed = int(config["seed"] if args.seed is None else args.seed)
    workers = int(config["trainer"]["workers"] if args.workers is None else args.workers)
    dataset = build_dataset(config, stride=network.stride)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    used = recalibrate_batchnorm(network, loader, num_batches=args.batches, progress=not args.no_progress)
    new_sidecar = derived_sidecar(sidecar, "bn_recalibrated", {
        "checkpoint": str(args.checkpoint),
        "weights_sha256": file_sha256(args.checkpoint),
        "recipe": str(args.config),
        "recipe_hash": config_hash(config),
        "batches": used,
        "batch_size": batch_size,
        "seed": seed,
        "crop": [int(config["data"]["crop_height"]), int(config["data"]["crop_width"])],
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(args.out, network.cpu().eval(), sidecar=new_sidecar)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        written = recalibrate(args)
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written} (batch-norm statistics from {args.batches} batches of {args.config})")
    if args.evaluate:
        from convert import motorcycle_scores

        from mono2stereo_core.training.trainer import GroundTruthValidation

        validation = GroundTruthValidation("motorcycle")
        print(f"motorcycle, source:       {motorcycle_scores(args.checkpoint, validation)}")
        print(f"motorcycle, recalibrated: {motorcycle_scores(written, validation)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
