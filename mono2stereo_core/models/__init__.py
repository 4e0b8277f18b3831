"""Stereo networks (``build_model``), their compute cost (``count_macs``) and checkpoints (``save_checkpoint``,
``load_model``)."""

from mono2stereo_core.models.checkpoint import load_model, read_sidecar, save_checkpoint
from mono2stereo_core.models.complexity import count_macs, padded_size
from mono2stereo_core.models.stereo_net import (
    COST_VOLUME_DOWNSAMPLE,
    MODEL_NAMES,
    StereoNet,
    StereoOutput,
    build_from_config,
    build_model,
)

__all__ = [
    "COST_VOLUME_DOWNSAMPLE",
    "MODEL_NAMES",
    "StereoNet",
    "StereoOutput",
    "build_from_config",
    "build_model",
    "count_macs",
    "load_model",
    "padded_size",
    "read_sidecar",
    "save_checkpoint",
]
