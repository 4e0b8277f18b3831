"""Runners on the real Middlebury motorcycle pair: padding exactness, torch/ONNX Runtime parity, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import skimage.data
import torch
from torch import nn

from mono2stereo_core.inference import load_runner, resolve_model_path, runner
from mono2stereo_core.inference.export import export_onnx
from mono2stereo_core.inference.onnx_runner import OnnxRunner
from mono2stereo_core.inference.preprocess import to_network
from mono2stereo_core.inference.torch_runner import TorchRunner
from mono2stereo_core.models import build_model, save_checkpoint

SHIPPED = Path(__file__).resolve().parents[1] / "weights" / "m2s_rt.safetensors"
# The accuracy configuration's network (docs/inference.md): the sixth session's default, with its 1/2-resolution
# refinement, shipped beside the eighth session's default.
REFINED = SHIPPED.with_name("m2s_rt_refined.safetensors")


@pytest.fixture(scope="module", autouse=True)
def _few_threads():
    # The CI machine has 2 cores shared with other jobs; oversubscription makes torch slower, not faster.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def motorcycle():
    left, right, _ = skimage.data.stereo_motorcycle()
    return left, right


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("m2s_tiny", max_disparity=64)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, sidecar={"recipe": "test"})


@pytest.fixture(scope="module")
def rt_model():
    """The shipped real-time weights when present, else a seeded random m2s_rt (same graph, same ops)."""
    if SHIPPED.is_file():
        from mono2stereo_core.models import load_model

        return load_model(SHIPPED, device="cpu")[0]
    torch.manual_seed(0)
    return build_model("m2s_rt", max_disparity=192).eval()


@pytest.fixture(scope="module")
def rt_onnx(rt_model, tmp_path_factory):
    return export_onnx(rt_model, tmp_path_factory.mktemp("onnx") / "rt_744x504.onnx", height=504, width=744)


def test_padding_is_exact_in_the_unpadded_region(tiny_checkpoint, motorcycle):
    left, right = motorcycle
    # The network's own values (occlusion_fill, the runner's default post-processing, off).
    run = load_runner(tiny_checkpoint, backend="torch", device="cpu", occlusion_fill=False)
    disparity, confidence = run(left, right)
    assert disparity.shape == confidence.shape == (500, 741)
    assert disparity.dtype == confidence.dtype == np.float32
    # Independent reference: pad with numpy's edge mode to 744 x 504 and run the network directly.
    padded = [np.pad(im, ((0, 4), (0, 3), (0, 0)), mode="edge").astype(np.float32) / 255.0 for im in (left, right)]
    tensors = [torch.from_numpy(p.transpose(2, 0, 1)[None].copy()) for p in padded]
    with torch.inference_mode():
        ref_disp, ref_conf = run.model(*tensors)
    np.testing.assert_array_equal(disparity, ref_disp[0, 0, :500, :741].numpy())
    np.testing.assert_array_equal(confidence, ref_conf[0, 0, :500, :741].numpy())


def test_fp32_switches_tf32_off_only_inside_and_restores_it():
    from mono2stereo_core.inference.torch_runner import _ieee_fp32

    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with pytest.raises(RuntimeError, match="inside"):
            with _ieee_fp32(True):
                assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
                raise RuntimeError("inside")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        with _ieee_fp32(False):  # fp16 and CPU runners leave the settings alone
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        # Two runners in two threads whose forwards overlap (A enters, B enters, A leaves, B leaves): TF32 stays
        # off until the last one leaves, then the settings from before come back.
        first, second = _ieee_fp32(True), _ieee_fp32(True)
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        second.__exit__(None, None, None)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp32_forward_runs_without_tf32(tiny_checkpoint, motorcycle):
    seen = []
    run = load_runner(tiny_checkpoint, backend="torch", device="cuda")
    forward = run.model.forward

    def recording(*args):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return forward(*args)

    run.model.forward = recording
    torch.backends.cudnn.allow_tf32 = True
    run(*motorcycle)
    assert seen == [(False, False)] and torch.backends.cudnn.allow_tf32


def test_torch_and_onnxruntime_agree_on_motorcycle(rt_model, rt_onnx, motorcycle):
    left, right = motorcycle
    torch_runner, ort_runner = TorchRunner(rt_model, device="cpu"), OnnxRunner(rt_onnx)
    assert ort_runner.input_size == (744, 504) and ort_runner.stride == rt_model.stride
    # With the default occlusion fill a pixel right at the z-buffer's margin may flip between backends.
    (fill_td, _), (fill_od, fill_oc) = torch_runner(left, right), ort_runner(left, right)
    assert np.mean(np.abs(fill_td - fill_od) > 0.01) < 0.001 and 0.02 < np.mean(fill_oc == 0) < 0.5
    # The networks themselves: fp32 parity.
    torch_runner.occlusion_fill = ort_runner.occlusion_fill = False
    torch_disp, torch_conf = torch_runner(left, right)
    ort_disp, ort_conf = ort_runner(left, right)
    diff = np.abs(torch_disp - ort_disp)
    # A hard arg-max picks the disparity window; with near-flat (untrained) cost distributions a 1e-6 kernel
    # difference could flip it, so the message reports how many pixels disagree, not only the maximum.
    assert diff.max() < 0.01, f"max {diff.max():.4f} px, {np.mean(diff > 0.01) * 100:.3f} % of pixels > 0.01 px"
    assert np.abs(torch_conf - ort_conf).max() < 1e-3
    assert np.isfinite(ort_disp).all()
    # Idle ORT threads do not busy-wait by default (they would steal the node's post-processing cores).
    key = "session.intra_op.allow_spinning"
    assert ort_runner.session.get_session_options().get_session_config_entry(key) == "0"
    spinning = OnnxRunner(rt_onnx, allow_spinning=True)
    spinning.occlusion_fill = False
    assert spinning.session.get_session_options().get_session_config_entry(key) == "1"
    np.testing.assert_allclose(spinning(left, right)[0], ort_disp, atol=1e-4)


def test_lr_check_agrees_between_torch_and_onnxruntime(rt_model, rt_onnx, motorcycle):
    """The second, mirrored pass goes through each backend's own infer(): same result on both."""
    left, right = motorcycle
    torch_runner, ort_runner = TorchRunner(rt_model, device="cpu"), OnnxRunner(rt_onnx)
    torch_runner.lr_check = ort_runner.lr_check = True
    (td, tc), (od, oc) = torch_runner(left, right), ort_runner(left, right)
    # A pixel right at the 2 px tolerance may flip between backends; nothing else may differ.
    assert np.mean(np.abs(td - od) > 0.01) < 0.005 and np.mean((tc == 0) != (oc == 0)) < 0.005
    assert 0.02 < np.mean(oc == 0) < 0.3


