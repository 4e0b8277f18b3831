"""Torch datasets for both training stages.

Every item is a dict of tensors at a fixed crop size (multiples of the network stride), ready for
``torch.utils.data.default_collate``:

- ``left``, ``right``: float32 3 x H x W in [0, 1];
- ``disparity``: float32 1 x H x W left-view disparity in pixels (0 where invalid), ``valid``: bool 1 x H x W;
- bag items add ``sparse_disparity``/``sparse_valid`` (the sparse ground truth, same as disparity/valid)
  and, with a teacher, ``teacher_disparity``/``teacher_valid`` (S2DKD, stage 2).

Randomness (crop position, which right view, augmentation) is drawn from a generator seeded by
``(base_seed, index)``, never from global state, so an item is the same in every epoch, worker and
process, which is what makes resumed and distributed runs reproducible.

Augmentation is the synthesis module's ``augment_pair`` (asymmetric photometric changes, and the
rig-mirroring horizontal flip where the right-view labels exist), applied per item after the crop.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..datasets_gt import load_gt_folder, read_kitti_disparity, read_pfm
from ..geometry import StereoCamera
from ..synthesis.augment import STEREO_KEYS, AugmentConfig, augment_pair
from ..synthesis.pipeline import SynthesisConfig, depth_to_training_disparity, synthesize_pair
from .losses import align_to_sparse


@dataclass(frozen=True)
class CropSpec:
    """Training crop: ``height`` x ``width`` pixels, both multiples of the network ``stride``."""

    height: int
    width: int
    stride: int = 1

    def __post_init__(self) -> None:
        if self.stride <= 0:
            raise ValueError(f"stride must be positive, instead got {self.stride}")
        for name, value in (("height", self.height), ("width", self.width)):
            if value <= 0 or value % self.stride:
                raise ValueError(
                    f"crop {name} must be a positive multiple of the network stride {self.stride}, instead got {value}"
                )


def _item_rng(base_seed: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(base_seed) & 0xFFFFFFFF, int(index), int(stream)])


def _as_rgb_u8(image: np.ndarray, *, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"{what} must be H x W x 3 RGB, instead got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and float(np.nanmax(image)) <= 1.0 + 1e-6:
            image = np.clip(image * 255.0 + 0.5, 0, 255)
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def _valid_disparity(disparity: np.ndarray, max_disparity: float) -> np.ndarray:
    d = np.asarray(disparity, dtype=np.float32)
    return np.isfinite(d) & (d > 0) & (d < max_disparity)


def crop_sample(
    arrays: dict[str, np.ndarray], *, crop: CropSpec, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random crop applied identically to H x W [x C] arrays (a shared window keeps disparities valid).

    Arrays smaller than the crop are padded at the bottom/right: images by edge replication, everything
    else with zeros (so padded pixels are invalid labels), which lets small images share a batch.
    """
    first = next(iter(arrays.values()))
    h, w = first.shape[:2]
    for name, array in arrays.items():
        if array.shape[:2] != (h, w):
            raise ValueError(f"'{name}' is {array.shape[:2]} but the sample is {(h, w)}; all arrays must align")
    pad_h, pad_w = max(0, crop.height - h), max(0, crop.width - w)
    top = int(rng.integers(0, max(h - crop.height, 0) + 1))
    left = int(rng.integers(0, max(w - crop.width, 0) + 1))
    out = {}
    for name, array in arrays.items():
        if pad_h or pad_w:
            widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
            mode = "edge" if array.ndim == 3 else "constant"
            array = np.pad(array, widths, mode=mode)
        out[name] = np.ascontiguousarray(array[top : top + crop.height, left : left + crop.width])
    return out


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """uint8 H x W x 3 images -> float 3 x H x W in [0, 1]; H x W maps -> 1 x H x W.

    Each ``X_disparity`` is zeroed where its mask (``X_valid``) is False, so no NaN reaches a loss.
    """
    out: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        if array.ndim == 3:
            out[name] = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float().div_(255.0)
        elif array.dtype == np.bool_:
            out[name] = torch.from_numpy(np.ascontiguousarray(array))[None]
        else:
            mask = arrays.get(name.replace("disparity", "valid")) if "disparity" in name else None
            values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
            if mask is not None:
                values = np.where(mask, values, 0.0).astype(np.float32)
            out[name] = torch.from_numpy(np.ascontiguousarray(values))[None]
    return out


