"""Networks for tests: shared by the model and conversion tests."""

from __future__ import annotations

import torch

from mono2stereo_core.models import build_model


def perturbed_tiny(seed: int, **overrides) -> torch.nn.Module:
    """``m2s_tiny`` in eval mode with every parameter moved off its initial value: zero-initialised residual
    layers would otherwise make stages look like identities and hide conversion mistakes."""
    torch.manual_seed(seed)
    network = build_model("m2s_tiny", **overrides).eval()
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return network
