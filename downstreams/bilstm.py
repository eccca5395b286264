"""Bidirectional LSTM + attention pooling as an aggregator.

Frames ``[B, T, D]`` -> ``[B, 2 * hidden_size]``: a ``num_layers`` bidirectional LSTM in which
each direction runs over the utterance's own valid frames only -- the forward direction from the
first to the last valid frame, the backward direction from the last valid frame to the first --
exactly what ``torch.nn.utils.rnn.pack_padded_sequence`` gives (a test checks equality with a
packed ``nn.LSTM``); then additive attention pooling (Bahdanau et al., 2015; used for SER by
Mirsamadi et al., 2017): score ``v . tanh(W h_t + b)``, softmax over valid frames, weighted mean.

Why not a packed sequence: on a CPU, a packed LSTM with mixed lengths trained 7.5x slower than
this (forward + backward; benchmarks/bench_frame_heads.py, docs/heads.md). Instead each direction is an
unpacked unidirectional LSTM: the forward one reads the zero-padded batch (a causal recurrence
never reaches the padding from a valid frame), the backward one reads every utterance reversed
within its own length (its valid frames first), and its outputs are reversed back.
"""
from __future__ import annotations

import torch
from torch import nn

from downstreams.aggregators import masked_softmax, valid_frames
from downstreams.frame_layers import FRAME_NETWORK_TRAINING, dropout_rate, positive_int
from ser_plugins.plugins.contracts import Aggregator


def reverse_index(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, T]`` time index that reverses each utterance's valid frames and leaves the padding in place.

    Applying it twice is the identity.
    """
    t = torch.arange(frames, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(t < n, n - 1 - t, t)


def reverse_valid(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B, T, F]`` with each utterance's valid frames in reverse order (``index`` from ``reverse_index``)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class BiLstmAttention(Aggregator):
    """Bidirectional LSTM over each utterance's valid frames, then additive attention pooling.

    ``2 * hidden_size`` features. ``dropout`` applies to the LSTM's input and between its layers.
    """

    training_defaults = FRAME_NETWORK_TRAINING

    def __init__(self, input_dim: int, hidden_size: int = 128, num_layers: int = 1, attention_dim: int = 128,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.input_dim = positive_int("input_dim", input_dim)
        hidden_size = positive_int("hidden_size", hidden_size)
        num_layers = positive_int("num_layers", num_layers)
        self.dropout = nn.Dropout(dropout_rate("dropout", dropout))
        widths = [self.input_dim] + [2 * hidden_size] * (num_layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(w, hidden_size, batch_first=True) for w in widths)
        self.backward_lstms = nn.ModuleList(nn.LSTM(w, hidden_size, batch_first=True) for w in widths)
        self.output_dim = 2 * hidden_size
        self.project = nn.Linear(self.output_dim, positive_int("attention_dim", attention_dim))
        self.score = nn.Linear(self.project.out_features, 1, bias=False)

    def frame_outputs(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple:
        """``(LSTM outputs [B, T, 2 * hidden_size] with zeros on padding, mask [B, T])``."""
        features, mask = valid_frames(features, lengths)
        index = reverse_index(mask.sum(1), features.shape[1])
        x = features
        for forward_lstm, backward_lstm in zip(self.forward_lstms, self.backward_lstms):
            x = self.dropout(x)
            ahead, _ = forward_lstm(x)
            behind, _ = backward_lstm(reverse_valid(x, index))
            x = torch.cat([ahead, reverse_valid(behind, index)], dim=-1)
            x = x * mask.unsqueeze(-1).to(x.dtype)
        return x, mask

    def _weights(self, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_softmax(self.score(torch.tanh(self.project(out))), mask)  # [B, T, 1]

    def attention(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention weights over frames ``[B, T]`` (sum to 1; 0 on padding)."""
        return self._weights(*self.frame_outputs(features, lengths))[..., 0]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention-weighted mean of the LSTM outputs, ``[B, 2 * hidden_size]``."""
        out, mask = self.frame_outputs(features, lengths)
        return (self._weights(out, mask) * out).sum(1)