def make_item(
    arrays: dict[str, np.ndarray], *, crop: CropSpec, augment: AugmentConfig | None, seed_parts: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Full-resolution arrays -> cropped, augmented tensors (see the module doc for the keys)."""
    rng = _item_rng(*seed_parts, 2)
    tensors = to_tensors(crop_sample(arrays, crop=crop, rng=rng))
    return augment_sample(tensors, config=augment, seed=int(rng.integers(0, 2**62)))


def augment_sample(
    tensors: dict[str, torch.Tensor], *, config: AugmentConfig | None, seed: int
) -> dict[str, torch.Tensor]:
    """Applies the project's stereo augmentation (``synthesis.augment.augment_pair``) to one item.

    ``tensors`` are the C x H x W tensors of ``to_tensors``. The rig-mirroring horizontal flip needs the
    right-view labels (``right_disparity``, ``right_valid``, ``occlusion``, ``right_occlusion``); items
    without them (real pairs, sparse GT) get the photometric part only. Keys that augment_pair does not
    know (sparse GT, teacher) cannot follow a flip either, so their presence also disables it.
    """
    if config is None:
        return tensors
    has_right_labels = all(k in tensors for k in STEREO_KEYS)
    extra = [k for k in tensors if k not in STEREO_KEYS]
    if not has_right_labels or extra:
        config = replace(config, flip_prob=0.0)
    batch = {k: v[None] for k, v in tensors.items()}
    for key in STEREO_KEYS:
        if key not in batch:
            like = batch["valid"] if key.endswith(("valid", "occlusion")) else batch["disparity"]
            batch[key] = torch.zeros_like(like)
    generator = torch.Generator().manual_seed(int(seed))
    out = augment_pair(batch, config=config, generator=generator)
    return {k: out[k][0] for k in tensors}


def _synthetic_arrays(pair: Any, *, max_disparity: float) -> dict[str, np.ndarray]:
    """A ``SyntheticPair`` -> item arrays, with the right-view labels the rig-mirroring flip needs."""
    valid = np.asarray(pair.valid, dtype=bool) & _valid_disparity(pair.disparity, max_disparity)
    holes = np.asarray(pair.holes, dtype=bool)
    right_disparity = np.asarray(pair.right_disparity, dtype=np.float32)
    return {
        "left": _as_rgb_u8(pair.left, what="synthesized left"),
        "right": _as_rgb_u8(pair.right, what="synthesized right"),
        "disparity": np.asarray(pair.disparity, dtype=np.float32),
        "valid": valid,
        "occlusion": np.asarray(pair.occlusion, dtype=bool),
        "right_disparity": right_disparity,
        # Inpainted right pixels have a guessed disparity: never supervise them after a flip.
        "right_valid": ~holes & _valid_disparity(right_disparity, max_disparity),
        "right_occlusion": holes,
    }


class ProceduralStereoDataset(Dataset):
    """On-the-fly procedural scenes (``synthesis.procedural.render_scene``), one seed per scene.

    Item ``i`` shows scene ``base_seed + i % num_scenes`` (``num_scenes`` defaults to ``length``: every
    item its own scene). With probability ``synthesized_fraction`` (drawn from the item's own seed) the
    right view is replaced by a stage-1 synthesized one, made from the left view and its disparity by
    ``synthesize_pair`` (forward splat + ``inpaint`` hole filling), so the network sees both true stereo and
    the artefacts of the pipeline it is pretrained with on real photographs. Labels are the rendered
    left-view disparity (occluded pixels included: their true disparity is known, as in SceneFlow).

    Rendering a scene costs about a second of CPU (ray casting with 2x2 supersampling), far more than a
    crop and an augmentation; on a CPU budget, ``num_scenes < length`` reuses each scene with a different
    crop, right view and augmentation, and ``cache_dir`` keeps renders on disk (``.npz``, no pickle) so
    that a reused scene, a second worker or a resumed run never renders it again.
    """

    def __init__(
        self,
        *,
        length: int,
        base_seed: int,
        render_width: int,
        render_height: int,
        crop: CropSpec,
        max_disparity: float,
        render_max_disparity: float | None = None,
        num_scenes: int | None = None,
        synthesized_fraction: float = 0.5,
        inpaint: str = "ea",
        augment: AugmentConfig | None = None,
        scene_config: dict[str, Any] | None = None,
        cache_dir: str | Path | None = None,
    ):
        from ..synthesis.procedural import SceneConfig

        if length <= 0:
            raise ValueError(f"length must be positive, instead got {length}")
        if num_scenes is not None and num_scenes <= 0:
            raise ValueError(f"num_scenes must be positive, instead got {num_scenes}")
        if not 0.0 <= synthesized_fraction <= 1.0:
            raise ValueError(f"synthesized_fraction must be in [0, 1], instead got {synthesized_fraction}")
        self.length = int(length)
        self.num_scenes = int(num_scenes) if num_scenes else self.length
        self.base_seed = int(base_seed)
        self.render_width = int(render_width)
        self.render_height = int(render_height)
        self.crop = crop
        self.max_disparity = float(max_disparity)
        self.render_max_disparity = float(render_max_disparity or max_disparity)
        if self.render_max_disparity > self.max_disparity:
            raise ValueError(
                f"render_max_disparity {self.render_max_disparity} exceeds the network's max_disparity {self.max_disparity}"
            )
        self.synthesized_fraction = float(synthesized_fraction)
        self.inpaint = inpaint
        self.augment = augment
        scene_values = dict(scene_config or {})
        for key, value in list(scene_values.items()):
            if isinstance(value, list):
                scene_values[key] = tuple(value)
        try:
            self.scene_config = SceneConfig(**scene_values)
        except TypeError as exc:
            raise ValueError(f"data.scene has an unknown SceneConfig field: {exc}") from exc
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Renders depend on every scene setting: key the cache on them so a changed recipe never reads stale scenes.
        settings = json.dumps(
            [self.render_width, self.render_height, self.render_max_disparity, repr(self.scene_config)], sort_keys=True
        )
        self._cache_tag = f"{zlib.crc32(settings.encode()):08x}"

    def __len__(self) -> int:
        return self.length

    def scene_seed(self, index: int) -> int:
        return self.base_seed + int(index) % self.num_scenes

    def scene(self, seed: int) -> dict[str, np.ndarray]:
        """The rendered scene ``seed`` as arrays (from the cache when present)."""
        from ..synthesis.procedural import render_scene

        cached = self.cache_dir / f"scene_{seed:09d}_{self._cache_tag}.npz" if self.cache_dir else None
        if cached is not None and cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as stored:
                    return {k: stored[k] for k in stored.files}
            except (OSError, ValueError, EOFError):
                cached.unlink(missing_ok=True)  # a torn write from a killed worker: render again
        scene = render_scene(
            seed,
            width=self.render_width,
            height=self.render_height,
            max_disparity=self.render_max_disparity,
            config=self.scene_config,
        )
        arrays = {
            "left": _as_rgb_u8(scene.left, what=f"render_scene({seed}).left"),
            "right": _as_rgb_u8(scene.right, what=f"render_scene({seed}).right"),
            "disparity": np.asarray(scene.disparity, dtype=np.float32),
            "right_disparity": np.asarray(scene.disparity_right, dtype=np.float32),
            "occlusion": np.asarray(scene.occlusion, dtype=bool),
        }
        if cached is not None:
            tmp = cached.with_name(f".{cached.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, cached)
        return arrays

    def render(self, index: int) -> dict[str, np.ndarray]:
        """Full-resolution arrays of item ``index`` (uint8 images, NaN-invalid disparities, bool masks)."""
        seed = self.scene_seed(index)
        scene = self.scene(seed)
        if _item_rng(self.base_seed, index, 1).random() < self.synthesized_fraction:
            pair = synthesize_pair(scene["left"], scene["disparity"], inpaint=self.inpaint, seed=seed)
            return _synthetic_arrays(pair, max_disparity=self.max_disparity)
        return {
            "left": scene["left"],
            "right": scene["right"],
            "disparity": scene["disparity"],
            "valid": _valid_disparity(scene["disparity"], self.max_disparity),
            "occlusion": scene["occlusion"],
            "right_disparity": scene["right_disparity"],
            "right_valid": _valid_disparity(scene["right_disparity"], self.max_disparity),
            # Right pixels hidden from the left camera are not computed by the renderer; the mask only
            # travels with a flip and no loss reads it.
            "right_occlusion": np.zeros_like(scene["occlusion"]),
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return make_item(
            self.render(index), crop=self.crop, augment=self.augment, seed_parts=(self.base_seed, index)
        )


def read_disparity_file(path: str | Path) -> np.ndarray:
    """Reads a disparity map file (NaN = invalid).

    Supported: ``.npy`` (float, loaded without pickle), ``.pfm`` (inf = unknown, Middlebury) and 16-bit
    PNG in the KITTI convention (value / 256, 0 = invalid).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"disparity file {path} does not exist")
    if suffix == ".npy":
        disparity = np.load(path, allow_pickle=False).astype(np.float32)
    elif suffix == ".pfm":
        disparity = np.asarray(read_pfm(path), dtype=np.float32)
    elif suffix == ".png":
        disparity = read_kitti_disparity(path)
    else:
        raise ValueError(f"unsupported disparity file {path}; expected .npy, .pfm or 16-bit .png")
    if disparity.ndim != 2:
        raise ValueError(f"disparity file {path} must hold an H x W map, instead got shape {disparity.shape}")
    disparity = disparity.copy()
    disparity[~np.isfinite(disparity)] = np.nan
    return disparity


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"could not read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class SynthesizedFolderDataset(Dataset):
    """A stage-1 folder written by ``training/synthesize.py``: ``left/ right/ disp/ mask/ manifest.jsonl``.

    Each manifest line names the files of one pair (``left``, ``right``, ``disp``, optional ``mask``;
    paths relative to the folder); ``mask`` is an 8-bit PNG, non-zero = valid label.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        crop: CropSpec,
        max_disparity: float,
        base_seed: int = 0,
        augment: AugmentConfig | None = None,
    ):
        self.root = Path(root)
        manifest = self.root / "manifest.jsonl"
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.root} is not a synthesized dataset: {manifest} is missing")
        self.records: list[dict[str, Any]] = []
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{manifest}:{number} is not valid JSON ({exc})") from exc
            for key in ("left", "right", "disp"):
                if key not in record:
                    raise ValueError(f"{manifest}:{number} lacks the '{key}' entry: {record}")
            self.records.append(record)
        if not self.records:
            raise ValueError(f"{manifest} lists no samples")
        self.crop = crop
        self.max_disparity = float(max_disparity)
        self.base_seed = int(base_seed)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(index, seed_index=index)

    def item(self, index: int, *, seed_index: int) -> dict[str, torch.Tensor]:
        """Pair ``index`` with the crop and augmentation of ``seed_index`` (a mix reuses pairs with new crops)."""
        record = self.records[index]
        disparity = read_disparity_file(self.root / record["disp"])
        valid = _valid_disparity(disparity, self.max_disparity)
        if record.get("mask"):
            mask = cv2.imread(str(self.root / record["mask"]), cv2.IMREAD_GRAYSCALE)
            if mask is None:
                raise ValueError(f"could not read mask {self.root / record['mask']}")
            valid &= mask > 0
        arrays = {
            "left": _read_rgb(self.root / record["left"]),
            "right": _read_rgb(self.root / record["right"]),
            "disparity": disparity,
            "valid": valid,
        }
        return make_item(arrays, crop=self.crop, augment=self.augment, seed_parts=(self.base_seed, seed_index))


class GroundTruthFolderDataset(Dataset):
    """Middlebury-2014 or KITTI folders with dense or sparse ground truth (``datasets_gt.load_gt_folder``)."""

    def __init__(
        self,
        root: str | Path,
        *,
        crop: CropSpec,
        max_disparity: float,
        base_seed: int = 0,
        augment: AugmentConfig | None = None,
    ):
        self.samples = load_gt_folder(root)
        if len(self.samples) == 0:
            raise ValueError(f"no Middlebury or KITTI samples found under {root}")
        self.crop = crop
        self.max_disparity = float(max_disparity)
        self.base_seed = int(base_seed)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        disparity = np.asarray(sample.disparity, dtype=np.float32)
        arrays = {
            "left": _as_rgb_u8(sample.left, what=f"{sample.name} left"),
            "right": _as_rgb_u8(sample.right, what=f"{sample.name} right"),
            "disparity": disparity,
            "valid": _valid_disparity(disparity, self.max_disparity),
        }
        return make_item(arrays, crop=self.crop, augment=self.augment, seed_parts=(self.base_seed, index))


# ---------------------------------------------------------------------------------------------------------
# Stage 2: recorded bags.


def sparse_depth_to_disparity(
    depth: np.ndarray, camera: StereoCamera, *, max_disparity: float
) -> tuple[np.ndarray, np.ndarray]:
    """Metric sparse depth (NaN/0 = no return) -> (disparity NaN-invalid, valid) with ``f*B/Z - doffs``."""
    disparity = camera.depth_to_disparity(np.asarray(depth, dtype=np.float32))
    valid = _valid_disparity(disparity, max_disparity)
    return np.where(valid, disparity, np.nan).astype(np.float32), valid


def _cached_map(cache_dir: Path | None, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` once per key, kept as ``cache_dir/key.npy`` (written atomically, read without pickle)."""
    cached = cache_dir / f"{key}.npy" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return np.load(cached, allow_pickle=False)
    value = np.asarray(compute(), dtype=np.float32)
    if cached is not None:
        tmp = cached.with_name(f".{cached.stem}.tmp.npy")
        np.save(tmp, value)
        tmp.replace(cached)
    return value


class MonoTeacher:
    """S2DKD teacher: a monocular depth model aligned per image to the sparse ground truth.

    ``mono.predict`` gives relative inverse depth (``output_kind`` "inverse_depth"/"disparity") or metric
    depth; depth is inverted first, so the alignment is affine in inverse depth, the space in which
    disparity is affine (``d = f*B/Z - doffs``). ``losses.align_to_sparse`` fits a robust scale and shift
    on the sparse pixels; the aligned map is the teacher disparity. Raw predictions are cached per sample
    (``cache_dir``) because a large mono model costs far more than a training step.
    """

    def __init__(self, mono: Any, *, cache_dir: str | Path | None = None):
        self.mono = mono
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def inverse_depth(self, left: np.ndarray, *, key: str) -> np.ndarray:
        def compute() -> np.ndarray:
            (raw,) = self.mono.predict([left])
            raw = np.asarray(raw, dtype=np.float32)
            if raw.shape != left.shape[:2]:
                raw = cv2.resize(raw, (left.shape[1], left.shape[0]), interpolation=cv2.INTER_LINEAR)
            if getattr(self.mono, "output_kind", "inverse_depth") == "depth":
                with np.errstate(divide="ignore", invalid="ignore"):
                    raw = np.where(raw > 0, 1.0 / raw, np.nan).astype(np.float32)
            return raw

        return _cached_map(self.cache_dir, f"mono_{key}", compute)

    def __call__(
        self,
        left: np.ndarray,
        right: np.ndarray,
        sparse_disparity: np.ndarray,
        sparse_valid: np.ndarray,
        *,
        key: str,
    ) -> np.ndarray:
        inverse = self.inverse_depth(left, key=key)
        finite = np.isfinite(inverse)
        scale, shift = align_to_sparse(
            torch.from_numpy(np.where(finite, inverse, 0.0).astype(np.float32))[None, None],
            torch.from_numpy(np.nan_to_num(sparse_disparity, nan=0.0).astype(np.float32))[None, None],
            torch.from_numpy(sparse_valid & finite)[None, None],
        )
        teacher = float(scale.reshape(-1)[0]) * inverse + float(shift.reshape(-1)[0])
        return np.where(finite, teacher, np.nan).astype(np.float32)


class StereoBagDataset(Dataset):
    """Synchronized stereo pairs from rosbag2 directories (``bags.StereoBagReader``), with sparse GT.

    ``roots``: a bag directory, a folder of them, or a list. Sparse ground truth comes from
    ``depth_topic`` (an Image in metres) or ``lidar_topic`` (a PointCloud2 the reader projects with
    ``/tf_static`` and the left intrinsics) and becomes disparity with each sample's own camera.
    ``teacher(left, right, sparse_disparity, sparse_valid, key=...)`` (:class:`MonoTeacher`, or
    :class:`NetworkTeacher` without a mono model) adds the S2DKD teacher disparity.
    """

    def __init__(
        self,
        roots: str | Path | Sequence[str | Path],
        *,
        crop: CropSpec,
        max_disparity: float,
        depth_topic: str | None = None,
        lidar_topic: str | None = None,
        slop_s: float = 0.01,
        teacher: Callable[..., np.ndarray] | None = None,
        base_seed: int = 0,
        augment: AugmentConfig | None = None,
    ):
        from ..bags import StereoBagReader

        if depth_topic and lidar_topic:
            raise ValueError(f"give depth_topic or lidar_topic, not both (got {depth_topic!r} and {lidar_topic!r})")
        self.bag_paths = find_bag_dirs(roots)
        self.readers = [
            StereoBagReader(
                path,
                depth_topic=depth_topic,
                lidar_topic=lidar_topic,
                slop_s=slop_s,
                # With a sparse-GT topic, only pairs that have a depth match can be supervised.
                require_depth=bool(depth_topic or lidar_topic),
            )
            for path in self.bag_paths
        ]
        self.index: list[tuple[int, int]] = []
        for number, reader in enumerate(self.readers):
            self.index.extend((number, i) for i in range(len(reader)))
        if not self.index:
            raise ValueError(
                f"no synchronized stereo pairs in {[str(p) for p in self.bag_paths]} "
                f"(check the image topics and slop_s={slop_s})"
            )
        self.has_sparse = bool(depth_topic or lidar_topic)
        self.crop = crop
        self.max_disparity = float(max_disparity)
        self.teacher = teacher
        self.base_seed = int(base_seed)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.index)

    def sample(self, index: int):
        bag, position = self.index[index]
        return self.readers[bag][position]

    def key(self, index: int, stamp_ns: int) -> str:
        return f"{self.bag_paths[self.index[index][0]].name}_{stamp_ns}"

    def full_arrays(self, index: int) -> dict[str, np.ndarray]:
        sample = self.sample(index)
        where = f"{self.bag_paths[self.index[index][0]]} at {sample.stamp_ns} ns"
        left = _as_rgb_u8(sample.left, what=f"{where}: left image")
        arrays = {"left": left, "right": _as_rgb_u8(sample.right, what=f"{where}: right image")}
        if not self.has_sparse:
            return arrays
        if sample.sparse_depth is None:
            raise ValueError(f"{where}: the pair has no sparse depth on the requested topic")
        disparity, valid = sparse_depth_to_disparity(sample.sparse_depth, sample.camera, max_disparity=self.max_disparity)
        arrays.update(disparity=disparity, valid=valid)
        if self.teacher is not None:
            teacher = self.teacher(left, arrays["right"], disparity, valid, key=self.key(index, sample.stamp_ns))
            arrays["teacher_disparity"] = teacher
            arrays["teacher_valid"] = _valid_disparity(teacher, self.max_disparity)
        return arrays

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return make_item(
            self.full_arrays(index), crop=self.crop, augment=self.augment, seed_parts=(self.base_seed, index)
        )


