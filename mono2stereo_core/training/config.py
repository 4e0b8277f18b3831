"""Training recipes: YAML files with defaults, ``--set key=value`` overrides, validation and a stable hash.

A recipe is a nested dict (YAML mapping). ``load_config`` merges, in order: the built-in defaults of
``DEFAULT_CONFIG``, the YAML file, then each ``--set dotted.key=value`` override (the value parsed as
YAML, so ``--set optim.lr=2e-4`` is a float and ``--set data.kind=bags`` a string). Unknown keys are
rejected with the offending name so a typo cannot silently train with a default.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG: dict[str, Any] = {
    "seed": 0,
    "model": {
        "name": "m2s_rt",
        "max_disparity": 192,
        "overrides": {},
        # Optional checkpoint whose weights initialise the model (fine-tuning / warm start).
        "init": None,
    },
    "data": {
        # procedural | synthesized | gt_folder | bags
        "kind": "procedural",
        "root": None,
        "base_seed": 0,
        # Items per epoch of the procedural dataset (each rendered from seed base_seed + index).
        "length": 100_000,
        "render_width": 480,
        "render_height": 320,
        # Largest disparity of the rendered scenes (null = model.max_disparity).
        "render_max_disparity": None,
        # Distinct procedural scenes (null = length: every item its own scene); items cycle over them.
        "num_scenes": None,
        # Folder keeping rendered scenes (.npz) for reuse across items, workers and resumed runs.
        "cache_dir": None,
        # synthesis.procedural.SceneConfig fields, e.g. {supersample: 1}.
        "scene": {},
        # Fraction of procedural items whose right view is stage-1 synthesized from left + disparity
        # (forward splat + inpainting) instead of the true render.
        "synthesized_fraction": 0.5,
        "inpaint": "ea",
        "crop_height": 256,
        "crop_width": 384,
        # true (AugmentConfig defaults), false, or a mapping of synthesis.augment.AugmentConfig fields.
        "augment": True,
        # Bag-specific settings (finetune.py fills these from its command line).
        "depth_topic": None,
        "lidar_topic": None,
        "slop_s": 0.01,
        "mono_model": None,
        "teacher_cache": None,
        # Stage-1 pairs synthesized from real photographs (training/synthesize.py: Depth Anything V2 depth ->
        # forward warp -> EA inpainting), mixed into pretrain.py's data (any data.kind). Used wherever the
        # monocular weights are on disk; without them the run says so and trains on the rest. The checkpoint
        # sidecar's "photos" entry records the resolved model and pair count.
        "photos": {
            # A folder of photographs (recursive), "bundled" (scikit-image's offline photographs: astronaut,
            # coffee, rocket, ...; never the motorcycle evaluation pair) or null (off).
            "images": "bundled",
            # A local Depth Anything V2 folder / .onnx / short name (depth_anything_v2_small), "auto" (the first
            # of weights/depth_anything_v2_small, _base, _large; $MONO2STEREO_MONO_WEIGHTS replaces weights/)
            # or "none".
            "depth_model": "auto",
            # Share of training items drawn from the photo pairs.
            "fraction": 0.3,
            # Where the pairs are written and reused (null = <run>/photo_pairs); synthesize.py resumes there.
            "out": None,
            # At most this many photographs (null = all).
            "num": None,
        },
    },
    "loss": {
        # sequence (dense, stage 1) | s2dkd (sparse GT + teacher, stage 2)
        "kind": "sequence",
        "gamma": 0.8,
        # Stage 1: weight of KL(Laplacian(gt, spread) || student bins) added to the sequence loss.
        "distribution_weight": 0.0,
        # S2DKD: alpha weighs the KL to the aligned mono teacher; spread is the Laplacian scale in pixels.
        "alpha": 0.1,
        "spread": 2.0,
        # Weight of the KL to the frozen initial (stage-1) network as a second teacher; 0 = not used.
        "second_teacher_weight": 0.0,
    },
    "optim": {
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "pct_start": 0.05,
        "grad_clip": 1.0,
        "batch_size": 4,
        "steps": 1000,
        "amp": True,
        # Keep every batch-norm layer's running statistics fixed (the layers normalise with the statistics of
        # the warm start; their scale and shift still train). For fine-tuning with small batches (the CPU's 2
        # to 4 pairs), whose per-batch statistics are too noisy to replace those of the large-batch stage.
        "freeze_batchnorm": False,
    },
    "trainer": {
        "workers": 0,
        "threads": 0,
        "log_every": 10,
        "image_every": 200,
        "checkpoint_every": 200,
        # Also checkpoint when this many minutes passed since the last one (0 = off).
        "checkpoint_minutes": 5.0,
        "keep_checkpoints": 3,
        "validate_every": 200,
        # motorcycle | none | a Middlebury/KITTI folder
        "validation": "motorcycle",
        "progress": True,
    },
}


# Sections whose keys are not fixed here (model builder settings, AugmentConfig fields).
_FREE_FORM = ("overrides", "augment", "scene")


def _merge(base: dict[str, Any], update: Mapping[str, Any], *, where: str, strict: bool) -> None:
    for key, value in update.items():
        if strict and key not in base:
            raise ValueError(f"unknown config key '{where}{key}'; valid keys here are {sorted(base)}")
        if isinstance(base.get(key), dict) and isinstance(value, Mapping) and key not in _FREE_FORM:
            _merge(base[key], value, where=f"{where}{key}.", strict=strict)
        else:
            base[key] = copy.deepcopy(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits ``'optim.lr=2e-4'`` into ``(['optim', 'lr'], 0.0002)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override must look like key.subkey=value, instead got '{text}'")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ValueError(f"override has an empty key: '{text}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ValueError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(config: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of ``config`` with each ``dotted.key=value`` applied; unknown keys raise."""
    out = copy.deepcopy(config)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ValueError(f"override '{text}': '{'.'.join(parts[: depth + 1])}' is not a config section")
            node = node[part]
        leaf = parts[-1]
        # model.overrides is free-form (keyword arguments of the model builder).
        if leaf not in node and (len(parts) < 2 or parts[-2] not in _FREE_FORM):
            raise ValueError(f"override '{text}': unknown key '{'.'.join(parts)}'; valid keys are {sorted(node)}")
        node[leaf] = value
    return out


