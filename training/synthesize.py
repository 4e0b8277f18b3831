#!/usr/bin/env python3
"""Stage 1 data: turn single images (plus monocular depth) into synthetic stereo training pairs.

For every input image a monocular depth model predicts depth; the depth becomes a disparity map with a
random scale, the image is forward-warped into a right view (z-ordered, sub-pixel), the disocclusions are
filled by Edge-Aware inpainting and both views are augmented. With ``--depth-model procedural`` no images or
weights are needed: seeded procedural 3-D scenes provide image and depth.

Output folder (see docs/synthesis.md):
  left/ID.png, right/ID.png   RGB views
  disp/ID.npy                 left-view disparity, float32 pixels, NaN = no label (or KITTI 16-bit PNG)
  mask/ID.png                 255 = labelled and visible in the right view, 128 = labelled but occluded,
                              0 = no label
  manifest.jsonl              one JSON line per finished pair (written last: a pair without its line is
                              redone on the next run)
  preview.png                 contact sheet of a few pairs

Examples:
  python training/synthesize.py --depth-model procedural --out data/stage1 --num 1000 --workers 2
  python training/synthesize.py --images photos/ --depth-model weights/depth_anything_v2_small --out data/s1
  torchrun --nproc-per-node 4 training/synthesize.py --images photos/ --depth-model ... --out data/s1
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import hashlib
import json
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python training/synthesize.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from mono2stereo_core.synthesis.augment import AugmentConfig  # noqa: E402
from mono2stereo_core.synthesis.pipeline import (  # noqa: E402
    INPAINT_METHODS,
    SynthesisConfig,
    SyntheticPair,
    depth_to_training_disparity,
    synthesize_pair,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
KITTI_MAX_DISPARITY = 65535 / 256.0
EXIT_USAGE = 2

# Options a YAML --config may set (same names as the flags, dashes as underscores) besides `synthesis:`.
CONFIG_KEYS = {
    "images", "depth_model", "out", "num", "workers", "shard", "seed", "width", "height", "inpaint",
    "disp_format", "augment", "device", "threads", "synthesis",
}


class UsageError(Exception):
    """A problem with the command line or its inputs; reported without a traceback, exit code 2."""


@dataclass(frozen=True)
class Item:
    """One pair to produce: ``source`` is an image path or None for a procedural scene."""

    index: int
    item_id: str
    source: Path | None
    seed: int


@dataclass(frozen=True)
class Job:
    """Everything a worker needs (picklable, so it crosses process boundaries)."""

    out: Path
    depth_model: str
    config: SynthesisConfig
    inpaint: str
    width: int | None
    height: int | None
    disp_format: str
    device: str
    threads: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthesize.py",
        description=__doc__.split("\n\n")[0]
        + " Writes a resumable dataset folder (left/ right/ disp/ mask/ manifest.jsonl preview.png) that "
        "pretrain.py reads. Re-running the same command skips finished pairs.",
        epilog=__doc__[__doc__.index("Output folder"):],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=Path, help="folder of input photos (searched recursively); not needed "
                        "with --depth-model procedural")
    parser.add_argument("--depth-model", help="monocular depth model: a local Depth Anything V2 checkpoint folder, "
                        "a short name in ./weights (e.g. depth_anything_v2_small), an .onnx file, or 'procedural' "
                        "(built-in 3-D scenes, no images or weights needed)")
    parser.add_argument("--out", type=Path, help="output dataset folder (created; re-runs resume it)")
    parser.add_argument("--num", type=int, help="number of pairs: procedural scenes to render (default 100), or "
                        "at most this many input images (default: all)")
    parser.add_argument("--workers", type=int, help="parallel worker processes (default 1; each loads its own "
                        "depth model)")
    parser.add_argument("--shard", help="i/n: produce only items with index %% n == i (e.g. 0/4 on the first "
                        "of four machines); default from RANK/WORLD_SIZE when run under torchrun, else 0/1")
    parser.add_argument("--config", type=Path, help="YAML file with any of these options (dashes as underscores) "
                        "and a 'synthesis:' section of pipeline settings; flags override it")
    parser.add_argument("--seed", type=int, help="base seed; pair i uses seed+i, so runs are reproducible (default 0)")
    parser.add_argument("--width", type=int, help="resize inputs / render scenes to this width (default: "
                        "photos keep their size, scenes are 640)")
    parser.add_argument("--height", type=int, help="resize height (default: keep aspect ratio / 480 for scenes)")
    parser.add_argument("--inpaint", choices=INPAINT_METHODS, help="disocclusion filling: ea (Edge-Aware, default), "
                        "naive (nearest neighbour, for ablations), telea (OpenCV)")
    parser.add_argument("--disp-format", choices=("npy", "png"), help="npy (float32, lossless; default) or png "
                        "(KITTI 16-bit, value/256 px; pairs beyond 255.99 px fall back to npy)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                        help="store un-augmented pairs (no photometric changes, crops or flips)")
    parser.add_argument("--device", help="torch device for depth and warping: cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="torch CPU threads per worker (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log files, CI)")
    return parser


def load_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merges defaults < YAML --config < command-line flags."""
    settings: dict[str, Any] = {
        "images": None, "depth_model": None, "out": None, "num": None, "workers": 1, "shard": None, "seed": 0,
        "width": None, "height": None, "inpaint": "ea", "disp_format": "npy", "augment": None, "device": "cpu",
        "threads": 1, "synthesis": {},
    }
    if args.config is not None:
        if not args.config.is_file():
            raise UsageError(f"--config {args.config} does not exist")
        try:
            loaded = yaml.safe_load(args.config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"--config {args.config} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {args.config} must hold a mapping, instead got {type(loaded).__name__}")
        unknown = sorted(set(loaded) - CONFIG_KEYS)
        if unknown:
            raise UsageError(f"--config {args.config}: unknown key(s) {unknown}; known: {sorted(CONFIG_KEYS)}")
        settings.update(loaded)
    for key in CONFIG_KEYS - {"synthesis"}:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n); without it, torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if text is None:
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is None or world is None:
            return 0, 1
        text = f"{rank}/{world}"
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise UsageError(f"--shard must look like i/n (e.g. 0/4), instead got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: need 0 <= i < n, instead got i={index}, n={count}")
    return index, count


