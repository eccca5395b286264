"""The plugin contracts: Upstream, Aggregator, Classifier and Corpus (with Utterance and CorpusProblem).

Every plugin is a ``torch.nn.Module`` whose constructor keyword arguments are its whole
configuration (scikit-learn style): a recipe's ``upstream: {name: fbank, n_mels: 64}`` becomes
``FbankUpstream(n_mels=64)``. See ``docs/architecture.md`` for the data path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, get_args

import torch
from torch import nn

FinetuneMode = Literal["frozen", "finetune", "full", "top_n", "lora", "adapter"]
FINETUNE_MODES: Tuple[str, ...] = get_args(FinetuneMode)


@dataclass
class UpstreamOutput:
    """What an upstream returns: one ``[B, T, D]`` tensor per exposed layer and frame lengths ``[B]``."""

    hidden_states: List[torch.Tensor]
    lengths: torch.Tensor


def lengths_to_mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """Boolean mask ``[B, T]`` that is True on valid (non-padded) positions."""
    if max_len is None:
        max_len = int(lengths.max().item())
    elif not isinstance(max_len, torch.SymInt):  # a symbolic size stays symbolic (export)
        max_len = int(max_len)
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

        Self-supervised upstreams add ``finetune`` (transformer trains, CNN encoder frozen),
        ``top_n`` (only the top ``top_n`` layers train), ``lora`` (LoRA weights through ``peft``, the
        rest frozen) and ``adapter`` (bottleneck adapters, the rest frozen); the last two read the
        recipe's settings from ``self.peft_options`` (set before ``set_finetune`` is called).
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

        The default is the class, its full config (constructor defaults included), its
        distribution and version, and a fingerprint of its source (``source_fingerprint()``);
        upstreams with weights add the weights' identity (hub id + revision, or a file hash).
        """
        from ser_plugins.plugins.fingerprint import distribution_of, resolved_config

        return {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": resolved_config(self),
            "sample_rate": self.sample_rate,
            "distribution": distribution_of(self),
            "source": self.source_fingerprint(),
        }

    def source_fingerprint(self) -> str:
        """Hash of the plugin's code (the ``.py`` files of the modules defining its class and bases).

        Override to widen it (code in other folders) or to pin it (e.g. return a release tag).
        """
        from ser_plugins.plugins.fingerprint import source_fingerprint

        return source_fingerprint(type(self))


