"""Checkpoints: ``safetensors`` weights plus a JSON sidecar that says how to rebuild the network.

Nothing here unpickles: the weights are read only after the file's header has been checked to be a safetensors
header, so a ``torch.save`` archive renamed ``.safetensors`` is rejected before any byte of it is interpreted.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mono2stereo_core.models.complexity import count_macs
from mono2stereo_core.models.stereo_net import StereoNet, build_from_config

SIDECAR_FORMAT = "mono2stereo-checkpoint"
SIDECAR_VERSION = 1
# Keys save_checkpoint owns; a caller's sidecar may not overwrite them with different values.
_RESERVED = ("format", "version", "architecture", "max_disparity", "stride", "num_parameters", "gmac_640x480",
             "weights_file", "weights_sha256")
# A safetensors header is JSON; 100 MB is far above any real header and rejects garbage length fields.
_MAX_HEADER_BYTES = 100_000_000
_MACS_CACHE: dict[str, int] = {}


class CheckpointError(ValueError):
    """A checkpoint file or its sidecar is missing, malformed, or does not match the network it describes."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar JSON of a weights file: same name, ``.json`` suffix."""
    return Path(path).with_suffix(".json")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # Write to a temporary file in the same directory and rename: a crash never leaves a half-written file
    # under the final name (the trainer checkpoints on SIGTERM).
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gmac_640x480(model: StereoNet) -> float:
    key = json.dumps(model.config, sort_keys=True)
    if key not in _MACS_CACHE:
        _MACS_CACHE[key] = count_macs(model, height=480, width=640)
    return round(_MACS_CACHE[key] / 1e9, 3)


def save_checkpoint(path: str | os.PathLike, model: StereoNet, *, sidecar: dict[str, Any] | None = None) -> Path:
    """Writes ``model.state_dict()`` to ``path`` (safetensors) and a sidecar JSON to ``path.with_suffix('.json')``.

    The sidecar holds ``architecture`` (``model.config``), ``max_disparity``, ``stride``, ``num_parameters``,
    ``gmac_640x480``, the weights' file name and SHA-256, plus every key of ``sidecar`` (training recipe, data
    hash, reproduce command; must be JSON-serialisable). Both files are written atomically. Returns the weights
    path.
    """
    path = Path(path)
    if path.suffix == ".json":
        raise ValueError(f"checkpoint weights path must not end in .json (that is the sidecar), instead got {path}")
    if not isinstance(model, StereoNet):
        raise TypeError(f"save_checkpoint expects a StereoNet, instead got {type(model).__name__}")
    extra = dict(sidecar or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage; clone so the file holds exactly these values.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": SIDECAR_FORMAT, "architecture": json.dumps(model.config, sort_keys=True)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "architecture": dict(model.config),
        "max_disparity": int(model.max_disparity),
        "stride": int(model.stride),
        "num_parameters": int(model.num_parameters),
        "gmac_640x480": _gmac_640x480(model),
        "weights_file": path.name,
        "weights_sha256": _sha256(path),
    }
    for key, value in extra.items():
        if key in _RESERVED and key in record and value != record[key]:
            raise ValueError(
                f"sidecar key {key!r} is written by save_checkpoint ({record[key]!r}); "
                f"the caller may not override it, instead got {value!r}"
            )
        record[key] = value
    try:
        text = json.dumps(record, indent=2, sort_keys=True)
    except TypeError as exc:
        raise ValueError(f"sidecar for {path} must be JSON-serialisable: {exc}") from exc
    _atomic_write_bytes(sidecar_path(path), (text + "\n").encode())
    return path


def check_safetensors_header(path: str | os.PathLike) -> None:
    """Raises :class:`CheckpointError` unless ``path`` starts with a well-formed safetensors header.

    The check reads only the 8-byte length and the JSON header; it recognises the common wrong files by name
    (a ``torch.save`` zip archive, a raw pickle) so the error tells the user what they actually have.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights file {path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if head[:4] == b"PK\x03\x04":
            raise CheckpointError(
                f"{path} is a zip archive (a torch.save pickle checkpoint?), not safetensors; "
                "pickles are never loaded: convert it with safetensors.torch.save_file on a trusted machine"
            )
        if head[:1] == b"\x80":
            raise CheckpointError(f"{path} is a Python pickle, not safetensors; pickles are never loaded")
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file: only {size} bytes long")
        (header_len,) = struct.unpack("<Q", head)
        if header_len < 2 or header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(
                f"{path} is not a safetensors file: header length field {header_len} does not fit a {size}-byte file"
            )
        header = f.read(header_len)
    try:
        parsed = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{path} is not a safetensors file: header is a {type(parsed).__name__}, not an object")


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates the sidecar JSON of weights file ``path``."""
    path = Path(path)
    side = sidecar_path(path)
    if not side.is_file():
        raise CheckpointError(
            f"checkpoint {path} has no sidecar {side}; the sidecar says which architecture the weights belong to, "
            "so the weights cannot be loaded without it"
        )
    try:
        record = json.loads(side.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"sidecar {side} is not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("architecture"), dict):
        raise CheckpointError(f"sidecar {side} has no 'architecture' object; got keys {sorted(record)[:10]}")
    return record


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[StereoNet, dict[str, Any]]:
    """Rebuilds the network described by the sidecar of ``path`` and loads its weights with ``strict=True``.

    Returns ``(model in eval mode on device, sidecar dict)``. Raises ``FileNotFoundError`` for a missing weights
    file, :class:`CheckpointError` (a ``ValueError``) for a non-safetensors file, a missing/invalid sidecar or an
    unknown architecture, and ``RuntimeError`` naming the keys when the weights do not fit the architecture.
    """
    path = Path(path)
    check_safetensors_header(path)
    record = read_sidecar(path)
    try:
        model = build_from_config(record["architecture"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"sidecar {sidecar_path(path)} describes an architecture that cannot be built: {exc}") from exc
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is a corrupt safetensors file: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(tensors))
        if tensors[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        name = record["architecture"].get("name")
        raise RuntimeError(
            f"weights in {path} do not match architecture {name!r} from its sidecar "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} wrong shape); "
            f"missing: {missing[:5]}, unexpected: {unexpected[:5]}, wrong shape: {mismatched[:5]}"
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model.to(device), record
