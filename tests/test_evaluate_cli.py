"""Tests for training/evaluate.py: report.json contents, PNGs, options and error handling."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mono2stereo_core.evaluation import METRIC_KEYS

SCRIPT = Path(__file__).resolve().parents[1] / "training" / "evaluate.py"


@pytest.fixture(scope="module")
def evaluate():
    spec = importlib.util.spec_from_file_location("evaluate_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_section(section):
    for key in METRIC_KEYS:
        assert isinstance(section[key], float), key
    assert 0 <= section["bad3"] <= section["bad2"] <= section["bad1"] <= 100


def test_sgbm_on_motorcycle_writes_report_and_pngs(evaluate, tmp_path, capsys):
    assert (
        evaluate.main(["--method", "sgbm", "--data", "motorcycle", "--out", str(tmp_path), "--no-progress"])
        == 0
    )
    report = json.loads((tmp_path / "report.json").read_text())
    _check_section(report)
    _check_section(report["noc"])
    assert report["bad2"] == pytest.approx(20.0, abs=0.3)
    assert report["density"] == pytest.approx(85.2, abs=0.5)
    assert report["noc"]["bad2"] < report["bad2"]
    assert report["method"] == "sgbm" and report["num_scenes"] == 1 and "both" not in report
    assert report["timing"]["predict_seconds_per_scene"] > 0
    scene = report["scenes"][0]
    assert scene["name"] == "motorcycle" and scene["bad2"] == report["bad2"]
    for png in ("motorcycle_side_by_side.png", "motorcycle_disparity.png"):
        image = cv2.imread(str(tmp_path / png))
        assert image is not None and image.std() > 10, png
    assert cv2.imread(str(tmp_path / "motorcycle_disparity.png")).shape == (500, 741, 3)
    assert "sgbm all" in capsys.readouterr().out


def test_both_real_pairs_score_per_scene_and_pooled(evaluate, tmp_path, capsys):
    """--data real = the two bundled real pairs: per-scene entries and a per-scene table beside the pool."""
    assert evaluate.main(["--method", "sgbm", "--data", "real", "--out", str(tmp_path), "--no-progress"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_scenes"] == 2 and [s["name"] for s in report["scenes"]] == ["motorcycle", "aloe"]
    moto, aloe = report["scenes"]
    assert moto["bad2"] == pytest.approx(20.0, abs=0.3) and aloe["bad2"] == pytest.approx(32.0, abs=0.5)
    pixels = [s["n_pixels"] for s in report["scenes"]]
    pooled = (moto["bad2"] * pixels[0] + aloe["bad2"] * pixels[1]) / sum(pixels)
    assert report["bad2"] == pytest.approx(pooled, abs=0.01)
    assert (tmp_path / "aloe_side_by_side.png").is_file()
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("scene"))) + 1 :]
    assert table[0].startswith("motorcycle") and f"{moto['bad2']:.2f}" in table[0]
    assert table[1].startswith("aloe") and f"{aloe['noc']['bad2']:.2f}" in table[1]


class _FakeRunner:
    """Stands in for a network: ground truth plus noise, with holes where GT is unknown filled at 30 px."""

    description = "fake runner (test)"

    def __init__(self, gt):
        self.gt = gt

    def __call__(self, left, right):
        pred = np.where(np.isfinite(self.gt), self.gt + 0.3, 30.0).astype(np.float32)
        return pred, np.ones_like(pred)


def test_ours_with_compare_reports_noc_and_both(evaluate, tmp_path, monkeypatch):
    import mono2stereo_core.inference as inference
    from mono2stereo_core.datasets_gt import load_motorcycle

    gt = load_motorcycle().disparity
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"placeholder")
    calls = {}

    def fake_load_runner(model_path=None, *, backend="auto", lr_check=False, input_scale=1.0, occlusion_fill=True):
        calls["args"] = (model_path, backend)
        calls["options"] = (lr_check, input_scale, occlusion_fill)
        return _FakeRunner(gt)

    monkeypatch.setattr(inference, "load_runner", fake_load_runner)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--data", "motorcycle", "--out", str(out), "--backend", "torch"]
    assert evaluate.main(argv + ["--no-progress"]) == 0
    assert calls["args"] == (str(checkpoint), "torch") and calls["options"] == (False, 1.0, True)
    report = json.loads((out / "report.json").read_text())
    for section in (
        report,
        report["noc"],
        report["both"],
        report["compare"]["all"],
        report["compare"]["both"],
    ):
        _check_section(section)
    assert (
        report["bad2"] == 0.0 and report["density"] == 100.0 and report["epe"] == pytest.approx(0.3, abs=1e-4)
    )
    assert report["compare"]["all"]["bad2"] == pytest.approx(20.0, abs=0.3)
    assert report["compare"]["both"]["bad2"] == pytest.approx(6.1, abs=0.2)
    assert report["both"]["density"] == 100.0 and report["both"]["n_pixels"] < report["n_pixels"]
    assert report["checkpoint"] == str(checkpoint) and report["backend"] == "fake runner (test)"
    sheet = cv2.imread(str(out / "motorcycle_side_by_side.png"))
    assert sheet.shape[1] == 4 * 480 + 3 * 2  # left | GT | ours | SGBM
    # The runner options reach load_runner; they mean nothing to SGBM and are refused with it.
    argv_options = argv + ["--no-progress", "--lr-check", "--input-scale", "1.5", "--no-occlusion-fill"]
    assert evaluate.main(argv_options) == 0 and calls["options"] == (True, 1.5, False)
    for flag in ("--lr-check", "--no-occlusion-fill"):
        with pytest.raises(SystemExit):
            evaluate.main(["--method", "sgbm", "--data", "motorcycle", "--out", str(out), flag])


def test_config_file_and_max_disparity(evaluate, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(f"method: sgbm\ndata: motorcycle\nout: {tmp_path / 'cfg'}\nmax-disparity: 40\n")
    assert evaluate.main(["--config", str(config), "--no-progress"]) == 0
    report = json.loads((tmp_path / "cfg" / "report.json").read_text())
    # A 48-px range cannot reach the motorcycle's near pixels (up to 60 px): worse than the 80-px run.
    assert report["bad2"] > 25.0


def test_bad_data_exits_with_a_clear_message(evaluate, tmp_path, capsys):
    assert (
        evaluate.main(["--method", "sgbm", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    )
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    assert evaluate.main(["--method", "sgbm", "--data", str(tmp_path / "junk"), "--out", str(tmp_path)]) == 2
    assert "unrecognized dataset layout" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()
    missing_ckpt = [
        "--checkpoint",
        str(tmp_path / "none.safetensors"),
        "--data",
        "motorcycle",
        "--out",
        str(tmp_path),
    ]
    assert evaluate.main(missing_ckpt) == 2
    assert "none.safetensors does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(
            ["--method", "sgbm", "--compare", "sgbm", "--data", "motorcycle", "--out", str(tmp_path)]
        )


def test_help_runs_as_a_script():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "--data" in result.stdout and "report.json" in result.stdout


def test_real_runner_on_a_middlebury_folder(evaluate, tmp_path):
    """End to end with the real inference stack: a tiny random network checkpoint, torch backend."""
    import torch

    from mono2stereo_core.datasets_gt import load_motorcycle, write_pfm
    from mono2stereo_core.models.checkpoint import save_checkpoint
    from mono2stereo_core.models.stereo_net import build_model

    m = load_motorcycle()
    for name, (y0, x0) in {"crop_a": (0, 0), "crop_b": (250, 400)}.items():
        scene = tmp_path / "data" / name
        scene.mkdir(parents=True)
        sl = np.s_[y0 : y0 + 160, x0 : x0 + 240]
        cv2.imwrite(str(scene / "im0.png"), cv2.cvtColor(m.left[sl], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(scene / "im1.png"), cv2.cvtColor(m.right[sl], cv2.COLOR_RGB2BGR))
        write_pfm(scene / "disp0GT.pfm", np.nan_to_num(m.disparity[sl], nan=np.inf))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors", build_model("m2s_rt", max_disparity=64))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--out", str(out)]
    assert evaluate.main(argv + ["--backend", "torch", "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["num_scenes"] == 2 and [s["name"] for s in report["scenes"]] == ["crop_a", "crop_b"]
    assert report["n_pixels"] == sum(s["n_pixels"] for s in report["scenes"])
    _check_section(report)
    _check_section(report["compare"]["all"])
    assert "torch" in report["backend"] and report["checkpoint"] == str(checkpoint)
    for name in ("crop_a", "crop_b"):
        assert cv2.imread(str(out / f"{name}_side_by_side.png")) is not None
        assert cv2.imread(str(out / f"{name}_disparity.png")).shape == (160, 240, 3)
