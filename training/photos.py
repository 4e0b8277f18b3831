"""Stage-1 pairs from real photographs for pre-training (``data.photos`` of a recipe).

Wherever Depth Anything V2 weights are on disk, ``training/pretrain.py`` turns photographs into stereo pairs with
the stage-1 pipeline (``training/synthesize.py``: monocular depth -> disparity -> forward warp -> EA inpainting)
and mixes them into the training data; without the weights it says so and trains on the rest. The pairs are
written once to a folder and reused (synthesize.py resumes an interrupted folder).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("pretrain.photos")

# scikit-image's offline photographs of real scenes (colour and grey; grey ones are replicated to RGB). The
# Middlebury motorcycle pair is the evaluation scene and is never among them.
BUNDLED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "clock", "brick", "grass", "gravel", "coins")
# Searched in this order by depth_model "auto" (under $MONO2STEREO_MONO_WEIGHTS, default weights/).
AUTO_DEPTH_MODELS = ("depth_anything_v2_small", "depth_anything_v2_base", "depth_anything_v2_large")


def resolve_depth_model(spec: str | None) -> tuple[str | None, str]:
    """``(model path or None, why)`` for ``data.photos.depth_model``."""
    from mono2stereo_core.mono import HUB_IDS, default_weights_dir

    if spec is None or str(spec) == "none":
        return None, "data.photos.depth_model is none"
    root = default_weights_dir()
    if str(spec) != "auto":
        path = Path(spec)
        if str(spec) in HUB_IDS and not path.exists():
            path = root / str(spec)  # a short name, as synthesize.py accepts it
        if not path.exists():
            raise FileNotFoundError(f"data.photos.depth_model {spec} does not exist")
        return str(path), f"data.photos.depth_model {spec}"
    for name in AUTO_DEPTH_MODELS:
        candidate = root / name
        if (candidate / "config.json").is_file():
            return str(candidate), f"found {candidate}"
    looked = ", ".join(str(root / name) for name in AUTO_DEPTH_MODELS)
    return None, f"no Depth Anything V2 weights on disk (looked for {looked})"


def write_bundled_photos(directory: Path) -> Path:
    """Writes :data:`BUNDLED_PHOTOS` as PNGs into ``directory`` (once) and returns it."""
    import cv2
    import numpy as np
    from skimage import data

    directory.mkdir(parents=True, exist_ok=True)
    for name in BUNDLED_PHOTOS:
        path = directory / f"{name}.png"
        if path.is_file():
            continue
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        tmp = directory / f".{name}.tmp.png"
        cv2.imwrite(str(tmp), cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR))
        os.replace(tmp, path)
    return directory


def prepare_photo_pairs(config: dict[str, Any], *, out: Path, is_main: bool, barrier=None) -> tuple[Path | None, dict]:
    """Makes sure the stage-1 photo pairs of ``config['data']['photos']`` exist; returns ``(folder or None, info)``.

    ``info`` goes into the checkpoint sidecar (``photos``): whether photo pairs were used, the depth model, the
    folder and its pair count, or why not. Only the main rank synthesizes; ``barrier`` (if given) is called
    afterwards so every rank sees the finished folder. Under DDP a large photo collection is better
    synthesized beforehand (``torchrun ... training/synthesize.py``, sharded) into ``data.photos.out``: the
    other ranks wait at the barrier, whose timeout (NCCL: 10 minutes) a long synthesis would exceed.
    """
    photos = config["data"].get("photos") or {}
    images = photos.get("images")
    fraction = float(photos.get("fraction", 0.0))
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"data.photos.fraction must be in [0, 1], instead got {fraction}")
    if not images:
        return None, {"used": False, "why": "data.photos.images is null"}
    if fraction == 0.0:
        return None, {"used": False, "why": "data.photos.fraction is 0"}
    model, why = resolve_depth_model(photos.get("depth_model", "auto"))
    if model is None:
        if is_main:
            log.warning("training without photo pairs: %s (see docs/training.md, 'real photographs')", why)
        return None, {"used": False, "why": why}
    folder = Path(photos["out"]) if photos.get("out") else out / "photo_pairs"
    if str(images) == "bundled":
        source = folder.parent / f"{folder.name}_bundled_photos"
        if is_main:
            write_bundled_photos(source)
    else:
        source = Path(images)
        if not source.is_dir():
            raise FileNotFoundError(f"data.photos.images {images} is not a folder")
    if is_main:
        # A separate process: synthesize.py sets its own thread count and keeps the depth model loaded, neither
        # of which should outlive it in the training process. --shard 0/1: one process does every photo even
        # under torchrun (whose RANK/WORLD_SIZE it inherits).
        command = [
            sys.executable, str(Path(__file__).with_name("synthesize.py")), "--images", str(source),
            "--depth-model", model, "--out", str(folder), "--shard", "0/1", "--no-progress",
        ]
        if photos.get("num"):
            command += ["--num", str(int(photos["num"]))]
        log.info("stage-1 pairs from photographs: %s (%s) -> %s", source, why, folder)
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"synthesizing photo pairs failed (exit {result.returncode}): {' '.join(command)}"
            )
    if barrier is not None:
        barrier()
    manifest = folder / "manifest.jsonl"
    pairs = sum(1 for line in manifest.read_text().splitlines() if line.strip()) if manifest.is_file() else 0
    if pairs == 0:
        raise RuntimeError(f"no photo pairs in {folder}: synthesize.py wrote none")
    return folder, {
        "used": True,
        "depth_model": model,
        "images": str(images),
        "folder": str(folder),
        "pairs": pairs,
        "fraction": fraction,
    }
