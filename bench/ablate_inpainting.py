#!/usr/bin/env python3
"""Ablation (a): stage-1 pairs with Edge-Aware inpainting vs naive hole filling -> zero-shot motorcycle bad-2.

Both arms pre-train the same network from the same initial weights on the same procedural left images and
disparities, with every right view *synthesized* (``data.synthesized_fraction=1``: forward splat + hole
filling, exactly the stage-1 recipe for real photographs); only ``data.inpaint`` differs. Each trained
network is then scored zero-shot on the Middlebury motorcycle pair (all-pixel bad-2, holes count), next to
OpenCV SGBM on the same pair.

  python bench/ablate_inpainting.py --steps 300 --out runs/ablate_inpainting     # ~2 x 12 min on 2 CPU cores
  python bench/ablate_inpainting.py --steps 20 --model m2s_tiny --out /tmp/abl    # smoke run

Writes ``OUT/results.json`` and ``OUT/results.md`` (a table for docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mono2stereo_core.models import build_model  # noqa: E402
from mono2stereo_core.training.config import load_config  # noqa: E402
from mono2stereo_core.training.datasets import build_dataset  # noqa: E402
from mono2stereo_core.training.distributed import DistributedContext  # noqa: E402
from mono2stereo_core.training.objectives import build_objective  # noqa: E402
from mono2stereo_core.training.trainer import GroundTruthValidation, Trainer  # noqa: E402

ARMS = ("ea", "naive")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "train" / "pretrain_rt.yaml", help="base recipe")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per arm")
    parser.add_argument("--model", default=None, help="network variant (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe overrides for both arms")
    parser.add_argument("--out", type=Path, default=Path("runs/ablate_inpainting"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    validation = GroundTruthValidation("motorcycle")
    results = {}
    for arm in ARMS:
        overrides = [
            f"optim.steps={args.steps}",
            "data.synthesized_fraction=1.0",
            f"data.inpaint={arm}",
            "trainer.validation=none",
            "trainer.validate_every=0",
            "trainer.checkpoint_every=0",
            "trainer.checkpoint_minutes=0",
            "trainer.progress=true",
            *args.overrides,
        ]
        if args.model:
            overrides.append(f"model.name={args.model}")
        if args.batch_size:
            overrides.append(f"optim.batch_size={args.batch_size}")
        config = load_config(args.config, overrides=overrides)
        torch.manual_seed(int(config["seed"]))  # identical initial weights in both arms
        network = build_model(config["model"]["name"], max_disparity=int(config["model"]["max_disparity"]))
        dataset = build_dataset(config, stride=int(network.stride))
        out = args.out / arm
        started = time.perf_counter()
        Trainer(config=config, model=network, dataset=dataset, loss_fn=build_objective(config), out_dir=out,
                context=context).fit(resume=(out / "latest.json").is_file())
        metrics, _ = validation(network, device=context.device)
        metrics["train_minutes"] = (time.perf_counter() - started) / 60
        results[arm] = metrics
        print(f"{arm}: motorcycle bad-2 {metrics['bad2']:.2f} % (SGBM {metrics['sgbm_bad2']:.2f} %)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"steps": args.steps, "results": results}, indent=2))
    lines = [
        "| stage-1 hole filling | motorcycle bad-2 all (%) | bad-2 non-occluded (%) | EPE (px) | steps |",
        "|---|---|---|---|---|",
    ]
    for arm in ARMS:
        m = results[arm]
        lines.append(f"| {arm} | {m['bad2']:.2f} | {m['noc_bad2']:.2f} | {m['epe']:.2f} | {args.steps} |")
    lines.append(f"| OpenCV SGBM (reference) | {results[ARMS[0]]['sgbm_bad2']:.2f} | | | |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