class Aggregator(nn.Module):
    """Pools frame features ``[B, T, D_in]`` with lengths ``[B]`` into one vector ``[B, D_out]``.

    Constructor: ``__init__(input_dim, **config)``; it sets ``self.output_dim``. Padded frames
    (positions ``>= lengths``) must never change the result. ``uses_only_mean`` is True for
    aggregators whose output depends only on the time-average of the features.
    ``training_defaults`` (data, e.g. ``{"lr": 1e-3}``) are training settings this aggregator trains
    well with: they fill the ``training`` keys a recipe leaves unset (a recipe's own keys win).
    """

    output_dim: int
    uses_only_mean: bool = False
    training_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Classifier(nn.Module):
    """Maps utterance vectors ``[B, D]`` to the head's outputs ``[B, num_classes]``: emotion logits, target values.

    Constructor: ``__init__(input_dim, num_classes, **config)``. ``num_classes`` is the output size
    the run's task declares (``ser_plugins.task.TaskSpec``): the class logits, then one value per
    continuous target (``task: regression``: values only; ``multitask``: ``C`` logits then ``K``
    values). A classifier needs to know nothing of the split: any classifier serves every task. Margin-based classifiers
    (AM-/AAM-softmax) override ``training_logits``: the trainer passes the logits through it,
    with the targets, before the training loss; evaluation and prediction use ``forward`` alone.
    ``training_defaults``: as for aggregators (an aggregator's win on a key both declare).
    """

    training_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def training_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The logits the training loss sees (default: ``logits`` unchanged)."""
        return logits


# --- corpora ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Utterance:
    """One labelled utterance: where its audio is, its emotion label and who spoke it.

    ``start``/``end`` (seconds) select a segment of a longer file; ``fold``/``split`` carry a
    predefined fold or train/dev/test split when the corpus defines one. ``attributes`` holds the
    utterance's continuous targets by name (dimensional emotion: ``{"arousal": 3.5, "valence":
    2.0, "dominance": 3.0}`` on the corpus's scale, see ``Corpus.attribute_scales``). ``label`` is
    ``NO_LABEL`` (``""``) for an utterance that has attributes but no consensus class (usable for
    regression only). ``corpus`` names the corpus of an utterance of a multi-corpus run (cross-corpus
    protocols and per-corpus results read it).
    """

    id: str
    path: str
    label: str
    speaker: str
    session: str = ""
    start: Optional[float] = None
    end: Optional[float] = None
    fold: Optional[str] = None
    split: Optional[str] = None
    attributes: Mapping[str, float] = field(default_factory=dict, hash=False)
    corpus: str = ""  # the corpus it comes from, when a run reads several (the ``multi`` corpus)


NO_LABEL = ""  # Utterance.label of an utterance without a class (attributes only)


@dataclass(frozen=True)
class CorpusProblem:
    """A problem found while reading a corpus: the file, the line (if any) and what is wrong.

    ``kind``, ``key``, ``count`` and ``lines`` let a run count and cite problems: ``DROPPED_LABEL``
    (``key`` the raw label, ``count`` its rows, written to run.json; the recipe's choice of classes,
    so ``data.strict`` does not turn it into an error), ``DUPLICATE_AUDIO`` (``key`` the later
    utterance's id, ``lines`` both lines).
    """

    path: str
    message: str
    line: Optional[int] = None
    fatal: bool = False
    kind: str = ""
    key: str = ""
    count: int = 1
    lines: Tuple[int, ...] = ()

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.message}"


DROPPED_LABEL = "dropped_label"  # rows whose label is outside the corpus's labels (counted per raw label)
DUPLICATE_AUDIO = "duplicate_audio"  # the same audio (file and segment) listed twice


class Corpus:
    """Base class of corpus plugins.

    A corpus plugin's constructor takes ``root`` (a folder or file) plus its own options and sets:
      * ``labels`` -- the class names, in the order used for logits and confusion matrices,
      * ``default_protocol`` -- the fold protocol used when a recipe names none,
      * optionally ``notes`` -- after ``load()``, a JSON-ready dict of what the corpus chose while reading
        (a dev rule, a view), written to run.json as ``corpus_notes``,
      * optionally ``attributes`` -- the names of the continuous targets its utterances can carry
        (``Utterance.attributes``) and ``attribute_scales`` -- each one's documented ``(low, high)``
        range (values outside it are warned about, counted),
    and implements ``load() -> list[Utterance]``, appending anything odd it meets to
    ``self.problems`` (fatal problems stop a run before training; the others are reported).
    """

    labels: List[str] = []
    default_protocol: str = "session"
    attributes: Sequence[str] = ()
    attribute_scales: Mapping[str, Tuple[float, float]] = MappingProxyType({})

    def __init__(self) -> None:
        self.problems: List[CorpusProblem] = []

    def load(self) -> List[Utterance]:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def generate(cls, root: str, **options: Any) -> Dict[str, Any]:
        """Optional: write a copy of this corpus under ``root`` (``ser demo-corpus``); returns a summary.

        Corpora that can make their own data (a synthetic stand-in) override this; ``can_generate``
        tells which do.
        """
        raise NotImplementedError(f"{cls.__name__} cannot generate its data")

    @classmethod
    def can_generate(cls) -> bool:
        """True when the class overrides ``generate``."""
        return getattr(cls.generate, "__func__", None) is not Corpus.__dict__["generate"].__func__

    def problem(
        self,
        path: str,
        message: str,
        line: Optional[int] = None,
        fatal: bool = False,
        kind: str = "",
        key: str = "",
        count: int = 1,
        lines: Sequence[int] = (),
    ) -> None:
        """Record a problem met while reading the corpus (``kind``, ``key``, ``count``, ``lines``: see
        ``CorpusProblem``)."""
        self.problems.append(CorpusProblem(str(path), message, line, fatal, kind, key, count, tuple(lines)))
