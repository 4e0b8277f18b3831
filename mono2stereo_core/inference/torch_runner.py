"""PyTorch backend: CPU or CUDA, fp32 or fp16 (CUDA), optional CUDA graphs."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import torch

from mono2stereo_core.inference.runner import StereoRunner


class TorchRunner(StereoRunner):
    """Runs a ``StereoNet`` module (``forward(left, right) -> (disparity, confidence)``).

    Without ``input_size`` each image runs padded to ``model.stride`` (the convolutional nets accept any
    multiple), which is exact; with ``input_size`` it behaves like the static-shape backends.

    ``cuda_graphs=True`` captures one CUDA graph per network input shape and replays it: at robot frame
    sizes the per-kernel launch overhead of a small network is a large share of its latency, and a graph
    removes it. It needs static shapes and a model without host synchronisation in ``forward``.

    ``precision="fp32"`` on CUDA means IEEE fp32: TF32 convolutions and matmuls (cuDNN's default on Ampere
    and newer) are switched off around each forward and graph capture, so a CUDA result matches the CPU and
    ONNX Runtime ones to fp32 rounding (TF32 moved single pixels by up to 0.4 px on an H200).
    """

    backend = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        cuda_graphs: bool = False,
        allow_float: bool = False,
        source: str = "in-memory model",
    ) -> None:
        for attr in ("stride", "max_disparity"):
            if not hasattr(model, attr):
                raise ValueError(f"model {type(model).__name__} has no .{attr}; expected a StereoNet")
        device = torch.device(device) if device is not None else _default_device()
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', instead got {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError(f"fp16 inference needs a CUDA device (CPU half kernels are slow), instead got {device}")
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, instead got {device}")
        super().__init__(
            stride=int(model.stride),
            max_disparity=float(model.max_disparity),
            input_size=input_size,
            description=f"torch {device} {precision}{' cuda-graphs' if cuda_graphs else ''} {source}",
            allow_float=allow_float,
        )
        self.device = device
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], tuple] = {}
        # A captured graph owns static input/output buffers: replays from two threads must not interleave.
        self._graph_lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        cuda_graphs: bool = False,
        allow_float: bool = False,
    ) -> TorchRunner:
        """Loads ``X.safetensors`` + ``X.json`` through :func:`mono2stereo_core.models.load_model`."""
        from mono2stereo_core.models import load_model

        path = Path(path)
        device = torch.device(device) if device is not None else _default_device()
        try:
            model, _sidecar = load_model(path, device=device)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as error:  # safetensors raises its own error types for truncated/corrupt files
            raise RuntimeError(f"could not load checkpoint {path}: {type(error).__name__}: {error}") from error
        return cls(
            model,
            device=device,
            precision=precision,
            input_size=input_size,
            cuda_graphs=cuda_graphs,
            allow_float=allow_float,
            source=str(path),
        )

    @torch.inference_mode()
    def infer(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        left_t = torch.from_numpy(left).to(self.device, non_blocking=True)
        right_t = torch.from_numpy(right).to(self.device, non_blocking=True)
        with _ieee_fp32(self.device.type == "cuda" and self.precision == "fp32"):
            if self.cuda_graphs:
                disparity, confidence = self._replay(left_t, right_t)
            else:
                disparity, confidence = self.model(left_t.to(self.dtype), right_t.to(self.dtype))
        return (
            disparity.float().cpu().numpy(),
            confidence.float().cpu().numpy(),
        )

    def _replay(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = tuple(left.shape)
        with self._graph_lock:
            if key not in self._graphs:
                self._graphs[key] = self._capture(key)
            graph, static_left, static_right, static_out = self._graphs[key]
            static_left.copy_(left)
            static_right.copy_(right)
            graph.replay()
            return static_out[0].clone(), static_out[1].clone()

    def _capture(self, shape: tuple[int, ...]) -> tuple:
        static_left = torch.zeros(shape, device=self.device, dtype=self.dtype)
        static_right = torch.zeros_like(static_left)
        # Warm-up on a side stream so lazily initialised cuDNN/cuBLAS state exists before capture (the
        # pattern the torch.cuda.graphs documentation prescribes).
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.model(static_left, static_right)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.model(static_left, static_right)
        return graph, static_left, static_right, static_out


# TF32 switches are process-wide: runners in several threads share one off-period, counted under a lock, so
# the settings found before the first one entered come back only when the last one leaves.
_TF32_LOCK = threading.Lock()
_TF32_USERS = 0
_TF32_SAVED: tuple[bool, bool] | None = None


@contextlib.contextmanager
def _ieee_fp32(enabled: bool):
    """No TF32 in cuDNN convolutions and cuBLAS matmuls while inside (the previous settings come back after).

    The switches are process-wide: another thread running a CUDA model that wants TF32 at the same moment gets
    fp32 too (slower, never less accurate).
    """
    global _TF32_USERS, _TF32_SAVED
    if not enabled:
        yield
        return
    with _TF32_LOCK:
        if _TF32_USERS == 0:
            _TF32_SAVED = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        _TF32_USERS += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_USERS -= 1
            if _TF32_USERS == 0 and _TF32_SAVED is not None:
                torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = _TF32_SAVED
                _TF32_SAVED = None


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
