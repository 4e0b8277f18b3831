"""Export: torch ``StereoNet`` -> static-shape ONNX -> TensorRT engine.

The ONNX contract every backend relies on (checked by :func:`onnx_io_spec`):
inputs ``left``, ``right``: float32 ``1 x 3 x H x W`` RGB in [0, 1];
outputs ``disparity``, ``confidence``: float32 ``1 x 1 x H x W`` (disparity in network pixels).
The model's metadata_props carry the checkpoint sidecar so an .onnx file is self-describing:
``architecture``, ``max_disparity``, ``stride``, ``input_width``, ``input_height``, ``opset``, ``sidecar`` and
``model_config`` (JSON), plus whatever the caller adds (training/export.py adds the checkpoint's sha256).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_NAMES = ("left", "right")
OUTPUT_NAMES = ("disparity", "confidence")
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class OnnxIOSpec:
    """What an exported stereo ONNX declares: static size (``None`` where dynamic) and metadata."""

    height: int | None
    width: int | None
    metadata: dict[str, str]

    @property
    def input_size(self) -> tuple[int, int] | None:
        if self.height is None or self.width is None:
            return None
        return self.width, self.height

    @property
    def stride(self) -> int:
        return int(self.metadata.get("stride", 1))

    @property
    def max_disparity(self) -> float:
        return float(self.metadata.get("max_disparity", "nan"))


def load_onnx(path: str | os.PathLike):
    """Reads an ONNX file; missing -> FileNotFoundError, unparsable -> RuntimeError naming the file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf DecodeError and friends
        raise RuntimeError(f"{path} is not a readable ONNX model ({type(error).__name__}: {error})") from error


