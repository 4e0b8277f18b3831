"""Stage-1 stereo synthesis: monocular depth -> disparity -> z-ordered forward splat -> EA inpainting ->
augmentation. ``synthesize_pair`` is the public numpy entry point; ``synthesize_batch`` the batched torch
path used on the fly in training. Procedural scenes with true right views live in ``.procedural``.
"""

from .augment import AugmentConfig, augment_pair, flip_pair
from .inpaint import InpaintResult, disparity_edges, edge_aware_inpaint, nearest_fill, telea_inpaint
from .pipeline import (
    INPAINT_METHODS,
    SynthesisConfig,
    SyntheticPair,
    depth_to_training_disparity,
    sharpen_disparity_edges,
    synthesize_batch,
    synthesize_pair,
)
from .warp import SplatResult, backward_warp, forward_splat

__all__ = [
    "INPAINT_METHODS",
    "AugmentConfig",
    "InpaintResult",
    "SplatResult",
    "SynthesisConfig",
    "SyntheticPair",
    "augment_pair",
    "backward_warp",
    "depth_to_training_disparity",
    "disparity_edges",
    "edge_aware_inpaint",
    "flip_pair",
    "forward_splat",
    "nearest_fill",
    "sharpen_disparity_edges",
    "synthesize_batch",
    "synthesize_pair",
    "telea_inpaint",
]
