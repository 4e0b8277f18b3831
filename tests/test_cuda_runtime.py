"""The cuda-python fallback (JetPack images without a CUDA torch) fails clearly where there is no GPU."""

import importlib.util

import pytest

from mono2stereo_core.inference import cuda_runtime, engine_cache

HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None


@pytest.mark.skipif(HAS_CUDA_PYTHON, reason="cuda-python is installed here; the missing-package path is not reachable")
def test_missing_cuda_python_names_the_package():
    with pytest.raises(RuntimeError, match="cuda-python"):
        cuda_runtime.device_properties(0)


def test_query_gpu_without_any_gpu_says_so(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the no-GPU message is not reachable")
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible.*ONNX Runtime"):
        engine_cache.query_gpu(0)
