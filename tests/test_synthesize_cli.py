"""Tests for training/synthesize.py: outputs, resume after a simulated kill, sharding, bad inputs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from mono2stereo_core.training.datasets import read_disparity_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "synthesize.py"
SMALL = ["--width", "96", "--height", "64", "--no-progress"]


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("synthesize_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def test_procedural_run_writes_dataset_and_resumes(cli, tmp_path, capsys):
    out = tmp_path / "ds"
    assert cli.main(["--depth-model", "procedural", "--out", str(out), "--num", "3", *SMALL]) == 0
    records = _manifest(out)
    assert [r["id"] for r in records] == ["proc_00000000", "proc_00000001", "proc_00000002"]
    assert (out / "preview.png").is_file()
    for record in records:
        left = cv2.imread(str(out / record["left"]))
        right = cv2.imread(str(out / record["right"]))
        mask = cv2.imread(str(out / record["mask"]), cv2.IMREAD_UNCHANGED)
        disp = read_disparity_file(out / record["disp"])
        assert left.shape == right.shape == (64, 96, 3) and disp.shape == mask.shape == (64, 96)
        assert set(np.unique(mask)) <= {0, 128, 255}
        assert np.array_equal(np.isfinite(disp), mask > 0)
        assert 0 < np.nanmax(disp) <= 0.5 * 96 * 1.5 + 1e-3  # capped at half the width (x1.5 if out of range)
        assert not np.array_equal(left, right)
    # Nothing left behind but the final files.
    assert not list(out.rglob(".tmp-*"))
    capsys.readouterr()
    assert cli.main(["--depth-model", "procedural", "--out", str(out), "--num", "4", *SMALL]) == 0
    assert "3 already done, 1 to do" in capsys.readouterr().err
    assert [r["id"] for r in _manifest(out)][-1] == "proc_00000003" and len(_manifest(out)) == 4


def test_killed_run_leaves_nothing_marked_done_and_is_redone(cli, tmp_path, capsys):
    """Simulates a kill: (a) an item whose temp files exist but whose manifest line was never written,
    (b) a torn (half-written) last manifest line. Both items are redone; the manifest stays valid JSONL."""
    out = tmp_path / "ds"
    assert cli.main(["--depth-model", "procedural", "--out", str(out), "--num", "3", "--seed", "5", *SMALL]) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    # (a) item 2 was killed after its files were renamed but before the manifest line; item 1's temps linger.
    torn = lines[1][: len(lines[1]) // 2]  # (b) item 1's line was cut mid-write
    (out / "manifest.jsonl").write_text(lines[0] + "\n" + torn)
    stale = out / "left" / f".tmp-{json.loads(lines[1])['id']}-99999.png"
    stale.write_bytes(b"partial")
    capsys.readouterr()
    assert cli.main(["--depth-model", "procedural", "--out", str(out), "--num", "3", "--seed", "5", *SMALL]) == 0
    assert "1 already done, 2 to do" in capsys.readouterr().err
    records = _manifest(out)  # parses: the torn line was cut, not appended to
    assert sorted(r["id"] for r in records) == ["proc_00000005", "proc_00000006", "proc_00000007"]
    assert not stale.exists()


def test_shards_partition_the_items(cli, tmp_path, monkeypatch):
    out = tmp_path / "ds"
    assert cli.main(["--depth-model", "procedural", "--out", str(out), "--num", "4", "--shard", "1/2", *SMALL]) == 0
    assert [r["id"] for r in _manifest(out)] == ["proc_00000001", "proc_00000003"]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["--depth-model", "procedural", "--out", str(out), "--num", "4", *SMALL]) == 0
    assert sorted(r["id"] for r in _manifest(out)) == [f"proc_{i:08d}" for i in range(4)]
    with pytest.raises(cli.UsageError, match=r"need 0 <= i < n, instead got i=2, n=2"):
        cli.parse_shard("2/2")


def test_images_with_depth_anything_skip_and_count_unreadable(cli, tmp_path, tiny_depth_anything, capsys):
    images = tmp_path / "photos"
    (images / "sub").mkdir(parents=True)
    left, right, _ = data.stereo_motorcycle()
    cv2.imwrite(str(images / "a.png"), cv2.cvtColor(left[:96, :128], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(images / "sub" / "b.jpg"), cv2.cvtColor(right[200:296, 300:428], cv2.COLOR_RGB2BGR))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "ds"
    code = cli.main(["--images", str(images), "--depth-model", str(tiny_depth_anything), "--out", str(out),
                     "--no-progress", "--disp-format", "png"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 1" in err and "unreadable image" in err and "broken.png" in err
    records = _manifest(out)
    assert len(records) == 2 and {r["depth_kind"] for r in records} == {"inverse_depth"}
    assert all(r["disp"].endswith(".png") for r in records)
    assert read_disparity_file(out / records[0]["disp"]).shape == (96, 128)
    assert "broken" not in " ".join(r["id"] for r in records)


def test_missing_weights_and_empty_folder_are_clear_errors(cli, tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    out = tmp_path / "ds"
    assert cli.main(["--images", str(images), "--depth-model", "procedural_typo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--images {images} holds no images" in err
    cv2.imwrite(str(images / "a.png"), np.zeros((32, 32, 3), np.uint8))
    missing = tmp_path / "weights" / "depth_anything_v2_small"
    assert cli.main(["--images", str(images), "--depth-model", str(missing), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "error:" in err
    assert not out.exists()  # nothing created, nothing marked done
    assert cli.main(["--images", str(images), "--out", str(out)]) == 2
    assert "--depth-model is required" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("synthesis:\n  max_disparty: 3\n")
    assert cli.main(["--config", str(bad), "--depth-model", "procedural", "--out", str(out)]) == 2
    assert "max_disparty" in capsys.readouterr().err


def test_help_and_yaml_config_in_a_real_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    shown = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0
    for needle in ("--depth-model", "procedural", "manifest.jsonl", "--shard", "RANK/WORLD_SIZE", "Examples"):
        assert needle in shown.stdout
    config = tmp_path / "synth.yaml"
    config.write_text(
        "depth_model: procedural\nnum: 2\nwidth: 80\nheight: 48\ninpaint: naive\n"
        "synthesis:\n  max_disparity: 20\n  augment: null\n"
    )
    out = tmp_path / "ds"
    run = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    records = _manifest(out)
    assert len(records) == 2 and {r["inpaint"] for r in records} == {"naive"}
    assert all(r["max_disparity"] <= 20 * 1.5 for r in records)
