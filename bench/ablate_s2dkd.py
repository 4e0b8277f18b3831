#!/usr/bin/env python3
"""Ablation (b): S2DKD vs sparse-only fine-tuning on a procedural "target domain" -> EPE vs dense GT.

The target domain is a family of procedural scenes the stage-1 network has not seen (other seeds, more
texture-less and glossy surfaces, haze, wider lenses). Its "robot data" carry only LiDAR-like sparse
ground truth: ``--lines`` scan lines with a point every ``--column-step`` pixels (<= 5 % of the pixels,
with 0.3 px noise). Its "monocular teacher" is deliberately imperfect: the true inverse depth through an
unknown per-image affine map and a mild non-linearity, blurred by ``--teacher-blur`` pixels, so it is wrong
at depth edges and not affine-exact anywhere. S2DKD aligns it to the sparse points (``align_to_sparse``)
exactly as ``training/finetune.py`` does and distils it; the sparse-only arm is the same fine-tuning with
``alpha = 0``. Both start from the same checkpoint, see the same batches and are scored by end-point error
against the *dense* ground truth of held-out target-domain scenes.

  python bench/ablate_s2dkd.py --init weights/m2s_rt.safetensors --steps 200 --out runs/ablate_s2dkd
  python bench/ablate_s2dkd.py --steps 10 --eval-scenes 2 --out /tmp/abl_s2dkd          # smoke run (tiny net)

Writes ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mono2stereo_core.models import build_model, load_model  # noqa: E402
from mono2stereo_core.training.config import load_config  # noqa: E402
from mono2stereo_core.training.datasets import CropSpec, ProceduralStereoDataset, make_item, predict_pair  # noqa: E402
from mono2stereo_core.training.distributed import DistributedContext  # noqa: E402
from mono2stereo_core.training.losses import align_to_sparse  # noqa: E402
from mono2stereo_core.training.objectives import build_objective  # noqa: E402
from mono2stereo_core.training.trainer import Trainer  # noqa: E402

# The target domain: what the stage-1 recipe saw rarely.
TARGET_SCENES = {
    "p_textureless": 0.4,
    "p_specular": 0.6,
    "p_haze": 0.6,
    "horizontal_fov_deg": (70.0, 100.0),
    "supersample": 1,
    "depth_ratio": (3.0, 25.0),
}
TARGET_SEED = 5_000_000  # far from any seed a pre-training run uses


def lidar_mask(shape: tuple[int, int], *, lines: int, column_step: int, rng: np.random.Generator) -> np.ndarray:
    """Scan-line sampling like a spinning LiDAR projected into the camera: ``lines`` rows, sparse columns."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    rows = np.linspace(h * 0.15, h * 0.95, lines).round().astype(int) + rng.integers(-1, 2, lines)
    offset = int(rng.integers(0, column_step))
    mask[np.clip(rows, 0, h - 1)[:, None], np.arange(offset, w, column_step)[None, :]] = True
    return mask


def imperfect_teacher(disparity: np.ndarray, *, blur: float, rng: np.random.Generator) -> np.ndarray:
    """A monocular-like inverse depth: affine-distorted, mildly non-linear, blurred across depth edges."""
    normalised = disparity / max(float(np.nanmax(disparity)), 1e-6)
    warped = normalised ** rng.uniform(0.7, 1.4)  # not affine-exact: alignment cannot undo this
    inverse = rng.uniform(0.3, 3.0) * warped + rng.uniform(-0.2, 0.5)
    size = int(2 * round(3 * blur) + 1)
    return cv2.GaussianBlur(inverse.astype(np.float32), (size, size), blur) if blur > 0 else inverse


