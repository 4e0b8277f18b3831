"""The backend-independent runner interface and :func:`load_runner`, which picks a backend for a model file."""

from __future__ import annotations

import abc
import importlib.util
import logging
import os
import sys
from pathlib import Path

import numpy as np

from mono2stereo_core.inference.consistency import lr_check_fill, occlusion_fill
from mono2stereo_core.inference.preprocess import (
    InputPlan,
    check_input_scale,
    from_network,
    plan_input,
    scaled_input_size,
    to_network,
    validate_pair,
)

logger = logging.getLogger("mono2stereo_core.inference")

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
DEFAULT_WEIGHTS_NAME = "m2s_rt.safetensors"
WEIGHTS_ENV = "MONO2STEREO_WEIGHTS"
ENGINE_CACHE_ENV = "MONO2STEREO_ENGINE_CACHE"
_ENGINE_SUFFIXES = (".engine", ".plan")


class StereoRunner(abc.ABC):
    """Runs a stereo network on rectified image pairs of any size.

    ``runner(left, right)`` takes uint8 ``H x W x 3`` RGB images (grayscale ``H x W`` accepted, see
    :func:`~mono2stereo_core.inference.preprocess.validate_image`) and returns ``(disparity, confidence)``,
    both float32 ``H x W``: left-view disparity in *input* pixels and confidence in [0, 1].

    Subclasses implement :meth:`infer` on network-sized tensors; the base class owns validation,
    padding/resizing and mapping the outputs back, so every backend behaves identically around the network.

    Attributes:
        backend: ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``.
        input_size: fixed network ``(W, H)``, or ``None`` when the backend runs each image padded to ``stride``.
        stride: the network's size multiple. max_disparity: search range in *network* pixels.
        description: one line for logs and ``/diagnostics`` (backend, device, precision, model file).
    """

    backend: str = ""

    def __init__(
        self,
        *,
        stride: int,
        max_disparity: float,
        input_size: tuple[int, int] | None,
        description: str,
        allow_float: bool = False,
    ) -> None:
        if input_size is not None:
            input_size = (int(input_size[0]), int(input_size[1]))
        self.stride = int(stride)
        self.max_disparity = float(max_disparity)
        self.input_size = input_size
        self.description = description
        self.allow_float = allow_float

    # Shape-flexible backends only (input_size None): run the network on the pair resized by this factor and
    # map the disparity back. > 1 gives the network more pixels per scene detail: on the real pairs 1.5 cut
    # bad-2 by a quarter at 2.25x the cost (docs/inference.md, "Accuracy options"). load_runner(input_scale=).
    input_scale: float = 1.0

    def plan(self, *, height: int, width: int) -> InputPlan:
        size = self.input_size
        if size is None and self.input_scale != 1.0:
            size = scaled_input_size(height=height, width=width, scale=self.input_scale, stride=self.stride)
        return plan_input(height=height, width=width, stride=self.stride, input_size=size)

    def max_disparity_at(self, *, width: int) -> float:
        """The largest disparity the network can report, in pixels of an image ``width`` wide."""
        h = self.input_size[1] if self.input_size else self.stride
        return self.max_disparity * self.plan(height=h, width=width).disparity_scale

    # Left-right consistency check with background fill (mono2stereo_core.inference.consistency): a second
    # network pass on the mirrored pair. Off by default (it doubles the network's cost); load_runner(lr_check=).
    lr_check: bool = False
    # Background fill where the disparity itself says the right camera cannot see (consistency.occlusion_fill):
    # no second pass, 15-45 ms of numpy at 640 x 480 on a 2-core CPU. On by default;
    # load_runner(occlusion_fill=False) or runner.occlusion_fill = False returns the network's own values.
    # lr_check supersedes it: after the mirrored pass's fill it made Aloe and the held-out scenes worse
    # (docs/training.md, thirteenth session).
    occlusion_fill: bool = True

    def __call__(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        disparity, confidence = self._network_or_lr_checked(left, right)
        if self.occlusion_fill and not self.lr_check:
            disparity, confidence, _ = occlusion_fill(disparity, confidence)
        return disparity, confidence

    def _network_or_lr_checked(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left, right = validate_pair(left, right, allow_float=self.allow_float)
        plan = self.plan(height=left.shape[0], width=left.shape[1])
        net_left, net_right = to_network(left, right, plan)
        disparity, confidence = self.infer(net_left, net_right)
        if not self.lr_check:
            return from_network(disparity, confidence, plan)
        # Copies: a backend may hand out views of output buffers that the second pass overwrites.
        disparity, confidence = from_network(np.array(disparity), np.array(confidence), plan)
        mirrored, mirrored_conf = self.infer(
            np.ascontiguousarray(net_right[..., ::-1]), np.ascontiguousarray(net_left[..., ::-1])
        )
        right_disparity, _ = from_network(
            np.ascontiguousarray(np.asarray(mirrored)[..., ::-1]), np.asarray(mirrored_conf)[..., ::-1], plan
        )
        disparity, confidence, _ = lr_check_fill(disparity, confidence, right_disparity)
        return disparity, confidence

    @abc.abstractmethod
    def infer(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``1 x 3 x Hn x Wn`` float32 in [0, 1] -> ``(disparity, confidence)`` ``1 x 1 x Hn x Wn`` float32."""

    def warmup(self, *, height: int, width: int, iterations: int = 2) -> None:
        """Runs a few frames so lazy initialisation (allocators, kernels, graphs) is not billed to frame one."""
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        for _ in range(iterations):
            self(image, image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def default_weights_candidates() -> list[Path]:
    """Where the shipped default checkpoint is looked for, in order."""
    candidates = []
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    # Source checkout / editable install: <repo>/weights next to the package.
    candidates.append(Path(__file__).resolve().parents[2] / "weights" / DEFAULT_WEIGHTS_NAME)
    # Installed ROS package (colcon installs weights into share/mono2stereo/weights) or a pip prefix.
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        candidates.append(Path(prefix) / "share" / "mono2stereo" / "weights" / DEFAULT_WEIGHTS_NAME)
    return candidates


def resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    """An explicit path must exist; ``None`` is the first existing default (see :func:`default_weights_candidates`)."""
    if model_path is not None and str(model_path) != "":
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist (or is not a file)")
        return path
    candidates = default_weights_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no model_path given and the default weights {DEFAULT_WEIGHTS_NAME} were not found; searched:\n  "
        f"{searched}\nSet {WEIGHTS_ENV}=/path/to/model.safetensors|.onnx|.engine or pass model_path."
    )


def tensorrt_usable() -> tuple[bool, str]:
    """Whether the TensorRT backend can run here, and why not."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt Python package is not installed"
    if not cuda_available():
        return False, "no CUDA device is visible to torch"
    return True, "tensorrt is importable and a CUDA device is visible"


def cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def choose_backend(path: Path, backend: str) -> tuple[str, str]:
    """Resolves ``backend`` for a model file; returns ``(backend, reason)`` and raises on impossible pairs."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, instead got {backend!r}")
    suffix = path.suffix.lower()
    if suffix not in (*_ENGINE_SUFFIXES, ".onnx", ".safetensors"):
        raise ValueError(
            f"model file {path} has unsupported extension {suffix!r}; expected .safetensors (torch), "
            ".onnx (onnxruntime / tensorrt) or .engine (tensorrt)"
        )
    if suffix in _ENGINE_SUFFIXES:
        if backend not in ("auto", "tensorrt"):
            raise ValueError(f"{path} is a TensorRT engine; it only runs with backend 'tensorrt', not {backend!r}")
        return "tensorrt", "a serialized TensorRT engine runs only on TensorRT"
    if suffix == ".safetensors":
        if backend not in ("auto", "torch"):
            raise ValueError(
                f"{path} is a PyTorch checkpoint; backend {backend!r} needs an exported model "
                f"(python training/export.py --checkpoint {path} --height H --width W --onnx out.onnx)"
            )
        device = "CUDA" if cuda_available() else "CPU"
        return "torch", f"a .safetensors checkpoint runs on torch ({device})"
    if backend == "torch":
        raise ValueError(f"{path} is an ONNX model; backend 'torch' needs the .safetensors checkpoint")
    if backend != "auto":
        return backend, f"requested explicitly for {path.name}"
    usable, why = tensorrt_usable()
    if usable:
        return "tensorrt", f"{why}; the engine is built once from the ONNX and cached"
    return "onnxruntime", f"TensorRT not used ({why}); ONNX Runtime runs the .onnx"


def default_engine_cache_dir() -> Path:
    if os.environ.get(ENGINE_CACHE_ENV):
        return Path(os.environ[ENGINE_CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mono2stereo" / "engines"


def load_runner(
    model_path: str | os.PathLike | None = None,
    *,
    backend: str = "auto",
    precision: str = "fp32",
    device: str | None = None,
    input_size: tuple[int, int] | None = None,
    engine_cache_dir: str | os.PathLike | None = None,
    allow_float: bool = False,
    lr_check: bool = False,
    input_scale: float = 1.0,
    occlusion_fill: bool = True,
) -> StereoRunner:
    """Loads a model file into the best (or the requested) backend.

    Args:
        model_path: ``.safetensors`` (+ JSON sidecar), ``.onnx`` or ``.engine``; ``None`` = the shipped default.
        backend: ``"auto"`` (logged with the reason), ``"tensorrt"``, ``"onnxruntime"`` or ``"torch"``.
        precision: ``"fp32"`` or ``"fp16"``; fp16 is honoured by torch on CUDA and by engines built from ONNX
            here. A prebuilt engine keeps the precision it was built with.
        device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); default CUDA when available.
        input_size: fixed network ``(W, H)``. Defaults to the static shape of an ONNX/engine file; torch then
            runs each image padded to the stride.
        engine_cache_dir: where engines built from ONNX are cached (default ``$MONO2STEREO_ENGINE_CACHE`` or
            ``~/.cache/mono2stereo/engines``).
        allow_float: accept float images in [0, 1] as well as uint8.
        lr_check: left-right consistency check with background fill (:mod:`.consistency`): a second network
            pass on the mirrored pair; pixels the right view does not confirm get the background's disparity
            and confidence 0. More accurate in occlusions and at the left border, twice the network time.
        occlusion_fill: background fill (confidence 0) where the disparity itself puts a left pixel out of the
            right camera's view (:func:`.consistency.occlusion_fill`); one pass, 15-45 ms of numpy at
            640 x 480 (the lower with the stereo node's malloc thresholds). ``False`` returns the network's
            own values. Not applied with ``lr_check``, which fills occlusions itself.
        input_scale: run a shape-flexible backend (torch) on the pair resized by this factor (0.25-4);
            the cost grows with its square. Static-shape models (ONNX, engines) get the same effect by being
            exported at the larger size (``input_size`` then resizes every image to it).
    """
    input_scale = check_input_scale(input_scale)
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', instead got {precision!r}")
    path = resolve_model_path(model_path)
    chosen, reason = choose_backend(path, backend)
    log = logger.info if backend == "auto" else logger.debug
    log("inference backend %s for %s: %s", chosen, path, reason)
    runner: StereoRunner
    if chosen == "torch":
        from mono2stereo_core.inference.torch_runner import TorchRunner

        runner = TorchRunner.from_checkpoint(
            path, device=device, precision=precision, input_size=input_size, allow_float=allow_float
        )
    elif chosen == "onnxruntime":
        from mono2stereo_core.inference.onnx_runner import OnnxRunner

        runner = OnnxRunner(path, input_size=input_size, allow_float=allow_float)
    else:
        from mono2stereo_core.inference.tensorrt_runner import TensorRTRunner

        if path.suffix.lower() == ".onnx":
            from mono2stereo_core.inference.engine_cache import build_or_reuse

            cache_dir = Path(engine_cache_dir) if engine_cache_dir is not None else default_engine_cache_dir()
            path = build_or_reuse(path, cache_dir=cache_dir, precision=precision)
        runner = TensorRTRunner(path, input_size=input_size, allow_float=allow_float)
    if input_scale != 1.0:
        if runner.input_size is not None:
            raise ValueError(
                f"input_scale={input_scale} needs a shape-flexible backend (torch without input_size); this "
                f"{runner.backend} model runs at a fixed {runner.input_size[0]}x{runner.input_size[1]}: export it "
                "at the scaled size instead (training/export.py --width W --height H)"
            )
        runner.input_scale = input_scale
        runner.description += f", input scale {input_scale:g}"
    if lr_check:
        runner.lr_check = True
        runner.description += ", left-right check + background fill (2 passes)"
    runner.occlusion_fill = bool(occlusion_fill)
    if not occlusion_fill:
        runner.description += ", no occlusion fill"
    return runner
