"""ONNX Runtime backend: CPU everywhere, CUDA / TensorRT execution providers where the installed build has them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mono2stereo_core.inference.export import OUTPUT_NAMES, load_onnx, onnx_io_spec
from mono2stereo_core.inference.runner import StereoRunner

logger = logging.getLogger("mono2stereo_core.inference")

EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OnnxRunner(StereoRunner):
    """Runs a static-shape stereo ONNX (see :mod:`mono2stereo_core.inference.export` for the I/O contract).

    Args:
        path: the ``.onnx`` file.
        execution_provider: ``"auto"`` (CUDA when the installed onnxruntime has it, else CPU), ``"cpu"``,
            ``"cuda"`` or ``"tensorrt"`` (ORT's TensorRT EP, FP16 when ``precision="fp16"``, engines cached
            in ``trt_cache_dir``). The native :class:`TensorRTRunner` is preferred where TensorRT is
            installed; the EP is for deployments that only ship onnxruntime-gpu.
        input_size: must equal the model's static ``(W, H)`` if given (a static graph cannot change size).
        intra_op_num_threads: ORT CPU threads; default ORT's choice (all physical cores).
        allow_spinning: let ORT's idle pool threads busy-wait for the next parallel section (ORT's own
            default). Off here: on a small CPU the spinning threads steal the cores from whatever runs right
            after inference (measured on the 2-core CI machine: numpy post-processing right after a frame took
            4.4 ms with spinning vs 2.4 ms without, and inference itself was not slower without it).
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        execution_provider: str = "auto",
        precision: str = "fp32",
        input_size: tuple[int, int] | None = None,
        intra_op_num_threads: int | None = None,
        trt_cache_dir: str | os.PathLike | None = None,
        allow_float: bool = False,
        allow_spinning: bool = False,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        model = load_onnx(path)
        spec = onnx_io_spec(model, source=str(path))
        if spec.input_size is None:
            raise ValueError(
                f"{path} has dynamic input dimensions ({spec.width}x{spec.height}); export a static shape with "
                "training/export.py --height H --width W"
            )
        if input_size is not None and tuple(input_size) != spec.input_size:
            raise ValueError(
                f"input_size {tuple(input_size)} differs from the static size {spec.input_size} of {path}; "
                "re-export at the wanted size"
            )
        providers = _providers(execution_provider, precision=precision, trt_cache_dir=trt_cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        except Exception as error:
            raise RuntimeError(f"ONNX Runtime could not load {path}: {type(error).__name__}: {error}") from error
        active = self.session.get_providers()
        super().__init__(
            stride=spec.stride,
            max_disparity=spec.max_disparity,
            input_size=spec.input_size,
            description=f"onnxruntime {active[0]} {path}",
            allow_float=allow_float,
        )
        self.path = path
        self.providers = active
        self.metadata = spec.metadata

    def infer(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        disparity, confidence = self.session.run(list(OUTPUT_NAMES), {"left": left, "right": right})
        return disparity, confidence


def _providers(execution_provider: str, *, precision: str, trt_cache_dir) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if execution_provider == "auto":
        chosen = ["cuda", "cpu"] if EXECUTION_PROVIDERS["cuda"] in available else ["cpu"]
    elif execution_provider in EXECUTION_PROVIDERS:
        if EXECUTION_PROVIDERS[execution_provider] not in available:
            raise RuntimeError(
                f"execution provider {EXECUTION_PROVIDERS[execution_provider]} is not in this onnxruntime build "
                f"(available: {available}); install onnxruntime-gpu for CUDA/TensorRT"
            )
        chosen = [execution_provider, "cpu"] if execution_provider != "cpu" else ["cpu"]
    else:
        raise ValueError(
            f"execution_provider must be 'auto' or one of {sorted(EXECUTION_PROVIDERS)}, instead got "
            f"{execution_provider!r}"
        )
    providers: list = []
    for name in chosen:
        if name == "tensorrt":
            options = {"trt_fp16_enable": precision == "fp16"}
            if trt_cache_dir is not None:
                options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
            providers.append((EXECUTION_PROVIDERS[name], options))
        else:
            providers.append(EXECUTION_PROVIDERS[name])
    logger.debug("onnxruntime providers %s (available %s)", providers, available)
    return providers