class SparseTargetDataset(Dataset):
    """Target-domain items with sparse GT and the aligned imperfect teacher (keys as the bag dataset)."""

    def __init__(self, scenes: ProceduralStereoDataset, *, lines: int, column_step: int, teacher_blur: float,
                 noise_px: float = 0.3):
        self.scenes = scenes
        self.lines, self.column_step, self.teacher_blur, self.noise_px = lines, column_step, teacher_blur, noise_px

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int):
        arrays = self.scenes.render(index)
        rng = np.random.default_rng([TARGET_SEED, index])
        gt = np.where(arrays["valid"], arrays["disparity"], np.nan).astype(np.float32)
        mask = lidar_mask(gt.shape, lines=self.lines, column_step=self.column_step, rng=rng) & np.isfinite(gt)
        sparse = np.where(mask, gt + rng.normal(0, self.noise_px, gt.shape), np.nan).astype(np.float32)
        inverse = imperfect_teacher(np.nan_to_num(gt, nan=0.0), blur=self.teacher_blur, rng=rng)
        scale, shift = align_to_sparse(inverse, np.nan_to_num(sparse, nan=0.0), mask)
        teacher = (float(scale) * inverse + float(shift)).astype(np.float32)
        item = {
            "left": arrays["left"],
            "right": arrays["right"],
            "disparity": sparse,
            "valid": mask,
            "teacher_disparity": teacher,
            "teacher_valid": np.isfinite(teacher) & (teacher > 0) & (teacher < self.scenes.max_disparity),
        }
        return make_item(item, crop=self.scenes.crop, augment=None, seed_parts=(TARGET_SEED, index))


def dense_epe(network, scenes: ProceduralStereoDataset, count: int) -> dict[str, float]:
    """Mean |pred - dense GT| and bad-2 over ``count`` held-out scenes at full render resolution."""
    errors = []
    for index in range(count):
        arrays = scenes.render(index)
        pred = predict_pair(network, arrays["left"], arrays["right"])
        valid = arrays["valid"]
        errors.append(np.abs(pred - arrays["disparity"])[valid])
    error = np.concatenate(errors)
    return {"epe": float(error.mean()), "bad2": float((error > 2).mean() * 100)}


def teacher_epe(dataset: SparseTargetDataset, count: int) -> dict[str, float]:
    """How wrong the aligned teacher itself is against the dense GT (the knowledge S2DKD distils)."""
    errors = []
    for index in range(min(count, len(dataset))):
        item = dataset[index]
        scene = make_item(dataset.scenes.render(index), crop=dataset.scenes.crop, augment=None,
                          seed_parts=(TARGET_SEED, index))
        valid = scene["valid"] & item["teacher_valid"]
        errors.append((item["teacher_disparity"] - scene["disparity"]).abs()[valid].numpy())
    error = np.concatenate(errors)
    return {"epe": float(error.mean()), "bad2": float((error > 2).mean() * 100)}


