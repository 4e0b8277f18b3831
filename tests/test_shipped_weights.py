"""The shipped artefacts in weights/ belong together: the ONNX (used by the Docker image and CPU robots) is
exported from exactly the shipped safetensors, and the sidecar describes that file."""

import hashlib
import json
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sidecar_describes_the_shipped_file():
    sidecar = json.loads((WEIGHTS / "m2s_rt.json").read_text())
    assert sidecar["weights_sha256"] == _sha256(WEIGHTS / "m2s_rt.safetensors")
    assert sidecar["reproduce"].startswith("python training/pretrain.py --config config/train/pretrain_rt.yaml")
    for recipe in (
        "config/train/pretrain_rt.yaml",
        "config/train/pretrain_rt_continue.yaml",
        "config/train/pretrain_rt_long.yaml",
    ):
        assert recipe in sidecar["reproduce"] and (WEIGHTS.parent / recipe).is_file()
    assert (WEIGHTS / "m2s_rt.safetensors").stat().st_size < 20e6


def test_shipped_onnx_is_exported_from_the_shipped_weights():
    import onnx

    model = onnx.load(str(WEIGHTS / "m2s_rt_640x480.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["checkpoint_sha256"] == _sha256(WEIGHTS / "m2s_rt.safetensors"), (
        "weights/m2s_rt_640x480.onnx is stale: re-export with python training/export.py "
        "--checkpoint weights/m2s_rt.safetensors --height 480 --width 640 --onnx weights/m2s_rt_640x480.onnx --force"
    )
    assert (meta["input_width"], meta["input_height"]) == ("640", "480")
