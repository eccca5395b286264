"""Classifiers: utterance vectors ``[B, D]`` -> emotion logits ``[B, C]``."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Union

import torch
from torch import nn

from ser_plugins.plugins.contracts import Classifier

ACTIVATIONS: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}
NORMS: Dict[str, Callable[[int], nn.Module]] = {"batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def _check_sizes(input_dim: int, num_classes: int) -> None:
    if int(input_dim) < 1:
        raise ValueError(f"input_dim must be a positive integer, got {input_dim!r}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")


def _check_dropout(dropout: float) -> float:
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


class LinearClassifier(Classifier):
    """Dropout then one linear layer."""

    def __init__(self, input_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_sizes(input_dim, num_classes)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.linear = nn.Linear(int(input_dim), int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.linear(self.dropout(x))


class MLPClassifier(Classifier):
    """Hidden blocks ``Linear -> [norm] -> activation -> dropout``, then a linear output layer.

    ``activation``: one of ``ACTIVATIONS``; ``norm``: None, ``"batch"`` or ``"layer"``.
    An empty ``hidden_sizes`` gives a plain linear classifier.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden_sizes: Union[int, Sequence[int]] = (256,),
        activation: str = "relu",
        dropout: float = 0.2,
        norm: Optional[str] = None,
    ) -> None:
        super().__init__()
        _check_sizes(input_dim, num_classes)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if norm is not None and norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose None or one of: {', '.join(NORMS)}")
        dropout = _check_dropout(dropout)
        sizes = [hidden_sizes] if isinstance(hidden_sizes, int) else list(hidden_sizes)
        if any(int(size) < 1 for size in sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes!r}")
        layers = []
        width = int(input_dim)
        for size in map(int, sizes):
            layers.append(nn.Linear(width, size))
            if norm is not None:
                layers.append(NORMS[norm](size))
            layers.extend([ACTIVATIONS[activation](), nn.Dropout(dropout)])
            width = size
        layers.append(nn.Linear(width, int(num_classes)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]``."""
        return self.net(x)
