"""Checkpoints: bit-exact round trip, sidecar contents, and clear failures on wrong files (never unpickling)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mono2stereo_core.models import build_model, count_macs, load_model, save_checkpoint
from mono2stereo_core.models.checkpoint import CheckpointError

torch.set_num_threads(2)


def _trained_tiny(seed: int = 0):
    """A tiny network whose weights and BatchNorm statistics are not the initial ones."""
    torch.manual_seed(seed)
    model = build_model("m2s_tiny", max_disparity=64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.train()
        model(torch.rand(2, 3, 32, 64), torch.rand(2, 3, 32, 64))  # updates running mean/var
    return model.eval()


def test_round_trip_is_bit_exact(tmp_path):
    model = _trained_tiny()
    path = save_checkpoint(tmp_path / "ckpt" / "tiny.safetensors", model, sidecar={"recipe": {"steps": 3}})
    assert path == tmp_path / "ckpt" / "tiny.safetensors" and path.with_suffix(".json").is_file()
    loaded, sidecar = load_model(path)
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype, key
        assert torch.equal(original[key], restored[key]), key
    left, right = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(model(left, right), loaded(left, right)):
            assert torch.equal(a, b)
    assert sidecar["recipe"] == {"steps": 3}


def test_sidecar_describes_the_network(tmp_path):
    model = _trained_tiny()
    path = save_checkpoint(tmp_path / "tiny.safetensors", model, sidecar={"data_hash": "abc", "command": "make x"})
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["architecture"] == model.config
    assert record["max_disparity"] == 64 and record["stride"] == model.stride
    assert record["num_parameters"] == model.num_parameters
    assert record["gmac_640x480"] == pytest.approx(count_macs(model) / 1e9, abs=1e-3)
    assert record["data_hash"] == "abc" and record["command"] == "make x"
    assert len(record["weights_sha256"]) == 64
    with pytest.raises(ValueError, match="may not override"):
        save_checkpoint(tmp_path / "other.safetensors", model, sidecar={"max_disparity": 192})


def test_pickle_renamed_safetensors_is_rejected_without_unpickling(tmp_path):
    model = _trained_tiny()
    zipped = tmp_path / "torch_save.safetensors"
    torch.save(model.state_dict(), zipped)
    save_checkpoint(tmp_path / "real.safetensors", model)
    # Give the pickle a valid sidecar so that only the weights file can be the reason for the failure.
    zipped.with_suffix(".json").write_text((tmp_path / "real.json").read_text())
    with pytest.raises(CheckpointError, match="torch_save.safetensors is a zip archive"):
        load_model(zipped)

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle was executed')",))

    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(pickle.dumps(Boom()))
    raw.with_suffix(".json").write_text((tmp_path / "real.json").read_text())
    with pytest.raises(CheckpointError, match="raw.safetensors is a Python pickle"):
        load_model(raw)


def test_truncated_or_garbage_files_fail_clearly(tmp_path):
    path = save_checkpoint(tmp_path / "tiny.safetensors", _trained_tiny())
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="tiny.safetensors"):
        load_model(path)
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="only 3 bytes"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")


def test_missing_sidecar_fails_clearly(tmp_path):
    path = save_checkpoint(tmp_path / "tiny.safetensors", _trained_tiny())
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="has no sidecar .*tiny.json"):
        load_model(path)


def test_unknown_architecture_fails_clearly(tmp_path):
    path = save_checkpoint(tmp_path / "tiny.safetensors", _trained_tiny())
    side = path.with_suffix(".json")
    record = json.loads(side.read_text())
    record["architecture"]["name"] = "m2s_huge"
    side.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="unknown stereo model 'm2s_huge'"):
        load_model(path)


def test_weights_of_another_architecture_fail_clearly(tmp_path):
    tiny = save_checkpoint(tmp_path / "tiny.safetensors", _trained_tiny())
    rt = save_checkpoint(tmp_path / "rt.safetensors", build_model("m2s_rt", max_disparity=64))
    # rt's sidecar next to tiny's weights: the file claims an architecture its tensors do not have.
    tiny.with_suffix(".json").write_text(rt.with_suffix(".json").read_text())
    with pytest.raises(RuntimeError, match="weights in .*tiny.safetensors do not match architecture 'm2s_rt'.*wrong shape"):
        load_model(tiny)
    # Same architecture, other disparity range: shapes agree but the sidecar must still be honoured.
    model, record = load_model(rt)
    assert model.max_disparity == 64 and record["architecture"]["name"] == "m2s_rt"
