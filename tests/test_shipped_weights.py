"""The shipped artefacts in weights/ belong together: the ONNX (used by the Docker image and CPU robots) is
exported from exactly the shipped safetensors, and the sidecar describes that file."""

import hashlib
import json
from pathlib import Path

import pytest

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The default model and the CPU-latency variant shipped beside it, each with its recipes after the three
# stages they share (the fourth session's GPU stages), then the conversion that dropped the full-resolution
# edge stage (fifth session), then a CPU stage with the sharpening augmentation (m2s_rt: sixth session,
# m2s_rt_fast: seventh).
SHIPPED = ("m2s_rt", "m2s_rt_fast")
OWN_RECIPES = {
    "m2s_rt": ("config/train/pretrain_rt_gpu.yaml",),
    "m2s_rt_fast": ("config/train/pretrain_rt_fast.yaml", "config/train/pretrain_rt_fast_gpu.yaml"),
}
AFTER_CONVERSION = {
    "m2s_rt": ("config/train/pretrain_rt_cpu7.yaml",),
    "m2s_rt_fast": ("config/train/pretrain_rt_fast_cpu.yaml",),
}


@pytest.mark.parametrize("stem", SHIPPED)
def test_sidecar_describes_the_shipped_file(stem):
    sidecar = json.loads((WEIGHTS / f"{stem}.json").read_text())
    assert sidecar["weights_sha256"] == _sha256(WEIGHTS / f"{stem}.safetensors")
    assert sidecar["reproduce"].startswith("python training/pretrain.py --config config/train/pretrain_rt.yaml")
    for recipe in (
        "config/train/pretrain_rt.yaml",
        "config/train/pretrain_rt_continue.yaml",
        "config/train/pretrain_rt_long.yaml",
        *OWN_RECIPES[stem],
        *AFTER_CONVERSION[stem],
    ):
        assert recipe in sidecar["reproduce"] and (WEIGHTS.parent / recipe).is_file()
    # The stages run in order, the model's own ones after the shared three, then the conversion that dropped
    # the full-resolution edge stage (fifth session: it made both evaluation sets worse), then later stages.
    order = ["config/train/pretrain_rt_long.yaml", *OWN_RECIPES[stem], "training/convert.py", *AFTER_CONVERSION[stem]]
    positions = [sidecar["reproduce"].index(recipe) for recipe in order]
    assert positions == sorted(positions), positions
    assert (WEIGHTS / f"{stem}.safetensors").stat().st_size < 20e6
    fast = {"volume_in_kernel": 1, "volume_out_kernel": 1, "hourglass_upsample": "trilinear"}
    architecture = sidecar["architecture"]
    assert all(architecture.get(k) == v for k, v in fast.items()) == (stem == "m2s_rt_fast")
    assert architecture.get("edge_refinement") is False
    # Both were trained after the conversion: the last stage's recipe is in the sidecar, sharpening included.
    assert sidecar["training"]["recipe"]["data"]["augment"]["sharpen_prob"] == 0.5
    assert sidecar["training"]["recipe"]["optim"]["freeze_batchnorm"] is True


@pytest.mark.parametrize("stem", SHIPPED)
def test_shipped_onnx_is_exported_from_the_shipped_weights(stem):
    import onnx

    model = onnx.load(str(WEIGHTS / f"{stem}_640x480.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["checkpoint_sha256"] == _sha256(WEIGHTS / f"{stem}.safetensors"), (
        f"weights/{stem}_640x480.onnx is stale: re-export with python training/export.py "
        f"--checkpoint weights/{stem}.safetensors --height 480 --width 640 --onnx weights/{stem}_640x480.onnx --force"
    )
    assert (meta["input_width"], meta["input_height"]) == ("640", "480")