def target_scenes(*, seed: int, length: int, config: dict, crop: CropSpec) -> ProceduralStereoDataset:
    data = config["data"]
    return ProceduralStereoDataset(
        length=length, base_seed=seed, render_width=int(data["render_width"]), render_height=int(data["render_height"]),
        crop=crop, max_disparity=float(config["model"]["max_disparity"]),
        render_max_disparity=data["render_max_disparity"], synthesized_fraction=0.0, augment=None,
        scene_config=TARGET_SCENES, cache_dir=data["cache_dir"],
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", type=Path, default=None,
                        help="stage-1 checkpoint to fine-tune (default: a freshly initialised m2s_tiny)")
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps per arm")
    parser.add_argument("--train-scenes", type=int, default=64, help="target-domain scenes for fine-tuning")
    parser.add_argument("--eval-scenes", type=int, default=8, help="held-out target-domain scenes for the EPE")
    parser.add_argument("--lines", type=int, default=16, help="LiDAR scan lines per image")
    parser.add_argument("--column-step", type=int, default=2, help="pixels between LiDAR points on a line")
    parser.add_argument("--teacher-blur", type=float, default=5.0, help="Gaussian blur of the teacher (px)")
    parser.add_argument("--alpha", type=float, default=0.1, help="S2DKD KL weight of the S2DKD arm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/ablate_s2dkd"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    if args.init:
        base, sidecar = load_model(args.init)
        name, max_disparity = sidecar["architecture"]["name"], int(sidecar["architecture"]["max_disparity"])
    else:
        name, max_disparity = "m2s_tiny", 64
    overrides = [
        f"model.name={name}", f"model.max_disparity={max_disparity}", "data.kind=bags", "data.root=procedural-target",
        "data.render_width=320", "data.render_height=240", f"data.render_max_disparity={min(96, max_disparity)}",
        "data.crop_height=192", "data.crop_width=288", f"data.cache_dir={args.out / 'scene_cache'}",
        "loss.kind=s2dkd", f"optim.steps={args.steps}", "optim.batch_size=2", "optim.lr=0.0002", "optim.pct_start=0.1",
        "trainer.validation=none", "trainer.validate_every=0", "trainer.checkpoint_every=0",
        "trainer.checkpoint_minutes=0", "trainer.image_every=0",
    ]
    config = load_config(REPO / "config" / "train" / "finetune_s2dkd.yaml", overrides=overrides)
    crop = CropSpec(height=192, width=288, stride=8)
    train = SparseTargetDataset(
        target_scenes(seed=TARGET_SEED, length=args.train_scenes, config=config, crop=crop),
        lines=args.lines, column_step=args.column_step, teacher_blur=args.teacher_blur,
    )
    held_out = target_scenes(seed=TARGET_SEED + 100_000, length=args.eval_scenes, config=config, crop=crop)
    sample = train[0]
    density = float(sample["valid"].float().mean() * 100)
    if density > 5.0:
        raise SystemExit(f"error: sparse GT covers {density:.1f} % of the pixels; use fewer --lines or a larger --column-step (<= 5 %)")

    def initial():
        if args.init:
            return load_model(args.init)[0].train()
        torch.manual_seed(0)
        return build_model(name, max_disparity=max_disparity)

    results = {"teacher": teacher_epe(train, args.eval_scenes), "before": dense_epe(initial(), held_out, args.eval_scenes)}
    for arm, alpha in (("s2dkd", args.alpha), ("sparse_only", 0.0)):
        arm_config = load_config(REPO / "config" / "train" / "finetune_s2dkd.yaml", overrides=[*overrides, f"loss.alpha={alpha}"])
        network = initial()
        started = time.perf_counter()
        Trainer(config=arm_config, model=network, dataset=train, loss_fn=build_objective(arm_config),
                out_dir=args.out / arm, context=context).fit(resume=(args.out / arm / "latest.json").is_file())
        results[arm] = dense_epe(network, held_out, args.eval_scenes)
        results[arm]["train_minutes"] = (time.perf_counter() - started) / 60
        print(f"{arm}: dense EPE {results[arm]['epe']:.3f} px, bad-2 {results[arm]['bad2']:.2f} %", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"steps": args.steps, "sparse_density_percent": density, "lines": args.lines, "column_step": args.column_step,
            "teacher_blur_px": args.teacher_blur, "alpha": args.alpha, "init": str(args.init) if args.init else f"random {name}"}
    (args.out / "results.json").write_text(json.dumps({**meta, "results": results}, indent=2))
    lines = [
        f"Target domain: {args.train_scenes} procedural scenes, sparse GT {density:.1f} % of pixels, teacher blur "
        f"{args.teacher_blur} px, {args.steps} steps, init {meta['init']}.",
        "",
        "| fine-tuning | dense EPE (px) | dense bad-2 (%) |",
        "|---|---|---|",
    ]
    lines.insert(-2, f"The aligned teacher itself: EPE {results['teacher']['epe']:.3f} px, bad-2 {results['teacher']['bad2']:.2f} % "
                 "(on training crops).\n")
    for arm in ("before", "sparse_only", "s2dkd"):
        lines.append(f"| {arm} | {results[arm]['epe']:.3f} | {results[arm]['bad2']:.2f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
