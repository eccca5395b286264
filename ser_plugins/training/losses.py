"""Training losses of the task's outputs: cross-entropy for classes; CCC, MSE or L1 for continuous targets.

``TaskLoss`` combines them for a multi-task head (one weighted sum); every regression loss is
computed per target and averaged with the recipe's target weights.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

REGRESSION_LOSSES = ("ccc", "mse", "l1")


def ccc_per_target(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Lin's CCC of every column of ``[B, K]`` predictions against ``[B, K]`` targets (population moments): ``[K]``.

    Batch statistics, as the field's CCC loss uses them; a batch where both sides are constant and
    equal gives 1 (the metric's convention), never NaN.
    """
    p, t = predictions.float(), targets.float()
    mp, mt = p.mean(0), t.mean(0)
    cov = ((p - mp) * (t - mt)).mean(0)
    denom = p.var(0, unbiased=False) + t.var(0, unbiased=False) + (mp - mt) ** 2
    return torch.where(denom > 0, 2 * cov / denom.clamp_min(1e-12), torch.ones_like(denom))


def _weights(weights: Optional[Sequence[float]], k: int, device: torch.device) -> torch.Tensor:
    if weights is None:
        return torch.full((k,), 1.0 / k, device=device)
    w = torch.tensor([float(x) for x in weights], device=device)
    return w / w.sum()


class RegressionLoss(nn.Module):
    """``1 - CCC`` (``ccc``), mean squared error (``mse``) or mean absolute error (``l1``) per target,
    averaged over the targets with ``weights`` (normalised to sum 1; equal by default)."""

    def __init__(self, kind: str = "ccc", weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if kind not in REGRESSION_LOSSES:
            raise ValueError(f"unknown regression loss {kind!r}; choose one of: {', '.join(REGRESSION_LOSSES)}")
        self.kind = kind
        self.weights = None if weights is None else [float(w) for w in weights]

    def per_target(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of every target: ``[K]``."""
        p, t = predictions.float(), targets.float()
        if self.kind == "ccc":
            return 1.0 - ccc_per_target(p, t)
        if self.kind == "mse":
            return ((p - t) ** 2).mean(0)
        return (p - t).abs().mean(0)

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The weighted mean over targets of ``per_target``: a scalar."""
        per = self.per_target(predictions, targets)
        return (per * _weights(self.weights, per.numel(), per.device)).sum()


class TaskLoss(nn.Module):
    """The training loss of a head with ``num_classes`` logits followed by continuous targets.

    ``classification`` (a cross-entropy module, or None without classes) on the logits and the
    class column; ``regression`` (a ``RegressionLoss``, or None without targets) on the values;
    both: ``classification_weight * CE + regression_weight * regression``. Targets arrive as the
    batch holds them (``ser_plugins.task.TaskSpec.split_targets``).
    """

    def __init__(
        self,
        num_classes: int,
        classification: Optional[nn.Module],
        regression: Optional[RegressionLoss],
        classification_weight: float = 1.0,
        regression_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classification = classification
        self.regression = regression
        self.classification_weight = float(classification_weight)
        self.regression_weight = float(regression_weight)

    @property
    def weight(self) -> Optional[torch.Tensor]:
        """The class weights of a classification-only loss (how torchrun weighs each rank's rows), else None."""
        if self.regression is not None or self.classification is None:
            return None
        return getattr(self.classification, "weight", None)

    def forward(
        self,
        logits: Optional[torch.Tensor],
        values: Optional[torch.Tensor],
        classes: Optional[torch.Tensor],
        value_targets: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """The combined loss of one batch (a scalar)."""
        total: Optional[torch.Tensor] = None
        if self.classification is not None and logits is not None and classes is not None:
            total = self.classification_weight * self.classification(logits.float(), classes)
        if self.regression is not None and values is not None and value_targets is not None:
            part = self.regression_weight * self.regression(values, value_targets)
            total = part if total is None else total + part
        if total is None:
            raise ValueError("TaskLoss: the batch has neither class logits nor target values to score")
        return total
