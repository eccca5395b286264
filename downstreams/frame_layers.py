"""Padding-exact building blocks for trainable frame-level networks (channel-first ``[B, C, T]``).

A padded batch must give every utterance the result it gets alone. Three rules make that exact:

* a convolution that mixes frames (kernel > 1) never sees padded frames: ``MaskedConv1d``
  replaces them by zeros, which is what the convolution's own zero padding shows an utterance run
  alone (odd kernels, "same" padding); pointwise (kernel 1) convolutions cannot mix frames;
* statistics over time or over the batch (batch norm, squeeze-excitation, pooling) count only
  valid frames (``MaskedBatchNorm1d``, ``masked_mean``, ``masked_time_pool``);
* the network's input is cleaned once with ``masked_fill`` (never multiplied by zero, so NaN or
  inf padding cannot leak in: ``0 * nan = nan``), and receives exactly zero gradient there.

After that, padded frames of intermediate outputs hold finite values that nothing valid ever
reads, and the layers here zero them by multiplying with the mask (much faster on a CPU than a
broadcast ``masked_fill``). ``mask`` is always boolean ``[B, 1, T]``, True on valid frames.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Tuple

import torch
from torch import nn

# Training settings of the frame-level networks (their ``training_defaults``): at the global default
# learning rate of 0.01, a convolution stack followed by an MLP killed its ReLU units (a fold stuck
# at ln 4, UA 0.25) and linear heads overfitted; at 1e-3 they reach the pooled linear reference
# (benchmarks/README.md, docs/heads.md). They overfit their step budget on a small corpus (the dev
# loss passes a minimum far below its final value), so the dev set picks the epoch of lowest dev loss
# and the network is refitted on train + dev for that share of the budget (training.refit): no
# training speaker is lost to the dev set. A recipe's own training keys win; with protocol.dev: none
# or select: last the dev-reading defaults are left out.
FRAME_NETWORK_TRAINING = MappingProxyType({"lr": 1e-3, "select": "dev_loss", "refit": True})


def positive_int(name: str, value: int) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name`` when it is not >= 1."""
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def odd_kernel(name: str, value: int) -> int:
    """A positive odd kernel size (odd kernels keep "same" padding symmetric and exact)."""
    value = positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd (symmetric 'same' padding), got {value}")
    return value


