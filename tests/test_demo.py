"""``scripts/demo.py`` (``make demo``) as a user runs it: a subprocess that starts the real stereo_node, plays the
sample bags and writes ``demo_out/``; Ctrl-C stops the node too; a missing default model says how to get it.

A randomly initialised ``m2s_tiny`` stands in for the shipped weights, so the network's own accuracy is not
judged here; the SGBM baseline on the motorcycle is (it must reproduce the documented 20 % bad-2)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from ros_helpers import REPO, ros_env, tiny_checkpoint

from mono2stereo_core.geometry import MOTORCYCLE_CAMERA

pytestmark = pytest.mark.ros

DOMAIN_ID = 64
WIDTH, HEIGHT, FRAMES = 256, 192, 4
DEMO = REPO / "scripts" / "demo.py"


def demo_command(out: Path, model: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(DEMO), "--out", str(out), "--model", str(model), "--frames", str(FRAMES),
        "--size", f"{WIDTH}x{HEIGHT}", "--rate", "0.5", "--domain-id", str(DOMAIN_ID), "--timeout", "60", *extra,
    ]


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Binary little-endian PLY with float x, y, z and uchar red, green, blue -> (N x 3 float32, N x 3 uint8)."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[0] == "ply" and header[1] == "format binary_little_endian 1.0", header[:2]
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    props = [line.split()[1:] for line in header if line.startswith("property")]
    kinds = {"float": "<f4", "uchar": "u1"}
    dtype = np.dtype([(name, kinds[kind]) for kind, name in props])
    assert [p[1] for p in props] == ["x", "y", "z", "red", "green", "blue"], props
    assert len(data) - end == count * dtype.itemsize, "PLY body size does not match its vertex count"
    body = np.frombuffer(data, dtype=dtype, offset=end, count=count)
    return (
        np.stack([body["x"], body["y"], body["z"]], axis=1),
        np.stack([body["red"], body["green"], body["blue"]], axis=1),
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def first_run(model, tmp_path_factory):
    """One complete demo run (it generates the sample on the way); the tests below inspect it."""
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    start = time.monotonic()
    result = subprocess.run(
        demo_command(out, model), cwd=str(REPO), env=ros_env(DOMAIN_ID), capture_output=True, text=True, timeout=180
    )
    return out, result, time.monotonic() - start


def test_demo_writes_images_clouds_and_report(model, first_run):
    out, result, elapsed = first_run
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert "latency" in result.stdout and "Hz" in result.stdout, result.stdout
    assert "first run: generating the sample" in result.stdout
    assert (out / "sample" / "procedural" / "metadata.yaml").is_file()
    assert (out / "sample" / "motorcycle" / "metadata.yaml").is_file()

    report = json.loads((out / "report.json").read_text())
    seq = report["sequence"]
    assert seq["frames_published"] == FRAMES
    assert 1 <= seq["frames_processed"] <= FRAMES
    assert seq["latency"]["count"] == seq["frames_processed"] and seq["latency"]["median_ms"] > 0
    assert report["backend"] == "torch" and report["model"] == str(model.resolve()) and report["model_name"] == "m2s_tiny"
    assert report["node_diagnostics"]["errors"] == "0", report["node_diagnostics"]

    moto = report["motorcycle"]
    assert moto["frame_id"] == "left_camera_optical_frame"
    assert moto["f"] == pytest.approx(MOTORCYCLE_CAMERA.fx) and moto["t"] == pytest.approx(MOTORCYCLE_CAMERA.baseline)
    for method in ("network", "sgbm"):
        for region in ("all", "noc", "both"):
            metrics = moto[method][region]
            assert {"epe", "bad1", "bad2", "bad3", "d1_all", "density", "n_pixels"} <= metrics.keys()
            assert 0 <= metrics["bad2"] <= 100 and 0 < metrics["density"] <= 100
    # The classical baseline on real data with ground truth: the numbers docs/evaluation.md quotes.
    assert moto["sgbm"]["all"]["bad2"] == pytest.approx(20.0, abs=0.5)
    assert moto["sgbm"]["all"]["density"] == pytest.approx(85.2, abs=0.5)
    assert moto["network"]["all"]["n_pixels"] == moto["sgbm"]["all"]["n_pixels"] > 300_000

    # Frame images: left | disparity | depth at the input resolution (contact sheet, 2 px gaps).
    frames = sorted((out / "frames").glob("procedural_*.png"))
    assert len(frames) == seq["frames_processed"]
    for path in frames:
        image = cv2.imread(str(path))
        assert image.shape == (HEIGHT, 3 * WIDTH + 4, 3), (path, image.shape)
        assert image[:, :WIDTH].std() > 10  # the rendered scene, not a blank tile
    moto_image = cv2.imread(str(out / "frames" / "motorcycle.png"))
    assert moto_image.shape == (500, 3 * 741 + 4, 3)
    summary = cv2.imread(str(out / "summary.png"))
    assert summary.shape[1] == 5 * 320 + 4 * 2 and summary.shape[0] > 400

    # Point clouds from points2: finite, in front of the camera within the node's depth limits, coloured.
    points, colors = read_ply(out / "motorcycle.ply")
    assert report["files"]["point_clouds"]["motorcycle.ply"] == len(points) > 0.5 * 741 * 500
    assert np.isfinite(points).all()
    assert (points[:, 2] >= 0.1).all() and (points[:, 2] <= 50.0).all()
    # Every depth is f*B/(d + doffs) for a disparity d in the network's range [0, 64] px.
    fb = MOTORCYCLE_CAMERA.fx * MOTORCYCLE_CAMERA.baseline
    assert points[:, 2].max() <= fb / MOTORCYCLE_CAMERA.doffs + 1e-3
    assert colors.std() > 10
    proc_points, _ = read_ply(out / "procedural.ply")
    assert 0 < len(proc_points) <= WIDTH * HEIGHT and np.isfinite(proc_points).all()
    assert elapsed < 90, f"demo took {elapsed:.0f} s"


def test_second_run_reuses_the_sample_and_ctrl_c_stops_the_node(model, first_run, tmp_path):
    sample_dir = first_run[0] / "sample"
    assert (sample_dir / "sample.json").is_file()
    # A slow playback keeps the demo busy long enough to be interrupted mid-run.
    proc = subprocess.Popen(
        demo_command(tmp_path / "demo_out", model, "--rate", "0.05", "--sample-dir", str(sample_dir)), cwd=str(REPO), env=ros_env(DOMAIN_ID),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    node_pid = None
    lines = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and node_pid is None:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "is up after" in line:
                node_pid = int(line.split("(pid ")[1].split(")")[0])
        assert node_pid is not None, "".join(lines)
        assert any("using the cached sample" in line for line in lines), "".join(lines)
        assert Path(f"/proc/{node_pid}").exists()
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    # The node is gone (not a zombie either: the demo reaped it).
    assert not Path(f"/proc/{node_pid}").exists(), f"stereo_node {node_pid} still running after the demo exited"


def test_missing_default_weights_names_the_command_to_make_them(tmp_path, monkeypatch, capsys):
    import importlib.util

    import mono2stereo_core.inference.runner as runner

    monkeypatch.setattr(runner, "default_weights_candidates", lambda: [tmp_path / "nowhere" / "m2s_rt.safetensors"])
    spec = importlib.util.spec_from_file_location("demo_under_test", DEMO)
    demo = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "demo_under_test", demo)  # dataclasses resolve annotations through it
    spec.loader.exec_module(demo)
    assert demo.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "python training/pretrain.py --config config/train/pretrain_rt.yaml" in err
    assert "m2s_rt.safetensors" in err and "--model" in err
    assert not (tmp_path / "out").exists()  # nothing generated or started before the model is known