class BagSelfSynthesisDataset(Dataset):
    """Ground-truth-free fine-tuning: stage-1 pairs synthesized from the bag's own left frames.

    ``disparity_source(left, right, key=...) -> H x W disparity`` gives the scene geometry: a mono model
    through ``depth_to_training_disparity`` (:class:`MonoDisparitySource`), or without one the frozen
    stage-1 network's own estimate on the real pair (:class:`NetworkDisparitySource`). Either way the
    right view is *rendered from* that disparity, so the label is exact for the synthesized pair; errors
    of the source only change which scene is shown, while the images carry the robot's own textures,
    noise and exposure, which is the domain gap this mode closes.
    """

    def __init__(
        self,
        bags: StereoBagDataset,
        *,
        disparity_source: Callable[..., np.ndarray],
        crop: CropSpec,
        max_disparity: float,
        inpaint: str = "ea",
        base_seed: int = 0,
        augment: AugmentConfig | None = None,
        cache_dir: str | Path | None = None,
    ):
        self.bags = bags
        self.disparity_source = disparity_source
        self.crop = crop
        self.max_disparity = float(max_disparity)
        self.inpaint = inpaint
        self.base_seed = int(base_seed)
        self.augment = augment
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.bags.sample(index)
        left = _as_rgb_u8(sample.left, what="bag left image")
        right = _as_rgb_u8(sample.right, what="bag right image")
        key = self.bags.key(index, sample.stamp_ns)
        disparity = _cached_map(
            self.cache_dir, f"source_{key}", lambda: self.disparity_source(left, right, key=key)
        )
        pair = synthesize_pair(left, disparity, inpaint=self.inpaint, seed=self.base_seed + index)
        arrays = _synthetic_arrays(pair, max_disparity=self.max_disparity)
        return make_item(arrays, crop=self.crop, augment=self.augment, seed_parts=(self.base_seed, index))


