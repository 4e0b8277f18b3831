"""The monocular depth backend interface and the pre-processing the backends share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OUTPUT_KINDS",
    "MonoDepthModel",
    "MonoWeightsNotFoundError",
    "check_images",
    "network_input_size",
    "size_batches",
]

# Depth Anything (V1 / V2) and most DPT-style models are trained with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

OUTPUT_KINDS = ("inverse_depth", "depth", "disparity")


class MonoWeightsNotFoundError(FileNotFoundError):
    """Raised when monocular depth weights are not on disk; the message says where and how to get them."""


class MonoDepthModel(ABC):
    """A monocular depth estimator: RGB images in, one dense map per image out, at each input's size.

    ``output_kind`` says what the maps hold: ``"inverse_depth"`` (relative, affine-invariant: larger =
    nearer, unknown scale and shift, e.g. Depth Anything V2 relative models), ``"depth"`` (metres, from
    metric models or given depth) or ``"disparity"`` (pixels for a known rig).
    """

    output_kind: str = "inverse_depth"
    name: str = "mono"

    @abstractmethod
    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``images``: RGB uint8 ``H_i x W_i x 3`` arrays (sizes may differ). Returns float32 ``H_i x W_i`` maps."""

    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self.predict(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, output_kind={self.output_kind!r})"


def check_images(images: Sequence[np.ndarray], *, who: str) -> list[np.ndarray]:
    """Validates a batch of RGB uint8 images; a single array is rejected (it is ambiguous with a batch)."""
    if isinstance(images, np.ndarray):
        raise TypeError(
            f"{who}.predict takes a list of H x W x 3 images, instead got one array {images.shape}"
        )
    out = []
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(
                f"{who}: image {i} must be RGB uint8 H x W x 3, instead got {arr.shape} {arr.dtype}"
            )
        if arr.shape[0] < 2 or arr.shape[1] < 2:
            raise ValueError(f"{who}: image {i} is too small ({arr.shape[:2]})")
        out.append(arr)
    return out


def size_batches(
    images: Sequence[np.ndarray], *, size_of: Callable[[int, int], tuple[int, int]], batch_size: int
) -> Iterator[tuple[tuple[int, int], list[int]]]:
    """``(network size, image indices)`` chunks: images that resize to the same network input size are
    batched together, at most ``batch_size`` at a time, in input order within each size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(size_of(*img.shape[:2]), []).append(i)
    for size, indices in groups.items():
        for start in range(0, len(indices), batch_size):
            yield size, indices[start : start + batch_size]


def network_input_size(
    height: int, width: int, *, target: tuple[int, int], multiple: int, keep_aspect_ratio: bool
) -> tuple[int, int]:
    """The (height, width) a DPT-style model sees for an image, as transformers' DPT processor computes it.

    With ``keep_aspect_ratio`` the one scale factor closest to 1 of the two that would reach ``target``
    is applied to both sides (for Depth Anything's 518 x 518 target: the shorter side becomes 518), then
    each side is rounded to the nearest multiple of ``multiple`` (the ViT patch size), never below it.
    """
    th, tw = target
    sh, sw = th / height, tw / width
    if keep_aspect_ratio:
        if abs(1 - sw) < abs(1 - sh):
            sh = sw
        else:
            sw = sh

    def constrain(value: float) -> int:
        return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)

    return constrain(height * sh), constrain(width * sw)
