"""Any ONNX monocular depth model through onnxruntime (e.g. Depth Anything / MiDaS / Metric3D exports).

Contract of the model: one float32 (or float16) NCHW image input, RGB, normalized with ``mean`` / ``std``
after scaling to [0, 1]; one N x H x W or N x 1 x H x W output. Input and output names are auto-detected
when the model has exactly one of each, otherwise they must be given. The network input size is the
model's own when its height/width are fixed, else ``input_size``, else the DPT rule (shorter side to
518, both sides multiples of ``multiple``) that Depth Anything exports expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
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

__all__ = ["OnnxMonoDepth"]


def _static_dim(value) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class OnnxMonoDepth(MonoDepthModel):
    """A monocular depth ONNX model run by onnxruntime.

    ``device``: ``"cpu"``, ``"cuda"`` (CUDA provider, falling back to CPU if the build lacks it) or
    ``None`` (CUDA when onnxruntime offers it). ``providers`` overrides that choice entirely.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        input_name: str | None = None,
        output_name: str | None = None,
        input_size: int | tuple[int, int] | None = None,
        target_size: int = 518,
        multiple: int = 14,
        keep_aspect_ratio: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        output_kind: str = "inverse_depth",
        batch_size: int = 4,
        device: str | None = None,
        providers: Sequence[str] | None = None,
    ):
        import onnxruntime as ort

        path = Path(path)
        if output_kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kind must be one of {OUTPUT_KINDS}, instead got {output_kind!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, instead got {batch_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                f"mean and std must be 3 values with std > 0, instead got mean={mean}, std={std}"
            )
        if not path.is_file():
            raise MonoWeightsNotFoundError(
                f"ONNX monocular depth model {path} does not exist. Export or copy the .onnx file there "
                "(e.g. a Depth Anything V2 ONNX export); nothing is downloaded automatically."
            )
        if providers is None:
            available = ort.get_available_providers()
            want_cuda = device is None or str(device).startswith("cuda")
            providers = [p for p in ("CUDAExecutionProvider",) if want_cuda and p in available]
            providers.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
            raise ValueError(f"cannot load ONNX model {path}: {type(exc).__name__}: {exc}") from exc

        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self.input_name = self._pick(input_name, [i.name for i in inputs], what="input", path=path)
        self.output_name = self._pick(output_name, [o.name for o in outputs], what="output", path=path)
        meta = next(i for i in inputs if i.name == self.input_name)
        if len(meta.shape) != 4:
            raise ValueError(
                f"{path}: input {self.input_name!r} must be N x 3 x H x W, instead has shape {meta.shape}"
            )
        if _static_dim(meta.shape[1]) not in (None, 3):
            raise ValueError(
                f"{path}: input {self.input_name!r} must have 3 channels (NCHW), instead {meta.shape}"
            )
        if meta.type not in ("tensor(float)", "tensor(float16)"):
            raise ValueError(
                f"{path}: input {self.input_name!r} must be float or float16, instead {meta.type}"
            )
        self.input_dtype = np.float16 if meta.type == "tensor(float16)" else np.float32
        self.fixed_batch = _static_dim(meta.shape[0])
        fixed_hw = (_static_dim(meta.shape[2]), _static_dim(meta.shape[3]))
        self.fixed_size = fixed_hw if None not in fixed_hw else None
        if input_size is not None:
            size = (
                (int(input_size), int(input_size))
                if isinstance(input_size, int)
                else tuple(map(int, input_size))
            )
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"input_size must be an int or (height, width), instead got {input_size}")
            if self.fixed_size is not None and size != self.fixed_size:
                raise ValueError(
                    f"{path} has a fixed input size {self.fixed_size}, instead input_size={input_size}"
                )
            self.fixed_size = size  # type: ignore[assignment]
        self.target_size = (int(target_size), int(target_size))
        self.multiple = int(multiple)
        self.keep_aspect_ratio = bool(keep_aspect_ratio)
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, np.float32).reshape(1, 1, 3)
        self.output_kind = output_kind
        self.batch_size = 1 if self.fixed_batch == 1 else int(batch_size)
        if self.fixed_batch not in (None, 1):
            self.batch_size = self.fixed_batch  # padded up below
        self.name = str(path)
        self.path = path

    @staticmethod
    def _pick(name: str | None, names: list[str], *, what: str, path: Path) -> str:
        if name is not None:
            if name not in names:
                raise ValueError(f"{path} has no {what} named {name!r}; its {what}s are {names}")
            return name
        if len(names) != 1:
            raise ValueError(f"{path} has {len(names)} {what}s {names}; say which one with {what}_name=...")
        return names[0]

    def processing_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the network sees for an input of this size."""
        if self.fixed_size is not None:
            return self.fixed_size
        return network_input_size(
            height,
            width,
            target=self.target_size,
            multiple=self.multiple,
            keep_aspect_ratio=self.keep_aspect_ratio,
        )

    def _prepare(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        h, w = size
        shrink = h < image.shape[0] or w < image.shape[1]
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        x = (resized.astype(np.float32) / 255.0 - self.mean) / self.std
        return x.transpose(2, 0, 1)

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        images = check_images(images, who="OnnxMonoDepth")
        results: list[np.ndarray | None] = [None] * len(images)
        for size, chunk in size_batches(images, size_of=self.processing_size, batch_size=self.batch_size):
            batch = np.stack([self._prepare(images[i], size) for i in chunk])
            if self.fixed_batch is not None and len(chunk) < self.fixed_batch:
                # A fixed-batch export still serves a short final chunk: pad, then drop the padding.
                pad = np.repeat(batch[-1:], self.fixed_batch - len(chunk), axis=0)
                batch = np.concatenate([batch, pad])
            (out,) = self.session.run(
                [self.output_name], {self.input_name: batch.astype(self.input_dtype)}
            )
            out = np.asarray(out, dtype=np.float32)
            if out.ndim == 4 and out.shape[1] == 1:
                out = out[:, 0]
            if out.ndim != 3 or out.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"{self.path}: output {self.output_name!r} must be N x H x W or N x 1 x H x W, "
                    f"instead got shape {out.shape} for a batch of {batch.shape[0]}"
                )
            for j, i in enumerate(chunk):
                h, w = images[i].shape[:2]
                results[i] = cv2.resize(out[j], (w, h), interpolation=cv2.INTER_LINEAR)
        return results  # type: ignore[return-value]
