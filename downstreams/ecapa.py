"""ECAPA-TDNN as an aggregator (Desplanques, Thienpondt & Demuynck, Interspeech 2020).

Frames ``[B, T, D]`` -> an utterance embedding ``[B, embedding_dim]``:

1. a TDNN layer (kernel 5) from ``D`` to ``channels``;
2. one SE-Res2Block per entry of ``dilations`` (1x1 conv, Res2Net dilated conv with ``scale``
   branches, 1x1 conv, squeeze-excitation, residual connection);
3. multi-layer feature aggregation: the blocks' outputs concatenated, then a 1x1 TDNN layer to
   ``mfa_channels`` (default ``len(dilations) * channels``);
4. channel- and context-dependent attentive statistics pooling: every channel has its own
   softmax over time, computed from the frame and (``global_context``) the utterance's mean and
   standard deviation;
5. a norm, a linear layer to ``embedding_dim``, a norm.

Every convolution and frame-level batch norm is padding-exact (``frame_layers``), so a padded
batch gives each utterance the embedding it gets alone; their running statistics start from the
data (``frame_layers.warm_momentum``). The two norms of step 5 see one vector per utterance. The
paper uses batch norm there (``utterance_norm: batch``), whose statistics over a few utterances
are noisy: with batches of 3 it often made the evaluation-mode loss worse after 10 training
steps while the training-mode loss fell (tests/test_model.py), and the trainer must skip
one-utterance batches. The default is layer norm (``utterance_norm: layer``), which normalises
each utterance on its own, so predictions never depend on the batch.
The defaults are a small network that trains on a CPU (``channels=64``, ``scale=4``,
``se_channels=32``, ``attention_channels=64``, ``embedding_dim=96``: about 0.2 M parameters on
80 filter banks); the paper's is ``channels=512`` (or 1024), ``scale=8``, ``se_channels=128``,
``attention_channels=128``, ``embedding_dim=192`` (6.2 M).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from downstreams.aggregators import valid_frames
from downstreams.frame_layers import (
    FRAME_NETWORK_TRAINING,
    ConvReluNorm,
    WarmBatchNorm1d,
    MaskedConv1d,
    channel_mask,
    masked_mean,
    masked_mean_std,
    masked_softmax_time,
    odd_kernel,
    positive_int,
    zero_padding,
)
from ser_plugins.plugins.contracts import Aggregator


class SqueezeExcitation(nn.Module):
    """Channel gates from the utterance's mean frame: ``h * sigmoid(W2 relu(W1 mean_t h))``."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.squeeze = nn.Linear(channels, bottleneck)
        self.excite = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` with every channel scaled by its gate in ``(0, 1)``."""
        gates = torch.sigmoid(self.excite(torch.relu(self.squeeze(masked_mean(x, mask)))))
        return x * gates.unsqueeze(-1)


class Res2Conv(nn.Module):
    """Res2Net's hierarchical convolution: ``scale`` channel groups, ``y1 = x1``,
    ``y2 = K2(x2)``, ``yi = Ki(xi + y(i-1))``; outputs concatenated (Gao et al., 2019)."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.branches = nn.ModuleList(ConvReluNorm(width, width, kernel_size, dilation) for _ in range(scale - 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C, T]``."""
        groups = x.chunk(self.scale, dim=1)
        outputs = [groups[0]]
        previous = None
        for group, branch in zip(groups[1:], self.branches):
            previous = branch(group if previous is None else group + previous, mask)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class SERes2Block(nn.Module):
    """1x1 TDNN, dilated Res2 convolution, 1x1 TDNN, squeeze-excitation, plus the block's input."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int, se_channels: int) -> None:
        super().__init__()
        self.reduce = ConvReluNorm(channels, channels, 1)
        self.res2 = Res2Conv(channels, scale, kernel_size, dilation)
        self.expand = ConvReluNorm(channels, channels, 1)
        self.se = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, C, T]``."""
        h = self.expand(self.res2(self.reduce(x, mask), mask), mask)
        return self.se(h, mask) + x


class ChannelAttentiveStats(nn.Module):
    """Attentive statistics pooling with one softmax over time per channel.

    Score of channel ``c`` at frame ``t``: ``v_c . tanh(W g_t + b) + k_c``, where ``g_t`` is the
    frame, joined (``global_context``) with the utterance's mean and standard deviation. Returns
    the attention-weighted mean and standard deviation, ``[B, 2 * C]``.
    """

    def __init__(self, channels: int, attention_channels: int, global_context: bool, eps: float = 1e-5) -> None:
        super().__init__()
        self.global_context = bool(global_context)
        self.eps = float(eps)
        inputs = 3 * channels if self.global_context else channels
        self.hidden = MaskedConv1d(inputs, attention_channels, 1)
        self.scores = MaskedConv1d(attention_channels, channels, 1)

    def weights(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-channel attention weights ``[B, C, T]`` (each channel sums to 1; 0 on padded frames)."""
        context = x
        if self.global_context:
            mean, std = masked_mean_std(x, mask, self.eps)
            frames = x.shape[-1]
            context = torch.cat([x, mean.unsqueeze(-1).expand(-1, -1, frames),
                                 std.unsqueeze(-1).expand(-1, -1, frames)], dim=1)
        return masked_softmax_time(self.scores(torch.tanh(self.hidden(context, mask)), mask), mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` -> ``[B, 2 * C]``."""
        x = zero_padding(x, mask)
        alpha = self.weights(x, mask)
        mean = (alpha * x).sum(-1)
        var = (alpha * (x - mean.unsqueeze(-1)).pow(2)).sum(-1)
        return torch.cat([mean, torch.sqrt(var + self.eps)], dim=1)


# ECAPA-TDNN adds random 1.5 s training crops (evaluation sees whole utterances): without them, on
# frozen features of a small corpus, it memorised the training utterances within about 20 epochs
# and one demo fold collapsed (UA 0.52 against the linear reference's 0.69; 0.69 with the crops).
ECAPA_TRAINING = MappingProxyType({**FRAME_NETWORK_TRAINING, "max_duration": 1.5})


def _no_norm(size: int) -> nn.Module:
    return nn.Identity()


#: the norms after pooling and after the embedding layer (``utterance_norm``)
UTTERANCE_NORMS: Dict[Optional[str], Callable[[int], nn.Module]] = {
    "batch": WarmBatchNorm1d, "layer": nn.LayerNorm, "none": _no_norm, None: _no_norm}


class EcapaTdnn(Aggregator):
    """ECAPA-TDNN embedding network (Desplanques et al., 2020): frames -> ``embedding_dim`` vector.

    Options: ``channels`` (C, divisible by ``scale``), ``scale`` (Res2Net groups), ``dilations``
    (one SE-Res2Block each), ``kernel_size`` (of the Res2 convolutions), ``first_kernel_size``,
    ``se_channels``, ``attention_channels``, ``mfa_channels`` (default ``len(dilations) * C``),
    ``embedding_dim``, ``global_context`` (attention sees the utterance's mean and std),
    ``utterance_norm`` (after pooling and after the embedding layer: ``batch`` as in the paper,
    ``layer`` -- the default -- or ``none``).

    Trains at ``lr`` 1e-3 on random 1.5 s crops of longer utterances (``training_defaults``;
    evaluation sees whole utterances) unless the recipe sets ``training.lr`` / ``max_duration``.
    """

    training_defaults = ECAPA_TRAINING

    def __init__(self, input_dim: int, channels: int = 64, scale: int = 4, embedding_dim: int = 96,
                 dilations: Sequence[int] = (2, 3, 4), kernel_size: int = 3, first_kernel_size: int = 5,
                 se_channels: int = 32, attention_channels: int = 64, mfa_channels: Optional[int] = None,
                 global_context: bool = True, utterance_norm: Optional[str] = "layer") -> None:
        super().__init__()
        self.input_dim = positive_int("input_dim", input_dim)
        channels = positive_int("channels", channels)
        scale = positive_int("scale", scale)
        if channels % scale:
            raise ValueError(f"channels ({channels}) must be divisible by scale ({scale})")
        if isinstance(dilations, (str, bytes)) or not list(dilations):
            raise ValueError(f"dilations must be a non-empty list of positive integers, got {dilations!r}")
        dilations = [positive_int("dilations entry", d) for d in dilations]
        kernel_size = odd_kernel("kernel_size", kernel_size)
        first_kernel_size = odd_kernel("first_kernel_size", first_kernel_size)
        mfa_channels = positive_int("mfa_channels", mfa_channels) if mfa_channels else len(dilations) * channels
        self.output_dim = positive_int("embedding_dim", embedding_dim)
        self.first = ConvReluNorm(self.input_dim, channels, first_kernel_size)
        self.blocks = nn.ModuleList(
            SERes2Block(channels, scale, kernel_size, d, positive_int("se_channels", se_channels)) for d in dilations)
        self.aggregate = ConvReluNorm(len(dilations) * channels, mfa_channels, 1)
        self.pool = ChannelAttentiveStats(mfa_channels, positive_int("attention_channels", attention_channels),
                                          global_context)
        if utterance_norm not in UTTERANCE_NORMS:
            raise ValueError(f"unknown utterance_norm {utterance_norm!r}; choose one of: batch, layer, none")
        make_norm = UTTERANCE_NORMS[utterance_norm]
        self.pool_norm = make_norm(2 * mfa_channels)
        self.embed = nn.Linear(2 * mfa_channels, self.output_dim)
        self.embed_norm = make_norm(self.output_dim)

    def frame_outputs(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple:
        """``(aggregated frame features [B, mfa_channels, T], mask [B, 1, T])`` before pooling."""
        features, mask = valid_frames(features, lengths)
        mask = channel_mask(mask)
        x = self.first(features.transpose(1, 2), mask)
        outputs = []
        for block in self.blocks:
            x = block(x, mask)
            outputs.append(x)
        return self.aggregate(torch.cat(outputs, dim=1), mask), mask

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, embedding_dim]``."""
        frames, mask = self.frame_outputs(features, lengths)
        return self.embed_norm(self.embed(self.pool_norm(self.pool(frames, mask))))

