"""Minimal CUDA runtime access through NVIDIA's ``cuda-python`` bindings, for machines without a CUDA torch.

JetPack images carry TensorRT and the CUDA runtime but no CUDA build of PyTorch (NVIDIA publishes those
only on its own index), and pycuda needs a full CUDA toolkit to build. ``cuda-python`` installs from PyPI
on x86_64 and aarch64 and only needs the driver, so it is the fallback for device buffers, streams and the
GPU query when torch cannot provide them.

Every binding call returns ``(cudaError_t, *values)``; :func:`_check` turns a non-success code into a
RuntimeError naming the call.
"""

from __future__ import annotations

import numpy as np


def _runtime():
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart as runtime  # older cuda-python
        except ImportError as error:
            raise RuntimeError(
                "neither torch with CUDA nor cuda-python is available to drive the GPU "
                "(pip install 'cuda-python>=12,<13' on Jetson/JetPack 6)"
            ) from error
    return runtime


def _check(result, call: str):
    error, *values = result if isinstance(result, tuple) else (result,)
    runtime = _runtime()
    if error != runtime.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA {call} failed: {error}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_properties(index: int = 0) -> tuple[str, int, int]:
    """``(name, major, minor)`` of CUDA device ``index``; RuntimeError without a driver or device."""
    runtime = _runtime()
    count = _check(runtime.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count <= index:
        raise RuntimeError(f"CUDA device {index} requested but {count} device(s) are visible")
    props = _check(runtime.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name), int(props.major), int(props.minor)


class CudaStream:
    """An owned CUDA stream; ``handle`` is what TensorRT's ``execute_async_v3`` takes."""

    def __init__(self) -> None:
        self._runtime = _runtime()
        self._stream = _check(self._runtime.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def handle(self) -> int:
        return int(self._stream)

    def synchronize(self) -> None:
        _check(self._runtime.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def __del__(self) -> None:
        stream = getattr(self, "_stream", None)
        if stream is not None:
            self._runtime.cudaStreamDestroy(stream)


class DeviceBuffer:
    """A device allocation of a fixed shape and dtype with host<->device copies on a stream."""

    def __init__(self, shape: tuple[int, ...], dtype) -> None:
        self._runtime = _runtime()
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        self._ptr = _check(self._runtime.cudaMalloc(self.nbytes), "cudaMalloc")

    @property
    def ptr(self) -> int:
        return int(self._ptr)

    def upload(self, array: np.ndarray, stream: CudaStream) -> None:
        host = np.ascontiguousarray(array, dtype=self.dtype)
        if host.nbytes != self.nbytes:
            raise ValueError(f"upload of {host.shape} {host.dtype} into a {self.shape} {self.dtype} buffer")
        # The host array must outlive the asynchronous copy: keep a reference until the next synchronize.
        self._pending_host = host
        kind = self._runtime.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(
            self._runtime.cudaMemcpyAsync(self._ptr, host.ctypes.data, self.nbytes, kind, stream.handle),
            "cudaMemcpyAsync(host->device)",
        )

    def download(self, stream: CudaStream) -> np.ndarray:
        host = np.empty(self.shape, dtype=self.dtype)
        kind = self._runtime.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            self._runtime.cudaMemcpyAsync(host.ctypes.data, self._ptr, self.nbytes, kind, stream.handle),
            "cudaMemcpyAsync(device->host)",
        )
        stream.synchronize()
        self._pending_host = None
        return host

    def __del__(self) -> None:
        ptr = getattr(self, "_ptr", None)
        if ptr is not None:
            self._runtime.cudaFree(ptr)