def test_input_scale_runs_the_network_on_the_resized_pair_and_maps_back(tiny_checkpoint, motorcycle, rt_onnx):
    left, right = motorcycle  # 500 x 741
    runner = load_runner(tiny_checkpoint, backend="torch", input_scale=1.5, occlusion_fill=False)
    assert runner.input_scale == 1.5 and "input scale 1.5" in runner.description
    plan = runner.plan(height=500, width=741)
    assert (plan.net_height, plan.net_width) == (752, 1112)  # 750 and 1111.5 rounded up to the stride 8
    assert plan.disparity_scale == pytest.approx(741 / 1112)
    seen = []
    infer = runner.infer
    runner.infer = lambda a, b: seen.append(a.shape) or infer(a, b)  # noqa: E731
    disparity, confidence = runner(left, right)
    assert seen == [(1, 3, 752, 1112)] and disparity.shape == confidence.shape == (500, 741)
    # Network pixels -> input pixels: the same network output, scaled by the width ratio.
    net_disparity, _ = infer(*to_network(left, right, plan))
    expected = cv2.resize(net_disparity[0, 0], (741, 500), interpolation=cv2.INTER_LINEAR) * (741 / 1112)
    np.testing.assert_allclose(disparity, expected, rtol=1e-5, atol=1e-5)
    assert runner.max_disparity_at(width=741) == pytest.approx(64 * 741 / 1112)
    with pytest.raises(ValueError, match="input_scale must be in"):
        load_runner(tiny_checkpoint, backend="torch", input_scale=5)
    with pytest.raises(ValueError, match="export it at the scaled size"):
        load_runner(rt_onnx, backend="onnxruntime", input_scale=1.5)