def load_config(path: str | Path | None = None, *, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults <- YAML file <- ``--set`` overrides, validated. ``path=None`` gives the defaults."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"training config {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, Mapping):
            raise ValueError(f"training config {path} must be a YAML mapping, instead got {type(loaded).__name__}")
        _merge(config, loaded, where="", strict=True)
    config = apply_overrides(config, overrides)
    validate_config(config)
    return config


def output_max_disparity(config: Mapping[str, Any]) -> float:
    """The recipe's network's search range in input pixels: ``model.max_disparity``, divided by the
    ``working_scale`` override of a network that matches on an enlarged pair (what the losses can supervise)."""
    model = config["model"]
    scale = float((model.get("overrides") or {}).get("working_scale", 1.0))
    return float(model["max_disparity"]) / scale


def validate_config(config: Mapping[str, Any]) -> None:
    """Raises ``ValueError`` naming the first value that cannot train."""
    optim, data, trainer, loss = config["optim"], config["data"], config["trainer"], config["loss"]
    positive = {
        "optim.lr": optim["lr"],
        "optim.batch_size": optim["batch_size"],
        "optim.steps": optim["steps"],
        "data.crop_height": data["crop_height"],
        "data.crop_width": data["crop_width"],
        "model.max_disparity": config["model"]["max_disparity"],
    }
    for name, value in positive.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"config {name} must be a positive number, instead got {value!r}")
    if data["kind"] not in ("procedural", "synthesized", "gt_folder", "bags"):
        raise ValueError(
            f"config data.kind must be procedural|synthesized|gt_folder|bags, instead got {data['kind']!r}"
        )
    if data["kind"] != "procedural" and not data["root"]:
        raise ValueError(f"config data.kind={data['kind']} needs data.root (a folder), instead got {data['root']!r}")
    if not 0.0 <= float(data["synthesized_fraction"]) <= 1.0:
        raise ValueError(f"config data.synthesized_fraction must be in [0, 1], instead got {data['synthesized_fraction']}")
    if data["inpaint"] not in ("ea", "naive", "telea"):
        raise ValueError(f"config data.inpaint must be ea|naive|telea, instead got {data['inpaint']!r}")
    if loss["kind"] not in ("sequence", "s2dkd"):
        raise ValueError(f"config loss.kind must be sequence|s2dkd, instead got {loss['kind']!r}")
    if not 0.0 < float(optim["pct_start"]) < 1.0:
        raise ValueError(f"config optim.pct_start must be in (0, 1), instead got {optim['pct_start']}")
    for key in ("log_every", "checkpoint_every", "validate_every", "image_every"):
        if int(trainer[key]) < 0:
            raise ValueError(f"config trainer.{key} must be >= 0 (0 = off), instead got {trainer[key]}")


def config_hash(config: Mapping[str, Any]) -> str:
    """Short SHA-256 of the canonical JSON of everything that changes the trained weights.

    ``trainer`` (logging/checkpoint cadence, progress bars, thread count) is excluded: it changes how a
    run is observed, not what it learns.
    """
    relevant = {k: v for k, v in config.items() if k != "trainer"}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_config(config: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dict(config), sort_keys=False))