def onnx_io_spec(model_or_path, *, source: str | None = None) -> OnnxIOSpec:
    """Checks the stereo I/O contract of an ONNX model (object or path) and returns its static size.

    Raises ValueError naming the file and the offending tensor for unexpected names, rank or channels.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        where, model = str(model_or_path), load_onnx(model_or_path)
    else:
        where, model = source or "ONNX model", model_or_path
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    input_names = tuple(i.name for i in inputs)
    output_names = tuple(o.name for o in graph.output)
    if set(input_names) != set(INPUT_NAMES):
        raise ValueError(f"{where}: expected inputs {list(INPUT_NAMES)}, instead got {list(input_names)}")
    if not set(OUTPUT_NAMES) <= set(output_names):
        raise ValueError(f"{where}: expected outputs {list(OUTPUT_NAMES)}, instead got {list(output_names)}")
    sizes = set()
    for value in inputs:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise ValueError(f"{where}: input {value.name!r} must be rank 4 (N x 3 x H x W), instead got {dims}")
        if dims[1] != 3:
            raise ValueError(f"{where}: input {value.name!r} must have 3 channels (RGB), instead got {dims}")
        sizes.add((dims[2], dims[3]))
    if len(sizes) != 1:
        raise ValueError(f"{where}: left and right inputs disagree in size: {sorted(sizes, key=str)}")
    height, width = sizes.pop()
    metadata = {p.key: p.value for p in model.metadata_props}
    return OnnxIOSpec(height=height, width=width, metadata=metadata)


def _trace_to_onnx(model, path: Path, example, opset: int) -> None:
    """The legacy TorchScript exporter on ``model``, ``example`` as the left view and its mirror as the right."""
    import torch

    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-side shape check in forward(); shapes are static by design here.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(
            model,
            (example, example.flip(-1)),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def export_onnx(
    model,
    path: str | os.PathLike,
    *,
    height: int,
    width: int,
    opset: int = DEFAULT_OPSET,
    sidecar: dict | None = None,
    extra_metadata: dict[str, str] | None = None,
    cost_volume_bands: int | None = None,
) -> Path:
    """Exports ``model`` at a static ``1 x 3 x height x width`` input, checks it and stamps metadata.

    Static shapes because TensorRT builds its fastest engine for one shape and the robot's cameras have one
    resolution; the runners resize or pad other sizes. The legacy TorchScript exporter (``dynamo=False``) is
    used: it exports grid_sample/Conv3d/einsum with ORT parity ~1e-6 at opsets 16-20 (ENVIRONMENT.md).

    ``cost_volume_bands``: row bands of the cost volume in the graph (``None``: the network's rule, about 10^4
    1/4-map pixels per band, which ONNX Runtime's CPU runs 0.89-0.95x the time of one piece; 1: one piece).
    The same values either way; recorded in the metadata as ``cost_volume_bands``.
    """
    import onnx
    import torch

    stride = int(getattr(model, "stride", 1))
    if height <= 0 or width <= 0 or height % stride or width % stride:
        raise ValueError(
            f"export size must be positive multiples of the model stride {stride}, instead got {width}x{height} "
            f"(e.g. {-(-width // stride) * stride}x{-(-height // stride) * stride})"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.rand(1, 3, height, width, device=device)
    tmp = path.with_name(path.name + ".partial")
    if cost_volume_bands is not None and int(cost_volume_bands) < 1:
        raise ValueError(
            f"cost_volume_bands must be >= 1 (None: the network's rule), instead got {cost_volume_bands}"
        )
    banded = hasattr(model, "cost_volume_bands")
    previous_bands = getattr(model, "cost_volume_bands", None)
    if banded:
        model.cost_volume_bands = cost_volume_bands
    try:
        _trace_to_onnx(model, tmp, example, opset)
    finally:
        if banded:
            model.cost_volume_bands = previous_bands
    onnx_model = onnx.load(str(tmp))
    config = getattr(model, "config", None)
    config = dict(config) if isinstance(config, dict) else {}
    sidecar = dict(sidecar or {})
    metadata = {
        "architecture": str(config.get("name", sidecar.get("architecture", type(model).__name__))),
        "max_disparity": str(float(getattr(model, "max_disparity", sidecar.get("max_disparity", 0)))),
        "stride": str(stride),
        "input_width": str(width),
        "input_height": str(height),
        "sidecar": json.dumps(sidecar, sort_keys=True, default=str),
        "model_config": json.dumps(config, sort_keys=True, default=str),
        "opset": str(opset),
        "cost_volume_bands": "auto" if cost_volume_bands is None else str(int(cost_volume_bands)),
        "producer": "mono2stereo_core.inference.export",
        **{str(k): str(v) for k, v in (extra_metadata or {}).items()},
    }
    del onnx_model.metadata_props[:]
    for key, value in metadata.items():
        prop = onnx_model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(tmp))
    os.replace(tmp, path)
    onnx_io_spec(path)
    return path


def onnx_parity(
    model, onnx_path: str | os.PathLike, left: np.ndarray, right: np.ndarray, *, tolerance: float = 0.01
) -> dict[str, float]:
    """torch vs ONNX Runtime (CPU) on network-sized ``1 x 3 x H x W`` float32 inputs.

    Returns the max abs disparity/confidence differences and ``disparity_fraction_over_tolerance``: the
    fraction of pixels whose disparity differs by more than ``tolerance`` px. A trained net has none; an
    untrained one may have a few where a near-tie in the hard arg-max flips between kernels.
    """
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_disp, ort_conf = session.run(list(OUTPUT_NAMES), {"left": left, "right": right})
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.inference_mode():
        disp, conf = model.eval()(torch.from_numpy(left).to(device), torch.from_numpy(right).to(device))
    disparity_diff = np.abs(disp.float().cpu().numpy() - ort_disp)
    return {
        "disparity_max_abs": float(disparity_diff.max()),
        "disparity_fraction_over_tolerance": float(np.mean(disparity_diff > tolerance)),
        "confidence_max_abs": float(np.abs(conf.float().cpu().numpy() - ort_conf).max()),
    }


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    fp16: bool = False,
    workspace_gb: float = 1.0,
    timing_cache_path: str | os.PathLike | None = None,
) -> Path:
    """Builds a serialized TensorRT 10 engine from ONNX (ONNX parser, FP16 flag, workspace limit, timing cache).

    No custom plugins: every op of the exported networks is a TensorRT built-in, so engines build on any
    TensorRT >= 10 without a plugin library. The timing cache persists kernel timings so a rebuild (new
    weights, same architecture) takes seconds instead of minutes.
    """
    try:
        import tensorrt as trt
    except ImportError as error:
        raise RuntimeError(
            "building a TensorRT engine needs the tensorrt Python package (TensorRT >= 10) and an NVIDIA GPU; "
            "install it from NVIDIA (pip install tensorrt --extra-index-url https://pypi.nvidia.com) "
            "or use the Docker image"
        ) from error
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    onnx_io_spec(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        # Lets TensorRT pick FP16 kernels per layer where faster (it keeps FP32 where FP16 has no kernel).
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = b""
    if timing_cache_path is not None and Path(timing_cache_path).is_file():
        cache_bytes = Path(timing_cache_path).read_bytes()
    timing_cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(timing_cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".partial")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)
    if timing_cache_path is not None:
        Path(timing_cache_path).parent.mkdir(parents=True, exist_ok=True)
        Path(timing_cache_path).write_bytes(bytes(config.get_timing_cache().serialize()))
    return engine_path
