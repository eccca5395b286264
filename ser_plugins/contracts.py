"""The three plugin contracts: Upstream, Aggregator, Classifier.

Every plugin is a ``torch.nn.Module`` whose constructor keyword arguments are its whole
configuration (scikit-learn style): a recipe's ``upstream: {name: fbank, n_mels: 64}`` becomes
``FbankUpstream(n_mels=64)``. See ``docs/architecture.md`` for the data path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

FINETUNE_MODES: Tuple[str, ...] = ("frozen", "finetune", "full", "top_n")


@dataclass
class UpstreamOutput:
    """What an upstream returns: one ``[B, T, D]`` tensor per exposed layer and frame lengths ``[B]``."""

    hidden_states: List[torch.Tensor]
    lengths: torch.Tensor


def lengths_to_mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """Boolean mask ``[B, T]`` that is True on valid (non-padded) positions."""
    max_len = int(lengths.max().item()) if max_len is None else int(max_len)
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


class Upstream(nn.Module):
    """Turns 16 kHz mono waveforms ``[B, S]`` into hidden states of one or more layers.

    Subclasses set, in ``__init__``:
      * ``sample_rate`` -- the rate the model expects (audio is resampled to it),
      * ``hop_length`` -- input samples per output frame,
      * ``hidden_sizes`` -- the feature size of every exposed layer (``num_layers`` = its length),
      * optionally ``min_samples`` (shortest usable input), ``utterance_normalized`` (True when
        every utterance's features are standardised over time, which makes mean pooling useless)
        and ``batch_invariant`` (False when padding in a batch changes an utterance's features, e.g.
        wav2vec 2.0 Base's time-wide GroupNorm: frozen features are then extracted one at a time),

    and implement ``forward(wavs, wav_lengths) -> UpstreamOutput``. Padded positions of the input
    (beyond ``wav_lengths``) must not change the features of the valid frames when the model
    supports it.
    """

    sample_rate: int = 16000
    hop_length: int = 160
    hidden_sizes: Sequence[int] = ()
    min_samples: int = 1
    utterance_normalized: bool = False
    batch_invariant: bool = True

    @property
    def num_layers(self) -> int:
        """Number of hidden-state tensors returned by ``forward``."""
        return len(self.hidden_sizes)

    @property
    def hidden_size(self) -> int:
        """Feature size of the last layer."""
        return self.hidden_sizes[-1]

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Number of valid output frames for inputs of ``wav_lengths`` samples (default: ceil-free hop)."""
        return torch.clamp(wav_lengths // self.hop_length, min=1).long()

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:  # pragma: no cover
        raise NotImplementedError

    # --- fine-tuning -------------------------------------------------------------------------
    def supported_finetune_modes(self) -> Tuple[str, ...]:
        """Fine-tuning modes this upstream implements (see ``FINETUNE_MODES``)."""
        has_params = any(True for _ in self.parameters())
        return ("frozen", "full") if has_params else ("frozen",)

    def set_finetune(self, mode: str, top_n: Optional[int] = None) -> None:
        """Set ``requires_grad`` for ``mode``: ``frozen`` (nothing trains) or ``full`` (everything).

        Self-supervised upstreams add ``finetune`` (transformer trains, CNN encoder frozen) and
        ``top_n`` (only the top ``top_n`` layers train).
        """
        if mode not in self.supported_finetune_modes():
            raise ValueError(
                f"{type(self).__name__} does not support finetune mode {mode!r}; "
                f"supported: {', '.join(self.supported_finetune_modes())}"
            )
        for p in self.parameters():
            p.requires_grad_(mode != "frozen")

    def layer_parameter_groups(self) -> List[List[nn.Parameter]]:
        """Trainable parameters grouped by depth, bottom first (for layer-wise LR decay).

        The default is a single group; transformer upstreams return the feature encoder, then one
        group per transformer layer.
        """
        return [[p for p in self.parameters() if p.requires_grad]]

    def enable_gradient_checkpointing(self) -> None:
        """Trade compute for memory while fine-tuning; a no-op for upstreams without layers."""

    # --- identity (feature caching, run records) ---------------------------------------------
    def identity(self) -> Dict[str, Any]:
        """Everything that changes the features: used as a cache key and written to run records.

        The default is the class and its constructor config; upstreams with weights add the
        weights' identity (hub id + revision, or a file hash).
        """
        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": dict(getattr(self, "config", {}) or {}),
            "sample_rate": self.sample_rate,
        }


class Aggregator(nn.Module):
    """Pools frame features ``[B, T, D_in]`` with lengths ``[B]`` into one vector ``[B, D_out]``.

    Constructor: ``__init__(input_dim, **config)``; it sets ``self.output_dim``. Padded frames
    (positions ``>= lengths``) must never change the result. ``uses_only_mean`` is True for
    aggregators whose output depends only on the time-average of the features.
    """

    output_dim: int
    uses_only_mean: bool = False

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Classifier(nn.Module):
    """Maps utterance vectors ``[B, D]`` to emotion logits ``[B, C]``.

    Constructor: ``__init__(input_dim, num_classes, **config)``. Margin-based classifiers
    (AM-/AAM-softmax) override ``training_logits``: the trainer passes the logits through it,
    with the targets, before the training loss; evaluation and prediction use ``forward`` alone.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def training_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The logits the training loss sees (default: ``logits`` unchanged)."""
        return logits
