"""Preparation of a run: corpus -> usable utterances (audio decoded or features extracted once) -> folds.

Two steps. ``plan`` does everything that needs no audio decoding (the corpus read and checked, the
upstream built, the composition checked, the folds built from every listed utterance, the same
audio in two folds refused), so a runner can call it before it creates the run directory.
``prepare`` then decodes the audio once (or extracts frozen features once) and builds the final
folds from the usable utterances. Every corpus, audio and composition problem surfaces in one of
the two, before anything is trained or written.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ser_plugins.data.decode import DataError, decode_corpus
from ser_plugins.data.features import compute_frozen_features
from ser_plugins.data.folds import Fold, check_folds, make_folds
from ser_plugins.data.normalize import Moments
from ser_plugins.data.sources import BatchSource, WaveSource
from ser_plugins.data.wave_stream import stream_audio
from ser_plugins.errors import RunError
from ser_plugins.model import build_head, build_upstream, head_sees_only_means
from ser_plugins.plugins import registry
from ser_plugins.plugins.contracts import (
    DROPPED_LABEL,
    DUPLICATE_AUDIO,
    NO_LABEL,
    Corpus,
    CorpusProblem,
    Upstream,
    Utterance,
)
from ser_plugins.recipe import Recipe
from ser_plugins.runtime.seeding import set_seed
from ser_plugins.task import TargetRow, TaskSpec

log = logging.getLogger("ser_plugins")


class PrepareError(RunError):
    """The corpus cannot be used as the recipe asks; the message says why."""


@dataclass
class Prepared:
    """Everything the folds of a run share: labels, usable utterances, folds, the batch source, the upstream."""

    labels: List[str]
    utterances: Dict[str, Utterance]
    targets: Dict[str, TargetRow]  # per utterance: class index, target values, or both (ser_plugins.task)
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
    task: TaskSpec = field(default_factory=TaskSpec)

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


def load_corpus(recipe: Recipe) -> Tuple[Corpus, List[Utterance], List[str]]:
    """``(corpus, utterances, problems)``: the recipe's corpus read, fatal problems raised.

    Rows dropped for a label outside the corpus's labels are warned about and counted, but not an
    error under ``data.strict`` (choosing the classes is the recipe's business).
    """
    spec = recipe.corpus
    try:
        corpus = registry.create_corpus(spec.name, **spec.options)
    except (ValueError, TypeError) as exc:
        raise PrepareError(f"corpus {spec.name!r}: {exc}") from None
    utterances = corpus.load()
    problems = [str(p) for p in corpus.problems]
    fatal = [str(p) for p in corpus.problems if p.fatal]
    for p in problems:
        log.warning("corpus: %s", p)
    if fatal:
        raise PrepareError("corpus problems stop the run:\n  " + "\n  ".join(fatal))
    strict = [str(p) for p in corpus.problems if p.kind != DROPPED_LABEL]
    if recipe.data.strict and strict:
        raise PrepareError("corpus problems (data.strict is on):\n  " + "\n  ".join(strict))
    unknown = sorted({u.label for u in utterances} - set(corpus.labels) - {NO_LABEL})
    if unknown:
        raise PrepareError(
            f"corpus {spec.name!r} returned labels {unknown} outside its label set {list(corpus.labels)}"
        )
    return corpus, utterances, problems


NO_CLASS = "no_class_label"  # skip reason: a classification task, an utterance without a class
MISSING_TARGET = "missing_target"  # skip reason: a regression task, an utterance without one of the targets


def task_utterances(
    recipe: Recipe, corpus: Corpus, utterances: Sequence[Utterance]
) -> Tuple[List[Utterance], Dict[str, str], List[str]]:
    """``(utterances the task can use, skipped id -> reason, warnings)``.

    Classification needs a class (``NO_LABEL`` rows are skipped); regression needs every target
    among an utterance's attributes (others are skipped). A target no utterance carries and the
    corpus does not declare is one clear error naming it; under ``data.strict`` any skip is an
    error. Values outside the corpus's declared scale are warned about, counted per target.
    """
    task = recipe.task
    name = recipe.corpus.name
    targets = list(task.targets or []) if task.has_targets else []
    carried = {k for u in utterances for k in u.attributes}
    missing = [t for t in targets if t not in carried and t not in set(corpus.attributes)]
    if missing:
        offered = sorted(set(corpus.attributes) | carried)
        raise PrepareError(
            f"task.targets: corpus {name!r} gives no {missing[0]!r} target"
            + (f" (it gives: {', '.join(offered)})" if offered else " (it gives no continuous targets)")
        )
    keep: List[Utterance] = []
    skipped: Dict[str, str] = {}
    for u in utterances:
        if task.has_classes and u.label == NO_LABEL:
            skipped[u.id] = NO_CLASS
        elif any(t not in u.attributes or u.attributes[t] is None for t in targets):
            skipped[u.id] = MISSING_TARGET
        else:
            keep.append(u)
    if skipped:
        counts = count_reasons(skipped)
        text = ", ".join(f"{k}: {v}" for k, v in counts.items())
        if recipe.data.strict:
            first = next(iter(skipped))
            raise PrepareError(
                f"utterances the task cannot use (data.strict is on): {text} (first: {first}); "
                + ("every utterance needs a class" if NO_CLASS in counts else f"every utterance needs {targets}")
            )
        log.warning("corpus: utterances skipped for the task (%s): %s", task.type, text)
    warnings = []
    for t in targets:
        low, high = corpus.attribute_scales.get(t, (None, None))
        if low is None or high is None:
            continue
        outside = [u.id for u in keep if not low <= float(u.attributes[t]) <= high]
        if outside:
            warnings.append(
                f"target {t!r}: {len(outside)} utterance(s) outside the corpus's scale {low:g}-{high:g} "
                f"(first: {outside[0]})"
            )
    return keep, skipped, warnings  # logged with the folds' warnings (prepare)


def dropped_labels(problems: Sequence[CorpusProblem]) -> Dict[str, int]:
    """Rows dropped for a label outside the corpus's labels, counted per raw label."""
    out: Dict[str, int] = {}
    for p in problems:
        if p.kind == DROPPED_LABEL:
            out[p.key] = out.get(p.key, 0) + p.count
    return out


def same_audio_groups(utterances: Sequence[Utterance]) -> List[List[Utterance]]:
    """Utterances that are the same audio (resolved file path and segment), two or more per group."""
    groups: Dict[Tuple[str, Any, Any], List[Utterance]] = defaultdict(list)
    for u in utterances:
        groups[(str(Path(u.path).resolve()), u.start, u.end)].append(u)
    return [g for g in groups.values() if len(g) > 1]


def check_same_audio(
    folds: Sequence[Fold], utterances: Sequence[Utterance], problems: Sequence[CorpusProblem] = ()
) -> List[str]:
    """Refuse the same audio in two roles of a fold (train/dev/test leakage); warn about other copies.

    Raises ``PrepareError`` naming both ids (and, from the corpus's ``duplicate_audio`` problems,
    both lines); returns warnings for copies that share their role in every fold (the recording
    counts twice in its set).
    """
    cited = {
        p.key: f" ({p.path} lines {' and '.join(map(str, p.lines))})"
        for p in problems
        if p.kind == DUPLICATE_AUDIO and p.key and p.lines
    }
    groups = same_audio_groups(utterances)
    if not groups:
        return []
    role_in = []
    for f in folds:
        roles = {uid: part for part in ("train", "dev", "test") for uid in getattr(f, part)}
        role_in.append((f.name, roles))
    warnings = []
    for group in groups:
        first = group[0]
        for other in group[1:]:
            for name, roles in role_in:
                a, b = roles.get(first.id, "unused"), roles.get(other.id, "unused")
                if a != b:
                    raise PrepareError(
                        f"utterances {first.id!r} and {other.id!r}{cited.get(other.id, '')} are the same audio "
                        f"({first.path}{_segment(first)}) but fold {name!r} puts one in {a} and the other in {b}: "
                        "the recording would leak between training and evaluation; list it once in the corpus"
                    )
            warnings.append(
                f"utterances {first.id!r} and {other.id!r}{cited.get(other.id, '')} are the same audio "
                f"({first.path}{_segment(first)}); both are used, in the same set of every fold"
            )
    return warnings


def _segment(u: Utterance) -> str:
    if u.start is None and u.end is None:
        return ""
    return f" [{u.start if u.start is not None else 0}-{u.end if u.end is not None else 'end'} s]"


def needs_frames(recipe: Recipe) -> bool:
    """True when a frozen run of ``recipe`` keeps frames: its aggregator sees more than utterance means,
    or crops or normalisation need them (read from the aggregator class: nothing is built)."""
    aggregator = registry.load("aggregator", recipe.aggregator.name)
    return (
        not getattr(aggregator, "uses_only_mean", False)
        or bool(recipe.training.max_duration)
        or recipe.features.normalize is not None
    )


def check_composition(
    recipe: Recipe, upstream: Upstream, num_classes: int, task: Optional[TaskSpec] = None
) -> Tuple[List[int], bool]:
    """Build the head once on the meta device (no memory, no random numbers) to refuse bad compositions.

    Returns ``(kept upstream layers, whether the head sees only utterance means)``.
    """
    with torch.device("meta"):
        head, kept = build_head(
            recipe.features, recipe.aggregator, recipe.classifier, upstream, num_classes, task, recipe.task.standardize
        )
    return kept, head_sees_only_means(head)


@dataclass
class Plan:
    """What a run knows before decoding any audio: the corpus read, the upstream built, the folds.

    ``folds`` are built from every listed utterance: their names are the corpus's folds (``--folds``
    is checked against them); the folds actually run are rebuilt from the usable utterances.
    """

    corpus: Corpus
    utterances: List[Utterance]
    problems: List[str]
    labels: List[str]
    upstream: Upstream
    kept_layers: List[int]
    sees_only_means: bool
    folds: List[Fold]
    protocol: str  # the recipe's, else the corpus's default
    dropped: Dict[str, int] = field(default_factory=dict)  # rows dropped per raw label (outside the labels)
    task: TaskSpec = field(default_factory=TaskSpec)
    unusable: Dict[str, str] = field(default_factory=dict)  # utterances the task cannot use, with the reason
    target_warnings: List[str] = field(default_factory=list)  # values outside the corpus's scale


def plan(recipe: Recipe) -> Plan:
    """Everything that needs no audio decoding: corpus, upstream, composition, folds, same-audio leakage.

    Raises a ``UserError`` subclass for any problem found; writes nothing.
    """
    if recipe.data.num_threads:
        torch.set_num_threads(recipe.data.num_threads)
    corpus, listed, problems = load_corpus(recipe)
    utterances, unusable, target_warnings = task_utterances(recipe, corpus, listed)
    if not utterances:
        raise PrepareError(
            f"corpus {recipe.corpus.name!r}: no utterance the task ({recipe.task.type}) can use "
            f"({', '.join(f'{k}: {v}' for k, v in count_reasons(unusable).items())})"
        )
    labels = list(corpus.labels) if recipe.task.has_classes else []
    task = TaskSpec(recipe.task.type, tuple(corpus.labels), tuple(recipe.task.targets or ()))
    set_seed(recipe.seed)
    upstream = build_upstream(recipe.upstream, recipe.finetune)
    kept, sees_only_means = check_composition(recipe, upstream, task.num_outputs, task)
    p = recipe.protocol
    protocol = p.name or corpus.default_protocol
    folds = make_folds(utterances, protocol, p.dev, p.dev_fraction, recipe.seed, p.num_folds, p.train, p.test)
    check_folds(
        folds, {u.id: u.label for u in utterances}, labels, needs_dev=p.dev != "none"
    )  # empty sets raise now; warnings come later
    check_same_audio(folds, utterances, corpus.problems)
    dropped = dropped_labels(corpus.problems)
    if dropped:
        log.warning(
            "corpus: rows dropped for a label outside %s: %s",
            labels,
            ", ".join(f"{k}: {v}" for k, v in dropped.items()),
        )
    return Plan(
        corpus,
        list(utterances),
        problems,
        labels,
        upstream,
        kept,
        sees_only_means,
        folds,
        protocol,
        dropped,
        task,
        unusable,
        target_warnings,
    )


def prepare(
    recipe: Recipe, device: str, progress: bool = True, planned: Optional[Plan] = None, store_frames: bool = False
) -> Prepared:
    """Decode audio once (validation pass) or extract frozen features once, then build the folds.

    ``planned`` is the result of ``plan(recipe)`` (computed here when not given). ``store_frames``:
    write frame entries to the feature cache even when this run needs only means (a grid whose
    later heads need frames).
    """
    pl = planned if planned is not None else plan(recipe)
    if recipe.data.num_threads:
        torch.set_num_threads(recipe.data.num_threads)
    utterances, labels, upstream, kept = pl.utterances, pl.labels, pl.upstream, pl.kept_layers
    frozen = recipe.finetune.mode == "frozen" and recipe.data.precompute
    notes: Dict[str, Any] = {}
    moments = streamed = None
    if frozen:
        means_only = pl.sees_only_means and not recipe.training.max_duration
        pre = compute_frozen_features(
            upstream,
            utterances,
            kept,
            recipe.data,
            recipe.training.precision,
            device,
            means_only,
            need_moments=recipe.features.normalize is not None,
            progress=progress,
            store_frames=store_frames,
        )
        usable_ids, skipped, notes, moments = set(pre.features), pre.skipped, dict(pre.notes), pre.moments
    else:
        streamed = stream_audio(utterances, upstream.sample_rate, upstream.min_samples, recipe.data, progress)
        if streamed is not None:
            usable_ids, skipped = set(streamed.lengths), streamed.skipped
        else:
            audio = decode_corpus(utterances, upstream.sample_rate, upstream.min_samples, recipe.data.strict, progress)
            usable_ids, skipped = set(audio.waves), audio.skipped
    usable = [u for u in utterances if u.id in usable_ids]
    if not usable:
        raise DataError(f"no usable audio: all {len(utterances)} utterances were skipped ({count_reasons(skipped)})")
    lost = sorted({u.session or u.speaker for u in utterances} - {u.session or u.speaker for u in usable})
    lost_warnings = [f"session {g!r} has no usable utterance left (all skipped): its fold is not run" for g in lost]
    p = recipe.protocol
    folds = make_folds(usable, pl.protocol, p.dev, p.dev_fraction, recipe.seed, p.num_folds, p.train, p.test)
    task = pl.task
    targets = {
        u.id: task.target_row(task.labels.index(u.label) if task.has_classes else -1, dict(u.attributes))
        for u in usable
    }
    skipped = {**pl.unusable, **skipped}
    same_audio = check_same_audio(folds, usable, pl.corpus.problems)
    warnings = (
        lost_warnings
        + pl.target_warnings
        + check_folds(
            folds, {u.id: u.label for u in usable}, labels, {u.id: u.speaker for u in usable}, needs_dev=p.dev != "none"
        )
    )
    for w in warnings + same_audio:
        log.warning("%s", w)
    notes["dropped_labels"] = dict(pl.dropped)
    notes["duplicate_audio"] = same_audio
    corpus_notes = getattr(pl.corpus, "notes", None)  # optional: what the corpus chose while loading (run.json)
    if isinstance(corpus_notes, Mapping) and corpus_notes:
        notes["corpus_notes"] = json.loads(json.dumps(dict(corpus_notes), default=str))
    if frozen:
        source: BatchSource = pre.source(targets, upstream.sample_rate / upstream.hop_length)
    elif streamed is not None:
        source = streamed.source(usable, targets, device)
    else:
        source = WaveSource(audio.waves, targets, upstream.sample_rate)
    return Prepared(
        labels,
        {u.id: u for u in usable},
        targets,
        folds,
        source,
        upstream,
        kept,
        skipped,
        pl.problems,
        warnings,
        notes,
        moments,
        pl.protocol,
        task,
    )