@pytest.mark.skipif(not SHIPPED.is_file(), reason="weights/m2s_rt.safetensors not in this checkout")
def test_input_scale_one_and_a_half_is_more_accurate_on_the_real_pairs():
    """The documented trade (docs/inference.md, 'Accuracy options'): both shipped networks at 1.5x input have
    fewer bad non-occluded pixels on both real pairs than at 1x; the refined network also fewer bad pixels
    overall on both, the default (which already matches at 1.49x inside the network) on motorcycle only.
    Measured 2026-12-03, eleventh session: the default's non-occluded bad-2 4.97 -> 3.76 on motorcycle, 3.96 ->
    3.52 on Aloe, all-pixel 10.77 -> 9.89 and 11.65 -> 12.30 (Aloe's occlusions grow); m2s_rt_refined's
    non-occluded 8.03 -> 5.24, 7.35 -> 5.24. (Tenth session, before discontinuity_match: 5.34 -> 3.97 and
    4.65 -> 3.98; the matched 1x output gained more on Aloe than the 1.5x one.)"""
    from mono2stereo_core.datasets_gt import load_gt_dataset
    from mono2stereo_core.evaluation import evaluate_disparity

    for weights, drop in ((SHIPPED, 0.3), (REFINED, 1.5)):
        plain = load_runner(weights, backend="torch")
        scaled = load_runner(weights, backend="torch", input_scale=1.5)
        for sample in load_gt_dataset("real"):
            base = evaluate_disparity(plain(sample.left, sample.right)[0], sample.disparity)
            better = evaluate_disparity(scaled(sample.left, sample.right)[0], sample.disparity)
            assert better["noc"].bad2 < base["noc"].bad2 - drop, (weights.name, sample.name)
            if weights == REFINED or sample.name == "motorcycle":
                assert better["all"].bad2 < base["all"].bad2, (weights.name, sample.name, base["all"].bad2, better["all"].bad2)


def test_default_puts_few_points_between_surfaces_on_the_real_pairs():
    """The default's discontinuity-preserving upsampling (discontinuity_px 6, ninth session): at most 2 % of the
    ground-truth pixels of each real pair are predicted between two surfaces (flying points in the cloud;
    measured 2026-11-26: 1.39 % on motorcycle, 1.22 % on Aloe for the tenth session's file; 1.46 / 1.14 % for the
    ninth's; the same weights upsampled bilinearly 2.45 / 3.10 %)."""
    from mono2stereo_core.datasets_gt import load_gt_dataset
    from mono2stereo_core.evaluation import flying_pixel_mask

    runner = load_runner(SHIPPED, backend="torch")
    for sample in load_gt_dataset("real"):
        disparity, _ = runner(sample.left, sample.right)
        valid = np.isfinite(sample.disparity)
        percent = 100.0 * flying_pixel_mask(disparity, sample.disparity).sum() / valid.sum()
        assert percent < 2.0, (sample.name, percent)


