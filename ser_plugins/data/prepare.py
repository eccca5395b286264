"""Preparation of a run: corpus -> usable utterances (audio decoded or features extracted once) -> folds.

Every corpus, audio and composition problem surfaces here, before anything is trained or written.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ser_plugins import registry
from ser_plugins.contracts import Upstream, Utterance
from ser_plugins.data.decode import DataError, decode_corpus
from ser_plugins.data.features import compute_frozen_features
from ser_plugins.data.folds import Fold, check_folds, make_folds
from ser_plugins.data.normalize import Moments
from ser_plugins.data.sources import BatchSource, FeatureSource, WaveSource
from ser_plugins.errors import RunError
from ser_plugins.model import build_head, build_upstream, head_sees_only_means
from ser_plugins.recipe import Recipe
from ser_plugins.training.seeding import set_seed

log = logging.getLogger("ser_plugins")


class PrepareError(RunError):
    """The corpus cannot be used as the recipe asks; the message says why."""


@dataclass
class Prepared:
    """Everything the folds of a run share: labels, usable utterances, folds, the batch source, the upstream."""

    labels: List[str]
    utterances: Dict[str, Utterance]
    targets: Dict[str, int]
    folds: List[Fold]
    source: BatchSource
    upstream: Upstream
    kept_layers: List[int]
    skipped: Dict[str, str]
    corpus_problems: List[str]
    warnings: List[str] = field(default_factory=list)
    notes: Dict[str, Any] = field(default_factory=dict)  # extraction / cache figures for run.json
    moments: Optional[Dict[str, Moments]] = None  # per-utterance frame statistics (normalisation)
    protocol: str = ""  # the fold protocol applied (the recipe's, or the corpus's default)

    @property
    def speakers(self) -> Dict[str, str]:
        """Utterance id -> speaker."""
        return {uid: u.speaker for uid, u in self.utterances.items()}


def count_reasons(skipped: Dict[str, str]) -> Dict[str, int]:
    """Skipped utterances counted by reason."""
    out: Dict[str, int] = {}
    for reason in skipped.values():
        out[reason] = out.get(reason, 0) + 1
    return out


def load_corpus(recipe: Recipe) -> tuple:
    """``(corpus, utterances, problems)``: the recipe's corpus read, fatal problems raised."""
    spec = recipe.corpus
    try:
        corpus = registry.create("corpus", spec.name, **spec.options)
    except (ValueError, TypeError) as exc:
        raise PrepareError(f"corpus {spec.name!r}: {exc}") from None
    utterances = corpus.load()
    problems = [str(p) for p in corpus.problems]
    fatal = [str(p) for p in corpus.problems if p.fatal]
    for p in problems:
        log.warning("corpus: %s", p)
    if fatal:
        raise PrepareError("corpus problems stop the run:\n  " + "\n  ".join(fatal))
    if recipe.data.strict and problems:
        raise PrepareError("corpus problems (data.strict is on):\n  " + "\n  ".join(problems))
    unknown = sorted({u.label for u in utterances} - set(corpus.labels))
    if unknown:
        raise PrepareError(f"corpus {spec.name!r} returned labels {unknown} outside its label set {list(corpus.labels)}")
    return corpus, utterances, problems


def needs_frames(recipe: Recipe) -> bool:
    """True when a frozen run of ``recipe`` keeps frames: its aggregator sees more than utterance means,
    or crops or normalisation need them (read from the aggregator class: nothing is built)."""
    aggregator = registry.load("aggregator", recipe.aggregator.name)
    return (not getattr(aggregator, "uses_only_mean", False) or bool(recipe.training.max_duration)
            or recipe.features.normalize is not None)


def check_composition(recipe: Recipe, upstream: Upstream, num_classes: int) -> tuple:
    """Build the head once on the meta device (no memory, no random numbers) to refuse bad compositions.

    Returns ``(kept upstream layers, whether the head sees only utterance means)``.
    """
    with torch.device("meta"):
        head, kept = build_head(recipe.features, recipe.aggregator, recipe.classifier, upstream, num_classes)
    return kept, head_sees_only_means(head)


def prepare(recipe: Recipe, device: str, progress: bool = True, store_frames: bool = False) -> Prepared:
    """Load the corpus, decode audio once (validation pass) or extract frozen features once, build folds.

    ``store_frames``: write frame entries to the feature cache even when this run needs only
    means (a grid whose later heads need frames).
    """
    if recipe.data.num_threads:
        torch.set_num_threads(recipe.data.num_threads)
    corpus, utterances, problems = load_corpus(recipe)
    labels = list(corpus.labels)
    set_seed(recipe.seed)
    upstream = build_upstream(recipe.upstream, recipe.finetune)
    kept, sees_only_means = check_composition(recipe, upstream, len(labels))
    frozen = recipe.finetune.mode == "frozen" and recipe.data.precompute
    notes: Dict[str, Any] = {}
    moments = None
    if frozen:
        means_only = sees_only_means and not recipe.training.max_duration
        pre = compute_frozen_features(upstream, utterances, kept, recipe.data, recipe.training.precision, device,
                                      means_only, need_moments=recipe.features.normalize is not None,
                                      progress=progress, store_frames=store_frames)
        usable_ids, skipped, notes, moments = set(pre.features), pre.skipped, pre.notes, pre.moments
    else:
        audio = decode_corpus(utterances, upstream.sample_rate, upstream.min_samples, recipe.data.strict, progress)
        usable_ids, skipped = set(audio.waves), audio.skipped
    usable = [u for u in utterances if u.id in usable_ids]
    if not usable:
        raise DataError(f"no usable audio: all {len(utterances)} utterances were skipped ({count_reasons(skipped)})")
    lost = sorted({u.session or u.speaker for u in utterances} - {u.session or u.speaker for u in usable})
    lost_warnings = [f"session {g!r} has no usable utterance left (all skipped): its fold is not run" for g in lost]
    p = recipe.protocol
    protocol = p.name or corpus.default_protocol
    folds = make_folds(usable, protocol, p.dev, p.dev_fraction, recipe.seed, p.num_folds)
    targets = {u.id: labels.index(u.label) for u in usable}
    warnings = lost_warnings + check_folds(folds, {u.id: u.label for u in usable}, labels,
                                           {u.id: u.speaker for u in usable})
    for w in warnings:
        log.warning("%s", w)
    if frozen:
        source: BatchSource = FeatureSource(pre.features, targets, upstream.sample_rate / upstream.hop_length,
                                            pre.frame_counts if pre.means_only else None)
    else:
        source = WaveSource(audio.waves, targets, upstream.sample_rate)
    return Prepared(labels, {u.id: u for u in usable}, targets, folds, source, upstream, kept, skipped, problems,
                    warnings, notes, moments, protocol)
