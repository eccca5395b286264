"""Composition: upstream -> layer use -> optional projection -> aggregator -> classifier."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ser_plugins import registry
from ser_plugins.boundary import (check_aggregator_declaration, check_aggregator_output, check_classifier_output,
                                  check_upstream_declaration, check_upstream_output)
from ser_plugins.contracts import Upstream


class CompositionError(ValueError):
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


class SERHead(nn.Module):
    """Everything after the upstream: layer use, projection, aggregator, classifier."""

    def __init__(self, layer_use: nn.Module, projection: nn.Module, aggregator: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.layer_use = layer_use
        self.projection = projection
        self.aggregator = aggregator
        self.classifier = classifier

    def forward(self, hidden_states: Sequence[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        feats = self.projection(self.layer_use(hidden_states).float())
        pooled = self.aggregator(feats, lengths)
        check_aggregator_output(self.aggregator, pooled, feats)
        logits = self.classifier(pooled)
        check_classifier_output(self.classifier, logits, pooled)
        return logits


class SERModel(nn.Module):
    """The composed model: ``forward(wavs, wav_lengths) -> logits``.

    ``upstream_layers`` lists the upstream layer indices the head sees (all by default); with a
    frozen upstream the runner can feed precomputed hidden states to ``head`` directly.
    """

    def __init__(self, upstream: Upstream, head: SERHead, upstream_layers: List[int], labels: Sequence[str],
                 finetune_mode: str = "frozen") -> None:
        super().__init__()
        self.upstream = upstream
        self.head = head
        self.upstream_layers = list(upstream_layers)
        self.labels = list(labels)
        self.finetune_mode = finetune_mode
        self.hold_upstream = False  # True during the frozen warm-up steps of fine-tuning

    @property
    def upstream_frozen(self) -> bool:
        """True when no upstream parameter is trained (or during the frozen warm-up)."""
        return self.hold_upstream or not any(p.requires_grad for p in self.upstream.parameters())

    def select_layers(self, hidden_states: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The hidden states the head was built for, in order."""
        return [hidden_states[i] for i in self.upstream_layers]

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor):
        """Upstream forward (no graph when frozen); returns (selected hidden states, frame lengths)."""
        ctx = torch.inference_mode() if self.upstream_frozen else contextlib.nullcontext()
        with ctx:
            out = self.upstream(wavs, wav_lengths)
            check_upstream_output(self.upstream, out, wav_lengths)
        states = self.select_layers(out.hidden_states)
        if self.upstream_frozen:
            states = [s.clone() for s in states]  # leave inference mode for the trainable head
        return states, out.lengths.clone()

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        states, lengths = self.extract(wavs, wav_lengths)
        return self.head(states, lengths)


def head_sees_only_means(head: SERHead) -> bool:
    """True when the head's output depends on each layer's time-average alone.

    Mean pooling after a layer choice or a plain weighted sum (both linear) and a linear
    projection: the weighted sum of means equals the mean of the weighted sum, so storing each
    layer's utterance mean is exact.
    """
    linear_use = isinstance(head.layer_use, LayerSelect) or (
        isinstance(head.layer_use, WeightedLayerSum) and not head.layer_use.layer_norm)
    linear_projection = isinstance(head.projection, (nn.Identity, nn.Linear))
    return bool(getattr(head.aggregator, "uses_only_mean", False)) and linear_use and linear_projection


def resolve_layers(layer: Union[str, int], keep_layers: Optional[List[int]], num_layers: int) -> tuple:
    """``(upstream layer indices the head sees, index of the used one or None for weighted sum)``."""
    def check(i: int, what: str) -> int:
        if not -num_layers <= i < num_layers:
            raise CompositionError(f"{what} {i} is out of range: the upstream exposes {num_layers} layers (0..{num_layers - 1})")
        return i % num_layers

    if layer == "weighted_sum":
        kept = [check(i, "features.keep_layers entry") for i in keep_layers] if keep_layers else list(range(num_layers))
        return kept, None
    idx = num_layers - 1 if layer == "last" else check(int(layer), "features.layer")
    return [idx], 0


