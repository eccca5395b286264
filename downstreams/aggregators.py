"""Padding-aware aggregators: frame features ``[B, T, D]`` + lengths ``[B]`` -> vectors ``[B, D_out]``.

Padded frames (positions ``>= lengths``) are replaced by zeros before any arithmetic and get
``-inf`` scores before every softmax, so neither their values (even NaN or inf) nor their number
changes the result, and they receive exactly zero gradient.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from ser_plugins.plugins.contracts import Aggregator, lengths_to_mask


def _check_dim(name: str, value: int) -> int:
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_eps(eps: float) -> float:
    if not float(eps) > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    return float(eps)


def valid_frames(features: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and return ``(features with padded frames zeroed, mask [B, T])``.

    Every utterance must have between 1 and ``T`` valid frames.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [batch, frames, dim], got shape {tuple(features.shape)}")
    batch, frames, _ = features.shape
    lengths = torch.as_tensor(lengths, device=features.device).long()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if batch and not torch.compiler.is_exporting() and (int(lengths.min()) < 1 or int(lengths.max()) > frames):
        raise ValueError(
            f"lengths must be between 1 and the {frames} frames of features, got "
            f"min {int(lengths.min())}, max {int(lengths.max())}"
        )
    mask = lengths_to_mask(lengths, frames)
    return features.masked_fill(~mask.unsqueeze(-1), 0.0), mask


def weighted_mean_std(
    features: torch.Tensor, weights: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over time of ``[B, T, D]`` under weights ``[B, T, K]`` summing to 1.

    Returns ``[B, K, D]`` each; ``std = sqrt(var + eps)`` keeps the gradient finite at zero variance.
    """
    mean = torch.einsum("btk,btd->bkd", weights, features)
    centred_sq = (features.unsqueeze(2) - mean.unsqueeze(1)).pow(2)  # [B, T, K, D]
    var = (weights.unsqueeze(-1) * centred_sq).sum(1)
    return mean, torch.sqrt(var + eps)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over time (dim 1) of ``[B, T, K]`` scores with padded frames set to ``-inf``."""
    return torch.softmax(scores.masked_fill(~mask.unsqueeze(-1), float("-inf")), dim=1)


def drop_frames(mask: torch.Tensor, rate: float) -> torch.Tensor:
    """Training-time frame dropout: hide each valid frame with probability ``rate`` (keeps >= 1 per row).

    Attention pooling on frozen features can memorise which frames of each training utterance to
    weight; hiding random frames stops that, as attention dropout does in transformers.
    """
    if rate <= 0:
        return mask
    kept = mask & (torch.rand(mask.shape, device=mask.device) >= rate)
    empty = ~kept.any(1)
    return torch.where(empty.unsqueeze(1), mask, kept)


def _check_rate(rate: float) -> float:
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"frame_dropout must be in [0, 1), got {rate!r}")
    return float(rate)


def _uniform_weights(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    weights = mask.to(dtype)
    return (weights / weights.sum(1, keepdim=True)).unsqueeze(-1)


def _start_uniform(scores: nn.Linear) -> None:
    """Zero the layer that outputs attention scores: training starts from uniform (mean / stats) pooling.

    With random scores a frozen-feature head first learns to undo an arbitrary weighting; starting
    from the plain pooling that already matches a linear model, attention only moves where it helps.
    """
    nn.init.zeros_(scores.weight)
    if scores.bias is not None:
        nn.init.zeros_(scores.bias)


class MeanPooling(Aggregator):
    """Average of the valid frames: ``D`` features."""

    uses_only_mean = True

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.input_dim = _check_dim("input_dim", input_dim)
        self.output_dim = self.input_dim

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean over valid frames ``[B, D]``."""
        features, mask = valid_frames(features, lengths)
        return features.sum(1) / mask.sum(1, keepdim=True).to(features.dtype)


