"""Composition: upstream -> layer use -> optional projection -> aggregator -> classifier."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ser_plugins.errors import UserError
from ser_plugins.plugins import registry
from ser_plugins.plugins.boundary import (
    check_aggregator_declaration,
    check_aggregator_output,
    check_classifier_output,
    check_upstream_declaration,
    check_upstream_output,
    describe,
)
from ser_plugins.plugins.contracts import Upstream
from ser_plugins.recipe import FeaturesConfig, FinetuneConfig, PluginSection, Recipe
from ser_plugins.task import TaskSpec

_log = logging.getLogger("ser_plugins")


class CompositionError(UserError, ValueError):
    """A combination of plugins and options that cannot build or cannot learn."""


class LayerSelect(nn.Module):
    """Uses one layer of the upstream's hidden states (``last`` or an index into the kept layers)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        return hidden_states[self.index]


class WeightedLayerSum(nn.Module):
    """SUPERB-style learnable softmax-weighted sum of layers (optionally layer-normalised first)."""

    def __init__(self, num_layers: int, layer_norm: bool = False) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.layer_norm = layer_norm

    def normalized_weights(self) -> torch.Tensor:
        """The softmax of the learned weights: which layers the head relies on."""
        return torch.softmax(self.weights, dim=0)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(hidden_states) != self.weights.numel():
            raise CompositionError(f"weighted sum built for {self.weights.numel()} layers got {len(hidden_states)}")
        stacked = torch.stack([h.float() for h in hidden_states], dim=0)  # [L, B, T, D]
        if self.layer_norm:
            stacked = nn.functional.layer_norm(stacked, stacked.shape[-1:])
        w = self.normalized_weights().view(-1, 1, 1, 1)
        return (w * stacked).sum(0)


class TargetScale(nn.Module):
    """The standardisation of continuous targets (``task.standardize``), inverted on the head's output.

    The classifier learns standardised targets; ``forward`` maps its value columns (after the
    ``num_classes`` logits) back to the corpus's scale: ``value * std + mean``. ``mean`` and ``std``
    are buffers (fitted on the training fold, saved with the head's weights), so prediction and
    export give values on the corpus's scale.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_classes: int, num_targets: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.register_buffer("mean", torch.zeros(num_targets))
        self.register_buffer("std", torch.ones(num_targets))

    def fit(self, values: torch.Tensor) -> "TargetScale":
        """Set mean and standard deviation (ddof=0; 1 where a target is constant) from ``[N, K]`` training values."""
        v = values.double()
        std = v.std(0, unbiased=False)
        self.mean.copy_(v.mean(0).float())
        self.std.copy_(torch.where(std > 0, std, torch.ones_like(std)).float())
        return self

    def standardize(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, K]`` values on the corpus's scale -> standardised (what the loss compares)."""
        return (values - self.mean) / self.std

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        c = self.num_classes
        values = outputs[:, c:] * self.std + self.mean
        return torch.cat([outputs[:, :c], values], dim=1) if c else values


