"""Monocular depth backends: Depth Anything V2 via transformers, ONNX models via onnxruntime, given depth.

``load_mono_depth(spec)`` picks the backend from ``spec``; all return a :class:`MonoDepthModel` whose
``predict(list of RGB uint8 H x W x 3) -> list of float32 H x W`` maps at each input's size, and whose
``output_kind`` says whether those are relative inverse depth or metric depth. Nothing is downloaded:
missing weights raise :class:`MonoWeightsNotFoundError` with the command to fetch them once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUT_KINDS,
    MonoDepthModel,
    MonoWeightsNotFoundError,
    network_input_size,
)
from .depth_anything import HUB_IDS, DepthAnythingV2, download_hint
from .given import GivenDepth, read_depth_file
from .onnx_depth import OnnxMonoDepth

__all__ = [
    "DepthAnythingV2",
    "GivenDepth",
    "HUB_IDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MonoDepthModel",
    "MonoWeightsNotFoundError",
    "OUTPUT_KINDS",
    "OnnxMonoDepth",
    "default_weights_dir",
    "load_mono_depth",
    "network_input_size",
    "read_depth_file",
]


def default_weights_dir() -> Path:
    """Where short model names resolve: ``$MONO2STEREO_MONO_WEIGHTS`` if set, else ``./weights``."""
    return Path(os.environ.get("MONO2STEREO_MONO_WEIGHTS", "weights"))


def load_mono_depth(
    spec: str | os.PathLike,
    *,
    device: str | None = None,
    dtype=None,
    batch_size: int = 4,
    **kwargs,
) -> MonoDepthModel:
    """Opens a monocular depth backend.

    ``spec`` is one of:

    - ``"given"``: depth carried by the data (:class:`GivenDepth`; ``kwargs``: ``depth_dir``, ``scale``,
      ``output_kind``);
    - a path ending in ``.onnx``: :class:`OnnxMonoDepth` (``kwargs``: ``input_name``, ``output_name``,
      ``input_size``, ``mean``, ``std``, ``output_kind``, ...);
    - a local transformers checkpoint directory (Depth Anything V2 Small/Base/Large or any
      ``AutoModelForDepthEstimation`` model): :class:`DepthAnythingV2` (``kwargs``: ``input_size``,
      ``output_kind``);
    - a short name from ``HUB_IDS`` such as ``"depth_anything_v2_small"``: the directory of that name in
      :func:`default_weights_dir`;
    - a Hugging Face id such as ``"depth-anything/Depth-Anything-V2-Small-hf"`` is *not* fetched: the
      error says which command puts it on disk.
    """
    text = os.fspath(spec)
    if text == "given":
        return GivenDepth(**kwargs)
    path = Path(text)
    if path.suffix.lower() == ".onnx":
        return OnnxMonoDepth(path, device=device, batch_size=batch_size, **kwargs)
    if text in HUB_IDS and not path.exists():
        path = default_weights_dir() / text
        if not path.is_dir():
            raise MonoWeightsNotFoundError(
                f"monocular depth model {text!r} is not in {default_weights_dir()}. "
                + download_hint(path, hub_id=HUB_IDS[text])
            )
    elif not path.exists() and (text in HUB_IDS.values() or re.fullmatch(r"depth-anything/[\w.-]+", text)):
        # e.g. depth-anything/Depth-Anything-V2-Small-hf -> weights/depth_anything_v2_small
        local = default_weights_dir() / re.sub(r"-hf$", "", text.split("/")[1]).lower().replace("-", "_")
        if local.is_dir():
            path = local
        else:
            raise MonoWeightsNotFoundError(
                f"{text!r} looks like a Hugging Face model id, and nothing is downloaded at run time. "
                + download_hint(local, hub_id=text)
            )
    if path.is_file():
        raise ValueError(
            f"monocular depth spec {path} is a file but not .onnx; expected a .onnx file, a transformers "
            "checkpoint directory, a short name like 'depth_anything_v2_small', or 'given'"
        )
    return DepthAnythingV2(path, device=device, dtype=dtype, batch_size=batch_size, **kwargs)
