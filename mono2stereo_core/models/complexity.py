"""Compute cost of a stereo network, counted the way papers and Jetson budgets quote it (multiply-accumulates)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def padded_size(height: int, width: int, *, stride: int) -> tuple[int, int]:
    """Smallest (H, W) >= (height, width) that are multiples of ``stride`` (what the runner pads to)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, instead got {height} x {width}")
    return math.ceil(height / stride) * stride, math.ceil(width / stride) * stride


def count_macs(model: nn.Module, *, height: int = 480, width: int = 640) -> int:
    """Multiply-accumulates of one ``model(left, right)`` call on a ``height`` x ``width`` pair (padded up to the
    model's ``stride``, batch 1), from ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2).

    FlopCounterMode counts convolutions (2-D, 3-D, transposed) and matrix products, which are > 95 % of the
    work here; element-wise ops (the correlation products, softmax, grid sampling) are not counted, as in the
    published GMAC figures of comparable networks.
    """
    stride = int(getattr(model, "stride", 1))
    h, w = padded_size(height, width, stride=stride)
    # Counting on the meta device runs no arithmetic: shapes alone fix the MACs, and the caller's model
    # (weights, device, train/eval mode) is left untouched because a copy is moved, not the model.
    shadow = copy.deepcopy(model).to("meta").eval()
    left = torch.zeros(1, 3, h, w, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        shadow(left, left)
    return int(counter.get_total_flops() // 2)