class SERHead(nn.Module):
    """Everything after the upstream: layer use, projection, aggregator, classifier (and a target scale).

    The output is ``[B, num_outputs]``: class logits, then continuous target values
    (``ser_plugins.task``); ``target_scale`` (``task.standardize``) maps the values back to the
    corpus's scale.
    """

    layer_use: nn.Module
    projection: nn.Module
    aggregator: nn.Module
    classifier: nn.Module
    target_scale: Optional[TargetScale]

    def __init__(
        self,
        layer_use: nn.Module,
        projection: nn.Module,
        aggregator: nn.Module,
        classifier: nn.Module,
        target_scale: Optional[TargetScale] = None,
    ) -> None:
        super().__init__()
        self.layer_use = layer_use
        self.projection = projection
        self.aggregator = aggregator
        self.classifier = classifier
        self.target_scale = target_scale  # registered only when set: classification heads keep their state keys

    def forward(self, hidden_states: Sequence[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        feats = self.projection(self.layer_use(hidden_states).float())
        pooled = self.aggregator(feats, lengths)
        check_aggregator_output(self.aggregator, pooled, feats)
        logits = self.classifier(pooled)
        check_classifier_output(self.classifier, logits, pooled)
        if self.target_scale is not None:
            logits = self.target_scale(logits)
        return logits


class SERModel(nn.Module):
    """The composed model: ``forward(wavs, wav_lengths) -> logits`` or ``forward_features(states, lengths)``.

    ``upstream_layers`` lists the upstream layer indices the head sees. ``frozen_warmup_steps``:
    during the first optimiser steps of fine-tuning the upstream is held frozen (the trainer passes
    the step number; the model decides).
    """

    upstream: Upstream
    head: SERHead

    def __init__(
        self, upstream: Upstream, head: SERHead, upstream_layers: List[int], frozen_warmup_steps: int = 0
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.head = head
        self.upstream_layers = list(upstream_layers)
        self.frozen_warmup_steps = frozen_warmup_steps

    @property
    def upstream_trainable(self) -> bool:
        """True when some upstream parameter is trained."""
        return any(p.requires_grad for p in self.upstream.parameters())

    def select_layers(self, hidden_states: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The hidden states the head was built for, in order."""
        return [hidden_states[i] for i in self.upstream_layers]

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor, hold_upstream: bool = False):
        """Upstream forward (no graph when frozen or held); returns (selected hidden states, frame lengths)."""
        frozen = hold_upstream or not self.upstream_trainable
        with torch.inference_mode() if frozen else contextlib.nullcontext():
            out = self.upstream(wavs, wav_lengths)
            check_upstream_output(self.upstream, out, wav_lengths)
        states = self.select_layers(out.hidden_states)
        if frozen:
            states = [s.clone() for s in states]  # leave inference mode for the trainable head
        return states, out.lengths.clone()

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor, step: Optional[int] = None) -> torch.Tensor:
        """Logits for waveforms; ``step`` (training) holds the upstream during the frozen warm-up."""
        hold = self.training and step is not None and step < self.frozen_warmup_steps
        states, lengths = self.extract(wavs, wav_lengths, hold_upstream=hold)
        return self.head(states, lengths)

    def forward_features(self, states: Sequence[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        """Logits for precomputed hidden states of the kept layers (frozen upstream)."""
        return self.head(states, lengths)


def aggregator_input_dim(model: SERModel) -> int:
    """The feature size the model's aggregator receives (after layer use and projection)."""
    projection = model.head.projection
    if isinstance(projection, nn.Linear):
        return int(projection.out_features)
    return int(model.upstream.hidden_sizes[model.upstream_layers[0]])


def _non_finite_rows(frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Tuple[List[int], List[int]]:
    """``(rows with NaN/inf in their valid frames, rows with NaN/inf in their padded frames only)``.

    ``frames`` is ``[B, T, D]`` (with ``lengths``) or ``[B, D]`` (without).
    """
    if lengths is None:
        return [i for i, ok in enumerate(torch.isfinite(frames).flatten(1).all(-1).tolist()) if not ok], []
    finite = torch.isfinite(frames).flatten(2).all(-1)  # [B, T]
    valid = torch.arange(frames.shape[1], device=frames.device)[None, :] < lengths.to(frames.device)[:, None]
    bad_valid = (~finite & valid).any(-1).tolist()
    bad_pad = (~finite & ~valid).any(-1).tolist()
    return (
        [i for i, bad in enumerate(bad_valid) if bad],
        [i for i, bad in enumerate(bad_pad) if bad and not bad_valid[i]],
    )


def _rows_text(rows: List[int], total: int) -> str:
    shown = rows if len(rows) <= 8 else rows[:8] + ["..."]
    return f"{len(rows)} of {total} utterances (rows {', '.join(str(r) for r in shown)})"


@torch.no_grad()
def locate_non_finite(model: SERModel, batch_inputs: Any, lengths: torch.Tensor, features: bool) -> Optional[str]:
    """Re-run one batch stage by stage; a one-line message naming the first stage with NaN/inf output, or None.

    ``batch_inputs`` and ``lengths`` are what the model was given (``trainer.forward_batch``):
    waveforms ``[B, S]`` and their sample counts (``features`` false), or the precomputed hidden
    states of the kept layers and their frame counts (``features`` true). The stages: the upstream
    (or the precomputed features), the layer use (``features.layer``), the projection
    (``features.projection``), the aggregator, the classifier; the plugins are named with kind, name
    and distribution. Frame-level outputs count their valid frames only (NaN/inf in the padding is
    mentioned when the next stage turns it into NaN/inf). None when every stage is finite (then the
    loss itself is not: e.g. a margin of the classifier's ``training_logits``).

    The model keeps its mode (train/eval); run it under the same autocast as the failing forward.
    Random number streams and buffers (BatchNorm statistics) are restored afterwards, so training
    goes on as if it had not run.
    """
    head = model.head
    device = lengths.device
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    try:
        with torch.random.fork_rng(devices=devices):
            return _locate(model, head, batch_inputs, lengths, features)
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in saved:
                    buf.copy_(saved[name])


def _locate(model: SERModel, head: SERHead, batch_inputs: Any, lengths: torch.Tensor, features: bool) -> Optional[str]:
    upstream = model.upstream
    if features:
        states, frame_lengths = list(batch_inputs), lengths
        for i, state in enumerate(states):
            bad, _ = _non_finite_rows(state, frame_lengths)
            if bad:
                return (
                    f"the precomputed features (layer {model.upstream_layers[i]} of "
                    f"{describe(upstream, 'upstream')}) hold NaN/inf in the valid frames of "
                    f"{_rows_text(bad, state.shape[0])}"
                )
    else:
        out = upstream(batch_inputs, lengths)
        check_upstream_output(upstream, out, lengths)
        frame_lengths = out.lengths
        for i, state in enumerate(out.hidden_states):
            bad, _ = _non_finite_rows(state, frame_lengths)
            if bad:
                return (
                    f"{describe(upstream, 'upstream')} gave NaN/inf in the valid frames of hidden_states[{i}] "
                    f"for {_rows_text(bad, state.shape[0])}"
                )
        states = model.select_layers(out.hidden_states)
    batch = int(frame_lengths.shape[0])
    used = head.layer_use(states).float()
    bad, padding = _non_finite_rows(used, frame_lengths)
    if bad:
        return (
            f"the layer use (features.layer, {type(head.layer_use).__name__}) gave NaN/inf in the valid frames "
            f"of {_rows_text(bad, batch)} from finite hidden states"
        )
    feats = head.projection(used)
    bad, padding = _non_finite_rows(feats, frame_lengths)
    if bad:
        return (
            f"the projection (features.projection, {type(head.projection).__name__}) gave NaN/inf in the valid "
            f"frames of {_rows_text(bad, batch)} from finite input"
        )
    pooled = head.aggregator(feats, frame_lengths)
    bad, _ = _non_finite_rows(pooled)
    if bad:
        frames = int(feats.shape[1])
        rows_lengths = [int(frame_lengths[r]) for r in bad]
        if padding and set(bad) <= set(padding):
            source = (
                "its input held NaN/inf only in the padded frames of those rows, beyond lengths: padded "
                "frames must be finite, and the aggregator must not read them"
            )
        elif all(n < frames for n in rows_lengths):
            source = (
                f"from finite input; all of them padded (valid frames {rows_lengths[:8]} of {frames}): "
                "it reads the padding, mask it with lengths"
            )
        else:
            source = "from finite input frames"
        return f"{describe(head.aggregator, 'aggregator')} gave NaN/inf for {_rows_text(bad, batch)} ({source})"
    logits = head.classifier(pooled)
    bad, _ = _non_finite_rows(logits)
    if bad:
        return (
            f"{describe(head.classifier, 'classifier')} gave NaN/inf logits for {_rows_text(bad, batch)} "
            "from finite pooled vectors"
        )
    return None


def head_sees_only_means(head: SERHead) -> bool:
    """True when the head's output depends on each layer's time-average alone.

    Mean pooling after a layer choice or a plain weighted sum (both linear) and a linear
    projection: the weighted sum of means equals the mean of the weighted sum, so storing each
    layer's utterance mean is exact.
    """
    linear_use = isinstance(head.layer_use, LayerSelect) or (
        isinstance(head.layer_use, WeightedLayerSum) and not head.layer_use.layer_norm
    )
    linear_projection = isinstance(head.projection, (nn.Identity, nn.Linear))
    return bool(head.aggregator.uses_only_mean) and linear_use and linear_projection


def resolve_layers(
    layer: Union[str, int], keep_layers: Optional[List[int]], num_layers: int
) -> Tuple[List[int], Optional[int]]:
    """``(upstream layer indices the head sees, index of the used one or None for weighted sum)``."""

    def check(i: int, what: str) -> int:
        if not -num_layers <= i < num_layers:
            raise CompositionError(
                f"{what} {i} is out of range: the upstream exposes {num_layers} layers (0..{num_layers - 1})"
            )
        return i % num_layers

    if layer == "weighted_sum":
        kept = [check(i, "features.keep_layers entry") for i in keep_layers] if keep_layers else list(range(num_layers))
        return kept, None
    idx = num_layers - 1 if layer == "last" else check(int(layer), "features.layer")
    return [idx], 0


def check_learnable(upstream: Upstream, aggregator: nn.Module) -> None:
    """Refuse combinations that give the same vector for every utterance."""
    if upstream.utterance_normalized and aggregator.uses_only_mean:
        raise CompositionError(
            f"upstream {getattr(upstream, 'plugin_name', type(upstream).__name__)!r} standardises every "
            f"utterance over time, so {getattr(aggregator, 'plugin_name', 'mean')!r} pooling (which keeps only "
            "the time-average) gives the same vector for every utterance and cannot learn. Use "
            "aggregator 'stats' or 'attentive_stats', or drop the upstream's per-utterance normalisation "
            "(use features.normalize: speaker or global instead)."
        )


def _construct(section: str, build):
    """Run a plugin constructor; its ValueError/TypeError (a bad option value) becomes a CompositionError."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CompositionError):
            raise
        raise CompositionError(f"{section}: {exc}") from None


def build_upstream(spec: PluginSection, finetune: FinetuneConfig) -> Upstream:
    """The upstream of ``spec`` with the fine-tuning mode of ``finetune`` set."""
    upstream = _construct("upstream", lambda: registry.create_upstream(spec.name, **spec.options))
    check_upstream_declaration(upstream)
    modes = upstream.supported_finetune_modes()
    if finetune.mode not in modes:
        raise CompositionError(
            f"upstream {spec.name!r} does not support finetune mode {finetune.mode!r}; it supports: {', '.join(modes)}"
        )
    if finetune.mode in ("lora", "adapter"):
        upstream.peft_options = finetune.peft_options()  # read by the upstream's set_finetune
    try:
        upstream.set_finetune(finetune.mode, top_n=finetune.top_n)
    except ImportError as exc:  # lora without peft installed
        raise CompositionError(str(exc)) from None
    except ValueError as exc:  # e.g. lora_targets matching no layer
        raise CompositionError(f"finetune: {exc}") from None
    if finetune.mode in ("lora", "adapter"):
        trainable = sum(p.numel() for p in upstream.parameters() if p.requires_grad)
        total = sum(p.numel() for p in upstream.parameters())
        _log.info(
            "finetune %s: %d of %d upstream parameters train (%.2f %%)",
            finetune.mode,
            trainable,
            total,
            100.0 * trainable / max(1, total),
        )
    if finetune.mode != "frozen" and finetune.gradient_checkpointing:
        upstream.enable_gradient_checkpointing()
    return upstream


def build_head(
    features: FeaturesConfig,
    aggregator: PluginSection,
    classifier: PluginSection,
    upstream: Upstream,
    num_classes: int,
    task: Optional[TaskSpec] = None,
    standardize: bool = False,
) -> Tuple[SERHead, List[int]]:
    """``(head, upstream layer indices it reads)`` for ``upstream``: layer use, projection, aggregator, classifier.

    ``num_classes`` is the classifier's output size; with ``task`` it is ``task.num_outputs`` (class
    logits, then target values) and ``standardize`` adds the head's ``TargetScale`` (identity until
    fitted or loaded). A classifier that reshapes its logits for the loss with the targets
    (``training_logits``: margins) needs classes: refused for a regression task.
    """
    if task is not None:
        num_classes = task.num_outputs
    kept, used = resolve_layers(features.layer, features.keep_layers, upstream.num_layers)
    sizes = {upstream.hidden_sizes[i] for i in kept}
    if len(sizes) != 1:
        raise CompositionError(f"weighted sum needs layers of one size; kept layers have sizes {sorted(sizes)}")
    dim = sizes.pop()
    layer_use: nn.Module = WeightedLayerSum(len(kept)) if used is None else LayerSelect(used)
    projection: nn.Module = nn.Identity()
    if features.projection:
        projection = nn.Linear(dim, features.projection)
        dim = features.projection
    agg = _construct("aggregator", lambda: registry.create_aggregator(aggregator.name, dim, **aggregator.options))
    check_aggregator_declaration(agg)
    check_learnable(upstream, agg)
    cls = _construct(
        "classifier",
        lambda: registry.create_classifier(classifier.name, agg.output_dim, num_classes, **classifier.options),
    )
    if task is not None and not task.has_classes and has_margin(cls):
        raise CompositionError(
            f"classifier {classifier.name!r} changes its logits with the class targets during training "
            "(a margin): it needs classes, but task.type is regression; use linear or mlp"
        )
    scale = TargetScale(task.num_classes, len(task.targets)) if task is not None and standardize else None
    return SERHead(layer_use, projection, agg, cls, scale), kept


def has_margin(classifier: nn.Module) -> bool:
    """True when the classifier overrides ``training_logits`` (AM-/AAM-softmax margins)."""
    from ser_plugins.plugins.contracts import Classifier

    own = getattr(type(classifier), "training_logits", None)
    return own is not None and own is not Classifier.training_logits


def build_from_recipe(recipe: Recipe, num_classes: int, task: Optional[TaskSpec] = None) -> SERModel:
    """Build an ``SERModel`` from a resolved ``Recipe`` (``task``: the output layout; ``num_classes`` then unused)."""
    upstream = build_upstream(recipe.upstream, recipe.finetune)
    head, kept = build_head(
        recipe.features,
        recipe.aggregator,
        recipe.classifier,
        upstream,
        num_classes,
        task,
        recipe.task.standardize and task is not None and task.has_targets,
    )
    return SERModel(upstream, head, kept, recipe.finetune.frozen_warmup_steps)


def corpus_labels(spec: PluginSection) -> Optional[List[str]]:
    """The class names of a recipe's corpus without reading its data, or None when they depend on the data."""
    try:
        corpus = registry.create_corpus(spec.name, **spec.options)
    except FileNotFoundError:  # a corpus that reads its data at construction (a manifest file)
        labels = spec.options.get("labels")
        return list(labels) if labels else None
    except (ValueError, TypeError) as exc:
        raise CompositionError(f"corpus {spec.name!r}: {exc}") from None
    return list(corpus.labels) or None


def build_model(
    recipe: Union[str, Path, Dict[str, Any], Recipe],
    num_classes: Optional[int] = None,
    overrides: Optional[List[str]] = None,
) -> SERModel:
    """Build the composed model from a recipe (path, mapping or ``Recipe``) without loading any corpus data.

    ``overrides`` are ``-o``-style ``section.key=value`` strings. ``num_classes`` defaults to the
    number of the corpus's classes when it can tell without reading data.
    """
    from ser_plugins.recipe import load_recipe

    recipe = load_recipe(recipe, overrides)
    if not recipe.task.has_classes:  # regression: the output size is the number of targets
        task = TaskSpec("regression", (), tuple(recipe.task.targets or ()))
        return build_from_recipe(recipe, task.num_outputs, task)
    if num_classes is None:
        labels = corpus_labels(recipe.corpus)
        if labels is None:
            raise CompositionError(
                f"corpus {recipe.corpus.name!r} cannot tell its classes without its data; pass num_classes"
            )
        num_classes = len(labels)
    if recipe.task.has_targets:  # multitask: the class logits, then the targets
        task = TaskSpec("multitask", tuple(f"class{i}" for i in range(num_classes)), tuple(recipe.task.targets or ()))
        return build_from_recipe(recipe, task.num_outputs, task)
    return build_from_recipe(recipe, num_classes)
