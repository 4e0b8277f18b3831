"""training/convert.py: a checkpoint converted to other architecture settings, as a command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from model_helpers import perturbed_tiny

from mono2stereo_core.models import load_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "training/convert.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_convert_drops_the_edge_stage_and_records_where_from(tmp_path):
    source = perturbed_tiny(5)
    src = save_checkpoint(tmp_path / "src.safetensors", source,
                          sidecar={"reproduce": "python training/pretrain.py --config a.yaml", "step": 7,
                                   "validation": {"bad2": 42.0}})
    out = tmp_path / "out" / "converted.safetensors"
    result = _convert("--checkpoint", str(src), "--set", "edge_refinement=false", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "GMAC" in result.stdout
    network, sidecar = load_model(out)
    assert network.edge_refinement is None and sidecar["architecture"]["edge_refinement"] is False
    assert sidecar["step"] == 7 and "validation" not in sidecar
    assert sidecar["converted_from"]["settings"] == {"edge_refinement": False}
    assert sidecar["converted_from"]["source_validation"] == {"bad2": 42.0}
    assert sidecar["reproduce"].startswith("python training/pretrain.py --config a.yaml && python training/convert.py")
    assert sidecar["gmac_640x480"] < json.loads(src.with_suffix(".json").read_text())["gmac_640x480"]
    left, right = torch.rand(1, 3, 48, 64), torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        # The converted network outputs exactly what the source's edge stage received.
        assert torch.equal(network.eval()(left, right)[0], source.forward_train(left, right).predictions[-2])

    # Clear refusals, exit status 2.
    again = _convert("--checkpoint", str(src), "--set", "edge_refinement=false", "--out", str(out))
    assert again.returncode == 2 and "exists (pass --force" in again.stderr
    twice = _convert("--checkpoint", str(out), "--set", "edge_refinement=false", "--out", str(tmp_path / "b.safetensors"))
    assert twice.returncode == 2 and "nothing to convert" in twice.stderr
    other = _convert("--checkpoint", str(src), "--set", "agg_channels=8", "--out", str(tmp_path / "c.safetensors"))
    assert other.returncode == 2 and "cannot convert 'agg_channels'" in other.stderr
    back = _convert("--checkpoint", str(out), "--set", "edge_refinement=true", "--out", str(tmp_path / "d.safetensors"))
    assert back.returncode == 2 and "only 3 -> 1, deconv -> trilinear, true -> false, refine_iterations and working_scale convert" in back.stderr
