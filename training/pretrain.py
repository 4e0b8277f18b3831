#!/usr/bin/env python3
"""Stage 1 of Mono2Stereo: pre-train a stereo network on synthesized or procedural stereo pairs.

Examples:
  python training/pretrain.py --config config/train/pretrain_rt.yaml --out runs/pretrain_rt
  python training/pretrain.py --config config/train/pretrain_rt.yaml --out runs/pretrain_rt --resume
  python training/pretrain.py --config config/train/pretrain_rt.yaml --set data.kind=synthesized \\
      --set data.root=synth/coco --set optim.steps=100000
  torchrun --nproc_per_node=4 training/pretrain.py --config config/train/pretrain_rt.yaml --out runs/ddp

Data (``data.kind``): ``procedural`` renders seeded 3-D scenes on the fly (no files at all),
``synthesized`` reads a folder made by ``training/synthesize.py`` from your own photographs, and
``gt_folder`` reads Middlebury/KITTI folders. Wherever Depth Anything V2 weights are on disk
(``weights/depth_anything_v2_small`` ...), ``data.photos`` mixes in stage-1 pairs synthesized from real
photographs (scikit-image's bundled ones by default, or ``--set data.photos.images=DIR``); ``--set
data.photos.depth_model=none`` turns that off. SIGINT/SIGTERM checkpoint and exit; ``--resume`` continues
exactly. Every run validates zero-shot on the Middlebury motorcycle pair (``trainer.validation``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common import (
    add_run_arguments,
    base_sidecar,
    build_network,
    fit_and_report,
    prepare_out_dir,
    run_cli,
    set_threads,
    validation_from_config,
)
from photos import prepare_photo_pairs

from mono2stereo_core.training.config import config_hash, load_config
from mono2stereo_core.training.datasets import build_dataset
from mono2stereo_core.training.distributed import init_distributed, shutdown_distributed
from mono2stereo_core.training.objectives import build_objective


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pretrain.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="training recipe YAML, e.g. config/train/pretrain_rt.yaml")
    add_run_arguments(parser)
    parser.add_argument(
        "--prerender",
        type=int,
        metavar="STEPS",
        help="procedural data only: render the scenes the first STEPS steps will use into data.cache_dir, in the "
        "order training uses them, then exit (run it in parallel shards with --shard to keep a CPU run fed)",
    )
    parser.add_argument("--shard", default="0/1", metavar="K/N", help="with --prerender: render every N-th scene from K")
    return parser.parse_args(argv)


def prerender(config: dict, dataset, *, steps: int, shard: str) -> int:
    """Fills the scene cache in first-use order (same sampler as the trainer, single process)."""
    from tqdm import tqdm

    from mono2stereo_core.training.datasets import ProceduralStereoDataset
    from mono2stereo_core.training.distributed import ResumableDistributedSampler

    if not isinstance(dataset, ProceduralStereoDataset) or dataset.cache_dir is None:
        raise SystemExit("error: --prerender needs data.kind=procedural and data.cache_dir")
    try:
        k, n = (int(x) for x in shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise SystemExit(f"error: --shard must look like K/N with 0 <= K < N, instead got {shard!r}") from None
    sampler = ResumableDistributedSampler(len(dataset), seed=int(config["seed"]))
    items = int(steps) * int(config["optim"]["batch_size"])
    seeds: list[int] = []
    epoch = 0
    while len(seeds) < items:
        sampler.set_epoch(epoch)
        seeds.extend(dataset.scene_seed(i) for i in sampler.indices()[: items - len(seeds)])
        epoch += 1
    unique = list(dict.fromkeys(seeds))[k::n]
    for seed in tqdm(unique, desc=f"prerender {shard}", disable=not config["trainer"]["progress"]):
        dataset.scene(seed)
    return 0


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config, overrides=args.overrides)
    if args.no_progress:
        config["trainer"]["progress"] = False
    out = args.out or Path("runs") / args.config.stem
    prepare_out_dir(out, resume=args.resume)
    set_threads(args.threads, config)
    context = init_distributed()
    try:
        network, _ = build_network(config)
        photo_root, photo_info = None, {"used": False, "why": "--prerender"}
        if not args.prerender:
            photo_root, photo_info = prepare_photo_pairs(
                config, out=out, is_main=context.is_main, barrier=_barrier if context.enabled else None
            )
        dataset = build_dataset(config, stride=int(network.stride), photo_root=photo_root)
        if args.prerender:
            return prerender(config, dataset, steps=args.prerender, shard=args.shard)
        sidecar = base_sidecar(config, stage="pretrain", context=context)
        sidecar["photos"] = dict(photo_info, dataset=type(dataset).__name__)
        sidecar["data"] = {
            "kind": config["data"]["kind"],
            "root": config["data"]["root"],
            "base_seed": config["data"]["base_seed"],
            "length": len(dataset),
            "config_hash": config_hash(config),
        }
        validation = validation_from_config(config)
        return fit_and_report(
            resume=args.resume,
            out=out,
            context=context,
            config=config,
            model=network,
            dataset=dataset,
            loss_fn=build_objective(config),
            sidecar=sidecar,
            validation=validation,
        )
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(run_cli(main))
