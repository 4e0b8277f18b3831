"""scripts/ship_weights.py: a checkpoint becomes weights + sidecar + ONNX that belong together, or nothing changes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from mono2stereo_core.models import build_model
from mono2stereo_core.models.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def test_ship_refuses_a_worse_than_sgbm_checkpoint_and_ships_a_complete_set_when_allowed(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "run" / "step_0000003.safetensors", build_model("m2s_rt"), sidecar={"step": 3, "total_steps": 3}
    )
    weights_dir = tmp_path / "weights"
    command = [
        sys.executable, str(REPO / "scripts" / "ship_weights.py"), "--checkpoint", str(checkpoint),
        "--reproduce", "python training/pretrain.py --config config/train/pretrain_rt.yaml --out runs/x",
        "--weights-dir", str(weights_dir), "--note", "purpose=test",
    ]
    # An untrained network is far worse than SGBM on motorcycle: refused, weights/ untouched.
    refused = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 1, refused.stderr
    assert "not below SGBM" in refused.stderr and not weights_dir.exists()

    shipped = subprocess.run([*command, "--allow-worse"], capture_output=True, text=True, cwd=REPO)
    assert shipped.returncode == 0, shipped.stderr[-2000:]
    weights = weights_dir / "m2s_rt.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    sidecar = json.loads((weights_dir / "m2s_rt.json").read_text())
    assert sidecar["weights_sha256"] == digest and sidecar["purpose"] == "test"
    assert sidecar["reproduce"].startswith("python training/pretrain.py --config config/train/pretrain_rt.yaml")
    assert "step 3 of 3" in sidecar["shipped"]["selection"] and "validation" not in sidecar
    scores = sidecar["motorcycle"]
    assert scores["bad2"] >= scores["sgbm_bad2"]  # the untrained network, honestly reported
    assert scores["sgbm_bad2"] == pytest.approx(20.0, abs=0.3) and scores["sgbm_both_bad2"] == pytest.approx(6.1, abs=0.2)
    for key in ("noc_bad2", "both_bad2", "both_edge_bad2", "both_interior_bad2", "sgbm_both_edge_bad2"):
        assert 0.0 <= scores[key] <= 100.0
    meta = {p.key: p.value for p in onnx.load(str(weights_dir / "m2s_rt_640x480.onnx")).metadata_props}
    assert meta["checkpoint_sha256"] == digest


def test_ship_name_must_stay_in_the_m2s_rt_family(tmp_path):
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "step_0000001.safetensors", build_model("m2s_rt"), sidecar={})
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ship_weights.py"), "--checkpoint", str(checkpoint),
         "--reproduce", "x", "--weights-dir", str(tmp_path / "weights"), "--name", "../evil"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2 and "--name must be m2s_rt" in result.stderr
    assert not (tmp_path / "weights").exists()
