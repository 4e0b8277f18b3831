"""Inference runners (torch, onnxruntime, tensorrt) behind one interface, plus export and the engine cache.

>>> from mono2stereo_core.inference import load_runner
>>> runner = load_runner()                      # shipped weights, best backend available (logged)
>>> disparity, confidence = runner(left, right)  # uint8 H x W x 3 -> float32 H x W, disparity in input px

Backends import lazily, so ``import mono2stereo_core.inference`` needs neither torch, onnxruntime nor TensorRT.
"""

from mono2stereo_core.inference.preprocess import InputPlan, plan_input, validate_pair
from mono2stereo_core.inference.runner import (
    BACKENDS,
    StereoRunner,
    choose_backend,
    default_weights_candidates,
    load_runner,
    resolve_model_path,
)

__all__ = [
    "BACKENDS",
    "InputPlan",
    "StereoRunner",
    "choose_backend",
    "default_weights_candidates",
    "load_runner",
    "plan_input",
    "resolve_model_path",
    "validate_pair",
]