def check_learnable(upstream: Upstream, aggregator: nn.Module, normalize: Optional[str]) -> None:
    """Refuse combinations that give the same vector for every utterance."""
    if getattr(upstream, "utterance_normalized", False) and getattr(aggregator, "uses_only_mean", False):
        raise CompositionError(
            f"upstream {getattr(upstream, 'plugin_name', type(upstream).__name__)!r} standardises every "
            f"utterance over time, so {getattr(aggregator, 'plugin_name', 'mean')!r} pooling (which keeps only "
            "the time-average) gives the same vector for every utterance and cannot learn. Use "
            "aggregator 'stats' or 'attentive_stats', or drop the upstream's per-utterance normalisation "
            "(use features.normalize: speaker instead)."
        )


def _construct(section: str, build):
    """Run a plugin constructor; its ValueError/TypeError (a bad option value) becomes a CompositionError."""
    try:
        return build()
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CompositionError):
            raise
        raise CompositionError(f"{section}: {exc}") from None


def build_upstream(recipe: Dict[str, Any]) -> Upstream:
    """The recipe's upstream, with its fine-tuning mode set."""
    from ser_plugins.recipe import plugin_kwargs

    up_cfg = recipe["upstream"]
    upstream = _construct("upstream", lambda: registry.create("upstream", up_cfg["name"], **plugin_kwargs(up_cfg)))
    check_upstream_declaration(upstream)
    ft = recipe["finetune"]
    modes = upstream.supported_finetune_modes()
    if ft["mode"] not in modes:
        raise CompositionError(f"upstream {up_cfg['name']!r} does not support finetune mode {ft['mode']!r}; "
                               f"it supports: {', '.join(modes)}")
    upstream.set_finetune(ft["mode"], top_n=ft.get("top_n"))
    if ft["mode"] != "frozen" and ft.get("gradient_checkpointing"):
        upstream.enable_gradient_checkpointing()
    return upstream


def build_head(recipe: Dict[str, Any], upstream: Upstream, num_classes: int) -> tuple:
    """``(head, upstream layer indices it reads)`` for ``upstream``: layer use, projection, aggregator, classifier."""
    from ser_plugins.recipe import plugin_kwargs

    feats = recipe["features"]
    kept, used = resolve_layers(feats["layer"], feats.get("keep_layers"), upstream.num_layers)
    sizes = {upstream.hidden_sizes[i] for i in kept}
    if len(sizes) != 1:
        raise CompositionError(f"weighted sum needs layers of one size; kept layers have sizes {sorted(sizes)}")
    dim = sizes.pop()
    layer_use: nn.Module = WeightedLayerSum(len(kept)) if used is None else LayerSelect(used)
    projection: nn.Module = nn.Identity()
    if feats.get("projection"):
        projection = nn.Linear(dim, int(feats["projection"]))
        dim = int(feats["projection"])
    agg_cfg, cls_cfg = recipe["aggregator"], recipe["classifier"]
    aggregator = _construct("aggregator", lambda: registry.create("aggregator", agg_cfg["name"], dim, **plugin_kwargs(agg_cfg)))
    check_aggregator_declaration(aggregator)
    check_learnable(upstream, aggregator, feats.get("normalize"))
    classifier = _construct("classifier", lambda: registry.create(
        "classifier", cls_cfg["name"], aggregator.output_dim, num_classes, **plugin_kwargs(cls_cfg)))
    return SERHead(layer_use, projection, aggregator, classifier), kept


def build_from_recipe(recipe: Dict[str, Any], num_classes: int, labels: Optional[Sequence[str]] = None) -> SERModel:
    """Build an ``SERModel`` from a resolved recipe dict."""
    upstream = build_upstream(recipe)
    head, kept = build_head(recipe, upstream, num_classes)
    names = list(labels) if labels is not None else [str(i) for i in range(num_classes)]
    return SERModel(upstream, head, kept, names, finetune_mode=recipe["finetune"]["mode"])


def build_model(recipe_or_dict: Union[str, Path, Dict[str, Any]], num_classes: Optional[int] = None,
                labels: Optional[Sequence[str]] = None, overrides: Optional[List[str]] = None) -> SERModel:
    """Build the composed model from a recipe path or dict, without loading any corpus.

    ``overrides`` are the command line's ``-o`` items (``["aggregator=stats", "features.layer=3"]``).
    ``num_classes`` defaults to the length of ``labels``, else to the corpus's ``labels`` option,
    else to 4 (the standard IEMOCAP set).
    """
    from ser_plugins.recipe import load_recipe

    recipe = load_recipe(recipe_or_dict, overrides)
    if labels is None:
        labels = recipe["corpus"].get("labels")
    if num_classes is None:
        num_classes = len(labels) if labels else 4
    return build_from_recipe(recipe, num_classes, labels)
