"""Batch-norm recalibration (mono2stereo_core.training.batchnorm and training/recalibrate_bn.py): the
statistics become the plain average over the batches, nothing else changes, and the command records itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from model_helpers import perturbed_tiny

from mono2stereo_core.models import load_model, save_checkpoint
from mono2stereo_core.training.batchnorm import batchnorm_layers, recalibrate_batchnorm

REPO = Path(__file__).resolve().parents[1]


class _ConvBn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4, momentum=0.1)

    def forward_train(self, left, right):
        return self.bn(self.conv(left))


def test_statistics_become_the_average_over_the_batches_and_nothing_else_changes():
    torch.manual_seed(0)
    net = _ConvBn()
    net.bn.running_mean.fill_(5.0)
    net.bn.running_var.fill_(9.0)
    weight = net.conv.weight.detach().clone()
    batches = [{"left": 2.0 + torch.randn(2, 3, 8, 8) * (1 + i), "right": torch.zeros(1)} for i in range(3)]
    used = recalibrate_batchnorm(net, iter(batches), num_batches=3, progress=False)
    assert used == 3 and not net.training and net.bn.momentum == 0.1
    with torch.no_grad():
        feats = [net.conv(b["left"]) for b in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats])
    assert torch.allclose(net.bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(net.bn.running_var, variances.mean(0), atol=1e-4)
    assert torch.equal(net.conv.weight, weight) and net.conv.weight.grad is None
    # Clear errors: too few batches, no batch norm, a non-positive count.
    with pytest.raises(ValueError, match="ran out after 3 of 5 batches"):
        recalibrate_batchnorm(net, iter(batches), num_batches=5, progress=False)
    with pytest.raises(ValueError, match="no batch-norm layer"):
        recalibrate_batchnorm(torch.nn.Conv2d(3, 3, 1), iter(batches), num_batches=1, progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        recalibrate_batchnorm(net, iter(batches), num_batches=0, progress=False)


def _recalibrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "training/recalibrate_bn.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_command_recalibrates_a_converted_checkpoint_on_procedural_scenes(tmp_path):
    source = perturbed_tiny(3, working_scale=1.25)
    src = save_checkpoint(tmp_path / "src.safetensors", source,
                          sidecar={"reproduce": "python training/convert.py --set working_scale=1.25", "step": 9})
    recipe = yaml.safe_load((REPO / "config" / "train" / "pretrain_rt_ws_cpu.yaml").read_text())
    recipe["data"].update(render_width=128, render_height=96, render_max_disparity=40, crop_height=64, crop_width=96,
                          num_scenes=3, cache_dir=str(tmp_path / "cache"), scene={"supersample": 1, "num_objects": [2, 3]})
    recipe["trainer"]["workers"] = 0
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out" / "bn.safetensors"
    result = _recalibrate("--checkpoint", str(src), "--config", str(recipe_path), "--batches", "2", "--batch-size", "2",
                          "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    network, sidecar = load_model(out)
    before = {k: v for k, v in source.state_dict().items()}
    after = network.state_dict()
    stats = {k for k in after if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert all(torch.equal(after[k], before[k]) for k in after if k not in stats)  # the weights stay
    assert any(not torch.equal(after[k], before[k]) for k in stats if k.endswith("running_mean"))
    assert len(batchnorm_layers(network)) > 0 and sidecar["architecture"] == source.config
    record = sidecar["bn_recalibrated"]
    assert record["batches"] == 2 and record["batch_size"] == 2 and record["seed"] == recipe["seed"]
    assert record["recipe"] == str(recipe_path) and sidecar["step"] == 9
    assert sidecar["reproduce"].startswith("python training/convert.py --set working_scale=1.25 && python training/recalibrate_bn.py")
    # The same command again gives the same statistics (seeded batch order, seeded scenes).
    again = _recalibrate("--checkpoint", str(src), "--config", str(recipe_path), "--batches", "2", "--batch-size", "2",
                         "--out", str(tmp_path / "again.safetensors"), "--no-progress")
    assert again.returncode == 0, again.stderr
    repeat = load_model(tmp_path / "again.safetensors")[0].state_dict()
    assert all(torch.equal(repeat[k], after[k]) for k in after)

    # Clear refusals.
    exists = _recalibrate("--checkpoint", str(src), "--config", str(recipe_path), "--out", str(out))
    assert exists.returncode == 2 and "exists (pass --force" in exists.stderr
    same = _recalibrate("--checkpoint", str(src), "--config", str(recipe_path), "--out", str(src), "--force")
    assert same.returncode == 2 and "must differ from --checkpoint" in same.stderr
    missing = _recalibrate("--checkpoint", str(tmp_path / "nope.safetensors"), "--config", str(recipe_path),
                           "--out", str(tmp_path / "x.safetensors"))
    assert missing.returncode == 2 and "nope" in missing.stderr
