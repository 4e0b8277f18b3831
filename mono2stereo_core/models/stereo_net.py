"""The Mono2Stereo stereo network family: ``m2s_tiny`` (tests), ``m2s_rt`` (real time, Jetson) and ``m2s_large``.

Pipeline (see docs/network.md for the diagram and measured cost):
shared encoder (1/2, 1/4) -> group-wise correlation volume at 1/4 -> guided 3-D hourglass(es) -> distribution over
disparity bins -> local soft-argmax -> warped-correlation refinement at 1/2 (one or more iterations) -> convex
upsampling to full resolution -> image-guided edge refinement at full resolution. Without the refinement
(``refine_iterations: 0``) the 1/4 estimate is upsampled bilinearly, or with ``discontinuity_px`` > 0 bilinearly
except at depth discontinuities, which keep the nearest cell's value (``blocks.discontinuity_upsample``) or, with
``discontinuity_match``, the near or far surface of the neighbouring cells that the pair matches better
(``blocks.matched_discontinuity_upsample``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mono2stereo_core.models.blocks import (
    CostExcitation,
    DisparityRefinement,
    EdgeRefinement,
    FeatureEncoder,
    Hourglass3d,
    conv3d_bn_relu,
    convex_upsample,
    cost_volume_row_bands,
    discontinuity_upsample,
    groupwise_cost_volume,
    local_soft_argmax,
    matched_discontinuity_upsample,
    windowed_soft_argmax,
)

# The cost volume lives at 1/4 resolution; one bin is this many input pixels.
COST_VOLUME_DOWNSAMPLE = 4
# ImageNet statistics: the encoder sees normalised RGB, callers pass plain [0, 1] RGB.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)

_VARIANTS: dict[str, dict[str, Any]] = {
    # Only for tests: builds in milliseconds, a few thousand parameters.
    "m2s_tiny": dict(
        half_channels=8,
        quarter_channels=16,
        quarter_blocks=1,
        context_channels=16,
        corr_groups=4,
        agg_channels=4,
        hourglasses=1,
        refine_channels=16,
        refine_blocks=1,
        refine_radius=2,
        refine_groups=4,
        refine_iterations=1,
        edge_channels=8,
        argmax_radius=2,
    ),
    # Real-time default: cheap enough to train on a laptop CPU in under an hour and to run on a Jetson.
    "m2s_rt": dict(
        half_channels=16,
        quarter_channels=32,
        quarter_blocks=2,
        # The shipped weights were trained without the 1/8 context branch; enable it with
        # build_model("m2s_rt", context_channels=48) (+0.1 M parameters, +0.95 GMAC) for a new training run.
        context_channels=0,
        corr_groups=8,
        agg_channels=8,
        hourglasses=1,
        refine_channels=24,
        refine_blocks=1,
        refine_radius=2,
        refine_groups=4,
        refine_iterations=1,
        edge_channels=8,
        argmax_radius=2,
    ),
    # Accuracy variant: wider features, stacked hourglasses, iterative refinement at 1/2.
    "m2s_large": dict(
        half_channels=32,
        quarter_channels=96,
        quarter_blocks=4,
        context_channels=128,
        corr_groups=16,
        agg_channels=16,
        hourglasses=2,
        refine_channels=64,
        refine_blocks=4,
        refine_radius=3,
        refine_groups=8,
        refine_iterations=3,
        edge_channels=24,
        argmax_radius=2,
    ),
}

MODEL_NAMES: tuple[str, ...] = tuple(_VARIANTS)

# Settings added after checkpoints were first written, with the value that reproduces those older networks:
# a sidecar without the key describes a network built before the setting existed.
_LEGACY_DEFAULTS: dict[str, Any] = {
    "context_channels": 0,
    "volume_in_kernel": 3,
    "volume_out_kernel": 3,
    "hourglass_upsample": "deconv",
    "edge_refinement": True,
    "working_scale": 1.0,
    "discontinuity_px": 0.0,
    "discontinuity_match": False,
}
# Settings every variant accepts (defaulting to the legacy value) without listing them in _VARIANTS.
_COMMON_SETTINGS = (
    "volume_in_kernel",
    "volume_out_kernel",
    "hourglass_upsample",
    "edge_refinement",
    "working_scale",
    "discontinuity_px",
    "discontinuity_match",
)
# working_scale bounds: below 1/4 nothing of a 640 x 480 image is left to match, above 4 the cost is 16x.
_WORKING_SCALE_RANGE = (0.25, 4.0)


@dataclass
class StereoOutput:
    """Everything a loss needs from one training forward pass.

    - ``disparity``: N x 1 x H x W, final prediction in input pixels (>= 0).
    - ``confidence``: N x 1 x H x W in [0, 1].
    - ``predictions``: list of N x 1 x H x W full-resolution predictions, coarse -> fine (the last one is
      ``disparity``), for the sequence loss.
    - ``log_prob``: N x D x h x w log-distribution over the cost-volume bins (h = H / downsample).
    - ``bin_values``: D values, the input-resolution disparity of each bin.
    - ``downsample``: H / h (not an integer when the network works at ``working_scale`` != 1).
    """

    disparity: Tensor
    confidence: Tensor
    predictions: list[Tensor] = field(default_factory=list)
    log_prob: Tensor | None = None
    bin_values: Tensor | None = None
    downsample: float = COST_VOLUME_DOWNSAMPLE


class StereoNet(nn.Module):
    """Learned stereo matcher for rectified pairs.

    ``forward(left, right)`` takes N x 3 x H x W float RGB in [0, 1] (H, W multiples of ``stride``; the runner
    pads) and returns ``(disparity, confidence)``, both N x 1 x H x W: left-view disparity in input pixels
    (>= 0, at most about ``max_disparity``) and a confidence in [0, 1] (probability mass of the matching
    distribution around the selected disparity).
    """

    def __init__(
        self,
        *,
        name: str,
        max_disparity: int,
        half_channels: int,
        quarter_channels: int,
        quarter_blocks: int,
        context_channels: int,
        corr_groups: int,
        agg_channels: int,
        hourglasses: int,
        refine_channels: int,
        refine_blocks: int,
        refine_radius: int,
        refine_groups: int,
        refine_iterations: int,
        edge_channels: int,
        argmax_radius: int,
        volume_in_kernel: int = 3,
        volume_out_kernel: int = 3,
        hourglass_upsample: str = "deconv",
        edge_refinement: bool = True,
        working_scale: float = 1.0,
        discontinuity_px: float = 0.0,
        discontinuity_match: bool = False,
    ) -> None:
        super().__init__()
        low, high = _WORKING_SCALE_RANGE
        if isinstance(working_scale, bool) or not isinstance(working_scale, (int, float)) or not (
            low <= working_scale <= high
        ):
            raise ValueError(f"working_scale must be a number in [{low}, {high}], instead got {working_scale!r}")
        working_scale = float(working_scale)
        if isinstance(discontinuity_px, bool) or not isinstance(discontinuity_px, (int, float)) or not (
            0.0 <= discontinuity_px < float("inf")
        ):
            raise ValueError(f"discontinuity_px must be a number >= 0 (0: off), instead got {discontinuity_px!r}")
        discontinuity_px = float(discontinuity_px)
        if not isinstance(discontinuity_match, bool):
            raise ValueError(f"discontinuity_match must be true or false, instead got {discontinuity_match!r}")
        if discontinuity_match and discontinuity_px <= 0:
            raise ValueError(
                "discontinuity_match needs discontinuity_px > 0 (it chooses among the coarse cells at the "
                f"discontinuities that threshold finds), instead got discontinuity_px={discontinuity_px}"
            )
        if discontinuity_px > 0 and refine_iterations != 0:
            raise ValueError(
                "discontinuity_px > 0 needs refine_iterations=0 (it replaces the bilinear upsampling of the 1/4 "
                f"estimate, which only a network without the 1/2 stage outputs), instead got refine_iterations={refine_iterations}"
            )
        if not isinstance(edge_refinement, bool):
            raise ValueError(f"edge_refinement must be true or false, instead got {edge_refinement!r}")
        for key, value in dict(volume_in_kernel=volume_in_kernel, volume_out_kernel=volume_out_kernel).items():
            if value not in (1, 3):
                raise ValueError(f"{key} must be 1 or 3, instead got {value!r}")
        step = 2 * COST_VOLUME_DOWNSAMPLE
        if not isinstance(max_disparity, int) or max_disparity < step or max_disparity % step != 0:
            raise ValueError(
                f"max_disparity must be a positive multiple of {step} (the 3-D hourglass halves the "
                f"{COST_VOLUME_DOWNSAMPLE}x-downsampled bins), instead got {max_disparity!r}"
            )
        for key, value in dict(hourglasses=hourglasses, quarter_blocks=quarter_blocks).items():
            if value < 1:
                raise ValueError(f"{key} must be >= 1, instead got {value}")
        if refine_iterations < 0:
            raise ValueError(f"refine_iterations must be >= 0 (0: no 1/2-resolution stage), instead got {refine_iterations}")
        if refine_iterations == 0 and edge_refinement:
            raise ValueError("refine_iterations=0 needs edge_refinement=false (the edge stage refines the 1/2 stage's output)")
        if quarter_channels % corr_groups != 0 or half_channels % refine_groups != 0:
            raise ValueError(
                f"channels must divide into correlation groups, instead got quarter_channels={quarter_channels}, "
                f"corr_groups={corr_groups}, half_channels={half_channels}, refine_groups={refine_groups}"
            )
        self.config: dict[str, Any] = dict(
            name=name,
            max_disparity=max_disparity,
            half_channels=half_channels,
            quarter_channels=quarter_channels,
            quarter_blocks=quarter_blocks,
            context_channels=context_channels,
            corr_groups=corr_groups,
            agg_channels=agg_channels,
            hourglasses=hourglasses,
            refine_channels=refine_channels,
            refine_blocks=refine_blocks,
            refine_radius=refine_radius,
            refine_groups=refine_groups,
            refine_iterations=refine_iterations,
            edge_channels=edge_channels,
            argmax_radius=argmax_radius,
            volume_in_kernel=volume_in_kernel,
            volume_out_kernel=volume_out_kernel,
            hourglass_upsample=hourglass_upsample,
            edge_refinement=edge_refinement,
            working_scale=working_scale,
            discontinuity_px=discontinuity_px,
            discontinuity_match=discontinuity_match,
        )
        # A setting at its legacy value is left out, so configs (and the sidecars that store them) of networks
        # that do not use a later-added feature stay identical to those written before it existed.
        for key, value in _LEGACY_DEFAULTS.items():
            if self.config.get(key) == value:
                del self.config[key]
        self.working_scale = working_scale
        self.discontinuity_px = discontinuity_px
        self.discontinuity_match = discontinuity_match
        # The search range in *input* pixels: a network working on an enlarged pair covers less of the input.
        self.max_disparity: float = max_disparity if working_scale == 1.0 else max_disparity / working_scale
        self.downsample = COST_VOLUME_DOWNSAMPLE
        # 1/4 for the cost volume, and one more halving inside each hourglass.
        self.stride = 2 * COST_VOLUME_DOWNSAMPLE
        self.num_bins = max_disparity // COST_VOLUME_DOWNSAMPLE
        # How the cost volume is computed, not what: row bands (None = cost_volume_row_bands' rule: bands only
        # in ONNX exports). A run-time setting, so it is not part of the config.
        self.cost_volume_bands: int | None = None
        self.corr_groups = corr_groups
        self.argmax_radius = argmax_radius

        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "bin_values",
            torch.arange(self.num_bins, dtype=torch.float32) * COST_VOLUME_DOWNSAMPLE,
            persistent=False,
        )

        self.encoder = FeatureEncoder(
            half_channels=half_channels,
            quarter_channels=quarter_channels,
            quarter_blocks=quarter_blocks,
            context_channels=context_channels,
        )
        self.volume_in = conv3d_bn_relu(corr_groups, agg_channels, kernel=volume_in_kernel)
        self.volume_excite = CostExcitation(volume_channels=agg_channels, feature_channels=quarter_channels)
        self.hourglasses = nn.ModuleList(
            [
                Hourglass3d(channels=agg_channels, feature_channels=quarter_channels, upsample=hourglass_upsample)
                for _ in range(hourglasses)
            ]
        )
        self.volume_out = nn.Conv3d(agg_channels, 1, volume_out_kernel, padding=volume_out_kernel // 2)
        self.refinements = nn.ModuleList(
            [
                DisparityRefinement(
                    feature_channels=half_channels,
                    hidden_channels=refine_channels,
                    radius=refine_radius,
                    groups=refine_groups,
                    num_blocks=refine_blocks,
                    max_disparity=max_disparity,
                )
                for _ in range(refine_iterations)
            ]
        )
        self.upsample_masks = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(refine_channels, refine_channels, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(refine_channels, 9 * 4, 1),
                )
                for _ in range(refine_iterations)
            ]
        )
        # Optional: measured on the shipped m2s_rt, the full-resolution stage changed bad-2 by +0.12 points on
        # motorcycle and +0.04 on held-out procedural scenes (docs/network.md): edge_refinement=False drops it.
        self.edge_refinement = (
            EdgeRefinement(channels=edge_channels, max_disparity=max_disparity) if edge_refinement else None
        )

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_inputs(self, left: Tensor, right: Tensor) -> None:
        if left.dim() != 4 or left.shape[1] != 3:
            raise ValueError(f"left must be N x 3 x H x W RGB, instead got shape {tuple(left.shape)}")
        if right.shape != left.shape:
            raise ValueError(
                f"left and right must have the same shape, instead got {tuple(left.shape)} and {tuple(right.shape)}"
            )
        h, w = left.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"height and width must be multiples of the network stride {self.stride} (pad the input), "
                f"instead got {h} x {w}"
            )

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network matches at for an input of ``height`` x ``width``: the input scaled by
        ``working_scale`` and rounded to the nearest multiple of ``stride`` (the input itself when it is 1)."""
        # int(): under ONNX tracing the sizes arrive as tensors; the exported graph has static shapes anyway.
        height, width = int(height), int(width)
        if self.working_scale == 1.0:
            return height, width
        return tuple(  # type: ignore[return-value]
            max(self.stride, int(round(side * self.working_scale / self.stride)) * self.stride)
            for side in (height, width)
        )

    def forward_train(self, left: Tensor, right: Tensor, *, intermediate: bool = True) -> StereoOutput:
        """Full forward pass returning every intermediate a loss needs; see :class:`StereoOutput`.

        ``intermediate=False`` (inference) upsamples only the last refinement iteration to full resolution;
        ``predictions`` then holds the coarse estimates and the final disparity only.

        With ``working_scale`` != 1 the pair is resized (bilinear) to :meth:`working_size` first and every
        prediction is resized back and rescaled to input pixels, so callers and losses see input-resolution
        maps; ``log_prob`` stays on the network's own 1/4 grid (``downsample`` = H / its height) and
        ``bin_values`` are in input pixels.
        """
        self._check_inputs(left, right)
        h, w = left.shape[-2:]
        n = left.shape[0]
        hw, ww = self.working_size(h, w)
        h, w = int(h), int(w)
        resized = (hw, ww) != (h, w)
        # The input-resolution pair, for matching at the output's own resolution (discontinuity_match).
        left_input, right_input = left, right
        # The pair stacked and normalised at the input size, then resized once: resizing is linear with weights
        # summing to 1, so this equals normalising the resized pair (to float rounding) with fewer pixels to
        # normalise and one Resize instead of two (ONNX Runtime: 0.965x the frame at working scale 1.49).
        pair = (torch.cat((left, right), dim=0) - self.mean) / self.std
        if resized:
            pair = F.interpolate(pair, size=(hw, ww), mode="bilinear", align_corners=False)
        # Disparity is a horizontal distance: working-resolution pixels times this are input pixels.
        to_input = w / ww
        left_n = pair[:n]
        # One encoder pass over the stacked pair: same weights, half the kernel launches.
        f2, f4 = self.encoder(pair)
        left2, right2 = f2[:n], f2[n:]
        left4, right4 = f4[:n], f4[n:]

        bands = cost_volume_row_bands(left4, training=self.training, override=self.cost_volume_bands)
        volume = groupwise_cost_volume(
            left4, right4, num_bins=self.num_bins, groups=self.corr_groups, row_bands=bands
        )
        volume = self.volume_excite(self.volume_in(volume), left4)
        for hourglass in self.hourglasses:
            volume = hourglass(volume, left4)
        logits = self.volume_out(volume).squeeze(1)  # N x D x h/4 x w/4
        # Inference takes the same index and confidence from gathers around the arg-max (cheaper, in ONNX
        # Runtime most); training keeps the window-mask form.
        soft_argmax = local_soft_argmax if self.training else windowed_soft_argmax
        index, log_prob, confidence4 = soft_argmax(logits, radius=self.argmax_radius)
        disparity4 = index * float(COST_VOLUME_DOWNSAMPLE)

        # The plain soft-argmax over *all* bins is supervised as the coarsest prediction: the local window
        # only passes gradient to bins near the current arg-max, so without this term (or the distribution
        # loss) a wrong arg-max far from the truth could only creep towards it one bin at a time.
        global_disparity = (log_prob.exp() * self.bin_values.view(1, -1, 1, 1)).sum(dim=1, keepdim=True)
        predictions = [F.interpolate(global_disparity, size=(hw, ww), mode="bilinear", align_corners=False)]
        # discontinuity_px: the (final) 1/4 estimate goes straight to the input size and input pixels, so no
        # resize afterwards blends its discontinuities again; otherwise it joins the working-resolution maps.
        sharp = None
        if self.discontinuity_match:
            sharp = matched_discontinuity_upsample(
                disparity4 * to_input, left_input, right_input, size=(h, w), threshold=self.discontinuity_px
            )
        elif self.discontinuity_px > 0:
            sharp = discontinuity_upsample(disparity4 * to_input, size=(h, w), threshold=self.discontinuity_px)
        else:
            predictions.append(F.interpolate(disparity4, size=(hw, ww), mode="bilinear", align_corners=False))
        disparity2 = F.interpolate(disparity4, scale_factor=2, mode="bilinear", align_corners=False)
        full = predictions[-1]
        last = len(self.refinements) - 1
        for i, (refine, mask_head) in enumerate(zip(self.refinements, self.upsample_masks)):
            disparity2, hidden = refine(left2, right2, disparity2, scale=2)
            if intermediate or i == last:
                full = convex_upsample(disparity2, mask_head(hidden), factor=2)
                predictions.append(full)
        if self.edge_refinement is not None:
            predictions.append(self.edge_refinement(left_n, full))
        confidence = F.interpolate(confidence4, size=(h, w), mode="bilinear", align_corners=False)
        bin_values = self.bin_values
        if resized:
            predictions = [
                F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False) * to_input for p in predictions
            ]
            bin_values = bin_values * to_input
        if sharp is not None:
            predictions.append(sharp)
        return StereoOutput(
            disparity=predictions[-1],
            confidence=confidence.clamp(0.0, 1.0),
            predictions=predictions,
            log_prob=log_prob,
            bin_values=bin_values,
            downsample=h / log_prob.shape[-2] if resized else COST_VOLUME_DOWNSAMPLE,
        )

    def forward(self, left: Tensor, right: Tensor) -> tuple[Tensor, Tensor]:
        """Inference/export path: ``(disparity, confidence)``, each N x 1 x H x W."""
        out = self.forward_train(left, right, intermediate=False)
        return out.disparity, out.confidence


