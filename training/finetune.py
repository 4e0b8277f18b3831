#!/usr/bin/env python3
"""Stage 2 of Mono2Stereo: fine-tune a stereo network on your own recorded rosbag2 bags.

Examples:
  # S2DKD: sparse LiDAR ground truth + a monocular teacher aligned to it
  python training/finetune.py --bags recorded/ --lidar-topic /lidar/points --mono-model models/depth_anything_v2_small
  # S2DKD with a depth camera as sparse ground truth, the stage-1 network as teacher
  python training/finetune.py --bags recorded/ --depth-topic /depth/image --steps 3000 --out runs/ft_depth
  # no ground truth at all: stage-1 synthesis from the bags' own left frames (domain adaptation)
  python training/finetune.py --bags recorded/ --mono-model models/depth_anything_v2_small

Modes, chosen from what you give:
  --depth-topic/--lidar-topic + --mono-model   S2DKD: sparse L1 on GT pixels + alpha * KL to the mono
                                               prediction aligned per image (robust scale/shift) to the GT
  --depth-topic/--lidar-topic, no mono model   S2DKD with the frozen initial network as the (metric) teacher
  neither topic                                ground-truth-free: right views synthesized from each left
                                               frame and a disparity from the mono model (or, without one,
                                               from the frozen initial network), dense sequence loss

The network starts from --init (default: the shipped weights/m2s_rt.safetensors); its architecture comes
from the checkpoint's sidecar. SIGINT/SIGTERM checkpoint and exit; rerun with --resume to continue.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from common import (
    REPO_ROOT,
    add_run_arguments,
    base_sidecar,
    build_network,
    fit_and_report,
    prepare_out_dir,
    run_cli,
    set_threads,
    validation_from_config,
)

from mono2stereo_core.models import load_model, read_sidecar
from mono2stereo_core.synthesis.pipeline import SynthesisConfig
from mono2stereo_core.training.config import config_hash, load_config
from mono2stereo_core.training.datasets import (
    BagSelfSynthesisDataset,
    CropSpec,
    MonoDisparitySource,
    MonoTeacher,
    NetworkDisparitySource,
    NetworkTeacher,
    StereoBagDataset,
    augment_config_from,
)
from mono2stereo_core.training.distributed import init_distributed, shutdown_distributed
from mono2stereo_core.training.objectives import build_objective

DEFAULT_CONFIG = REPO_ROOT / "config" / "train" / "finetune_s2dkd.yaml"
DEFAULT_INIT = REPO_ROOT / "weights" / "m2s_rt.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="finetune.py",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bags", type=Path, nargs="+", required=True, help="rosbag2 directories or folders of them")
    parser.add_argument("--init", type=Path, default=None, help=f"starting checkpoint (default {DEFAULT_INIT.relative_to(REPO_ROOT)})")
    gt = parser.add_mutually_exclusive_group()
    gt.add_argument("--depth-topic", help="sparse ground truth: a depth Image topic registered to the left camera (metres or mm)")
    gt.add_argument("--lidar-topic", help="sparse ground truth: a PointCloud2 topic, projected with /tf_static into the left camera")
    parser.add_argument("--mono-model", help="monocular depth model for the teacher / GT-free synthesis (mono.load_mono_depth spec)")
    parser.add_argument("--steps", type=int, help="optimizer steps (overrides optim.steps)")
    parser.add_argument("--slop", type=float, default=None, help="left/right/depth pairing tolerance in seconds (data.slop_s)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="fine-tuning recipe YAML")
    add_run_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"optim.steps={int(args.steps)}")
    if args.slop is not None:
        overrides.append(f"data.slop_s={float(args.slop)}")
    init = Path(args.init) if args.init else DEFAULT_INIT
    if not init.is_file():
        raise SystemExit(f"error: starting checkpoint {init} does not exist (pass --init)")
    architecture = read_sidecar(init)["architecture"]
    overrides += [
        f"model.name={architecture['name']}",
        f"model.max_disparity={int(architecture['max_disparity'])}",
        f"model.init={init}",
        f"data.root={','.join(str(b) for b in args.bags)}",
        "data.kind=bags",
    ]
    if args.depth_topic:
        overrides.append(f"data.depth_topic={args.depth_topic}")
    if args.lidar_topic:
        overrides.append(f"data.lidar_topic={args.lidar_topic}")
    if args.mono_model:
        overrides.append(f"data.mono_model={args.mono_model}")
    sparse = bool(args.depth_topic or args.lidar_topic)
    if not sparse:
        overrides.append("loss.kind=sequence")  # GT-free mode supervises synthesized pairs densely
    config = load_config(args.config, overrides=overrides)
    # Builder settings of the checkpoint (sizes) must match exactly; they are not YAML-overridable here.
    config["model"]["overrides"] = {k: v for k, v in architecture.items() if k not in ("name", "max_disparity")}
    if args.no_progress:
        config["trainer"]["progress"] = False
    out = args.out or Path("runs") / "finetune"
    prepare_out_dir(out, resume=args.resume)
    set_threads(args.threads, config)
    context = init_distributed()
    try:
        network, init_sidecar = build_network(config)
        data = config["data"]
        crop = CropSpec(height=int(data["crop_height"]), width=int(data["crop_width"]), stride=int(network.stride))
        max_disparity = float(config["model"]["max_disparity"])
        augment = augment_config_from(data["augment"])
        cache = out / "teacher_cache"
        mono = None
        if args.mono_model:
            from mono2stereo_core.mono import load_mono_depth

            mono = load_mono_depth(args.mono_model)
        # The frozen starting network: teacher without a mono model, optional second teacher otherwise.
        frozen, _ = load_model(init)
        if sparse:
            teacher = MonoTeacher(mono, cache_dir=cache) if mono is not None else NetworkTeacher(frozen, cache_dir=cache)
            dataset = StereoBagDataset(
                args.bags,
                crop=crop,
                max_disparity=max_disparity,
                depth_topic=args.depth_topic,
                lidar_topic=args.lidar_topic,
                slop_s=float(data["slop_s"]),
                teacher=teacher,
                base_seed=int(data["base_seed"]),
                augment=augment,
            )
            mode = "s2dkd-mono" if mono is not None else "s2dkd-stereo-teacher"
        else:
            bags = StereoBagDataset(args.bags, crop=crop, max_disparity=max_disparity, slop_s=float(data["slop_s"]))
            source = (
                MonoDisparitySource(mono, config=SynthesisConfig(max_disparity=float(data["render_max_disparity"] or max_disparity)))
                if mono is not None
                else NetworkDisparitySource(frozen)
            )
            dataset = BagSelfSynthesisDataset(
                bags,
                disparity_source=source,
                crop=crop,
                max_disparity=max_disparity,
                inpaint=str(data["inpaint"]),
                base_seed=int(data["base_seed"]),
                augment=augment,
                cache_dir=cache,
            )
            mode = "gt-free-mono" if mono is not None else "gt-free-self"
        # With a mono teacher the frozen network adds its (metric) opinion as second teacher; without one it
        # already is the teacher, and a second copy of the same KL would only double the cost.
        second = frozen if sparse and mono is not None and float(config["loss"]["second_teacher_weight"]) > 0 else None
        sidecar = base_sidecar(config, stage=f"finetune ({mode})", context=context)
        sidecar["data"] = {
            "kind": "bags",
            "bags": [str(p) for p in dataset.bag_paths] if hasattr(dataset, "bag_paths") else [str(p) for p in bags.bag_paths],
            "pairs": len(dataset),
            "depth_topic": args.depth_topic,
            "lidar_topic": args.lidar_topic,
            "mono_model": args.mono_model,
            "config_hash": config_hash(config),
        }
        sidecar["init"] = {"path": str(init), "sidecar": copy.deepcopy(init_sidecar or {}).get("reproduce")}
        validation = validation_from_config(config)
        if context.is_main:
            print(f"fine-tuning mode {mode}: {len(dataset)} pairs from {len(sidecar['data']['bags'])} bag(s)", file=sys.stderr)
        return fit_and_report(
            resume=args.resume,
            out=out,
            context=context,
            config=config,
            model=network,
            dataset=dataset,
            loss_fn=build_objective(config, second_teacher=second),
            sidecar=sidecar,
            validation=validation,
        )
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(run_cli(main))