def dropout_rate(name: str, value: float) -> float:
    """A dropout probability in ``[0, 1)``."""
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def channel_mask(mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` frame mask -> ``[B, 1, T]`` (broadcasts over channels)."""
    return mask.unsqueeze(1)


def zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padded frames set to 0 (``x`` must be finite there: it is multiplied by the mask)."""
    return x * mask.to(x.dtype)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames of ``[B, C, T]``: ``[B, C]``."""
    count = mask.sum(-1).clamp(min=1).to(x.dtype)
    return zero_padding(x, mask).sum(-1) / count


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and ``sqrt(var + eps)`` over valid frames of ``[B, C, T]``: two ``[B, C]``."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean.unsqueeze(-1)).pow(2), mask)
    return mean, torch.sqrt(var + eps)


def masked_time_pool(x: torch.Tensor, mask: torch.Tensor, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Average windows of ``size`` frames with stride ``size``, centred on frames ``0, size, 2*size, ...``.

    Window ``j`` covers frames ``[j*size - size//2, j*size - size//2 + size)`` and averages the
    valid frames in it only; there are as many windows as hold a valid frame
    (``ceil((n + size//2) / size)`` for an utterance of ``n`` frames), so every frame is used and
    the result does not depend on the padding. Returns ``(pooled [B, C, T'], mask [B, 1, T'])``.
    """
    if size == 1:
        return x, mask
    left = size // 2
    frames = x.shape[-1] + left
    extra = (-frames) % size
    x = nn.functional.pad(zero_padding(x, mask), (left, extra))
    m = nn.functional.pad(mask, (left, extra))
    batch, channels, padded = x.shape
    sums = x.view(batch, channels, padded // size, size).sum(-1)
    counts = m.view(batch, 1, padded // size, size).sum(-1)
    return sums / counts.clamp(min=1).to(x.dtype), counts > 0


def masked_softmax_time(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over time (last dim) of ``[B, K, T]`` scores; padded frames get weight 0."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


class MaskedConv1d(nn.Conv1d):
    """``nn.Conv1d`` with "same" output length that never reads padded frames.

    ``forward(x, mask)``: with a kernel wider than 1, the padded frames of ``x`` (finite) are set
    to zero before convolving, so a valid output frame near the end sees exactly the zeros it would
    see from the convolution's own padding if the utterance were run alone. A pointwise (kernel 1)
    convolution reads one frame at a time and needs no mask.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1,
                 bias: bool = True) -> None:
        kernel_size = odd_kernel("kernel_size", kernel_size)
        dilation = positive_int("dilation", dilation)
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation,
                         padding=dilation * (kernel_size - 1) // 2, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``[B, C_in, T]`` -> ``[B, C_out, T]``."""
        if self.kernel_size[0] > 1:
            x = zero_padding(x, mask)
        return super().forward(x)


def warm_momentum(momentum: float, batches_seen: int) -> float:
    """``max(momentum, 1 / (batches_seen + 1))``: running statistics that start from the data.

    The running mean and variance are then the plain average of the first ``1 / momentum``
    batches' statistics, and an exponential moving average after that, instead of an average
    that starts from the arbitrary initial values 0 and 1 (which, after only a few steps, leaves
    evaluation-mode outputs far from training-mode ones in a network with many norm layers).
    """
    return max(float(momentum), 1.0 / (int(batches_seen) + 1))


class WarmBatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` whose running statistics start from the data (``warm_momentum``)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.base_momentum = float(momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As ``nn.BatchNorm1d``, with this step's momentum set from the number of batches seen."""
        if self.training:
            self.momentum = warm_momentum(self.base_momentum, int(self.num_batches_tracked))
        return super().forward(x)


class MaskedBatchNorm1d(nn.Module):
    """Batch normalisation over channels of ``[B, C, T]`` whose statistics count valid frames only.

    Training: per-channel mean and (biased) variance over every valid frame of the batch; the
    running estimates (unbiased variance, as ``nn.BatchNorm1d``) are updated with
    ``warm_momentum(momentum, batches seen)``. Evaluation: the running estimates. Padded output
    frames are zeros. Statistics are computed in float32 whatever the input's dtype.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.channels = positive_int("channels", channels)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.weight = nn.Parameter(torch.ones(self.channels))
        self.bias = nn.Parameter(torch.zeros(self.channels))
        self.register_buffer("running_mean", torch.zeros(self.channels))
        self.register_buffer("running_var", torch.ones(self.channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Normalised ``[B, C, T]`` (padded frames: finite values, never read by a valid frame)."""
        xf = x.float()
        if self.training:
            weight = mask.to(xf.dtype)
            count = weight.sum().clamp(min=1)
            mean = (xf * weight).sum((0, 2)) / count
            var = ((xf - mean.view(1, -1, 1)) * weight).pow(2).sum((0, 2)) / count
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp(min=1)
                step = warm_momentum(self.momentum, int(self.num_batches_tracked))
                self.running_mean.lerp_(mean.detach(), step)
                self.running_var.lerp_(unbiased.detach(), step)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return (xf * scale.view(1, -1, 1) + shift.view(1, -1, 1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}, momentum={self.momentum}"


class ConvReluNorm(nn.Module):
    """``MaskedConv1d -> ReLU -> MaskedBatchNorm1d`` (the TDNN layer of ECAPA-TDNN)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = MaskedConv1d(in_channels, out_channels, kernel_size, dilation)
        self.norm = MaskedBatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, T]`` -> ``[B, C_out, T]``."""
        return self.norm(torch.relu(self.conv(x, mask)), mask)
