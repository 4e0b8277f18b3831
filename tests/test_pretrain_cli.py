"""``training/pretrain.py`` as a user runs it: help, a short procedural run, resumable output, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mono2stereo_core.models import load_model

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "pretrain.py"


def run(*args: str, timeout: float = 240, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def tiny_recipe(tmp_path: Path) -> Path:
    recipe = yaml.safe_load((REPO / "config" / "train" / "pretrain_rt.yaml").read_text())
    recipe["model"].update(name="m2s_tiny", max_disparity=64)
    recipe["data"].update(
        render_width=128, render_height=96, render_max_disparity=48, crop_height=64, crop_width=96,
        num_scenes=4, cache_dir=str(tmp_path / "cache"), scene={"supersample": 1, "num_objects": [2, 4]},
    )
    recipe["optim"].update(steps=3, batch_size=2)
    recipe["trainer"].update(workers=0, validate_every=0, checkpoint_minutes=0, image_every=2, validation="none")
    # Hermetic: a developer's real Depth Anything weights in weights/ must not change these runs.
    recipe["data"]["photos"] = {"depth_model": "none"}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_help_describes_the_command():
    result = run("--help", timeout=60)
    assert result.returncode == 0
    for text in ("--config", "--resume", "--set", "procedural", "torchrun", "KEY=VALUE"):
        assert text in result.stdout, text


@pytest.mark.slow
def test_short_run_writes_a_loadable_checkpoint_and_refuses_to_overwrite(tmp_path):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "run"
    result = run("--config", str(recipe), "--out", str(out), "--no-progress", "--set", "optim.lr=0.002")
    assert result.returncode == 0, result.stderr
    assert "finished 3 steps" in result.stdout
    model, sidecar = load_model(out / "checkpoints" / "step_0000003.safetensors")
    assert sidecar["architecture"]["name"] == "m2s_tiny" and sidecar["step"] == 3
    # The sidecar tells how the weights were made and how to make them again.
    assert sidecar["training"]["recipe"]["optim"]["lr"] == 0.002
    assert sidecar["data"]["kind"] == "procedural" and len(sidecar["data"]["config_hash"]) == 16
    assert "training/pretrain.py" in sidecar["reproduce"] and "optim.lr=0.002" in sidecar["reproduce"]
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert json.loads((out / "latest.json").read_text())["step"] == 3
    # Same folder again without --resume: refused, nothing overwritten.
    again = run("--config", str(recipe), "--out", str(out), "--no-progress")
    assert again.returncode != 0 and "pass --resume" in again.stderr
    # --resume with another recipe (the --set is missing) would mix two trainings: refused.
    other = run("--config", str(recipe), "--out", str(out), "--no-progress", "--resume")
    assert other.returncode != 0 and "config hash" in other.stderr
    # --resume of a finished run with its recipe: nothing left to do, exits cleanly at the same step.
    resumed = run("--config", str(recipe), "--out", str(out), "--no-progress", "--resume", "--set", "optim.lr=0.002")
    assert resumed.returncode == 0, resumed.stderr
    assert "finished 3 steps" in resumed.stdout


def test_bad_overrides_and_configs_name_the_problem(tmp_path):
    recipe = tiny_recipe(tmp_path)
    result = run("--config", str(recipe), "--out", str(tmp_path / "x"), "--set", "optim.stpes=10")
    assert result.returncode != 0 and "unknown key 'optim.stpes'" in result.stderr
    result = run("--config", str(recipe), "--out", str(tmp_path / "x"), "--set", "data.crop_width=100")
    assert result.returncode != 0 and "multiple of the network stride 8, instead got 100" in result.stderr
    result = run("--config", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0 and "missing.yaml does not exist" in result.stderr


@pytest.mark.parametrize("data", ["motorcycle", "aloe"])
@pytest.mark.parametrize("stem", ["m2s_rt", "m2s_rt_fast", "m2s_rt_refined"])
def test_shipped_weights_beat_sgbm_on_the_real_pairs(stem, data):
    """Regression guard for weights/m2s_rt*.safetensors: dense all-pixel bad-2 below OpenCV SGBM's, same run,
    on both bundled real pairs (Middlebury 2014 motorcycle, Middlebury 2006 Aloe at half size)."""
    import torch

    from mono2stereo_core.training.trainer import GroundTruthValidation

    weights = REPO / "weights" / f"{stem}.safetensors"
    model, sidecar = load_model(weights)
    assert sidecar["architecture"]["name"] == "m2s_rt" and weights.stat().st_size < 20e6
    assert "training/pretrain.py" in sidecar["reproduce"]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    metrics, _ = GroundTruthValidation(data)(model, device=torch.device("cpu"))
    assert metrics["density"] == 100.0
    assert metrics["bad2"] < metrics["sgbm_bad2"], metrics
    if data == "motorcycle":
        # The sidecar's numbers are the ones this run measures (same code, same pair).
        assert abs(sidecar["motorcycle"]["bad2"] - metrics["bad2"]) < 0.5


@pytest.mark.slow
def test_photo_pairs_are_mixed_in_wherever_depth_anything_weights_are_on_disk(tmp_path, tiny_depth_anything):
    import shutil

    recipe_path = tiny_recipe(tmp_path)
    recipe = yaml.safe_load(recipe_path.read_text())
    del recipe["data"]["photos"]  # the defaults: bundled photographs, depth model "auto"
    recipe_path.write_text(yaml.safe_dump(recipe))
    weights = tmp_path / "weights"
    weights.mkdir()
    env = {"MONO2STEREO_MONO_WEIGHTS": str(weights)}

    # No weights on disk: the run says so and trains on procedural scenes only.
    plain = run("--config", str(recipe_path), "--out", str(tmp_path / "plain"), "--no-progress", env_extra=env)
    assert plain.returncode == 0, plain.stderr
    assert "training without photo pairs: no Depth Anything V2 weights on disk" in plain.stderr
    _, sidecar = load_model(tmp_path / "plain" / "checkpoints" / "step_0000003.safetensors")
    assert sidecar["photos"]["used"] is False and "depth_anything_v2_small" in sidecar["photos"]["why"]

    # Weights where "auto" looks: the same command synthesizes pairs from the bundled photographs and trains.
    shutil.copytree(tiny_depth_anything, weights / "depth_anything_v2_small")
    out = tmp_path / "photos"
    mixed = run(
        "--config", str(recipe_path), "--out", str(out), "--no-progress",
        "--set", "data.photos.num=2", "--set", "data.photos.fraction=0.5", env_extra=env, timeout=600,
    )
    assert mixed.returncode == 0, mixed.stderr[-3000:]
    _, sidecar = load_model(out / "checkpoints" / "step_0000003.safetensors")
    photos = sidecar["photos"]
    assert photos["used"] is True and photos["pairs"] == 2 and photos["fraction"] == 0.5
    assert photos["dataset"] == "MixedDataset"
    assert photos["depth_model"] == str(weights / "depth_anything_v2_small")
    manifest = [json.loads(line) for line in (out / "photo_pairs" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 2 and all((out / "photo_pairs" / r["right"]).is_file() for r in manifest)
    assert not any("motorcycle" in r["left"] for r in manifest)

    # The mix the run trained on: photo items collate with procedural ones (same keys), and each repetition of
    # the two photo pairs is a different crop, not the same item over and over.
    from mono2stereo_core.training.datasets import MixedDataset, build_dataset

    config = yaml.safe_load((out / "config.yaml").read_text())
    dataset = build_dataset(config, stride=8, photo_root=out / "photo_pairs")
    assert isinstance(dataset, MixedDataset)
    photo_indices = [i for i in range(200) if dataset.from_secondary(i)][:6]
    assert len(photo_indices) == 6
    items = [dataset[i] for i in photo_indices]
    procedural = dataset[next(i for i in range(200) if not dataset.from_secondary(i))]
    assert all(set(item) == set(procedural) == set(MixedDataset.KEYS) for item in items)
    same_pair = [item for i, item in zip(photo_indices, items) if i % 2 == photo_indices[0] % 2]
    assert len(same_pair) >= 2 and not torch.equal(same_pair[0]["left"], same_pair[1]["left"])


def test_mixed_dataset_draws_the_requested_share_deterministically():
    from mono2stereo_core.training.datasets import MixedDataset

    class Tagged:
        def __init__(self, tag, n):
            self.tag, self.n = tag, n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return (self.tag, i)

    # (Plain tuples pass through; dict items keep MixedDataset.KEYS, checked by the run above.)
    mix = MixedDataset(Tagged("procedural", 4000), Tagged("photo", 7), fraction=0.3, seed=5)
    items = [mix[i] for i in range(len(mix))]
    share = sum(tag == "photo" for tag, _ in items) / len(items)
    assert len(mix) == 4000 and 0.27 < share < 0.33
    assert items == [mix[i] for i in range(len(mix))]  # same choice every epoch, rank and resume
    assert all(i < 7 for tag, i in items if tag == "photo")
    assert [mix[i] for i in range(50)] != [MixedDataset(Tagged("procedural", 4000), Tagged("photo", 7), fraction=0.3, seed=6)[i] for i in range(50)]
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        MixedDataset(Tagged("a", 1), Tagged("b", 1), fraction=1.5)


@pytest.mark.parametrize("recipe", sorted((REPO / "config" / "train").glob("pretrain_*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_pretraining_recipe_validates_and_builds_its_network(recipe):
    """A recipe written for a GPU lease is run far from here: a typo in it (an unknown key, a setting the
    network rejects) must fail in CI, not on the lent machine. Its init checkpoint is not loaded (it may live
    only where the run happens)."""
    from mono2stereo_core.models import build_model
    from mono2stereo_core.training.config import load_config

    config = load_config(recipe)
    model = config["model"]
    network = build_model(model["name"], max_disparity=int(model["max_disparity"]), **dict(model.get("overrides") or {}))
    assert network.config["name"] == model["name"]


def test_gpu_session_default_runs_are_recipes():
    """scripts/gpu_session.sh trains its default RUNS when a lease comes: each must be a recipe in config/train."""
    import re

    text = (REPO / "scripts" / "gpu_session.sh").read_text()
    runs = re.search(r'^RUNS=\$\{RUNS:-"([^"]+)"\}', text, re.MULTILINE)
    assert runs, "RUNS default not found in scripts/gpu_session.sh"
    for run_name in runs.group(1).split():
        assert (REPO / "config" / "train" / f"{run_name}.yaml").is_file(), run_name
