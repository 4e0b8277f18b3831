"""``training/finetune.py`` on a small real bag (the motorcycle pair + a projected LiDAR cloud, written with
``rosbags``): S2DKD with sparse LiDAR ground truth, the ground-truth-free mode, and bad input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_datasets import write_stereo_bag

from mono2stereo_core.models import build_model, load_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "finetune.py"
SMALL = [
    "--set", "data.crop_height=64", "--set", "data.crop_width=96", "--set", "trainer.validation=none",
    "--set", "trainer.workers=0", "--set", "trainer.validate_every=0", "--set", "trainer.image_every=0",
    "--set", "optim.batch_size=2", "--threads", "1", "--no-progress",
]


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_stereo_bag(root / "recorded" / "session_a", pairs=3)
    torch.manual_seed(0)
    init = save_checkpoint(root / "init.safetensors", build_model("m2s_tiny", max_disparity=64), sidecar={"note": "test"})
    return root, init


def test_help_lists_the_modes():
    result = run("--help", timeout=60)
    assert result.returncode == 0
    for text in ("--bags", "--init", "--depth-topic", "--lidar-topic", "--mono-model", "--steps", "ground-truth-free"):
        assert text in result.stdout, text


def test_s2dkd_on_lidar_then_ground_truth_free(setup):
    root, init = setup
    out = root / "s2dkd"
    result = run("--bags", str(root / "recorded"), "--init", str(init), "--lidar-topic", "/lidar/points",
                 "--steps", "3", "--out", str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    assert "mode s2dkd-stereo-teacher: 3 pairs from 1 bag" in result.stderr
    model, sidecar = load_model(out / "checkpoints" / "step_0000003.safetensors")
    assert sidecar["architecture"]["name"] == "m2s_tiny"
    assert sidecar["training"]["stage"] == "finetune (s2dkd-stereo-teacher)"
    assert sidecar["data"]["lidar_topic"] == "/lidar/points" and sidecar["data"]["pairs"] == 3
    # The S2DKD terms were optimised and logged.
    metrics = (out / "metrics.jsonl").read_text()
    assert '"sparse_l1"' in metrics and '"kl"' in metrics
    # The weights moved away from the initial checkpoint.
    initial, _ = load_model(init)
    assert any(not torch.equal(a, b) for a, b in zip(initial.state_dict().values(), model.state_dict().values()))
    # The stage-1 network's teacher predictions are cached for the next epochs and runs.
    assert len(list((out / "teacher_cache").glob("stereo_*.npy"))) == 3

    free = root / "free"
    result = run("--bags", str(root / "recorded"), "--init", str(init), "--steps", "2", "--out", str(free), *SMALL)
    assert result.returncode == 0, result.stderr
    assert "mode gt-free-self" in result.stderr
    _, sidecar = load_model(free / "checkpoints" / "step_0000002.safetensors")
    assert sidecar["training"]["recipe"]["loss"]["kind"] == "sequence"


def test_bad_input_is_a_clear_error(setup, tmp_path):
    root, init = setup
    pickled = tmp_path / "init.safetensors"
    torch.save(build_model("m2s_tiny", max_disparity=64).state_dict(), pickled)
    result = run("--bags", str(root / "recorded"), "--init", str(pickled), "--steps", "1", "--out", str(tmp_path / "a"), *SMALL)
    assert result.returncode != 0 and "no sidecar" in result.stderr
    result = run("--bags", str(root / "recorded"), "--init", str(init), "--depth-topic", "/depth/image",
                 "--steps", "1", "--out", str(tmp_path / "b"), *SMALL)
    assert result.returncode != 0 and "depth_topic '/depth/image'" in result.stderr and "not in the bag" in result.stderr
    result = run("--bags", str(tmp_path / "nothing_here"), "--init", str(init), "--steps", "1", "--out", str(tmp_path / "c"), *SMALL)
    assert result.returncode != 0 and "does not exist" in result.stderr
    result = run("--bags", str(root / "recorded"), "--init", str(init), "--depth-topic", "/a", "--lidar-topic", "/b")
    assert result.returncode != 0 and "not allowed with argument" in result.stderr


def test_depth_anything_teacher_and_ground_truth_free_with_a_mono_model(setup):
    """The two modes that use a monocular model, through the real CLI, with a tiny random Depth Anything V2
    saved to disk and loaded offline (the same code path as real local weights)."""
    from test_mono import _tiny_depth_anything

    root, init = setup
    mono = _tiny_depth_anything(root / "da2_tiny")
    out = root / "s2dkd_mono"
    result = run("--bags", str(root / "recorded"), "--init", str(init), "--lidar-topic", "/lidar/points",
                 "--mono-model", str(mono), "--steps", "2", "--out", str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    assert "mode s2dkd-mono:" in result.stderr, result.stderr
    metrics = (out / "metrics.jsonl").read_text()
    assert '"sparse_l1"' in metrics and '"kl"' in metrics
    _, sidecar = load_model(out / "checkpoints" / "step_0000002.safetensors")
    assert sidecar["data"]["lidar_topic"] == "/lidar/points"

    free = root / "free_mono"
    result = run("--bags", str(root / "recorded"), "--init", str(init), "--mono-model", str(mono),
                 "--steps", "2", "--out", str(free), *SMALL)
    assert result.returncode == 0, result.stderr
    assert "mode gt-free-mono" in result.stderr, result.stderr
    assert (free / "checkpoints" / "step_0000002.safetensors").is_file()