def build_model(name: str, *, max_disparity: int = 192, **overrides: Any) -> StereoNet:
    """Builds a named variant (``MODEL_NAMES``); ``overrides`` replace individual size settings.

    ``build_model(**model.config)``-style round trips work: ``build_model(cfg["name"], **rest_of_cfg)``.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown stereo model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    settings = dict(_VARIANTS[name])
    unknown = sorted(set(overrides) - set(settings) - set(_COMMON_SETTINGS))
    if unknown:
        raise ValueError(f"unknown settings {unknown} for model {name!r}; valid settings: {sorted(settings)}")
    settings.update(overrides)
    return StereoNet(name=name, max_disparity=max_disparity, **settings)


def build_from_config(config: dict[str, Any]) -> StereoNet:
    """Rebuilds a network from its ``config`` dict (as stored in a checkpoint sidecar)."""
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"a model config must be a dict with a 'name' key, instead got {config!r}")
    rest = {k: v for k, v in config.items() if k not in ("name", "max_disparity")}
    for key, value in _LEGACY_DEFAULTS.items():
        rest.setdefault(key, value)
    return build_model(config["name"], max_disparity=int(config.get("max_disparity", 192)), **rest)


# Architecture settings a checkpoint can be converted across (:func:`convert_state_dict`): the fast volume
# aggregation starts from a trained network's 3x3x3 / transposed-conv weights.
CONVERTIBLE_SETTINGS = (*_COMMON_SETTINGS, "refine_iterations")


def convert_state_dict(
    tensors: dict[str, Tensor], found: dict[str, Any], wanted: dict[str, Any]
) -> dict[str, Tensor]:
    """Turns the weights of network ``found`` (a config) into a warm start for ``wanted``, which may differ
    only in :data:`CONVERTIBLE_SETTINGS`, from the 3x3x3 / ``deconv`` values to 1 / ``trilinear``, from
    ``edge_refinement`` true to false (its weights are dropped: the network then ends at the convex upsampling),
    in ``refine_iterations`` (each added iteration, and its upsampling mask, starts as a copy of the last trained
    one: the same update applied again; fewer iterations drop the last ones, down to 0 = the network ends at the
    1/4 cost volume's estimate), in ``working_scale`` (no weights change: the same network on a resized pair) and
    in ``discontinuity_px`` and ``discontinuity_match`` (no weights: how the 1/4 estimate is upsampled).

    A 3x3x3 kernel becomes the 1x1x1 kernel with the same response to a locally constant volume (the sum of
    its taps); a stride-2 transposed conv becomes the 1x1x1 conv after trilinear upsampling with the same mean
    response (each tap reaches one output in eight: sum of taps / 8). The result is a starting point for
    fine-tuning, not an equivalent network.
    """
    f = {**_LEGACY_DEFAULTS, **found}
    w = {**_LEGACY_DEFAULTS, **wanted}
    differing = sorted(k for k in set(f) | set(w) if f.get(k) != w.get(k))
    bad = [k for k in differing if k not in CONVERTIBLE_SETTINGS]
    if bad:
        raise ValueError(f"cannot convert weights across {bad}; only {list(CONVERTIBLE_SETTINGS)} convert")
    for key in differing:
        if key == "refine_iterations" and int(f[key]) == 0:
            raise ValueError("refine_iterations cannot grow from 0: there is no trained iteration to copy")
        if key in ("refine_iterations", "working_scale", "discontinuity_px", "discontinuity_match"):
            continue
        if (f[key], w[key]) not in ((3, 1), ("deconv", "trilinear"), (True, False)):
            raise ValueError(
                f"{key}: only 3 -> 1, deconv -> trilinear, true -> false, refine_iterations and working_scale "
                f"convert, instead got {f[key]!r} -> {w[key]!r}"
            )
    out = dict(tensors)
    if "refine_iterations" in differing and int(w["refine_iterations"]) < int(f["refine_iterations"]):
        kept = int(w["refine_iterations"])
        for prefix in ("refinements", "upsample_masks"):
            for name in [k for k in tensors if k.startswith(f"{prefix}.")]:
                if int(name.split(".")[1]) >= kept:
                    del out[name]
    elif "refine_iterations" in differing:
        last = int(f["refine_iterations"]) - 1
        for added in range(last + 1, int(w["refine_iterations"])):
            for prefix in ("refinements", "upsample_masks"):
                source = f"{prefix}.{last}."
                for name in [k for k in tensors if k.startswith(source)]:
                    out[f"{prefix}.{added}.{name[len(source):]}"] = tensors[name].clone()
    if "edge_refinement" in differing:
        for name in [k for k in tensors if k.startswith("edge_refinement.")]:
            del out[name]
    if "volume_in_kernel" in differing:
        out["volume_in.0.weight"] = tensors["volume_in.0.weight"].sum(dim=(2, 3, 4), keepdim=True)
    if "volume_out_kernel" in differing:
        out["volume_out.weight"] = tensors["volume_out.weight"].sum(dim=(2, 3, 4), keepdim=True)
    if "hourglass_upsample" in differing:
        for name in [k for k in tensors if k.endswith(".up.0.weight")]:
            deconv = tensors[name]  # in x out x 3 x 3 x 3
            del out[name]
            out[name.replace(".up.0.weight", ".up.0.conv.weight")] = (
                deconv.sum(dim=(2, 3, 4)).t().contiguous()[..., None, None, None] / 8.0
            )
    return out
