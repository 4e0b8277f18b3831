"""TensorRT 10 backend: deserialize an engine, bind torch CUDA buffers, ``execute_async_v3`` on a stream.

Device memory comes from torch CUDA tensors (``set_tensor_address(name, tensor.data_ptr())``) rather than
pycuda: torch is already a dependency, its caching allocator and streams are what the rest of the stack
uses, and pycuda needs a full CUDA toolkit to build (it does not install on Jetson images without one).
Where torch has no CUDA (JetPack images: NVIDIA ships CUDA torch wheels only on its own index) the buffers and
the stream come from NVIDIA's ``cuda-python`` instead (:mod:`mono2stereo_core.inference.cuda_runtime`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from mono2stereo_core.inference.engine_cache import (
    check_engine_compatible,
    query_gpu,
    read_record,
    rebuild_command,
)
from mono2stereo_core.inference.export import INPUT_NAMES, OUTPUT_NAMES
from mono2stereo_core.inference.runner import StereoRunner


class TensorRTRunner(StereoRunner):
    """Runs a serialized TensorRT engine built from the stereo ONNX (static ``1 x 3 x H x W`` inputs).

    An engine is only valid for the TensorRT version and GPU it was built for; when the record written at
    build time (``X.json``) disagrees with this machine, or deserialization fails, a RuntimeError gives the
    command that rebuilds it.
    """

    backend = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device_index: int = 0,
        input_size: tuple[int, int] | None = None,
        allow_float: bool = False,
    ) -> None:
        try:
            import tensorrt as trt
        except ImportError as error:
            raise RuntimeError(f"running {path} needs the tensorrt (>= 10) Python package: {error}") from error
        try:
            import torch

            if not torch.cuda.is_available():
                torch = None
        except ImportError:
            torch = None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"TensorRT engine {path} does not exist")
        gpu = query_gpu(device_index)
        record = read_record(path)
        precision = record.precision if record is not None else "fp32"
        onnx_path = record.onnx_path if record is not None else None
        check_engine_compatible(path, gpu_info=gpu, trt_version=trt.__version__)
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        try:
            if torch is not None:
                self.device = torch.device("cuda", device_index)
                with torch.cuda.device(self.device):
                    self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            else:
                self.device = f"cuda:{device_index}"
                self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        except Exception:  # some TensorRT builds raise instead of returning None on a foreign engine
            self.engine = None
        if self.engine is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} could not deserialize {path} on {gpu.name} (built by another "
                f"TensorRT version or for another GPU, or corrupt); rebuild it: "
                f"{rebuild_command(onnx_path, precision=precision)}"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if set(inputs) != set(INPUT_NAMES) or not set(OUTPUT_NAMES) <= set(outputs):
            raise ValueError(
                f"engine {path} has inputs {inputs} and outputs {outputs}; expected inputs {list(INPUT_NAMES)} "
                f"and outputs {list(OUTPUT_NAMES)}"
            )
        shape = tuple(self.engine.get_tensor_shape("left"))
        if len(shape) != 4 or shape[1] != 3 or min(shape) <= 0:
            raise ValueError(f"engine {path} input 'left' must be a static 1 x 3 x H x W, instead got {shape}")
        engine_size = (int(shape[3]), int(shape[2]))
        if input_size is not None and tuple(input_size) != engine_size:
            raise ValueError(f"input_size {tuple(input_size)} differs from the engine's static size {engine_size}")
        # Allocate every I/O tensor once as a torch CUDA tensor and bind its address: the engine then runs
        # with no per-frame allocation, and outputs stay valid until the next call.
        self._buffers = {}
        if torch is not None:
            for name in names:
                dims = tuple(self.context.get_tensor_shape(name))
                dtype = _torch_dtype(self.engine.get_tensor_dtype(name), trt, torch)
                self._buffers[name] = torch.empty(dims, dtype=dtype, device=self.device)
                self.context.set_tensor_address(name, self._buffers[name].data_ptr())
            self._stream = torch.cuda.Stream(self.device)
        else:
            from mono2stereo_core.inference.cuda_runtime import CudaStream, DeviceBuffer

            for name in names:
                dims = tuple(self.context.get_tensor_shape(name))
                dtype = _numpy_dtype(self.engine.get_tensor_dtype(name), trt)
                self._buffers[name] = DeviceBuffer(dims, dtype)
                self.context.set_tensor_address(name, self._buffers[name].ptr)
            self._stream = CudaStream()
        # One execution context and one set of bound buffers: concurrent callers (a multi-threaded ROS
        # executor) must take turns or they would overwrite each other's inputs mid-inference.
        self._lock = threading.Lock()
        super().__init__(
            # Without the build record the stride is unknown: 1 makes any size other than the engine's resize.
            stride=record.stride if record is not None else 1,
            max_disparity=record.max_disparity if record is not None else float("nan"),
            input_size=engine_size,
            description=f"tensorrt {trt.__version__} {gpu.name} {precision} {path}",
            allow_float=allow_float,
        )
        self.path = path

    def infer(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        if torch is None:
            return self._infer_cuda_python(left, right)
        with self._lock, torch.cuda.stream(self._stream):
            for name, array in (("left", left), ("right", right)):
                buffer = self._buffers[name]
                buffer.copy_(torch.from_numpy(array).to(self.device, non_blocking=True).to(buffer.dtype))
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path}")
            # .cpu() copies on this stream and waits for it, so the results are complete when returned.
            disparity = self._buffers["disparity"].float().cpu()
            confidence = self._buffers["confidence"].float().cpu()
        return disparity.numpy(), confidence.numpy()

    def _infer_cuda_python(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            for name, array in (("left", left), ("right", right)):
                self._buffers[name].upload(array, self._stream)
            if not self.context.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.path}")
            disparity = self._buffers["disparity"].download(self._stream).astype(np.float32)
            confidence = self._buffers["confidence"].download(self._stream).astype(np.float32)
        return disparity, confidence


def _numpy_dtype(trt_dtype, trt):
    table = {
        trt.DataType.FLOAT: np.float32,
        trt.DataType.HALF: np.float16,
        trt.DataType.INT32: np.int32,
        trt.DataType.INT64: np.int64,
        trt.DataType.BOOL: np.bool_,
    }
    if trt_dtype not in table:
        raise ValueError(f"unsupported TensorRT tensor dtype {trt_dtype}")
    return table[trt_dtype]


def _torch_dtype(trt_dtype, trt, torch):
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.BOOL: torch.bool,
    }
    if trt_dtype not in table:
        raise ValueError(f"unsupported TensorRT tensor dtype {trt_dtype}")
    return table[trt_dtype]
