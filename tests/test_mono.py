"""Tests for mono2stereo_core.mono: Depth Anything V2 (tiny random config, offline), ONNX, given depth."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from skimage import data

from mono2stereo_core.mono import (
    DepthAnythingV2,
    GivenDepth,
    MonoWeightsNotFoundError,
    OnnxMonoDepth,
    load_mono_depth,
    network_input_size,
)

os.environ["HF_HUB_OFFLINE"] = "1"

# The tiny ONNX fixtures use the TorchScript exporter on purpose (static shapes, fast); its notice is noise.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
    pytest.mark.filterwarnings("ignore:The feature will be removed"),
]


def _tiny_depth_anything(directory, *, kind: str = "relative"):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=518,
        out_features=["stage1", "stage2", "stage3", "stage4"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        fusion_hidden_size=16,
        neck_hidden_sizes=[8, 16, 32, 32],
        head_hidden_size=8,
        reassemble_hidden_size=32,
        depth_estimation_type=kind,
        max_depth=20,
    )
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_da_dir(tmp_path_factory):
    return _tiny_depth_anything(tmp_path_factory.mktemp("da2_tiny"))


@pytest.fixture(scope="module")
def images():
    left, right, _ = data.stereo_motorcycle()
    rng = np.random.default_rng(0)
    odd = rng.integers(0, 256, (201, 333, 3), dtype=np.uint8)
    return [left[:201, :333].copy(), odd, right[100:356, 50:306].copy()]


def test_network_input_size_matches_dpt_rule():
    # Depth Anything: shorter side to 518, multiples of 14, the scale nearest 1 wins.
    assert network_input_size(500, 741, target=(518, 518), multiple=14, keep_aspect_ratio=True) == (518, 770)
    assert network_input_size(256, 256, target=(518, 518), multiple=14, keep_aspect_ratio=True) == (518, 518)
    assert network_input_size(201, 333, target=(256, 256), multiple=14, keep_aspect_ratio=False) == (252, 252)


def test_depth_anything_tiny_offline_returns_input_size(tiny_da_dir, images):
    model = load_mono_depth(tiny_da_dir, batch_size=2, input_size=140, device="cpu")
    assert isinstance(model, DepthAnythingV2)
    assert model.output_kind == "inverse_depth"
    assert model.device.type == "cpu" and model.dtype == torch.float32
    out = model.predict(images)
    assert [o.shape for o in out] == [img.shape[:2] for img in images]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    # The output is the network's patch-aligned map resized back, not a constant.
    assert all(o.std() > 0 for o in out)
    # Batching must not change a result: one image alone gives the same map as inside a batch.
    alone = model.predict([images[1]])[0]
    np.testing.assert_allclose(alone, out[1], rtol=1e-4, atol=1e-5)


def test_depth_anything_matches_transformers_forward(tiny_da_dir, images):
    from transformers import AutoModelForDepthEstimation

    model = load_mono_depth(tiny_da_dir, input_size=(126, 210), device="cpu")
    img = images[1]
    # The reference: transformers' own forward on the same input (pre-processing is tested below).
    x = model.preprocess(img)
    ref_model = AutoModelForDepthEstimation.from_pretrained(tiny_da_dir, local_files_only=True).eval()
    with torch.no_grad():
        ref = ref_model(pixel_values=x).predicted_depth[None]
    ref = torch.nn.functional.interpolate(ref, size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(model.predict([img])[0], ref.numpy(), rtol=1e-4, atol=1e-5)


def test_depth_anything_metric_config_reports_depth(tmp_path, images):
    model = load_mono_depth(_tiny_depth_anything(tmp_path / "metric", kind="metric"), input_size=70)
    assert model.output_kind == "depth"
    (out,) = model.predict(images[:1])
    assert out.shape == images[0].shape[:2]


def test_depth_anything_reads_preprocessor_config(tiny_da_dir, tmp_path):
    import shutil

    copy = shutil.copytree(tiny_da_dir, tmp_path / "with_proc")
    (copy / "preprocessor_config.json").write_text(
        json.dumps({"size": {"height": 98, "width": 98}, "ensure_multiple_of": 14, "keep_aspect_ratio": True})
    )
    model = load_mono_depth(copy)
    assert model.processing_size(200, 400) == (98, 196)


def test_missing_weights_say_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(MonoWeightsNotFoundError) as err:
        load_mono_depth(tmp_path / "nope")
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg
    assert "huggingface-cli download depth-anything/Depth-Anything-V2-Small-hf --local-dir" in msg
    weights_root = tmp_path / "weights_root"
    weights_root.mkdir()
    monkeypatch.setenv("MONO2STEREO_MONO_WEIGHTS", str(weights_root))
    with pytest.raises(
        MonoWeightsNotFoundError, match="Depth-Anything-V2-Base-hf --local-dir .*depth_anything_v2_base"
    ):
        load_mono_depth("depth_anything_v2_base")
    with pytest.raises(MonoWeightsNotFoundError, match="nothing is downloaded"):
        load_mono_depth("depth-anything/Depth-Anything-V2-Large-hf")
    # A short name resolves inside that folder once the weights are there.
    _tiny_depth_anything(weights_root / "depth_anything_v2_small")
    assert load_mono_depth("depth_anything_v2_small", input_size=70).name == str(
        weights_root / "depth_anything_v2_small"
    )


def test_dir_without_config_is_rejected(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(MonoWeightsNotFoundError, match="no config.json"):
        load_mono_depth(tmp_path)


def test_config_without_weights_is_rejected(tiny_da_dir, tmp_path):
    (tmp_path / "config.json").write_text((tiny_da_dir / "config.json").read_text())
    with pytest.raises(MonoWeightsNotFoundError, match="weights could not be loaded"):
        load_mono_depth(tmp_path)


class _TinyDepthNet(torch.nn.Module):
    """Stride-2 conv + upsample: a real (if small) dense predictor to export."""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dec = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.enc(x))
        y = torch.nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.nn.functional.softplus(self.dec(y))[:, 0]


def _export(tmp_path, *, name="depth.onnx", dynamic=True, input_names=("image",), size=(112, 140)):
    torch.manual_seed(0)
    net = _TinyDepthNet().eval()
    path = tmp_path / name
    axes = {"image": {0: "n", 2: "h", 3: "w"}, "depth": {0: "n", 1: "h", 2: "w"}} if dynamic else None
    torch.onnx.export(
        net,
        (torch.rand(1, 3, *size),),
        str(path),
        input_names=list(input_names),
        output_names=["depth"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return net, path


def test_onnx_backend_runs_exported_model(tmp_path, images):
    net, path = _export(tmp_path)
    model = load_mono_depth(path, input_size=(112, 140), batch_size=2)
    assert isinstance(model, OnnxMonoDepth)
    assert (model.input_name, model.output_name) == ("image", "depth")
    out = model.predict(images)
    assert [o.shape for o in out] == [img.shape[:2] for img in images]
    # Same numbers as the torch module on the same pre-processed input.
    x = model._prepare(images[0], (112, 140))[None]
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[0].numpy()
    import cv2

    np.testing.assert_allclose(out[0], cv2.resize(ref, (333, 201), interpolation=cv2.INTER_LINEAR), atol=1e-4)


def test_onnx_dynamic_size_uses_dpt_rule_and_static_size_is_respected(tmp_path, images):
    _, dyn = _export(tmp_path, name="dyn.onnx")
    model = load_mono_depth(dyn, target_size=56)
    assert model.processing_size(201, 333) == (56, 98)
    assert model.predict(images[1:2])[0].shape == (201, 333)
    _, static = _export(tmp_path, name="static.onnx", dynamic=False, size=(64, 96))
    fixed = load_mono_depth(static)
    assert fixed.processing_size(201, 333) == (64, 96) and fixed.batch_size == 1
    assert [o.shape for o in fixed.predict(images)] == [img.shape[:2] for img in images]


def test_onnx_bad_inputs_give_clear_errors(tmp_path):
    _, path = _export(tmp_path)
    with pytest.raises(ValueError, match=r"no input named 'pixel_values'; its inputs are \['image'\]"):
        load_mono_depth(path, input_name="pixel_values")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot load ONNX model .*corrupt.onnx"):
        load_mono_depth(corrupt)
    with pytest.raises(MonoWeightsNotFoundError, match="missing.onnx does not exist"):
        load_mono_depth(tmp_path / "missing.onnx")


def test_given_depth_from_arrays_and_folder(tmp_path, images):
    _, _, disp = data.stereo_motorcycle()
    with np.errstate(divide="ignore"):
        depth = (1000.0 / np.where(np.isfinite(disp), disp, 0)).astype(np.float32)  # inf where unknown
    given = load_mono_depth("given")
    assert isinstance(given, GivenDepth) and given.output_kind == "depth"
    left = data.stereo_motorcycle()[0]
    (out,) = given.predict([left], depths=[depth])
    assert out.shape == left.shape[:2]
    assert np.array_equal(np.isnan(out), ~np.isfinite(disp))
    # From files: 16-bit millimetre PNG, resized to the image with nearest neighbour.
    import cv2

    mm = np.clip(np.nan_to_num(depth, posinf=0) * 1000, 0, 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "frame0.png"), mm)
    from_dir = load_mono_depth("given", depth_dir=tmp_path, scale=0.001)
    (small,) = from_dir.predict([cv2.resize(left, (370, 250))], names=["frame0.jpg"])
    assert small.shape == (250, 370)
    np.testing.assert_allclose(small[10, 10], mm[20, 20] / 1000.0, rtol=1e-6)
    with pytest.raises(ValueError, match="needs the depth itself"):
        given.predict([left])
    with pytest.raises(FileNotFoundError, match="no given depth for 'other'"):
        from_dir.predict([left], names=["other"])


def test_predict_rejects_non_rgb(tiny_da_dir):
    model = load_mono_depth(tiny_da_dir, input_size=70)
    with pytest.raises(ValueError, match="RGB uint8"):
        model.predict([np.zeros((10, 10), np.uint8)])
    with pytest.raises(TypeError, match="list of H x W x 3"):
        model.predict(np.zeros((10, 10, 3), np.uint8))


def test_preprocessing_matches_transformers_image_processor(tiny_da_dir):
    """Our batched torch resize/normalize reproduces the reference DPT processor (PIL) to ~0.3 grey levels."""
    from transformers import DPTImageProcessorPil

    processor = DPTImageProcessorPil(
        size={"height": 518, "width": 518},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    )
    left = data.stereo_motorcycle()[0]
    ref = processor(images=left, return_tensors="pt")["pixel_values"]
    model = load_mono_depth(tiny_da_dir)
    assert model.processing_size(*left.shape[:2]) == tuple(ref.shape[2:]) == (518, 770)
    ours = model.preprocess(left).cpu()
    assert ours.shape == ref.shape
    assert (ours - ref).abs().mean() < 0.01