def list_items(settings: dict[str, Any]) -> list[Item]:
    seed = int(settings["seed"])
    num = settings["num"]
    if num is not None and int(num) < 1:
        raise UsageError(f"--num must be >= 1, instead got {num}")
    if settings["depth_model"] == "procedural":
        count = int(num) if num is not None else 100
        return [Item(i, f"proc_{seed + i:08d}", None, seed + i) for i in range(count)]
    images = settings["images"]
    if images is None:
        raise UsageError("--images DIR is required unless --depth-model procedural")
    root = Path(images)
    if not root.is_dir():
        raise UsageError(f"--images {root} is not a folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UsageError(f"--images {root} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
    if num is not None:
        paths = paths[: int(num)]
    items = []
    for i, path in enumerate(paths):
        rel = path.relative_to(root).as_posix()
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rel).with_suffix("").as_posix())[-60:]
        digest = hashlib.sha1(rel.encode()).hexdigest()[:8]  # unique even when stems collide
        items.append(Item(i, f"{stem}_{digest}", path, seed + i))
    return items


# --- worker side ------------------------------------------------------------------------------------------

_MODEL: Any = None
_MODEL_KEY: tuple[str, str] | None = None


def _init_worker(job: Job) -> None:
    """Loads the depth model once per process (not per item)."""
    global _MODEL, _MODEL_KEY
    import torch

    torch.set_num_threads(max(1, job.threads))
    key = (job.depth_model, job.device)
    if job.depth_model != "procedural" and _MODEL_KEY != key:
        from mono2stereo_core.mono import load_mono_depth

        _MODEL, _MODEL_KEY = None, None
        _MODEL = load_mono_depth(job.depth_model, device=job.device)
        _MODEL_KEY = key


def _resize(image: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    if width is None and height is None:
        return image
    h, w = image.shape[:2]
    new_w = width if width is not None else round(w * height / h)
    new_h = height if height is not None else round(h * width / w)
    if (new_w, new_h) == (w, h):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR)


class SkipItem(Exception):
    """The item cannot be produced (unreadable image, bad depth); counted and reported, the run goes on."""