class MonoDisparitySource:
    """Scene geometry from a mono model, scaled to a random plausible disparity range (stage-1 recipe)."""

    def __init__(self, mono: Any, *, config: SynthesisConfig, base_seed: int = 0):
        self.mono = mono
        self.config = config
        self.base_seed = int(base_seed)

    def __call__(self, left: np.ndarray, right: np.ndarray, *, key: str) -> np.ndarray:
        (prediction,) = self.mono.predict([left])
        prediction = np.asarray(prediction, dtype=np.float32)
        if prediction.shape != left.shape[:2]:
            prediction = cv2.resize(prediction, (left.shape[1], left.shape[0]), interpolation=cv2.INTER_LINEAR)
        rng = np.random.default_rng([self.base_seed, _stable_seed(key)])
        disparity, _ = depth_to_training_disparity(
            prediction, kind=getattr(self.mono, "output_kind", "inverse_depth"), config=self.config, rng=rng, source=key
        )
        return disparity


@torch.no_grad()
def predict_pair(
    network: torch.nn.Module, left: np.ndarray, right: np.ndarray, *, device: torch.device | str = "cpu"
) -> np.ndarray:
    """H x W disparity of a stereo network for one uint8 pair, padded (edge) to its stride and cropped back."""
    stride = int(network.stride)
    h, w = left.shape[:2]
    ph, pw = -(-h // stride) * stride, -(-w // stride) * stride

    def prep(image: np.ndarray) -> torch.Tensor:
        padded = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
        return torch.from_numpy(padded.transpose(2, 0, 1).copy()).float().div(255.0)[None].to(device)

    was_training = network.training
    network.eval()
    try:
        disparity, _ = network(prep(left), prep(right))
    finally:
        network.train(was_training)
    return disparity[0, 0, :h, :w].float().cpu().numpy()


class NetworkDisparitySource:
    """Scene geometry from the frozen stage-1 stereo network's prediction on the real pair."""

    def __init__(self, network: torch.nn.Module):
        self.network = network.eval()

    def __call__(self, left: np.ndarray, right: np.ndarray, *, key: str) -> np.ndarray:
        return predict_pair(self.network, left, right)


class NetworkTeacher:
    """S2DKD teacher without a mono model: the frozen stage-1 network's (metric) disparity on the real pair.

    It needs no alignment (a stereo network's disparity is already in pixels of this rig); its errors are
    where stereo is hard (texture-less, occluded), which the sparse L1 term still corrects where GT exists.
    """

    def __init__(self, network: torch.nn.Module, *, cache_dir: str | Path | None = None):
        self.network = network.eval()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __call__(
        self,
        left: np.ndarray,
        right: np.ndarray,
        sparse_disparity: np.ndarray,
        sparse_valid: np.ndarray,
        *,
        key: str,
    ) -> np.ndarray:
        return _cached_map(self.cache_dir, f"stereo_{key}", lambda: predict_pair(self.network, left, right))


def _stable_seed(text: str) -> int:
    """A stable (process-independent, unlike ``hash``) 32-bit seed from a string key."""
    return zlib.crc32(text.encode())


def find_bag_dirs(roots: str | Path | Sequence[str | Path]) -> list[Path]:
    """rosbag2 bags at or below each root (``bags.find_bags``), or ``.mcap`` files given directly."""
    from ..bags import find_bags

    if isinstance(roots, (str, Path)):
        roots = [roots]
    found: list[Path] = []
    for root in map(Path, roots):
        if root.is_file() and root.suffix == ".mcap":
            found.append(root)
            continue
        bags = find_bags(root)
        if not bags:
            raise ValueError(f"no rosbag2 bag (a folder with metadata.yaml) at or below {root}")
        found.extend(bags)
    return found


def augment_config_from(value: Any) -> AugmentConfig | None:
    """``data.augment`` of a recipe: ``false``/null = off, ``true`` = defaults, a mapping = ``AugmentConfig``."""
    if value is None or value is False:
        return None
    if value is True:
        return AugmentConfig()
    if isinstance(value, dict):
        return AugmentConfig.from_dict(value)
    raise ValueError(f"data.augment must be true, false or a mapping of AugmentConfig fields, instead got {value!r}")


class MixedDataset(Dataset):
    """``primary`` with a ``fraction`` of its items replaced by items of ``secondary``, deterministically.

    Item ``i`` comes from ``secondary`` when a hash of ``(seed, i)`` falls below ``fraction`` (so the choice
    survives resume and is the same on every rank), at index ``i mod len(secondary)`` with the crop and
    augmentation of ``i`` when ``secondary`` has an ``item(index, seed_index=)`` method. Length: ``len(primary)``.
    Items keep only ``keys`` (what the supervised losses read), so that a batch of both kinds collates:
    procedural items also carry the right-view labels that only their own augmentation needs.
    """

    KEYS = ("left", "right", "disparity", "valid")

    def __init__(self, primary: Dataset, secondary: Dataset, *, fraction: float, seed: int = 0):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"the mixing fraction must be in [0, 1], instead got {fraction}")
        if len(secondary) == 0:
            raise ValueError("the secondary dataset of a mix is empty")
        self.primary, self.secondary = primary, secondary
        self.fraction, self.seed = float(fraction), int(seed)

    def __len__(self) -> int:
        return len(self.primary)

    def from_secondary(self, index: int) -> bool:
        return _item_rng(self.seed, index, stream=7).random() < self.fraction

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.from_secondary(index):
            # A small photo set repeats: each repetition gets the crop and augmentation of the mixed index.
            if hasattr(self.secondary, "item"):
                item = self.secondary.item(index % len(self.secondary), seed_index=index)
            else:
                item = self.secondary[index % len(self.secondary)]
        else:
            item = self.primary[index]
        if not isinstance(item, dict):
            return item
        missing = [k for k in self.KEYS if k not in item]
        if missing:
            raise KeyError(f"item {index} of a mixed dataset lacks {missing}")
        return {k: item[k] for k in self.KEYS}


