"""CUDA and TensorRT paths. They need an NVIDIA GPU (and TensorRT >= 10 for the engine tests) and skip with
the reason otherwise; `bench/gpu_check.py` runs the same comparisons with timings on a GPU machine."""

from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
import skimage.data
import torch

from mono2stereo_core.inference import load_runner
from mono2stereo_core.inference.engine_cache import REUSE, build_or_reuse, decide, record_path_for
from mono2stereo_core.inference.export import export_onnx
from mono2stereo_core.inference.torch_runner import TorchRunner
from mono2stereo_core.models import build_model

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU visible to torch on this machine")
needs_trt = pytest.mark.skipif(
    not (HAS_CUDA and HAS_TRT),
    reason="needs an NVIDIA GPU and the tensorrt>=10 Python package (not installable on the CPU CI machine)",
)
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def motorcycle():
    left, right, _ = skimage.data.stereo_motorcycle()
    return left, right


@pytest.fixture(scope="module")
def rt_model():
    torch.manual_seed(0)
    return build_model("m2s_rt", max_disparity=192).eval()


@pytest.fixture(scope="module")
def rt_onnx(rt_model, tmp_path_factory):
    return export_onnx(rt_model, tmp_path_factory.mktemp("trt") / "rt_744x504.onnx", height=504, width=744)


@needs_cuda
def test_torch_cuda_fp32_matches_cpu(rt_model, motorcycle):
    cpu = TorchRunner(copy.deepcopy(rt_model), device="cpu")(*motorcycle)[0]
    gpu_disp = TorchRunner(copy.deepcopy(rt_model), device="cuda")(*motorcycle)[0]
    # TF32 convolutions are allowed by default on Ampere+; keep the bound at what fp32 deployment needs.
    assert np.median(np.abs(gpu_disp - cpu)) < 0.05


@needs_cuda
def test_torch_cuda_fp16_and_cuda_graphs(rt_model, motorcycle):
    reference = TorchRunner(copy.deepcopy(rt_model), device="cuda")(*motorcycle)[0]
    graphs = TorchRunner(copy.deepcopy(rt_model), device="cuda", cuda_graphs=True)
    np.testing.assert_allclose(graphs(*motorcycle)[0], reference, atol=1e-3)
    np.testing.assert_allclose(graphs(*motorcycle)[0], reference, atol=1e-3)  # replay, not re-capture
    half = TorchRunner(copy.deepcopy(rt_model), device="cuda", precision="fp16")(*motorcycle)[0]
    assert half.dtype == np.float32 and np.median(np.abs(half - reference)) < 0.5


@needs_cuda
def test_onnxruntime_cuda_provider_when_installed(rt_onnx, motorcycle):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)")
    runner = load_runner(rt_onnx, backend="onnxruntime")
    assert runner.providers[0] == "CUDAExecutionProvider"
    cpu = load_runner(rt_onnx, backend="onnxruntime")
    assert np.median(np.abs(runner(*motorcycle)[0] - cpu(*motorcycle)[0])) < 0.05


@needs_trt
def test_engine_cache_builds_once_and_tensorrt_matches_onnxruntime(rt_onnx, motorcycle, tmp_path):
    engine = build_or_reuse(rt_onnx, cache_dir=tmp_path, precision="fp32")
    assert engine.is_file() and record_path_for(engine).is_file()
    assert decide(tmp_path, rt_onnx, precision="fp32")[0] == REUSE
    trt_runner = load_runner(rt_onnx, backend="tensorrt", engine_cache_dir=tmp_path)
    assert trt_runner.backend == "tensorrt" and trt_runner.input_size == (744, 504)
    from mono2stereo_core.inference.onnx_runner import OnnxRunner

    ort_disp = OnnxRunner(rt_onnx, execution_provider="cpu")(*motorcycle)[0]
    trt_disp = trt_runner(*motorcycle)[0]
    assert trt_disp.shape == (500, 741)
    assert np.median(np.abs(trt_disp - ort_disp)) < 0.05
    # A prebuilt .engine loads directly too.
    assert load_runner(engine).backend == "tensorrt"


@needs_trt
def test_engine_from_another_tensorrt_version_gives_rebuild_command(rt_onnx, tmp_path):
    engine = build_or_reuse(rt_onnx, cache_dir=tmp_path, precision="fp32")
    record = json.loads(record_path_for(engine).read_text())
    record["tensorrt_version"] = "9.0.0"
    record_path_for(engine).write_text(json.dumps(record))
    with pytest.raises(RuntimeError, match=r"built for TensorRT 9.0.0.*rebuild it on this machine: python -m"):
        load_runner(engine)