def produce(job: Job, item: Item) -> dict[str, Any]:
    """Synthesizes one pair and writes it atomically; returns its manifest record."""
    _init_worker(job)
    rng = np.random.default_rng([item.seed, 0x57E7E0])
    if item.source is None:
        from mono2stereo_core.synthesis.procedural import render_scene

        width, height = job.width or 640, job.height or 480
        scene = render_scene(
            item.seed, width=width, height=height, max_disparity=min(job.config.max_disparity, width / 2)
        )
        image, prediction, kind, source = scene.left, scene.depth, "depth", f"procedural:{item.seed}"
    else:
        raw = cv2.imread(str(item.source), cv2.IMREAD_COLOR)
        if raw is None or raw.size == 0:
            raise SkipItem(f"unreadable image {item.source}")
        image = _resize(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB), job.width, job.height)
        prediction = _MODEL.predict([image])[0]
        kind, source = _MODEL.output_kind, str(item.source)
        if prediction.shape != image.shape[:2]:
            raise SkipItem(f"{item.source}: depth model returned {prediction.shape}, image is {image.shape[:2]}")
    try:
        disparity, scale = depth_to_training_disparity(prediction, kind=kind, config=job.config, rng=rng, source=source)
    except ValueError as exc:
        raise SkipItem(str(exc)) from exc
    try:
        pair = synthesize_pair(image, disparity, inpaint=job.inpaint, seed=item.seed, config=job.config, device=job.device)
    except ValueError as exc:
        raise SkipItem(f"{source}: {exc}") from exc
    files = write_pair(job.out, item.item_id, pair, disp_format=job.disp_format)
    finite = pair.disparity[pair.valid]
    return {
        "id": item.item_id,
        **files,
        "source": source,
        "seed": item.seed,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "scale": round(scale, 4),
        "max_disparity": round(float(finite.max()), 4) if finite.size else None,
        "valid_fraction": round(float(pair.valid.mean()), 4),
        "occluded_fraction": round(float(pair.occlusion.mean()), 4),
        "inpaint": job.inpaint,
        "depth_kind": kind,
    }


def _temp(path: Path) -> Path:
    return path.with_name(f".tmp-{path.stem}-{os.getpid()}{path.suffix}")


def write_pair(out: Path, item_id: str, pair: SyntheticPair, *, disp_format: str) -> dict[str, str]:
    """Writes the four files through temporary names, then renames them (each rename is atomic)."""
    disp = pair.disparity
    if disp_format == "png" and np.nanmax(np.where(pair.valid, disp, 0.0)) >= KITTI_MAX_DISPARITY:
        disp_format = "npy"  # KITTI PNG cannot hold it; never silently drop the saturation samples
    mask = np.where(pair.valid, np.where(pair.occlusion, 128, 255), 0).astype(np.uint8)
    targets = {
        "left": out / "left" / f"{item_id}.png",
        "right": out / "right" / f"{item_id}.png",
        "disp": out / "disp" / f"{item_id}.{disp_format}",
        "mask": out / "mask" / f"{item_id}.png",
    }
    temps = {key: _temp(path) for key, path in targets.items()}
    _imwrite(temps["left"], cv2.cvtColor(pair.left, cv2.COLOR_RGB2BGR))
    _imwrite(temps["right"], cv2.cvtColor(pair.right, cv2.COLOR_RGB2BGR))
    _imwrite(temps["mask"], mask)
    if disp_format == "npy":
        with open(temps["disp"], "wb") as fh:
            np.save(fh, np.where(pair.valid, disp, np.nan).astype(np.float32), allow_pickle=False)
    else:
        _imwrite(temps["disp"], np.where(pair.valid, np.round(disp * 256.0), 0).astype(np.uint16))
    for key, path in targets.items():
        os.replace(temps[key], path)
    return {key: path.relative_to(out).as_posix() for key, path in targets.items()}


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")


