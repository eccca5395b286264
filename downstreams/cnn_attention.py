"""CNN + self-attention pooling as an aggregator (the "CNNSelfAttention" downstream of S3PRL's emotion task).

Frames ``[B, T, D]`` -> ``[B, hidden_dim]``:

1. average pooling over windows of ``pool`` frames with stride ``pool``, centred on frames
   ``0, pool, 2*pool, ...`` (as S3PRL's ``AvgPool1d(5, 5, padding=2)``) but averaging valid
   frames only and keeping the last partial window, then dropout;
2. ``num_layers`` 1-D convolutions (``kernel_size``, "same" length) with ReLU and dropout
   between them (none after the last);
3. self-attention pooling (Safari, India & Hernando, 2020): one linear score per frame, a
   softmax over valid frames, the weighted mean.

S3PRL's emotion configuration uses ``hidden_dim 80, kernel_size 5, pooling 5, dropout 0.4`` and
three convolutions (our defaults), followed by ``Linear -> ReLU -> Linear``: pair this
aggregator with ``classifier: {name: mlp, hidden_sizes: [80], dropout: 0}`` for the same head.
Unlike S3PRL's, padded frames never enter a pooling window or a convolution, so the result does
not depend on the batch's padding.
"""
from __future__ import annotations

import torch
from torch import nn

from downstreams.aggregators import valid_frames
from downstreams.frame_layers import (
    FRAME_NETWORK_TRAINING,
    MaskedConv1d,
    channel_mask,
    dropout_rate,
    masked_softmax_time,
    masked_time_pool,
    odd_kernel,
    positive_int,
    zero_padding,
)
from ser_plugins.plugins.contracts import Aggregator


class CnnSelfAttention(Aggregator):
    """Time pooling, 1-D convolutions, then self-attention pooling: ``hidden_dim`` features."""

    training_defaults = FRAME_NETWORK_TRAINING

    def __init__(self, input_dim: int, hidden_dim: int = 80, kernel_size: int = 5, num_layers: int = 3,
                 pool: int = 5, dropout: float = 0.4) -> None:
        super().__init__()
        self.input_dim = positive_int("input_dim", input_dim)
        self.output_dim = positive_int("hidden_dim", hidden_dim)
        kernel_size = odd_kernel("kernel_size", kernel_size)
        num_layers = positive_int("num_layers", num_layers)
        self.pool = positive_int("pool", pool)
        self.dropout = nn.Dropout(dropout_rate("dropout", dropout))
        widths = [self.input_dim] + [self.output_dim] * num_layers
        self.convs = nn.ModuleList(MaskedConv1d(a, b, kernel_size) for a, b in zip(widths[:-1], widths[1:]))
        self.score = nn.Linear(self.output_dim, 1)

    def frame_outputs(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple:
        """``(convolved frames [B, hidden_dim, T'], mask [B, 1, T'])``, ``T'`` time-pooled frames."""
        features, mask = valid_frames(features, lengths)
        x, mask = masked_time_pool(features.transpose(1, 2), channel_mask(mask), self.pool)
        x = self.dropout(x)
        for i, conv in enumerate(self.convs):
            x = conv(x, mask)
            if i < len(self.convs) - 1:
                x = self.dropout(torch.relu(x))
        return zero_padding(x, mask), mask

    def attention(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention weights over the pooled frames ``[B, T']`` (sum to 1; 0 on padding)."""
        x, mask = self.frame_outputs(features, lengths)
        return self._weights(x, mask)[:, 0]

    def _weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax_time(self.score(x.transpose(1, 2)).transpose(1, 2), mask)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention-weighted mean of the convolved frames, ``[B, hidden_dim]``."""
        x, mask = self.frame_outputs(features, lengths)
        return (self._weights(x, mask) * x).sum(-1)
