"""The "given" depth source: data that already carries depth (RGB-D captures, rendered scenes, a cache).

No network runs; the maps come either with the call (``predict(images, depths=[...])``) or from files in
``depth_dir`` named after each image (``predict(images, names=["0001", ...])`` reads
``depth_dir/0001.{npy,pfm,png,tif,tiff,exr}``). 16-bit PNG / TIFF are integers scaled by ``scale``
(e.g. 0.001 for millimetre depth). Non-finite and non-positive values become NaN (REP 118 "unknown").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .base import OUTPUT_KINDS, MonoDepthModel, check_images

__all__ = ["GivenDepth", "read_depth_file"]

_SUFFIXES = (".npy", ".pfm", ".png", ".tif", ".tiff", ".exr")


def read_depth_file(path: str | Path, *, scale: float = 1.0) -> np.ndarray:
    """Reads an ``H x W`` map from .npy (no pickle), .pfm, or an OpenCV-readable image; multiplies by ``scale``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix == ".pfm":
        from ..datasets_gt import read_pfm

        arr = read_pfm(path)
    else:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"cannot read depth file {path} (missing, truncated or an unsupported format)")
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(
            f"depth file {path} must hold a single-channel H x W map, instead got {arr.shape} {arr.dtype}"
        )
    return arr.astype(np.float32) * np.float32(scale)


class GivenDepth(MonoDepthModel):
    """Returns depth the data already has, validated and resized to each image (nearest, no edge mixing)."""

    def __init__(
        self, *, depth_dir: str | Path | None = None, output_kind: str = "depth", scale: float = 1.0
    ):
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, instead got {output_kind!r}")
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, instead got {scale}")
        if depth_dir is not None and not Path(depth_dir).is_dir():
            raise FileNotFoundError(f"given-depth folder {depth_dir} does not exist")
        self.depth_dir = Path(depth_dir) if depth_dir is not None else None
        self.output_kind = output_kind
        self.scale = float(scale)
        self.name = "given" if depth_dir is None else f"given:{depth_dir}"

    def _lookup(self, name: str) -> np.ndarray:
        assert self.depth_dir is not None
        stem = (
            Path(name).stem
            if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")
            else name
        )
        for suffix in _SUFFIXES:
            candidate = self.depth_dir / f"{stem}{suffix}"
            if candidate.is_file():
                return read_depth_file(candidate, scale=self.scale)
        raise FileNotFoundError(
            f"no given depth for {name!r}: looked for {stem}{{{','.join(_SUFFIXES)}}} in {self.depth_dir}"
        )

    def predict(
        self,
        images: Sequence[np.ndarray],
        *,
        depths: Sequence[np.ndarray] | None = None,
        names: Sequence[str] | None = None,
    ) -> list[np.ndarray]:
        """``depths``: one ``H x W`` map per image; or ``names`` to read them from ``depth_dir``."""
        images = check_images(images, who="GivenDepth")
        if depths is None:
            if names is None or self.depth_dir is None:
                raise ValueError(
                    "the 'given' depth source needs the depth itself: pass depths=[...] with the images, or "
                    "construct it with depth_dir=DIR and pass names=[...] (one file stem per image)"
                )
            if len(names) != len(images):
                raise ValueError(f"got {len(names)} names for {len(images)} images")
            depths = [self._lookup(n) for n in names]
        if len(depths) != len(images):
            raise ValueError(f"got {len(depths)} depth maps for {len(images)} images")
        out = []
        for i, (img, depth) in enumerate(zip(images, depths)):
            d = np.asarray(depth)
            if d.ndim != 2 or not np.issubdtype(d.dtype, np.number):
                raise ValueError(
                    f"given depth {i} must be a numeric H x W map, instead got {d.shape} {d.dtype}"
                )
            d = d.astype(np.float32, copy=True)
            d[~(np.isfinite(d) & (d > 0))] = np.nan
            h, w = img.shape[:2]
            if d.shape != (h, w):
                d = cv2.resize(d, (w, h), interpolation=cv2.INTER_NEAREST)
            if not np.isfinite(d).any():
                raise ValueError(f"given depth {i} has no finite positive value")
            out.append(d)
        return out