# --- driver -----------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> set[str]:
    """Ids of finished pairs. A torn last line (killed mid-write) is cut off so later appends stay valid."""
    if not path.is_file():
        return set()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        data = data[:cut]
    done = set()
    for number, line in enumerate(data.decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            done.add(json.loads(line)["id"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UsageError(f"{path}:{number} is not a valid manifest line ({exc}); fix or delete it") from exc
    return done


def append_manifest(path: Path, record: dict[str, Any]) -> None:
    """One ``write`` on an O_APPEND descriptor: lines from concurrent shards never interleave."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(out: Path, items: list[Item]) -> int:
    """Deletes temp files of this shard's unfinished items left by a killed run."""
    ids = {item.item_id for item in items}
    removed = 0
    for sub in ("left", "right", "disp", "mask"):
        for path in (out / sub).glob(".tmp-*"):
            match = re.fullmatch(r"\.tmp-(.+)-\d+", path.stem)
            if match and match.group(1) in ids:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def run_items(job: Job, items: list[Item], workers: int) -> Iterator[tuple[Item, dict[str, Any] | None, str | None]]:
    """Yields (item, record, error) in completion order."""
    if workers <= 1:
        for item in items:
            try:
                yield item, produce(job, item), None
            except SkipItem as exc:
                yield item, None, str(exc)
        return
    # spawn, not fork: workers may hold CUDA contexts and torch thread pools, which do not survive fork.
    ctx = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(job,)) as pool:
        pending = {pool.submit(produce, job, item): item for item in items}
        for future in futures.as_completed(pending):
            item = pending[future]
            try:
                yield item, future.result(), None
            except SkipItem as exc:
                yield item, None, str(exc)


def write_preview(out: Path, records: list[dict[str, Any]], *, name: str = "preview.png") -> Path | None:
    from mono2stereo_core import viz
    from mono2stereo_core.training.datasets import read_disparity_file

    rows, labels = [], []
    for record in records[:4]:
        left = cv2.cvtColor(cv2.imread(str(out / record["left"])), cv2.COLOR_BGR2RGB)
        right = cv2.cvtColor(cv2.imread(str(out / record["right"])), cv2.COLOR_BGR2RGB)
        disp = read_disparity_file(out / record["disp"])
        mask = cv2.imread(str(out / record["mask"]), cv2.IMREAD_GRAYSCALE)
        rows.append([left, right, viz.colorize_disparity(disp), mask])
        labels.append([f"{record['id']} left", "synthesized right", f"disparity (scale {record['scale']:.0f} px)",
                       "mask: white=visible grey=occluded"])
    if not rows:
        return None
    return viz.save_png(out / name, viz.contact_sheet(rows, labels=labels, tile_width=320))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return synthesize(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def synthesize(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    if not settings["depth_model"]:
        raise UsageError("--depth-model is required (a Depth Anything folder, an .onnx file, or 'procedural')")
    if settings["out"] is None:
        raise UsageError("--out DIR is required")
    try:
        synthesis = dict(settings["synthesis"] or {})
        config = SynthesisConfig.from_dict(synthesis)
        # Augmentation is on by default; `synthesis: {augment: ...}` in the YAML or --no-augment decide.
        if settings["augment"] is False:
            config = config.with_augment(None)
        elif "augment" not in synthesis:
            config = config.with_augment(AugmentConfig())
    except (TypeError, ValueError) as exc:
        raise UsageError(f"synthesis settings: {exc}") from exc
    workers = int(settings["workers"])
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, instead got {workers}")
    for key in ("width", "height"):
        if settings[key] is not None and int(settings[key]) < 16:
            raise UsageError(f"--{key} must be >= 16 pixels, instead got {settings[key]}")
    shard_index, shard_count = parse_shard(settings["shard"])
    depth_model = str(settings["depth_model"])

    out = Path(settings["out"])
    job = Job(
        out=out, depth_model=depth_model, config=config, inpaint=str(settings["inpaint"]),
        width=None if settings["width"] is None else int(settings["width"]),
        height=None if settings["height"] is None else int(settings["height"]),
        disp_format=str(settings["disp_format"]), device=str(settings["device"]), threads=int(settings["threads"]),
    )
    if job.inpaint not in INPAINT_METHODS:
        raise UsageError(f"inpaint must be one of {INPAINT_METHODS}, instead got {job.inpaint!r}")
    items = list_items(settings)
    if depth_model != "procedural":
        # Fail before creating anything when the weights are missing (clear message, non-zero exit).
        from mono2stereo_core.mono import MonoWeightsNotFoundError

        try:
            _init_worker(job)
        except (MonoWeightsNotFoundError, FileNotFoundError, ValueError) as exc:
            raise UsageError(f"--depth-model {depth_model}: {exc}") from exc

    for sub in ("left", "right", "disp", "mask"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    done = read_manifest(manifest)
    mine = [item for item in items if item.index % shard_count == shard_index]
    todo = [item for item in mine if item.item_id not in done]
    remove_stale_temps(out, todo)
    print(
        f"synthesize: {len(items)} item(s), shard {shard_index}/{shard_count} has {len(mine)}, "
        f"{len(mine) - len(todo)} already done, {len(todo)} to do -> {out}",
        file=sys.stderr,
    )

    written: list[dict[str, Any]] = []
    skipped: list[str] = []
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="pair", desc="synthesize", disable=args.no_progress or not todo)
    for _item, record, error in run_items(job, todo, workers):
        if record is not None:
            append_manifest(manifest, record)
            written.append(record)
        else:
            skipped.append(error or "unknown error")
            bar.write(f"skipped: {error}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(skipped=len(skipped))
    bar.close()
    elapsed = time.perf_counter() - start

    if shard_index == 0:
        preview_records = written
        if not preview_records and manifest.is_file():
            preview_records = [json.loads(line) for line in manifest.read_text().splitlines()[:4] if line.strip()]
        path = write_preview(out, preview_records)
        if path is not None:
            print(f"synthesize: preview {path}", file=sys.stderr)
    rate = len(written) / elapsed if elapsed > 0 else 0.0
    print(
        f"synthesize: wrote {len(written)} pair(s) in {elapsed:.1f} s ({rate:.2f} pairs/s), "
        f"skipped {len(skipped)}" + (": " + "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "") if skipped else ""),
        file=sys.stderr,
    )
    if todo and not written:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
