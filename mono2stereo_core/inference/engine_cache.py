"""TensorRT engine cache: build an engine from ONNX once per (model, TensorRT, GPU, precision, shape).

A serialized engine is only valid for the TensorRT version and GPU model it was built with, so the cache key
covers exactly what makes an engine invalid: sha256 of the ONNX bytes, TensorRT version, GPU name, compute
capability, precision and input shape. Engines are written atomically next to a JSON record of those fields,
so a crash mid-build never leaves a truncated engine that later fails to deserialize.

The decision logic (:func:`cache_key`, :func:`engine_path_for`, :func:`decide`) is pure: GPU facts and the
TensorRT version can be injected, which is how it is tested on machines without a GPU.

CLI (called by the Docker entrypoint)::

    python -m mono2stereo_core.inference.engine_cache --onnx model.onnx --cache-dir /cache [--precision fp16]
        [--dry-run]

prints the decision and, on its last stdout line, the engine path; exits 2 with a message when no GPU or
TensorRT is present, 1 when the ONNX is unusable.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from mono2stereo_core.inference.export import build_engine, onnx_io_spec

logger = logging.getLogger("mono2stereo_core.inference")

PRECISIONS = ("fp32", "fp16")
REUSE = "reuse"
REBUILD = "rebuild"
TIMING_CACHE_NAME = "timing.cache"


@dataclass(frozen=True)
class GpuInfo:
    """The GPU facts an engine depends on; ``compute_capability`` as ``"major.minor"`` (e.g. ``"8.7"``)."""

    name: str
    compute_capability: str


@dataclass(frozen=True)
class EngineRecord:
    """The JSON written beside each engine (``X.engine`` -> ``X.json``)."""

    key: str
    onnx_sha256: str
    onnx_path: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    height: int
    width: int
    stride: int = 1
    max_disparity: float = float("nan")
    created: str = ""


def query_gpu(device_index: int = 0) -> GpuInfo:
    """Name and compute capability of a CUDA device; RuntimeError when none is visible.

    Asks torch when it has CUDA, else NVIDIA's cuda-python (JetPack images have no CUDA torch).
    """
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device_index)
        return GpuInfo(name=torch.cuda.get_device_name(device_index), compute_capability=f"{major}.{minor}")
    from mono2stereo_core.inference.cuda_runtime import device_properties

    try:
        name, major, minor = device_properties(device_index)
    except RuntimeError as error:
        raise RuntimeError(
            "no CUDA GPU is visible (torch has no CUDA, and cuda-python says: "
            f"{error}): TensorRT engines can only be built and run on an NVIDIA GPU; on a CPU machine use the "
            "ONNX Runtime backend with the .onnx file"
        ) from error
    return GpuInfo(name=name, compute_capability=f"{major}.{minor}")


def tensorrt_version() -> str:
    try:
        import tensorrt as trt
    except ImportError as error:
        raise RuntimeError(
            "the tensorrt Python package (TensorRT >= 10) is not installed; engines cannot be built here "
            "(use the Docker image, or pip install tensorrt --extra-index-url https://pypi.nvidia.com)"
        ) from error
    return str(trt.__version__)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(
    *,
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    shape: tuple[int, int],
) -> str:
    """A file-name-safe key: readable shape/precision/GPU prefix + digest of every field.

    ``shape`` is ``(height, width)``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, instead got {precision!r}")
    height, width = (int(v) for v in shape)
    fields = {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": precision,
        "shape": [height, width],
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]
    sm = compute_capability.replace(".", "")
    return f"{width}x{height}-{precision}-sm{sm}-trt{trt_version}-{digest}"


def engine_path_for(cache_dir: str | os.PathLike, key: str) -> Path:
    return Path(cache_dir) / f"{key}.engine"


def record_path_for(engine_path: str | os.PathLike) -> Path:
    return Path(engine_path).with_suffix(".json")


def read_record(engine_path: str | os.PathLike) -> EngineRecord | None:
    """The record beside an engine, or None when absent or unreadable."""
    path = record_path_for(engine_path)
    try:
        return EngineRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def decide(
    cache_dir: str | os.PathLike,
    onnx_path: str | os.PathLike,
    *,
    precision: str,
    gpu_info: GpuInfo | None = None,
    trt_version: str | None = None,
) -> tuple[str, Path, str]:
    """``("reuse" | "rebuild", engine_path, key)`` for an ONNX file on this (or the injected) GPU/TensorRT.

    Reuse needs a non-empty engine whose record carries the same key; anything else is rebuilt.
    Raises ValueError when the ONNX breaks the stereo I/O contract or has dynamic dimensions.
    """
    spec = onnx_io_spec(onnx_path)
    if spec.input_size is None:
        raise ValueError(f"{onnx_path} has dynamic input dimensions; engines are cached per static shape")
    gpu_info = gpu_info if gpu_info is not None else query_gpu()
    trt_version = trt_version if trt_version is not None else tensorrt_version()
    key = cache_key(
        onnx_sha256=file_sha256(onnx_path),
        trt_version=trt_version,
        gpu_name=gpu_info.name,
        compute_capability=gpu_info.compute_capability,
        precision=precision,
        shape=(spec.height, spec.width),
    )
    path = engine_path_for(cache_dir, key)
    record = read_record(path)
    if path.is_file() and path.stat().st_size > 0 and record is not None and record.key == key:
        return REUSE, path, key
    return REBUILD, path, key


