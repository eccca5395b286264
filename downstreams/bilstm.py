"""Bidirectional LSTM + attention pooling as an aggregator.

Frames ``[B, T, D]`` -> ``[B, 2 * hidden_size]``: a ``num_layers`` bidirectional LSTM runs on
packed sequences (``torch.nn.utils.rnn.pack_padded_sequence``), so each direction starts and
ends at the utterance's own first and last valid frame and padding never enters the recurrence;
then additive attention pooling (Bahdanau et al., 2015; as used for SER by Mirsamadi et al.,
2017): score ``v . tanh(W h_t + b)``, softmax over valid frames, weighted mean of ``h_t``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from downstreams.aggregators import masked_softmax, valid_frames
from downstreams.frame_layers import dropout_rate, positive_int
from ser_plugins.contracts import Aggregator


class BiLstmAttention(Aggregator):
    """Packed bidirectional LSTM, then additive attention pooling: ``2 * hidden_size`` features.

    ``dropout`` applies to the LSTM's input and between its layers.
    """

    def __init__(self, input_dim: int, hidden_size: int = 128, num_layers: int = 1, attention_dim: int = 128,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.input_dim = positive_int("input_dim", input_dim)
        hidden_size = positive_int("hidden_size", hidden_size)
        num_layers = positive_int("num_layers", num_layers)
        dropout = dropout_rate("dropout", dropout)
        self.input_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(self.input_dim, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.output_dim = 2 * hidden_size
        self.project = nn.Linear(self.output_dim, positive_int("attention_dim", attention_dim))
        self.score = nn.Linear(self.project.out_features, 1, bias=False)

    def frame_outputs(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple:
        """``(LSTM outputs [B, T, 2 * hidden_size] with zeros on padding, mask [B, T])``."""
        features, mask = valid_frames(features, lengths)
        packed = pack_padded_sequence(self.input_dropout(features), mask.sum(1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=features.shape[1])
        return out, mask

    def attention(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention weights over frames ``[B, T]`` (sum to 1; 0 on padding)."""
        out, mask = self.frame_outputs(features, lengths)
        return masked_softmax(self.score(torch.tanh(self.project(out))), mask)[..., 0]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Attention-weighted mean of the LSTM outputs, ``[B, 2 * hidden_size]``."""
        out, mask = self.frame_outputs(features, lengths)
        weights = masked_softmax(self.score(torch.tanh(self.project(out))), mask)  # [B, T, 1]
        return (weights * out).sum(1)