class StatsPooling(Aggregator):
    """Mean and standard deviation of the valid frames, concatenated: ``2 * D`` features."""

    def __init__(self, input_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.input_dim = _check_dim("input_dim", input_dim)
        self.eps = _check_eps(eps)
        self.output_dim = 2 * self.input_dim

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[mean, std]`` over valid frames, ``[B, 2 * D]``."""
        features, mask = valid_frames(features, lengths)
        mean, std = weighted_mean_std(features, _uniform_weights(mask, features.dtype), self.eps)
        return torch.cat([mean[:, 0], std[:, 0]], dim=-1)


class AttentiveStatsPooling(Aggregator):
    """Attentive statistics pooling (Okabe et al., 2018): ``2 * D`` features.

    A one-hidden-layer MLP scores every frame (``v . tanh(W h_t + b) + k``); the softmax of the
    scores over valid frames weights the mean and the standard deviation. Scores start at zero
    (plain statistics pooling); in training each frame is hidden with probability ``frame_dropout``
    (see ``drop_frames``; 0 turns it off).
    """

    def __init__(self, input_dim: int, hidden_dim: int = 128, eps: float = 1e-5, frame_dropout: float = 0.8) -> None:
        super().__init__()
        self.input_dim = _check_dim("input_dim", input_dim)
        hidden_dim = _check_dim("hidden_dim", hidden_dim)
        self.eps = _check_eps(eps)
        self.frame_dropout = _check_rate(frame_dropout)
        self.scorer = nn.Sequential(nn.Linear(self.input_dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))
        _start_uniform(self.scorer[-1])
        self.output_dim = 2 * self.input_dim

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention-weighted ``[mean, std]``, ``[B, 2 * D]``."""
        features, mask = valid_frames(features, lengths)
        if self.training:
            mask = drop_frames(mask, self.frame_dropout)
        weights = masked_softmax(self.scorer(features), mask)
        mean, std = weighted_mean_std(features, weights, self.eps)
        return torch.cat([mean[:, 0], std[:, 0]], dim=-1)


class SelfAttentionPooling(Aggregator):
    """Structured self-attentive pooling (Lin et al., 2017) with ``num_heads`` learned queries.

    Scores are ``W2 tanh(W1 h_t)`` (``W2``'s rows are the heads' queries); each head takes its own
    softmax over valid frames and returns a weighted mean. The heads are concatenated
    (``num_heads * D`` features) or, with ``concat=False``, averaged (``D`` features). Queries start
    at zero (mean pooling); in training each frame is hidden with probability ``frame_dropout``
    (0.9: its ``num_heads * D`` outputs memorise a small corpus more easily than ``attentive_stats``).
    """

    def __init__(self, input_dim: int, num_heads: int = 4, hidden_dim: int = 128, concat: bool = True,
                 frame_dropout: float = 0.9) -> None:
        super().__init__()
        self.frame_dropout = _check_rate(frame_dropout)
        self.input_dim = _check_dim("input_dim", input_dim)
        self.num_heads = _check_dim("num_heads", num_heads)
        hidden_dim = _check_dim("hidden_dim", hidden_dim)
        self.concat = bool(concat)
        self.project = nn.Linear(self.input_dim, hidden_dim, bias=False)
        self.queries = nn.Linear(hidden_dim, self.num_heads, bias=False)
        _start_uniform(self.queries)
        self.output_dim = self.input_dim * self.num_heads if self.concat else self.input_dim

    def _weights(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(self.queries(torch.tanh(self.project(features))), mask)

    def attention(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-head attention weights over frames, ``[B, T, num_heads]`` (0 on padded frames)."""
        return self._weights(*valid_frames(features, lengths))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooled heads, ``[B, num_heads * D]`` (concat) or ``[B, D]`` (mean of heads)."""
        features, mask = valid_frames(features, lengths)
        if self.training:
            mask = drop_frames(mask, self.frame_dropout)
        pooled = torch.einsum("bth,btd->bhd", self._weights(features, mask), features)
        return pooled.flatten(1) if self.concat else pooled.mean(1)