def build_dataset(config: dict[str, Any], *, stride: int, photo_root: str | Path | None = None) -> Dataset:
    """The stage-1 / supervised dataset a recipe's ``data`` section describes (bags: see finetune.py).

    ``photo_root``: a folder of stage-1 pairs synthesized from photographs (``training/pretrain.py`` prepares
    it from ``data.photos``); ``data.photos.fraction`` of the items then come from it (:class:`MixedDataset`).
    """
    dataset = _base_dataset(config, stride=stride)
    if photo_root is None:
        return dataset
    data = config["data"]
    crop = CropSpec(height=int(data["crop_height"]), width=int(data["crop_width"]), stride=stride)
    photos = SynthesizedFolderDataset(
        photo_root,
        crop=crop,
        max_disparity=float(config["model"]["max_disparity"]),
        base_seed=int(data["base_seed"]) + 1,
        augment=augment_config_from(data["augment"]),
    )
    return MixedDataset(dataset, photos, fraction=float(data["photos"]["fraction"]), seed=int(data["base_seed"]))


def _base_dataset(config: dict[str, Any], *, stride: int) -> Dataset:
    data = config["data"]
    crop = CropSpec(height=int(data["crop_height"]), width=int(data["crop_width"]), stride=stride)
    max_disparity = float(config["model"]["max_disparity"])
    augment = augment_config_from(data["augment"])
    kind = data["kind"]
    if kind == "procedural":
        return ProceduralStereoDataset(
            length=int(data["length"]),
            base_seed=int(data["base_seed"]),
            render_width=int(data["render_width"]),
            render_height=int(data["render_height"]),
            crop=crop,
            max_disparity=max_disparity,
            render_max_disparity=data["render_max_disparity"],
            num_scenes=data["num_scenes"],
            synthesized_fraction=float(data["synthesized_fraction"]),
            inpaint=str(data["inpaint"]),
            augment=augment,
            scene_config=data["scene"],
            cache_dir=data["cache_dir"],
        )
    if kind == "synthesized":
        return SynthesizedFolderDataset(
            data["root"], crop=crop, max_disparity=max_disparity, base_seed=int(data["base_seed"]), augment=augment
        )
    if kind == "gt_folder":
        return GroundTruthFolderDataset(
            data["root"], crop=crop, max_disparity=max_disparity, base_seed=int(data["base_seed"]), augment=augment
        )
    raise ValueError(f"build_dataset handles procedural|synthesized|gt_folder, instead got data.kind={kind!r}")
