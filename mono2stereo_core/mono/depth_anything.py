"""Depth Anything V2 (and any ``AutoModelForDepthEstimation`` checkpoint) through ``transformers``, offline.

Weights are read from a local directory only (``local_files_only=True``, ``HF_HUB_OFFLINE=1``); nothing
is ever downloaded. Pre-processing runs in torch on the model's device (batched, no PIL), reproducing the
checkpoint's ``preprocessor_config.json`` (resize with kept aspect ratio to a multiple of the patch size,
bicubic, mean/std normalization); the patch-aligned output is resized back to each input's size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUT_KINDS,
    MonoDepthModel,
    MonoWeightsNotFoundError,
    check_images,
    network_input_size,
    size_batches,
)

__all__ = ["DepthAnythingV2", "HUB_IDS", "download_hint"]

# Short names -> the Hugging Face repositories whose transformers-format weights this backend reads.
HUB_IDS = {
    "depth_anything_v2_small": "depth-anything/Depth-Anything-V2-Small-hf",
    "depth_anything_v2_base": "depth-anything/Depth-Anything-V2-Base-hf",
    "depth_anything_v2_large": "depth-anything/Depth-Anything-V2-Large-hf",
    "depth_anything_v2_metric_indoor_small": "depth-anything/Depth-Anything-V2-Metric-Indoor-Small-hf",
    "depth_anything_v2_metric_outdoor_small": "depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf",
}


def download_hint(target: str | Path, *, hub_id: str = HUB_IDS["depth_anything_v2_small"]) -> str:
    """The instructions a missing-weights error gives: where the files go and the one command to get them."""
    return (
        f"Put a transformers depth-estimation checkpoint (config.json + model.safetensors) in {target}. "
        f"On a machine with internet access, fetch it once with\n"
        f"    huggingface-cli download {hub_id} --local-dir {target}\n"
        f"(or `hf download {hub_id} --local-dir {target}` with newer huggingface_hub; Base/Large: "
        f"{HUB_IDS['depth_anything_v2_base']}, {HUB_IDS['depth_anything_v2_large']}) and copy the folder "
        "here. This package never downloads weights itself."
    )


def _output_kind_from_config(config) -> str:
    # Depth Anything V2 records it; metric variants regress metres, relative ones affine-invariant
    # inverse depth (a disparity up to scale and shift). DPT relative models do the same; the other
    # transformers depth models (GLPN, ZoeDepth, Depth Pro) regress metric depth.
    kind = getattr(config, "depth_estimation_type", None)
    if kind == "metric":
        return "depth"
    if kind == "relative" or getattr(config, "model_type", "") in ("dpt", "depth_anything"):
        return "inverse_depth"
    return "depth"


class DepthAnythingV2(MonoDepthModel):
    """A transformers depth-estimation model loaded from ``model_dir`` (Depth Anything V2 Small/Base/Large).

    ``device`` defaults to CUDA when available, else CPU; ``dtype`` to float16 on CUDA and float32 on CPU.
    ``input_size`` (a side length or ``(height, width)``) overrides the checkpoint's processing size (518
    for Depth Anything V2): smaller is faster and coarser. ``output_kind`` overrides what the config says.
    ``predict`` batches up to ``batch_size`` images that share a processing size.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str | None = None,
        dtype=None,
        batch_size: int = 4,
        input_size: int | tuple[int, int] | None = None,
        output_kind: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, instead got {batch_size}")
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, instead got {output_kind!r}")
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise MonoWeightsNotFoundError(
                f"no monocular depth weights at {model_dir}. " + download_hint(model_dir)
            )
        if not (model_dir / "config.json").is_file():
            raise MonoWeightsNotFoundError(
                f"{model_dir} has no config.json, so it is not a transformers checkpoint directory "
                f"(it contains {sorted(p.name for p in model_dir.iterdir())[:8]}). "
                + download_hint(model_dir)
            )
        # Belt and braces: local_files_only already forbids network access; the variable also silences
        # hub look-ups from code paths that do not take the argument.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoConfig, AutoModelForDepthEstimation

        try:
            config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read the model config {model_dir / 'config.json'}: {exc}") from exc
        try:
            model = AutoModelForDepthEstimation.from_pretrained(model_dir, local_files_only=True)
        except OSError as exc:
            raise MonoWeightsNotFoundError(
                f"{model_dir} has a config.json but its weights could not be loaded ({exc}). "
                + download_hint(model_dir)
            ) from exc
        except ValueError as exc:
            raise ValueError(
                f"{model_dir / 'config.json'} describes model_type={getattr(config, 'model_type', '?')!r}, "
                f"which is not a depth-estimation model: {exc}"
            ) from exc

        self.device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.batch_size = int(batch_size)
        self.name = str(model_dir)
        self.output_kind = output_kind or _output_kind_from_config(config)

        proc = self._read_processor_config(model_dir)
        size = proc.get("size", {"height": 518, "width": 518})
        if isinstance(size, dict):
            target = (
                int(size.get("height", size.get("shortest_edge", 518))),
                int(size.get("width", size.get("shortest_edge", 518))),
            )
        else:
            target = (int(size), int(size))
        if input_size is not None:
            target = (
                (int(input_size), int(input_size))
                if isinstance(input_size, int)
                else tuple(map(int, input_size))
            )
            if len(target) != 2 or min(target) < 14:
                raise ValueError(
                    f"input_size must be an int or (height, width) >= 14, instead got {input_size}"
                )
        self.target_size = target
        patch = getattr(getattr(config, "backbone_config", None), "patch_size", None) or 14
        self.multiple = int(proc.get("ensure_multiple_of", patch) or patch)
        self.keep_aspect_ratio = bool(proc.get("keep_aspect_ratio", True))
        self.mean = (
            tuple(proc.get("image_mean", IMAGENET_MEAN)) if proc.get("do_normalize", True) else (0.0,) * 3
        )
        self.std = (
            tuple(proc.get("image_std", IMAGENET_STD)) if proc.get("do_normalize", True) else (1.0,) * 3
        )

    @staticmethod
    def _read_processor_config(model_dir: Path) -> dict:
        path = model_dir / "preprocessor_config.json"
        if not path.is_file():
            return {}  # Depth Anything V2 defaults: 518, multiple of 14, kept aspect, ImageNet statistics
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc

    def processing_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the network sees for an input of this size."""
        return network_input_size(
            height,
            width,
            target=self.target_size,
            multiple=self.multiple,
            keep_aspect_ratio=self.keep_aspect_ratio,
        )

    def preprocess(self, image: np.ndarray):
        """One RGB uint8 ``H x W x 3`` image -> the normalized ``1 x 3 x h x w`` float32 network input.

        Matches transformers' DPT image processor (bicubic, kept aspect ratio, patch multiple, mean/std)
        to within PIL's uint8 rounding, but runs in torch on the model's device.
        """
        import torch
        import torch.nn.functional as F

        (image,) = check_images([image], who="DepthAnythingV2")
        size = self.processing_size(*image.shape[:2])
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        # antialias=True: without it bicubic shrinking aliases, unlike the PIL reference.
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
        mean = torch.tensor(self.mean, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device, dtype=torch.float32).view(1, 3, 1, 1)
        return (x - mean) / std

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch
        import torch.nn.functional as F

        images = check_images(images, who="DepthAnythingV2")
        results: list[np.ndarray | None] = [None] * len(images)
        with torch.inference_mode():
            for _, chunk in size_batches(images, size_of=self.processing_size, batch_size=self.batch_size):
                x = torch.cat([self.preprocess(images[i]) for i in chunk]).to(self.dtype)
                pred = self.model(pixel_values=x).predicted_depth
                if pred.ndim == 3:
                    pred = pred[:, None]
                for j, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    out = F.interpolate(pred[j : j + 1].float(), size=(h, w), mode="bilinear", align_corners=False)
                    results[i] = out[0, 0].cpu().numpy().astype(np.float32, copy=False)
        return results  # type: ignore[return-value]
