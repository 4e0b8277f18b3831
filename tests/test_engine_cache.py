"""Engine cache decisions, tested without a GPU by injecting the GPU facts and the TensorRT version."""

from __future__ import annotations

import importlib.util

import onnx
import pytest
from onnx import TensorProto, helper

from mono2stereo_core.inference import engine_cache
from mono2stereo_core.inference.engine_cache import (
    REBUILD,
    REUSE,
    EngineRecord,
    GpuInfo,
    cache_key,
    check_engine_compatible,
    decide,
    engine_path_for,
    file_sha256,
    write_record,
)

ORIN = GpuInfo(name="Orin", compute_capability="8.7")
TRT = "10.3.0"


def stereo_onnx(path, *, height=32, width=48, input_names=("left", "right"), rank=4, scale=1.0):
    """A minimal graph with the stereo I/O contract (disparity = scale * mean of the left channels)."""
    in_shape = [1, 3, height, width][:rank] if rank <= 4 else [1, 1, 3, height, width]
    out_shape = [1, 1, height, width]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, in_shape) for n in input_names]
    outputs = [
        helper.make_tensor_value_info("disparity", TensorProto.FLOAT, out_shape),
        helper.make_tensor_value_info("confidence", TensorProto.FLOAT, out_shape),
    ]
    scale_init = helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])
    nodes = [
        helper.make_node("ReduceMean", [input_names[0]], ["mean"], keepdims=1, axes=[1]),
        helper.make_node("Mul", ["mean", "scale"], ["disparity"]),
        helper.make_node("ReduceMean", [input_names[1]], ["confidence"], keepdims=1, axes=[1]),
    ]
    graph = helper.make_graph(nodes, "stereo_stub", inputs, outputs, initializer=[scale_init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def fake_build(cache_dir, onnx_path, *, precision, gpu=ORIN, trt=TRT):
    """What a successful build leaves behind: an engine file and its record."""
    action, path, key = decide(cache_dir, onnx_path, precision=precision, gpu_info=gpu, trt_version=trt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"serialized-engine")
    write_record(
        path,
        EngineRecord(
            key=key,
            onnx_sha256=file_sha256(onnx_path),
            onnx_path=str(onnx_path),
            tensorrt_version=trt,
            gpu_name=gpu.name,
            compute_capability=gpu.compute_capability,
            precision=precision,
            height=32,
            width=48,
        ),
    )
    return action, path


def test_first_run_rebuilds_then_reuses(tmp_path):
    onnx_path = stereo_onnx(tmp_path / "m.onnx")
    action, path = fake_build(tmp_path / "cache", onnx_path, precision="fp16")
    assert action == REBUILD
    again, same_path, _ = decide(tmp_path / "cache", onnx_path, precision="fp16", gpu_info=ORIN, trt_version=TRT)
    assert (again, same_path) == (REUSE, path)
    assert path.name.startswith("48x32-fp16-sm87-trt10.3.0-")


@pytest.mark.parametrize(
    "change",
    [
        dict(gpu=GpuInfo("NVIDIA GeForce RTX 4090", "8.9")),
        dict(gpu=GpuInfo("Orin (64GB)", "8.7")),  # same compute capability, different GPU model
        dict(trt="10.4.0"),
        dict(precision="fp32"),
    ],
    ids=["gpu", "gpu-name", "trt-version", "precision"],
)
def test_rebuilds_when_anything_the_engine_depends_on_changes(tmp_path, change):
    onnx_path = stereo_onnx(tmp_path / "m.onnx")
    fake_build(tmp_path / "cache", onnx_path, precision="fp16")
    action, path, _ = decide(
        tmp_path / "cache",
        onnx_path,
        precision=change.get("precision", "fp16"),
        gpu_info=change.get("gpu", ORIN),
        trt_version=change.get("trt", TRT),
    )
    assert action == REBUILD
    assert not path.exists()


def test_rebuilds_when_onnx_bytes_change(tmp_path):
    onnx_path = stereo_onnx(tmp_path / "m.onnx", scale=1.0)
    _, old = fake_build(tmp_path / "cache", onnx_path, precision="fp32")
    stereo_onnx(onnx_path, scale=2.0)  # new weights, same file name and shape
    action, path, _ = decide(tmp_path / "cache", onnx_path, precision="fp32", gpu_info=ORIN, trt_version=TRT)
    assert action == REBUILD and path != old


def test_rebuilds_for_another_shape(tmp_path):
    small = stereo_onnx(tmp_path / "small.onnx", height=32, width=48)
    large = stereo_onnx(tmp_path / "large.onnx", height=64, width=48)
    fake_build(tmp_path / "cache", small, precision="fp32")
    action, path, key = decide(tmp_path / "cache", large, precision="fp32", gpu_info=ORIN, trt_version=TRT)
    assert action == REBUILD and key.startswith("48x64-")


def test_truncated_engine_or_missing_record_is_rebuilt(tmp_path):
    onnx_path = stereo_onnx(tmp_path / "m.onnx")
    _, path = fake_build(tmp_path / "cache", onnx_path, precision="fp32")
    path.write_bytes(b"")  # a crash mid-write by an older tool
    assert decide(tmp_path / "cache", onnx_path, precision="fp32", gpu_info=ORIN, trt_version=TRT)[0] == REBUILD
    _, path = fake_build(tmp_path / "cache", onnx_path, precision="fp32")
    path.with_suffix(".json").unlink()
    assert decide(tmp_path / "cache", onnx_path, precision="fp32", gpu_info=ORIN, trt_version=TRT)[0] == REBUILD


def test_cache_key_covers_every_field():
    base = dict(
        onnx_sha256="a" * 64, trt_version=TRT, gpu_name="Orin", compute_capability="8.7", precision="fp16", shape=(480, 640)
    )
    keys = {cache_key(**base)}
    for field, value in [
        ("onnx_sha256", "b" * 64),
        ("trt_version", "10.0.1"),
        ("gpu_name", "Thor"),
        ("compute_capability", "9.0"),
        ("precision", "fp32"),
        ("shape", (480, 648)),
    ]:
        keys.add(cache_key(**{**base, field: value}))
    assert len(keys) == 7
    assert cache_key(**base) == cache_key(**base)
    assert engine_path_for("/c", cache_key(**base)).parent.as_posix() == "/c"
    with pytest.raises(ValueError, match="int8"):
        cache_key(**{**base, "precision": "int8"})


def test_onnx_breaking_the_io_contract_is_refused(tmp_path):
    wrong_names = stereo_onnx(tmp_path / "names.onnx", input_names=("image_l", "image_r"))
    with pytest.raises(ValueError, match=r"expected inputs \['left', 'right'\], instead got \['image_l', 'image_r'\]"):
        decide(tmp_path, wrong_names, precision="fp32", gpu_info=ORIN, trt_version=TRT)
    wrong_rank = stereo_onnx(tmp_path / "rank.onnx", rank=3)
    with pytest.raises(ValueError, match="must be rank 4"):
        decide(tmp_path, wrong_rank, precision="fp32", gpu_info=ORIN, trt_version=TRT)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(RuntimeError, match="garbage.onnx is not a readable ONNX model"):
        decide(tmp_path, garbage, precision="fp32", gpu_info=ORIN, trt_version=TRT)


def test_cli_dry_run_prints_decision_and_path(tmp_path, capsys):
    onnx_path = stereo_onnx(tmp_path / "m.onnx")
    args = ["--onnx", str(onnx_path), "--cache-dir", str(tmp_path / "cache"), "--precision", "fp16", "--dry-run",
            "--gpu-name", "Orin", "--compute-capability", "8.7", "--trt-version", TRT]
    assert engine_cache.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rebuild 48x32-fp16-sm87-")
    assert lines[-1].endswith(".engine") and not (tmp_path / "cache").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed: the no-GPU failure path is moot"
)
def test_cli_without_gpu_or_tensorrt_fails_clearly(tmp_path, capsys):
    onnx_path = stereo_onnx(tmp_path / "m.onnx")
    assert engine_cache.main(["--onnx", str(onnx_path), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "engine_cache: error:" in err and ("CUDA GPU" in err or "tensorrt" in err)


def test_cli_reports_bad_onnx_with_exit_1(tmp_path, capsys):
    bad = stereo_onnx(tmp_path / "bad.onnx", input_names=("a", "b"))
    code = engine_cache.main(["--onnx", str(bad), "--cache-dir", str(tmp_path), "--dry-run",
                              "--gpu-name", "Orin", "--compute-capability", "8.7", "--trt-version", TRT])
    assert code == 1
    assert "bad.onnx: expected inputs" in capsys.readouterr().err


def test_engine_for_another_gpu_or_tensorrt_names_the_rebuild_command(tmp_path):
    onnx_path = stereo_onnx(tmp_path / "m.onnx")
    _, engine = fake_build(tmp_path / "cache", onnx_path, precision="fp16")
    check_engine_compatible(engine, gpu_info=ORIN, trt_version=TRT)  # its own machine: fine
    with pytest.raises(RuntimeError, match=r"built for TensorRT 10.3.0 \(here 10.7.0\).*engine_cache --onnx .*m.onnx"):
        check_engine_compatible(engine, gpu_info=ORIN, trt_version="10.7.0")
    with pytest.raises(RuntimeError, match=r"GPU Orin sm 8.7 \(here NVIDIA RTX A2000 sm 8.6\).*--precision fp16"):
        check_engine_compatible(engine, gpu_info=GpuInfo("NVIDIA RTX A2000", "8.6"), trt_version=TRT)
