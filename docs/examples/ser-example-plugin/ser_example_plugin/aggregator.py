"""A tiny aggregator: the maximum of each feature over valid frames."""
from __future__ import annotations

import torch

from ser_plugins import Aggregator
from ser_plugins.contracts import lengths_to_mask


class MaxPooling(Aggregator):
    """Max over time of every feature; padded frames are ignored."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.output_dim = input_dim

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = lengths_to_mask(lengths, features.shape[1]).unsqueeze(-1)
        return features.masked_fill(~mask, float("-inf")).max(dim=1).values
