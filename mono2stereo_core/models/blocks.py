"""Building blocks of the stereo networks: 2-D/3-D conv units, feature encoder, cost volumes, aggregation,
disparity regression, warping correlation and convex upsampling.

Every block uses only ops that export to ONNX opset 17 with static shapes and map onto native TensorRT layers
(Conv, ConvTranspose, BatchNorm folded into conv, ReLU, Slice, Pad, Mul, ReduceMean, ArgMax, Gather,
Floor, Resize). No data-dependent shapes, no loops over the batch, no in-place index assignment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv2d_bn_relu(in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 conv + BatchNorm + ReLU. BatchNorm folds into the conv at export, so it costs nothing at run time."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv3d_bn_relu(in_channels: int, out_channels: int, *, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    """``kernel``^3 conv over (disparity, height, width) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut; keeps channels and resolution: N x C x H x W -> same."""

    def __init__(self, channels: int, *, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = conv2d_bn_relu(channels, channels, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.norm2 = nn.BatchNorm2d(channels)
        # Zero-initialised last norm: every residual block starts as the identity, which makes a freshly
        # built network train stably from the first step without warm-up.
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.norm2(self.conv2(self.conv1(x))))


class FeatureEncoder(nn.Module):
    """Shared-weight image encoder producing features at 1/2 and 1/4 of the input resolution.

    Input N x 3 x H x W (already normalised), H and W multiples of 8. Outputs ``(f2, f4)``: N x c2 x H/2 x W/2
    and N x c4 x H/4 x W/4. It must downsample by exactly 2 and 4 so that the cost volume's bin ``d`` means
    ``4 d`` input pixels. With ``context_channels > 0`` a 1/8 branch (two residual blocks) is added back into
    the 1/4 features: it triples the receptive field for a fraction of the cost, which is what lets a pixel on
    a textureless wall borrow a match from the wall's textured border.
    """

    def __init__(
        self, *, half_channels: int, quarter_channels: int, quarter_blocks: int, context_channels: int = 0
    ) -> None:
        super().__init__()
        if quarter_blocks < 1:
            raise ValueError(f"quarter_blocks must be >= 1, instead got {quarter_blocks}")
        if context_channels < 0:
            raise ValueError(f"context_channels must be >= 0, instead got {context_channels}")
        self.stem = nn.Sequential(
            conv2d_bn_relu(3, half_channels, stride=2),
            ResidualBlock(half_channels),
        )
        blocks: list[nn.Module] = [conv2d_bn_relu(half_channels, quarter_channels, stride=2)]
        # Alternating dilation widens the receptive field (textureless regions need context) at no extra cost.
        blocks += [ResidualBlock(quarter_channels, dilation=1 + (i % 2)) for i in range(quarter_blocks)]
        self.quarter = nn.Sequential(*blocks)
        self.context: nn.Module | None = None
        self.context_out: nn.Module | None = None
        if context_channels > 0:
            self.context = nn.Sequential(
                conv2d_bn_relu(quarter_channels, context_channels, stride=2),
                ResidualBlock(context_channels),
                ResidualBlock(context_channels, dilation=2),
            )
            self.context_out = nn.Sequential(
                nn.Conv2d(context_channels, quarter_channels, 1, bias=False),
                nn.BatchNorm2d(quarter_channels),
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f2 = self.stem(x)
        f4 = self.quarter(f2)
        if self.context is not None and self.context_out is not None:
            f8 = self.context_out(self.context(f4))
            f4 = F.relu(f4 + F.interpolate(f8, scale_factor=2.0, mode="bilinear", align_corners=False))
        return f2, f4


def groupwise_correlation(left: Tensor, right: Tensor, *, groups: int) -> Tensor:
    """Mean of channel-wise products within ``groups`` channel groups: N x C x ... (both) -> N x G x ..."""
    n, c = left.shape[:2]
    if c % groups != 0:
        raise ValueError(f"feature channels ({c}) must be divisible by the correlation groups, instead got {groups}")
    prod = left * right
    return prod.reshape(n, groups, c // groups, *prod.shape[2:]).mean(dim=2)


def groupwise_cost_volume(
    left: Tensor, right: Tensor, *, num_bins: int, groups: int, row_bands: int = 1
) -> Tensor:
    """Group-wise correlation cost volume over integer horizontal shifts.

    ``left``, ``right``: N x C x h x w features. Returns N x G x num_bins x h x w where bin ``d`` correlates left
    pixel x with right pixel x - d; pixels with no partner (x < d) get 0. ``right`` is zero-padded on the left
    once and each bin correlates the whole left map with one static Slice of it (a partner in the padding
    contributes exactly 0), so the loop unrolls into ``num_bins`` Slice/Mul/ReduceMean nodes that TensorRT fuses
    well, with no custom correlation plugin. ONNX Runtime on the CPU: 0.78x the time of slicing both maps and
    padding each bin's result (39 vs 50 ms at 32 x 168 x 224, 48 bins; the same values to the bit).

    ``row_bands`` > 1 builds the volume in that many bands of rows and joins them along the height: the same
    values to the bit (each row's correlation involves that row only), but every band's Slice/Mul/ReduceMean
    works on a few MB that stay in the CPU cache instead of streaming the whole map through memory once per
    bin. ONNX Runtime on the 2-core CI machine at the default network's size (32 x 178 x 238, 48 bins):
    119 ms with 4 bands against 164 ms in one piece (alternating, 90 s); 8 bands 122, 12 bands 130 ms. The
    whole default frame: 0.886x and 0.950x in two alternating runs. :func:`cost_volume_row_bands` decides.
    """
    h, w = int(left.shape[-2]), int(left.shape[-1])
    if row_bands < 1:
        raise ValueError(f"row_bands must be >= 1, instead got {row_bands}")
    row_bands = min(int(row_bands), h)
    padded = F.pad(right, (num_bins - 1, 0))
    bounds = [round(i * h / row_bands) for i in range(row_bands + 1)]
    bands = []
    for top, bottom in zip(bounds[:-1], bounds[1:]):
        band_left = left[..., top:bottom, :] if row_bands > 1 else left
        band_right = padded[..., top:bottom, :] if row_bands > 1 else padded
        slices = []
        for d in range(num_bins):
            start = num_bins - 1 - d
            slices.append(groupwise_correlation(band_left, band_right[..., start : start + w], groups=groups))
        bands.append(torch.stack(slices, dim=2))
    return bands[0] if len(bands) == 1 else torch.cat(bands, dim=3)


# Pixels of the 1/4 feature map per row band of an exported cost volume (see cost_volume_row_bands).
BAND_PIXELS = 10_500


def cost_volume_row_bands(features: Tensor, *, training: bool, override: int | None = None) -> int:
    """How many row bands :func:`groupwise_cost_volume` uses for these features.

    ``override`` (>= 1) wins. Otherwise: while exporting to ONNX (and not training), about ``BAND_PIXELS``
    pixels of the 1/4 map per band, 4 at the default network's 640 x 480 size; ONNX Runtime's CPU frame measured
    0.89-0.95x with them. Everywhere else 1: torch on the CPU measured 1.02x slower with bands (its kernels do not
    gain from the smaller working set), on a GPU they would only add kernel launches, and training keeps the
    plain graph. The bands change no value (the same floats to the bit).
    """
    if override is not None:
        if int(override) < 1:
            raise ValueError(f"cost volume bands must be >= 1, instead got {override}")
        return int(override)
    if training or not torch.onnx.is_in_onnx_export():
        return 1
    h, w = int(features.shape[-2]), int(features.shape[-1])
    return max(1, min(h, round(h * w / BAND_PIXELS)))


class CostExcitation(nn.Module):
    """Guided cost-volume excitation (CoEx, Bangunharcana et al. 2021): per-pixel channel gates computed from
    the left image features re-weight the cost volume, injecting image context (edges, texture) into the 3-D
    aggregation at the price of a 1x1 conv. Volume N x C x D x h x w, features N x F x h x w -> same volume."""

    def __init__(self, *, volume_channels: int, feature_channels: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Conv2d(feature_channels, feature_channels // 2, 1, bias=False),
            nn.BatchNorm2d(feature_channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(feature_channels // 2, volume_channels, 1),
        )

    def forward(self, volume: Tensor, features: Tensor) -> Tensor:
        return volume * torch.sigmoid(self.gate(features)).unsqueeze(2)


def upsample_trilinear_2x(volume: Tensor) -> Tensor:
    """``F.interpolate(volume, scale_factor=2, mode="trilinear", align_corners=False)``, computed separably.

    ``volume``: N x C x D x h x w -> N x C x 2D x 2h x 2w. Trilinear interpolation is linear interpolation along
    each axis in turn, so the disparity axis is upsampled first on the small volume (a 4-D bilinear resize of
    N x C x D x (h w) that only stretches D) and then height and width together with D folded into the
    channels (a 4-D bilinear resize of N x (C 2D) x h x w); same values to float rounding. ONNX Runtime's CPU
    Resize has a fast path for 4-D bilinear but not for 5-D trilinear: at the default network's 640 x 480 size
    (8 x 24 x 89 x 119 voxels) this took 34 instead of 52 ms, measured in isolation.
    """
    n, c, d, h, w = volume.shape
    # int(): under ONNX tracing the sizes arrive as tensors; the exported graph has static shapes anyway.
    n, c, d, h, w = int(n), int(c), int(d), int(h), int(w)
    deep = F.interpolate(volume.reshape(n, c, d, h * w), size=(2 * d, h * w), mode="bilinear", align_corners=False)
    wide = F.interpolate(deep.reshape(n, c * 2 * d, h, w), size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    return wide.reshape(n, c, 2 * d, 2 * h, 2 * w)


class TrilinearUp(nn.Module):
    """2x trilinear upsampling of a volume followed by a 1x1x1 conv: the cheap replacement for a stride-2
    ``ConvTranspose3d`` (ONNX Runtime's CPU ConvTranspose3d alone took 31 ms of a 276 ms 640x480 frame; this
    takes a few, measured on the 2-core CI machine)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(upsample_trilinear_2x(x))


class Hourglass3d(nn.Module):
    """One 3-D encoder-decoder over (disparity, height, width), guided by left features at both scales.

    Volume N x C x D x h x w with D, h, w even -> same shape. Features: N x F x h x w (full volume scale) and
    N x F x h/2 x w/2 (the pooled scale is derived inside by average pooling). ``upsample``: ``"deconv"``
    (stride-2 transposed 3x3x3 conv) or ``"trilinear"`` (:class:`TrilinearUp`).
    """

    def __init__(self, *, channels: int, feature_channels: int, upsample: str = "deconv") -> None:
        super().__init__()
        if upsample not in ("deconv", "trilinear"):
            raise ValueError(f"upsample must be 'deconv' or 'trilinear', instead got {upsample!r}")
        self.down = nn.Sequential(
            conv3d_bn_relu(channels, 2 * channels, stride=2),
            conv3d_bn_relu(2 * channels, 2 * channels),
        )
        self.excite_low = CostExcitation(volume_channels=2 * channels, feature_channels=feature_channels)
        if upsample == "deconv":
            up: nn.Module = nn.ConvTranspose3d(2 * channels, channels, 3, stride=2, padding=1, output_padding=1, bias=False)
        else:
            up = TrilinearUp(2 * channels, channels)
        self.up = nn.Sequential(up, nn.BatchNorm3d(channels))
        self.excite_high = CostExcitation(volume_channels=channels, feature_channels=feature_channels)

    def forward(self, volume: Tensor, features: Tensor) -> Tensor:
        low = self.excite_low(self.down(volume), F.avg_pool2d(features, 2))
        return self.excite_high(F.relu(volume + self._upsample(low)), features)

    def _upsample(self, low: Tensor) -> Tensor:
        """``self.up(low)``; with ``TrilinearUp`` computed in the cheaper order that gives the same values.

        The 1x1x1 conv (no bias) is linear per voxel and trilinear interpolation is linear per channel with
        weights summing to 1, so they commute: convolving first halves the channels the 5-D upsampling writes
        and runs the conv on 1/8 of the voxels. In eval mode batch norm is a per-channel affine map and moves
        before the upsampling too (in training its batch statistics belong to the upsampled volume, so it stays
        after). ONNX Runtime, default network at 640 x 480: the hourglass's Resize was 18 % of the frame.
        """
        up, norm = self.up
        if not isinstance(up, TrilinearUp):
            return norm(up(low))
        reduced = up.conv(low)
        if not self.training:
            reduced = norm(reduced)
        upsampled = upsample_trilinear_2x(reduced)
        return norm(upsampled) if self.training else upsampled


def channel_log_softmax(x: Tensor) -> Tensor:
    """``log_softmax`` over dim 1, spelled with element-wise ops and reductions.

    ONNX Runtime's CPU Softmax/LogSoftmax on a non-last axis transposes the tensor twice; on the shipped
    network's 1/2-resolution upsampling weights that alone took 38 ms of a 336 ms frame (profiled at
    640x480). Max-subtraction keeps it as stable as the fused op; results agree to float rounding.
    """
    shifted = x - x.amax(dim=1, keepdim=True)
    return shifted - shifted.exp().sum(dim=1, keepdim=True).log()


def channel_softmax(x: Tensor) -> Tensor:
    """``softmax`` over dim 1 without the ONNX Softmax op (see :func:`channel_log_softmax`)."""
    e = (x - x.amax(dim=1, keepdim=True)).exp()
    return e / e.sum(dim=1, keepdim=True)


def local_soft_argmax(logits: Tensor, *, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sub-bin disparity from a distribution over bins, robust to multi-modal distributions.

    ``logits``: N x D x h x w. The expectation is taken only over bins within ``radius`` of the arg-max, so a
    second mode (a foreground/background edge, a repeated texture) does not pull the estimate into the empty
    space between modes, which a plain soft-argmax does. Returns ``(bin_index N x 1 x h x w float,
    log_prob N x D x h x w, confidence N x 1 x h x w)`` where confidence is the probability mass inside the
    window: close to 1 for a single sharp peak, low for flat or ambiguous distributions.
    """
    log_prob = channel_log_softmax(logits)
    prob = log_prob.exp()
    bins = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device).view(1, -1, 1, 1)
    peak = torch.argmax(logits, dim=1, keepdim=True).to(logits.dtype)
    window = ((bins - peak).abs() <= radius).to(logits.dtype)
    mass = (prob * window).sum(dim=1, keepdim=True)
    index = (prob * window * bins).sum(dim=1, keepdim=True) / mass.clamp_min(1e-6)
    return index, log_prob, mass.clamp(0.0, 1.0)


def windowed_soft_argmax(logits: Tensor, *, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`local_soft_argmax`'s ``(bin_index, log_prob, confidence)``, the index and confidence computed from the
    ``2 radius + 1`` bins around the arg-max fetched with gathers instead of a window mask over all D bins; the same
    values to float rounding (the expectation does not depend on the normalisation, and the confidence is the
    window's share of the exponentials). One pass over the distribution (the normaliser) instead of five, and no
    reduction but that one over the short bin axis: ONNX Runtime's CPU frame of the default network at 640 x 480
    measured 0.955x with the mask form (alternating, 120 s). ``log_prob`` comes from the same shift and normaliser
    (:func:`channel_log_softmax`'s values to the bit); an exported graph that does not use it drops it. The
    inference form: training keeps :func:`local_soft_argmax`, the form the shipped weights were trained with (the
    windowed one was measured for inference only).
    """
    bins = int(logits.shape[1])
    peak = torch.argmax(logits, dim=1, keepdim=True)
    highest = torch.gather(logits, 1, peak)
    shifted = logits - highest
    normaliser = shifted.exp().sum(dim=1, keepdim=True)
    mass = torch.ones_like(highest)  # the peak's own term, exp(0)
    moment = peak.to(logits.dtype)
    for offset in (k for k in range(-radius, radius + 1) if k != 0):
        at = peak + offset
        inside = ((at >= 0) & (at < bins)).to(logits.dtype)
        weight = (torch.gather(logits, 1, at.clamp(0, bins - 1)) - highest).exp() * inside
        mass = mass + weight
        moment = moment + weight * at.to(logits.dtype)
    # mass >= 1 (the peak's term), so no guard against 0 is needed.
    return moment / mass, shifted - normaliser.log(), (mass / normaliser).clamp(0.0, 1.0)


def warp_correlation(left: Tensor, right: Tensor, disparity: Tensor, *, radius: int, groups: int) -> Tensor:
    """Local correlation around a disparity estimate, at the features' own resolution.

    ``left``, ``right``: N x C x h x w; ``disparity``: N x 1 x h x w in pixels *of this resolution*. For each
    offset k in [-radius, radius] the right features at x - disparity - k (linearly interpolated along the row)
    are correlated group-wise with the left. Returns N x (G * (2 radius + 1)) x h x w, channel ``g * K + i`` for
    group g and offset ``i - radius``; samples outside the right image correlate to 0.

    This equals bilinear ``grid_sample`` (zeros padding, align_corners=True) of the right features followed by
    the correlation, computed differently: every offset shares the same fractional part, so the right features
    are gathered at the 2 radius + 2 *integer* columns around the estimate (one row Gather in channels-last
    layout), correlated there, and neighbouring correlations are blended with that fraction (correlation is
    linear in the right features). ONNX Runtime's CPU GridSample made this block 4x slower (117 vs 29 ms at
    1/2 of 640x480, measured in isolation).
    """
    n, c, h, w = left.shape
    if c % groups != 0:
        raise ValueError(f"feature channels ({c}) must be divisible by the correlation groups, instead got {groups}")
    k = 2 * radius + 1
    # Positions in float32 even under fp16/AMP: half precision would quantise the fraction to 1/4 px at w ~ 300.
    xs = torch.arange(w, dtype=torch.float32, device=left.device).view(1, 1, 1, w)
    # Source column of the largest offset (+radius), the leftmost sample; the others follow at +1 each.
    # Clamping keeps NaN/huge estimates in range: every sample there is outside the image and correlates to 0.
    pos = (xs - disparity.float() - radius).nan_to_num(-float(k + 1)).clamp(-float(k + 1), float(w))
    base = torch.floor(pos)
    frac = (pos - base).to(left.dtype).unsqueeze(-1)  # N x 1 x h x w x 1, the same for every offset
    cols = base + torch.arange(k + 1, dtype=torch.float32, device=left.device).view(1, k + 1, 1, 1)
    valid = ((cols >= 0) & (cols <= w - 1)).to(left.dtype).unsqueeze(-1)  # zeros padding
    # Row-major index into the (N h w) x C channels-last right features.
    offsets = torch.arange(n, device=left.device).view(n, 1, 1, 1) * (h * w) + torch.arange(
        h, device=left.device
    ).view(1, 1, h, 1) * w
    index = cols.clamp(0, w - 1).long() + offsets  # N x (K+1) x h x w
    right_rows = right.permute(0, 2, 3, 1).reshape(n * h * w, c)
    sampled = right_rows[index.reshape(-1)].reshape(n, k + 1, h, w, c)
    left_last = left.permute(0, 2, 3, 1).unsqueeze(1)  # N x 1 x h x w x C
    corr = (left_last * sampled).reshape(n, k + 1, h, w, groups, c // groups).mean(dim=-1) * valid
    # Column j (ascending) belongs to offset radius - j: blend neighbours, then order offsets ascending.
    blended = (1.0 - frac) * corr[:, :k] + frac * corr[:, 1:]  # N x K x h x w x G
    return blended.flip(1).permute(0, 4, 1, 2, 3).reshape(n, groups * k, h, w)


def convex_upsample(disparity: Tensor, mask_logits: Tensor, *, factor: int) -> Tensor:
    """Learned convex upsampling (RAFT): each output pixel is a convex combination of the 3x3 low-resolution
    neighbourhood around it, with weights predicted from image features, so edges stay sharp instead of being
    blurred as bilinear interpolation does.

    ``disparity``: N x 1 x h x w (values already in output pixels); ``mask_logits``: N x (9 factor^2) x h x w.
    Returns N x 1 x (factor h) x (factor w). The 3x3 neighbourhood is gathered with Pad + 9 Slices rather
    than Unfold, whose ONNX export needs opset 18.
    """
    n, _, h, w = disparity.shape
    if mask_logits.shape[1] != 9 * factor * factor:
        raise ValueError(
            f"convex upsampling by {factor} needs {9 * factor * factor} mask channels, instead got {mask_logits.shape[1]}"
        )
    weights = channel_softmax(mask_logits.reshape(n, 9, factor * factor, h, w))
    padded = F.pad(disparity, (1, 1, 1, 1), mode="replicate")
    neighbours = torch.stack(
        [padded[:, 0, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], dim=1
    )  # N x 9 x h x w
    up = (weights * neighbours.unsqueeze(2)).sum(dim=1)  # N x f^2 x h x w
    return F.pixel_shuffle(up, factor)


def discontinuity_upsample(disparity: Tensor, *, size: tuple[int, int], threshold: float) -> Tensor:
    """Upsamples a coarse disparity map (values already in output pixels) to ``size`` without inventing depths
    between two surfaces: bilinear where the 3x3 coarse neighbourhood spans at most ``threshold`` pixels, the
    covering cell's own value (nearest, pixel-centre aligned) where it spans more, i.e. at depth discontinuities,
    with a bilinear blend between the two regimes.

    Bilinear interpolation across a discontinuity puts a band of pixels at intermediate disparities (too far
    from both surfaces: bad-2 errors and flying points in the cloud); the nearest cell's value is always one of
    the two surfaces. Where the neighbourhood spans less, bilinear's error is at most half the span, and it keeps
    slanted floors smooth instead of terraced. No weights; ONNX: MaxPool, Resize (linear), Gather.
    """
    smooth = F.interpolate(disparity, size=size, mode="bilinear", align_corners=False)
    # Nearest with pixel-centre alignment (torch's "nearest-exact"), as two index lookups: that mode has no ONNX
    # export, and the sizes are static, so the indices become constants of the graph.
    h, w = disparity.shape[-2:]
    rows = ((torch.arange(size[0], device=disparity.device) + 0.5) * (int(h) / size[0])).long().clamp(max=int(h) - 1)
    cols = ((torch.arange(size[1], device=disparity.device) + 0.5) * (int(w) / size[1])).long().clamp(max=int(w) - 1)
    nearest = disparity.index_select(2, rows).index_select(3, cols)
    edge = _discontinuity_weight(disparity, size=size, threshold=threshold)
    return edge * nearest + (1.0 - edge) * smooth  # exact at edge = 0 and 1


def _discontinuity_weight(disparity: Tensor, *, size: tuple[int, int], threshold: float) -> Tensor:
    """1 where a coarse cell's 3x3 neighbourhood spans more than ``threshold``, 0 elsewhere, bilinearly
    upsampled to ``size``: how much of the discontinuity rule applies at each output pixel."""
    # max - min over the 3x3 neighbourhood (max_pool2d's padding never wins the max).
    spread = F.max_pool2d(disparity, 3, stride=1, padding=1) + F.max_pool2d(-disparity, 3, stride=1, padding=1)
    return F.interpolate((spread > threshold).to(disparity.dtype), size=size, mode="bilinear", align_corners=False)


# matched_discontinuity_upsample: four neighbouring cells within this many pixels are one surface.
ONE_SURFACE_PX = 1.0


def matched_discontinuity_upsample(
    disparity: Tensor, left: Tensor, right: Tensor, *, size: tuple[int, int], threshold: float, window: int = 3
) -> Tensor:
    """:func:`discontinuity_upsample`, except that at a discontinuity the pair itself decides which side of the
    edge each pixel is on, instead of the covering coarse cell.

    ``disparity``: N x 1 x h x w coarse map, values already in output pixels; ``left``, ``right``: the
    N x C x H x W images at the output ``size`` (any consistent colour scale). Each output pixel has four coarse
    neighbours (bilinear's). They split at the midpoint of their largest and smallest value into a near and a
    far surface (one surface if all four lie within ``ONE_SURFACE_PX``), and each surface's value at the pixel
    is the bilinear blend of its own cells (weights renormalised). The pixel takes the surface whose value
    matches the pair better: the lower mean absolute colour difference, over a ``window`` x ``window``
    neighbourhood, between the left image and the right one sampled at x - d (linear along the row, clamped at
    the border). So no depth between the two surfaces appears and neither surface is terraced. The coarse grid
    places an edge only to within a cell (2.7 input pixels for the shipped default); this places it where the
    images agree, among the network's own values. Elsewhere (3 x 3 spread <= ``threshold``) plain bilinear.

    The output is continuous in its inputs except at the two choices (which side, and the ``ONE_SURFACE_PX``
    test), so backends that differ by float rounding agree except at exact ties: measured between torch and
    ONNX Runtime on the shipped default, none on the two real pairs, 0-14 of 307k pixels on each of 16 held-out
    procedural scenes. No weights, no MACs; ONNX: Gather, GatherElements, AveragePool, ReduceMax/Min and
    element-wise ops.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 1, instead got {window}")
    if left.shape != right.shape or tuple(left.shape[-2:]) != tuple(size) or left.shape[0] != disparity.shape[0]:
        raise ValueError(
            f"left and right must be N x C x {size[0]} x {size[1]} like the output, instead got "
            f"{tuple(left.shape)} and {tuple(right.shape)} for a disparity of {tuple(disparity.shape)}"
        )
    smooth = F.interpolate(disparity, size=size, mode="bilinear", align_corners=False)
    h, w = (int(v) for v in disparity.shape[-2:])
    out_h, out_w = (int(v) for v in size)
    device, dtype = disparity.device, disparity.dtype

    def neighbours(count: int, out: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        # The two coarse cells whose centres bracket each output pixel centre and their bilinear weights
        # (align_corners=False, clamped at the border like F.interpolate).
        position = ((torch.arange(out, device=device, dtype=torch.float32) + 0.5) * (count / out) - 0.5).clamp(min=0)
        low = torch.floor(position).clamp(max=count - 1)
        frac = (position - low).to(dtype)
        low = low.long()
        return (low, (low + 1).clamp(max=count - 1)), (1.0 - frac, frac)

    (rows, row_weights), (cols, col_weights) = neighbours(h, out_h), neighbours(w, out_w)
    # The four cells as separate N x 1 x H x W maps: element-wise arithmetic on them instead of reductions over
    # a 4-channel stack (ONNX Runtime's ReduceSum over a short non-last axis made this step 4x slower).
    by_row = [disparity.index_select(2, row) for row in rows]
    values = [cells.index_select(3, col) for cells in by_row for col in cols]
    # Each cell's bilinear weight as its row and column factors: their product is only ever formed with data
    # (the side masks), so the ONNX exporter cannot fold it into constant full-resolution maps (eight of
    # 480 x 640 made the default's ONNX file 10 MB instead of 0.4 MB).
    factors = [(rw.view(1, 1, out_h, 1), cw.view(1, 1, 1, out_w)) for rw in row_weights for cw in col_weights]
    highest = torch.maximum(torch.maximum(values[0], values[1]), torch.maximum(values[2], values[3]))
    lowest = torch.minimum(torch.minimum(values[0], values[1]), torch.minimum(values[2], values[3]))
    # Four cells within ONE_SURFACE_PX of each other are one surface (plain bilinear): splitting them at their
    # midpoint would let float rounding decide between values a fraction of a pixel apart (measured: 0.003 % of
    # motorcycle's pixels moved by up to 0.26 px between torch and ONNX Runtime without this).
    midpoint = 0.5 * (highest + lowest)
    one_surface = highest - lowest <= ONE_SURFACE_PX
    near = [((v >= midpoint) | one_surface).to(dtype) for v in values]

    def surface(sides: list[Tensor]) -> Tensor:
        # The side's bilinear blend; its weights may all be 0 (pixel on another cell's centre): then its mean.
        weighted = [m * rw * cw + 1e-6 * m for m, (rw, cw) in zip(sides, factors)]
        return sum(mw * v for mw, v in zip(weighted, values)) / (sum(weighted) + 1e-12)

    near_value = surface(near)
    far = [1.0 - m for m in near]
    # Where all four are near (one surface) the far blend is 0 / 0: any finite value, never chosen, will do.
    far_value = torch.where(one_surface, near_value, surface(far))
    n, channels = int(left.shape[0]), int(left.shape[1])
    # Positions in float32 even under fp16: half precision would quantise the fraction at robot image widths.
    xs = torch.arange(out_w, device=device, dtype=torch.float32).view(1, 1, 1, out_w)

    def match_cost(candidate: Tensor) -> Tensor:
        source = (xs - candidate.float()).clamp(0, out_w - 1)
        base = torch.floor(source)
        frac = (source - base).to(dtype)
        index = base.long().expand(n, channels, out_h, out_w)
        sampled = torch.gather(right, 3, index) * (1 - frac) + torch.gather(
            right, 3, (index + 1).clamp(max=out_w - 1)
        ) * frac
        difference = (left - sampled).abs()
        cost = difference[:, :1]
        for c in range(1, channels):  # channel sum as additions, for the same reason as above
            cost = cost + difference[:, c : c + 1]
        if window > 1:
            cost = F.avg_pool2d(cost, window, stride=1, padding=window // 2, count_include_pad=False)
        return cost

    near_side = (match_cost(near_value) <= match_cost(far_value)).to(dtype)
    picked = near_side * near_value + (1.0 - near_side) * far_value
    edge = _discontinuity_weight(disparity, size=size, threshold=threshold)
    return edge * picked + (1.0 - edge) * smooth


class DisparityRefinement(nn.Module):
    """Residual disparity update from a local warped correlation at one resolution.

    Inputs: left/right features N x C x h x w, current disparity N x 1 x h x w in *full-resolution* pixels,
    ``scale`` = full resolution / this resolution. Returns ``(disparity, hidden)``: the updated disparity (same
    units, >= 0) and N x hidden_channels x h x w features that drive the convex upsampling mask.
    """

    def __init__(
        self,
        *,
        feature_channels: int,
        hidden_channels: int,
        radius: int,
        groups: int,
        num_blocks: int,
        max_disparity: int,
    ) -> None:
        super().__init__()
        self.radius = radius
        self.groups = groups
        self.max_disparity = float(max_disparity)
        corr_channels = groups * (2 * radius + 1)
        self.inp = conv2d_bn_relu(corr_channels + feature_channels + 1, hidden_channels)
        self.blocks = nn.Sequential(
            *[ResidualBlock(hidden_channels, dilation=(1, 2, 4, 1)[i % 4]) for i in range(num_blocks)]
        )
        self.delta = nn.Conv2d(hidden_channels, 1, 3, padding=1)
        # Zero residual at start: a new network begins from the coarse estimate rather than from noise.
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, left: Tensor, right: Tensor, disparity: Tensor, *, scale: int) -> tuple[Tensor, Tensor]:
        corr = warp_correlation(left, right, disparity / scale, radius=self.radius, groups=self.groups)
        x = torch.cat((corr, left, disparity / self.max_disparity), dim=1)
        hidden = self.blocks(self.inp(x))
        # The residual is predicted in this level's pixels (the correlation's units) and converted back.
        return F.relu(disparity + scale * self.delta(hidden)), hidden


class EdgeRefinement(nn.Module):
    """Full-resolution, image-guided residual correction of the final disparity.

    Image N x 3 x H x W (normalised), disparity N x 1 x H x W -> disparity N x 1 x H x W. It snaps depth
    discontinuities to image edges that the 1/2-resolution stages can only localise to +-1 pixel.
    """

    def __init__(self, *, channels: int, max_disparity: int) -> None:
        super().__init__()
        self.max_disparity = float(max_disparity)
        self.body = nn.Sequential(
            conv2d_bn_relu(4, channels),
            conv2d_bn_relu(channels, channels, dilation=2),
            conv2d_bn_relu(channels, channels),
        )
        self.delta = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, image: Tensor, disparity: Tensor) -> Tensor:
        x = torch.cat((image, disparity / self.max_disparity), dim=1)
        return F.relu(disparity + self.delta(self.body(x)))