@pytest.mark.parametrize(
    ("weights", "scale"),
    [pytest.param(REFINED, 1.75, id="refined@1.75"), pytest.param(SHIPPED, 1.5, id="default@1.5")],
)
def test_accuracy_configurations_meet_the_targets_on_motorcycle(weights, scale):
    """README's accuracy configurations: the default at input_scale 1.5 (18.3 GMAC at 640x480; tenth session:
    9.94 / 3.97 / 5.63) and m2s_rt_refined at 1.75 (23.5 GMAC; 9.40 / 4.45 / 6.02). On the real motorcycle pair
    bad-2 <= 10 % over all pixels, <= 8 % non-occluded, and below OpenCV SGBM on the pixels SGBM predicts
    (6.06), SGBM run on the same pair in the same test."""
    from mono2stereo_core.datasets_gt import load_motorcycle
    from mono2stereo_core.evaluation import evaluate_disparity, sgbm_disparity, sgbm_num_disparities

    if not weights.is_file():
        pytest.skip(f"{weights.name} not in this checkout")
    sample = load_motorcycle()
    gt = sample.disparity
    sgbm = sgbm_disparity(sample.left, sample.right, num_disparities=sgbm_num_disparities(float(np.nanmax(gt))))
    ours, _ = load_runner(weights, backend="torch", input_scale=scale)(sample.left, sample.right)
    r = evaluate_disparity(ours, gt, compare=sgbm)
    assert r["all"].bad2 <= 10.0 and r["noc"].bad2 <= 8.0, (r["all"].bad2, r["noc"].bad2)
    assert r["both"].bad2 < r["compare_both"].bad2, (r["both"].bad2, r["compare_both"].bad2)


def test_resize_path_rescales_disparity_to_input_pixels():
    class ConstantDisparity(nn.Module):
        """Reports 10 network pixels everywhere: the runner must turn that into 10 * W / Wn input pixels."""

        stride, max_disparity = 8, 64

        def forward(self, left, right):
            n, _, h, w = left.shape
            return torch.full((n, 1, h, w), 10.0), left.mean(dim=1, keepdim=True)

    image = np.full((500, 741, 3), 128, np.uint8)
    run = TorchRunner(ConstantDisparity(), device="cpu", input_size=(368, 248))
    run.occlusion_fill = False  # else the columns left of x = d (out of the right view) get confidence 0
    assert run.plan(height=500, width=741).mode == "resize"
    disparity, confidence = run(image, image)
    assert disparity.shape == (500, 741)
    np.testing.assert_allclose(disparity, 10.0 * 741 / 368, rtol=1e-5)
    np.testing.assert_allclose(confidence, 128 / 255, rtol=1e-5)
    assert run.max_disparity_at(width=741) == pytest.approx(64 * 741 / 368)
    # An image that pads to the network size is padded, not resized.
    assert run.plan(height=243, width=361).mode == "pad"


def test_grayscale_pair_is_expanded_to_rgb(tiny_checkpoint, motorcycle):
    left, right = (np.ascontiguousarray(im[:96, :128, 1]) for im in motorcycle)
    run = load_runner(tiny_checkpoint, backend="torch")
    gray = run(left, right)
    rgb = run(np.repeat(left[:, :, None], 3, 2), np.repeat(right[:, :, None], 3, 2))
    np.testing.assert_array_equal(gray[0], rgb[0])
    np.testing.assert_array_equal(run(left[:, :, None], right[:, :, None])[0], rgb[0])


@pytest.mark.parametrize(
    ("left", "right", "message"),
    [
        (np.zeros((40, 64, 3), np.uint8), np.zeros((40, 48, 3), np.uint8), "same size"),
        (np.zeros((40, 64), np.uint8), np.zeros((40, 64, 3), np.uint8), "both be colour or both grayscale"),
        (np.zeros((0, 64, 3), np.uint8), np.zeros((0, 64, 3), np.uint8), "left image is empty"),
        (np.zeros((40, 64, 3), np.float32), np.zeros((40, 64, 3), np.float32), "dtype float32; expected uint8"),
        (np.zeros((40, 64, 3), np.uint16), np.zeros((40, 64, 3), np.uint16), "instead got uint16"),
        (np.zeros((40, 64, 4), np.uint8), np.zeros((40, 64, 4), np.uint8), r"instead got shape \(40, 64, 4\)"),
        ([[0]], np.zeros((40, 64, 3), np.uint8), "must be a numpy array, instead got list"),
    ],
    ids=["size", "gray-vs-colour", "empty", "float", "uint16", "rgba", "list"],
)
def test_bad_input_is_refused_with_a_clear_message(tiny_checkpoint, left, right, message):
    run = load_runner(tiny_checkpoint, backend="torch")
    with pytest.raises(ValueError, match=message):
        run(left, right)


