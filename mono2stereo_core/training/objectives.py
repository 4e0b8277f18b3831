"""Training objectives: map a network's ``StereoOutput`` and a dataset batch to named loss terms.

The loss *functions* live in ``training.losses``; these adapters only pick the batch keys each stage
provides (see ``training.datasets``) so the trainer stays stage-agnostic. Each returns a dict of scalar
tensors with at least ``total`` (the optimised value); the other entries are logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .config import output_max_disparity
from .losses import S2DKDLoss, sequence_loss


def _as_terms(result: Any) -> dict[str, torch.Tensor]:
    if isinstance(result, Mapping):
        if "total" not in result:
            raise ValueError(f"a loss returned keys {sorted(result)} without 'total'")
        return dict(result)
    return {"total": result}


class SequenceObjective:
    """Stage 1: dense supervision of every full-resolution prediction, weighted ``gamma**(n-1-i)``."""

    def __init__(self, *, gamma: float, max_disparity: float, distribution_weight: float = 0.0, spread: float = 2.0):
        self.gamma = float(gamma)
        self.max_disparity = float(max_disparity)
        self.distribution_weight = float(distribution_weight)
        self.spread = float(spread)

    def __call__(self, output: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = _as_terms(
            sequence_loss(
                output,
                batch["disparity"],
                batch["valid"],
                gamma=self.gamma,
                max_disparity=self.max_disparity,
                distribution_weight=self.distribution_weight,
                spread=self.spread,
            )
        )
        with torch.no_grad():
            # The final prediction's end-point error and bad-2 on the batch: cheap, interpretable progress.
            valid = batch["valid"].bool()
            if bool(valid.any()):
                error = (output.disparity.float() - batch["disparity"]).abs()[valid]
                terms["epe"] = error.mean()
                terms["bad2"] = (error > 2).float().mean() * 100.0
        return terms


class S2DKDObjective:
    """Stage 2: sparse L1 on ground-truth pixels + alpha * KL to the aligned-teacher distribution.

    ``second_teacher`` (optional, frozen) is the stage-1 network: its prediction on the same batch is
    passed to :class:`S2DKDLoss` as the second teacher.
    """

    def __init__(
        self,
        *,
        alpha: float,
        spread: float,
        gamma: float,
        max_disparity: float,
        second_teacher: nn.Module | None = None,
        second_teacher_weight: float = 1.0,
    ):
        self.loss = S2DKDLoss(
            alpha=float(alpha),
            spread=float(spread),
            gamma=float(gamma),
            second_teacher_weight=float(second_teacher_weight) if second_teacher is not None else 0.0,
        )
        self.max_disparity = float(max_disparity)
        self.second_teacher = second_teacher.eval() if second_teacher is not None else None

    def __call__(self, output: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        teacher = batch["teacher_disparity"]
        # Pixels where the aligned teacher is invalid (no mono output, out of range) carry no KL target; NaN
        # marks them so that the second teacher (valid everywhere) is not masked with them.
        teacher = torch.where(batch["teacher_valid"].bool(), teacher, torch.full_like(teacher, float("nan")))
        second = None
        if self.second_teacher is not None:
            with torch.no_grad():
                second, _ = self.second_teacher(batch["left"], batch["right"])
        terms = _as_terms(
            self.loss(
                output,
                batch["disparity"],
                batch["valid"],
                teacher,
                second_teacher_disparity=second,
            )
        )
        with torch.no_grad():
            valid = batch["valid"].bool()
            if bool(valid.any()):
                terms["sparse_epe"] = (output.disparity.float() - batch["disparity"]).abs()[valid].mean()
        return terms


def build_objective(config: Mapping[str, Any], *, second_teacher: nn.Module | None = None):
    """The objective named by ``config['loss']['kind']`` (``sequence`` or ``s2dkd``)."""
    loss = config["loss"]
    # Ground truth beyond what the network can output is left out of the loss (a working_scale network
    # covers model.max_disparity / working_scale input pixels).
    max_disparity = output_max_disparity(config)
    if loss["kind"] == "sequence":
        return SequenceObjective(
            gamma=loss["gamma"],
            max_disparity=max_disparity,
            distribution_weight=loss["distribution_weight"],
            spread=loss["spread"],
        )
    if loss["kind"] == "s2dkd":
        return S2DKDObjective(
            alpha=loss["alpha"],
            spread=loss["spread"],
            gamma=loss["gamma"],
            max_disparity=max_disparity,
            second_teacher=second_teacher,
            second_teacher_weight=loss["second_teacher_weight"],
        )
    raise ValueError(f"config loss.kind must be sequence|s2dkd, instead got {loss['kind']!r}")