def build_engine_file(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str,
    workspace_gb: float = 1.0,
    timing_cache_path: str | os.PathLike | None = None,
    key: str | None = None,
) -> Path:
    """Builds an engine on the local GPU and writes its :class:`EngineRecord` beside it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, instead got {precision!r}")
    gpu = query_gpu()
    version = tensorrt_version()
    spec = onnx_io_spec(onnx_path)
    sha = file_sha256(onnx_path)
    if key is None:
        key = cache_key(
            onnx_sha256=sha,
            trt_version=version,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            precision=precision,
            shape=(spec.height, spec.width),
        )
    engine_path = build_engine(
        onnx_path,
        engine_path,
        fp16=precision == "fp16",
        workspace_gb=workspace_gb,
        timing_cache_path=timing_cache_path,
    )
    record = EngineRecord(
        key=key,
        onnx_sha256=sha,
        onnx_path=str(Path(onnx_path).resolve()),
        tensorrt_version=version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        height=int(spec.height),
        width=int(spec.width),
        stride=spec.stride,
        max_disparity=spec.max_disparity,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    write_record(engine_path, record)
    return engine_path


def write_record(engine_path: str | os.PathLike, record: EngineRecord) -> Path:
    """Writes the record beside an engine (atomically, so a reader never sees half a record)."""
    path = record_path_for(engine_path)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def build_or_reuse(
    onnx_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike,
    precision: str = "fp32",
    workspace_gb: float = 1.0,
) -> Path:
    """The cached engine for ``onnx_path`` on this GPU, building it first when needed."""
    action, path, key = decide(cache_dir, onnx_path, precision=precision)
    if action == REUSE:
        logger.info("reusing TensorRT engine %s", path)
        return path
    logger.info("building TensorRT engine %s from %s (first run on this GPU/TensorRT; takes minutes)", path, onnx_path)
    return build_engine_file(
        onnx_path,
        path,
        precision=precision,
        workspace_gb=workspace_gb,
        timing_cache_path=Path(cache_dir) / TIMING_CACHE_NAME,
        key=key,
    )


def rebuild_command(onnx_path: str | os.PathLike | None, *, precision: str = "fp32") -> str:
    """The shell command that rebuilds an engine for the local GPU/TensorRT (for error messages)."""
    onnx = str(onnx_path) if onnx_path else "MODEL.onnx"
    return (
        f"python -m mono2stereo_core.inference.engine_cache --onnx {onnx} --cache-dir ~/.cache/mono2stereo/engines "
        f"--precision {precision}   (or: python training/export.py --checkpoint C --height H --width W "
        f"--engine out.engine{' --fp16' if precision == 'fp16' else ''})"
    )


def check_engine_compatible(engine_path: str | os.PathLike, *, gpu_info: GpuInfo, trt_version: str) -> None:
    """Raises RuntimeError with the rebuild command when the engine's record names another TensorRT or GPU.

    Engines without a record (built by other tools) pass; TensorRT itself then refuses foreign engines at
    deserialization, which the runner reports the same way.
    """
    record = read_record(engine_path)
    if record is None:
        return
    mismatch = []
    if record.tensorrt_version != trt_version:
        mismatch.append(f"TensorRT {record.tensorrt_version} (here {trt_version})")
    if (record.gpu_name, record.compute_capability) != (gpu_info.name, gpu_info.compute_capability):
        mismatch.append(
            f"GPU {record.gpu_name} sm {record.compute_capability} "
            f"(here {gpu_info.name} sm {gpu_info.compute_capability})"
        )
    if mismatch:
        raise RuntimeError(
            f"engine {engine_path} was built for {' and '.join(mismatch)}; rebuild it on this machine: "
            f"{rebuild_command(record.onnx_path, precision=record.precision)}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mono2stereo_core.inference.engine_cache",
        description="Build or reuse a cached TensorRT engine for an ONNX stereo model on this GPU.",
    )
    parser.add_argument("--onnx", required=True, type=Path, help="static-shape ONNX from training/export.py")
    parser.add_argument("--cache-dir", required=True, type=Path, help="engine cache directory")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--workspace-gb", type=float, default=1.0, help="TensorRT builder workspace limit")
    parser.add_argument("--dry-run", action="store_true", help="print the decision, build nothing")
    parser.add_argument("--gpu-name", help="(dry run) assume this GPU instead of querying CUDA")
    parser.add_argument("--compute-capability", help="(dry run) assume this compute capability, e.g. 8.7")
    parser.add_argument("--trt-version", help="(dry run) assume this TensorRT version")
    args = parser.parse_args(argv)
    if not args.dry_run and (args.gpu_name or args.compute_capability or args.trt_version):
        parser.error("--gpu-name/--compute-capability/--trt-version only make sense with --dry-run")
    if bool(args.gpu_name) != bool(args.compute_capability):
        parser.error("--gpu-name and --compute-capability go together")
    gpu = GpuInfo(args.gpu_name, args.compute_capability) if args.gpu_name else None
    try:
        action, path, key = decide(
            args.cache_dir, args.onnx, precision=args.precision, gpu_info=gpu, trt_version=args.trt_version
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"engine_cache: error: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        print(f"engine_cache: error: {error}", file=sys.stderr)
        return 2
    print(f"{action} {key}")
    if action == REBUILD and not args.dry_run:
        try:
            build_engine_file(
                args.onnx,
                path,
                precision=args.precision,
                workspace_gb=args.workspace_gb,
                timing_cache_path=args.cache_dir / TIMING_CACHE_NAME,
                key=key,
            )
        except RuntimeError as error:
            print(f"engine_cache: error: {error}", file=sys.stderr)
            return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