def test_float_images_accepted_only_when_allowed(tiny_checkpoint, motorcycle):
    left, right = (im[:64, :96] for im in motorcycle)
    run = load_runner(tiny_checkpoint, backend="torch", allow_float=True)
    as_float = run(left.astype(np.float32) / 255, right.astype(np.float32) / 255)[0]
    np.testing.assert_allclose(as_float, run(left, right)[0], atol=1e-4)


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        load_runner(tmp_path / "nope.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises((ValueError, RuntimeError), match="corrupt.safetensors"):
        load_runner(corrupt)
    bad_onnx = tmp_path / "corrupt.onnx"
    bad_onnx.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(RuntimeError, match="corrupt.onnx is not a readable ONNX model"):
        load_runner(bad_onnx)
    with pytest.raises(ValueError, match="unsupported extension '.pt'"):
        (tmp_path / "model.pt").write_bytes(b"x")
        load_runner(tmp_path / "model.pt")


def test_onnx_with_unexpected_input_names_is_refused(tmp_path):
    class Renamed(nn.Module):
        def forward(self, a, b):
            return (a - b).mean(dim=1, keepdim=True), a.mean(dim=1, keepdim=True)

    path = tmp_path / "renamed.onnx"
    x = torch.zeros(1, 3, 16, 16)
    torch.onnx.export(Renamed(), (x, x), str(path), input_names=["image_left", "image_right"],
                      output_names=["disparity", "confidence"], dynamo=False)
    onnx.checker.check_model(str(path))
    with pytest.raises(ValueError, match=r"renamed.onnx: expected inputs \['left', 'right'\], instead got"):
        load_runner(path)


def test_auto_backend_is_logged_with_reason(tiny_checkpoint, rt_onnx, caplog):
    with caplog.at_level(logging.INFO, logger="mono2stereo_core.inference"):
        assert load_runner(rt_onnx).backend == "onnxruntime"
        assert load_runner(tiny_checkpoint).backend == "torch"
    messages = [r.getMessage() for r in caplog.records]
    assert any("backend onnxruntime" in m and "TensorRT not used" in m for m in messages), messages
    where = "CUDA" if torch.cuda.is_available() else "CPU"
    assert any("backend torch" in m and f"checkpoint runs on torch ({where})" in m for m in messages), messages


def test_backend_and_file_mismatches(tiny_checkpoint, rt_onnx):
    with pytest.raises(ValueError, match="training/export.py --checkpoint"):
        load_runner(tiny_checkpoint, backend="onnxruntime")
    with pytest.raises(ValueError, match="backend 'torch' needs the .safetensors"):
        load_runner(rt_onnx, backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_runner(rt_onnx, backend="openvino")
    with pytest.raises(ValueError, match="differs from the static size"):
        load_runner(rt_onnx, input_size=(640, 480))
    with pytest.raises(ValueError, match="fp16 inference needs a CUDA device"):
        load_runner(tiny_checkpoint, backend="torch", precision="fp16", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would build an engine instead")
def test_tensorrt_backend_without_gpu_fails_clearly(rt_onnx, tmp_path):
    with pytest.raises(RuntimeError, match="(CUDA GPU|tensorrt)"):
        load_runner(rt_onnx, backend="tensorrt", engine_cache_dir=tmp_path)


def test_default_weights_env_var_and_clear_error(tiny_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("MONO2STEREO_WEIGHTS", str(tiny_checkpoint))
    assert resolve_model_path(None) == tiny_checkpoint
    assert load_runner().backend == "torch"
    missing = [tmp_path / "a" / "m2s_rt.safetensors", tmp_path / "b" / "m2s_rt.safetensors"]
    monkeypatch.setattr(runner, "default_weights_candidates", lambda: missing)
    with pytest.raises(FileNotFoundError, match=r"(?s)default weights m2s_rt.safetensors were not found.*a/m2s_rt"):
        resolve_model_path(None)
