"""Batch sources: they yield batches as data; the trainer hands them to the model.

``FeatureSource`` serves precomputed hidden states of a frozen upstream (only the head runs);
``WaveSource`` serves decoded waveforms (the whole model runs). Both cut one pass into batches with
one plan (``plan``), so the learning-rate schedule, the padding statistics and the batches
themselves always agree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Protocol, Sequence, Tuple, Union

import numpy as np
import torch

from ser_plugins.data.batching import bucket_batches, pad_features, pad_waves, padding_fraction, random_crop
from ser_plugins.task import TargetRow

Transform = Callable[[List[str], List[torch.Tensor]], List[torch.Tensor]]  # (ids, padded layers) -> layers
_Stack = Tuple[Dict[str, int], List[torch.Tensor], torch.Tensor]  # means mode: (row of id, layers, targets)


@dataclass(frozen=True)
class BatchPlan:
    """How one pass over utterances is cut into batches.

    ``max_batch_seconds`` bounds the padded audio per batch; ``max_duration`` crops longer
    utterances to a random window (training passes only: ``shuffle`` is True).
    """

    batch_size: int
    max_batch_seconds: Optional[float] = None
    max_duration: Optional[float] = None
    shuffle: bool = False
    seed: int = 0


@dataclass
class Batch:
    """One batch: ``inputs`` (a list of ``[B, T, D]`` layers, or waveforms ``[B, S]``), lengths, targets, ids.

    ``features`` is True when ``inputs`` are precomputed hidden states for the head, False for
    waveforms that go through the whole model.
    """

    inputs: Union[List[torch.Tensor], torch.Tensor]
    lengths: torch.Tensor
    targets: torch.Tensor
    ids: List[str]
    features: bool

    def to(self, device: str) -> "Batch":
        """The same batch on ``device``."""
        inputs = [x.to(device) for x in self.inputs] if isinstance(self.inputs, list) else self.inputs.to(device)
        return Batch(inputs, self.lengths.to(device), self.targets.to(device), self.ids, self.features)


class BatchSource(Protocol):
    """What the trainer needs from a source of batches."""

    targets: Dict[str, TargetRow]

    def batches(self, ids: Sequence[str], plan: BatchPlan) -> Iterator[Batch]:
        """The batches of one pass over ``ids``."""

    def count_batches(self, ids: Sequence[str], plan: BatchPlan) -> int:
        """How many batches one pass yields (for the learning-rate schedule)."""

    def padding_fraction(self, ids: Sequence[str], plan: BatchPlan) -> float:
        """Share of padded positions in one pass."""


class _BucketedSource:
    """Shared planning: lengths in frames or samples, ``rate`` of them per second."""

    rate: float
    targets: Dict[str, TargetRow]

    def length(self, uid: str) -> int:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def _max_len(self, seconds: Optional[float]) -> Optional[int]:
        return int(seconds * self.rate) if seconds else None

    def plan(self, ids: Sequence[str], plan: BatchPlan) -> List[List[int]]:
        """Index batches of one pass: lengths after the training crop, under the padded-length budget."""
        crop = self._max_len(plan.max_duration) if plan.shuffle else None
        lengths = [min(self.length(i), crop) if crop else self.length(i) for i in ids]
        return bucket_batches(
            lengths, plan.batch_size, self._max_len(plan.max_batch_seconds), shuffle=plan.shuffle, seed=plan.seed
        )

    def count_batches(self, ids: Sequence[str], plan: BatchPlan) -> int:
        """Number of batches in one pass."""
        return len(self.plan(ids, plan))

    def padding_fraction(self, ids: Sequence[str], plan: BatchPlan) -> float:
        """Share of padded positions in one pass."""
        crop = self._max_len(plan.max_duration) if plan.shuffle else None
        lengths = [min(self.length(i), crop) if crop else self.length(i) for i in ids]
        return padding_fraction(lengths, self.plan(ids, plan))


class FeatureSource(_BucketedSource):
    """Batches of precomputed hidden states (frozen upstream): the head is all that runs.

    ``frame_counts`` holds the original lengths when ``features`` hold utterance means (batching
    stays the same); ``transform(ids, layers)`` is applied to each padded batch (normalisation).
    """

    def __init__(
        self,
        features: Mapping[str, List[torch.Tensor]],
        targets: Dict[str, TargetRow],
        frames_per_second: float,
        frame_counts: Optional[Dict[str, int]] = None,
        transform: Optional[Transform] = None,
    ) -> None:
        self.features = features
        self.targets = targets
        self.rate = frames_per_second
        self.frame_counts = frame_counts
        self.transform = transform
        self._stack: Optional[_Stack] = None  # means mode: see _stacked_means

    def with_transform(self, transform: Optional[Transform]) -> "FeatureSource":
        """The same features (shared, not copied) served through ``transform``."""
        return FeatureSource(self.features, self.targets, self.rate, self.frame_counts, transform)

    def length(self, uid: str) -> int:
        """Number of frames of utterance ``uid`` (before any mean shortcut)."""
        if self.frame_counts is not None:
            return self.frame_counts[uid]
        return int(self.features[uid][0].shape[0])

    def _stacked_means(self) -> _Stack:
        """Means mode: every utterance stacked and transformed once: ``(row of id, [N, 1, D] per layer, targets)``.

        A transform acts on each row alone (a normaliser's per-speaker statistics), so transforming
        the stack once gives the rows that transforming each batch would give; batches then index it.
        """
        if self._stack is None:
            order = list(self.features)
            rows = {u: i for i, u in enumerate(order)}
            layers = [torch.stack([self.features[u][k] for u in order]) for k in range(len(self.features[order[0]]))]
            if self.transform is not None:
                layers = self.transform(order, layers)
            targets = torch.tensor([self.targets.get(u, -1) for u in order])
            self._stack = (rows, layers, targets)
        return self._stack

    def batches(self, ids: Sequence[str], plan: BatchPlan) -> Iterator[Batch]:
        """Length-bucketed batches; in training, utterances longer than ``max_duration`` are randomly cropped."""
        if self.frame_counts is not None and self.features:  # utterance means: one row each, never cropped
            rows, layers, targets = self._stacked_means()
            for b in self.plan(ids, plan):
                uids = [ids[i] for i in b]
                index = torch.tensor([rows[u] for u in uids])
                yield Batch(
                    [layer[index] for layer in layers],
                    torch.ones(len(uids), dtype=torch.long),
                    targets[index],
                    uids,
                    features=True,
                )
            return
        crop = self._max_len(plan.max_duration) if plan.shuffle else None
        rng = random.Random(plan.seed)
        for b in self.plan(ids, plan):
            uids = [ids[i] for i in b]
            per_utt = []
            for u in uids:
                feats = list(self.features[u])
                if crop and feats[0].shape[0] > crop:
                    start = rng.randrange(0, feats[0].shape[0] - crop + 1)
                    feats = [f[start : start + crop] for f in feats]
                per_utt.append(feats)
            states, lens = pad_features(per_utt)
            if self.transform is not None:
                states = self.transform(uids, states)
            yield Batch(states, lens, torch.tensor([self.targets[u] for u in uids]), uids, features=True)


class WaveSource(_BucketedSource):
    """Batches of decoded waveforms (trainable upstream): the whole model runs."""

    def __init__(self, waves: Dict[str, np.ndarray], targets: Dict[str, TargetRow], sample_rate: int) -> None:
        self.waves = waves
        self.targets = targets
        self.rate = sample_rate

    def length(self, uid: str) -> int:
        """Number of samples of utterance ``uid``."""
        return len(self.waves[uid])

    def batches(self, ids: Sequence[str], plan: BatchPlan) -> Iterator[Batch]:
        """Length-bucketed batches; in training, long utterances are randomly cropped to ``max_duration``."""
        crop = self._max_len(plan.max_duration) if plan.shuffle else None
        rng = random.Random(plan.seed)
        for b in self.plan(ids, plan):
            uids = [ids[i] for i in b]
            waves = [random_crop(self.waves[u], crop, rng) for u in uids]
            wavs, lens = pad_waves(waves)
            yield Batch(wavs, lens, torch.tensor([self.targets[u] for u in uids]), uids, features=False)
