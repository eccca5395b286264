"""Batch sources for training and evaluation: precomputed frozen features, or waveforms."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ser_plugins.data import bucket_batches, pad_features, pad_waves, padding_fraction, random_crop


@dataclass
class Batch:
    """One batch: model inputs, integer targets ``[B]`` and the utterance ids."""

    inputs: tuple
    targets: torch.Tensor
    ids: List[str]

    def to(self, device: str) -> "Batch":
        """The same batch on ``device``."""
        moved = tuple([x.to(device) for x in i] if isinstance(i, list) else i.to(device) for i in self.inputs)
        return Batch(moved, self.targets.to(device), self.ids)


class FeatureSource:
    """Batches of precomputed hidden states (frozen upstream): the head is all that runs."""

    def __init__(self, features: Dict[str, List[torch.Tensor]], targets: Dict[str, int], frames_per_second: float,
                 frame_counts: Optional[Dict[str, int]] = None) -> None:
        self.features = features
        self.targets = targets
        self.frames_per_second = frames_per_second
        self.frame_counts = frame_counts  # original lengths when features hold utterance means

    def length(self, uid: str) -> int:
        """Number of frames of utterance ``uid`` (before any mean shortcut: batching stays the same)."""
        if self.frame_counts is not None:
            return self.frame_counts[uid]
        return int(self.features[uid][0].shape[0])

    def count_batches(self, ids: Sequence[str], batch_size: int, max_batch_seconds: Optional[float] = None,
                      max_duration: Optional[float] = None) -> int:
        """Number of training batches in one epoch (for the learning-rate schedule)."""
        return sum(1 for _ in self._plan(ids, batch_size, max_batch_seconds, max_duration))

    def _plan(self, ids, batch_size, max_batch_seconds, max_duration, seed: int = 0):
        max_frames = int(max_duration * self.frames_per_second) if max_duration else None
        lengths = [min(self.length(i), max_frames) if max_frames else self.length(i) for i in ids]
        budget = int(max_batch_seconds * self.frames_per_second) if max_batch_seconds else None
        return bucket_batches(lengths, batch_size, budget, shuffle=True, seed=seed)

    def padding_fraction(self, ids: Sequence[str], batch_size: int, seed: int = 0) -> float:
        """Share of padded frames in one epoch of training batches."""
        lengths = [self.length(i) for i in ids]
        return padding_fraction(lengths, bucket_batches(lengths, batch_size, shuffle=True, seed=seed))

    def batches(self, ids: Sequence[str], batch_size: int, shuffle: bool, seed: int,
                max_batch_seconds: Optional[float] = None, max_duration: Optional[float] = None) -> Iterator[Batch]:
        """Length-bucketed batches; in training, utterances longer than ``max_duration`` s are randomly cropped."""
        lengths = [self.length(i) for i in ids]
        budget = int(max_batch_seconds * self.frames_per_second) if max_batch_seconds else None
        max_frames = int(max_duration * self.frames_per_second) if max_duration else None
        rng = random.Random(seed)
        for b in bucket_batches(lengths, batch_size, budget, shuffle=shuffle, seed=seed):
            uids = [ids[i] for i in b]
            per_utt = []
            for u in uids:
                feats = self.features[u]
                if shuffle and max_frames and feats[0].shape[0] > max_frames:
                    start = rng.randrange(0, feats[0].shape[0] - max_frames + 1)
                    feats = [f[start:start + max_frames] for f in feats]
                per_utt.append(list(feats))  # stored dtype: converted to float32 on the device, after the copy
            states, lens = pad_features(per_utt)
            yield Batch((states, lens), torch.tensor([self.targets[u] for u in uids]), uids)

    @staticmethod
    def forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Logits of the head on precomputed states."""
        states, lengths = batch.inputs
        return model.head(states, lengths)


class WaveSource:
    """Batches of decoded waveforms (trainable upstream): the whole model runs."""

    def __init__(self, waves: Dict[str, np.ndarray], targets: Dict[str, int], sample_rate: int) -> None:
        self.waves = waves
        self.targets = targets
        self.sample_rate = sample_rate

    def count_batches(self, ids: Sequence[str], batch_size: int, max_batch_seconds: Optional[float] = None,
                      max_duration: Optional[float] = None) -> int:
        """Number of training batches in one epoch (for the learning-rate schedule)."""
        max_samples = int(max_duration * self.sample_rate) if max_duration else None
        lengths = [min(len(self.waves[i]), max_samples) if max_samples else len(self.waves[i]) for i in ids]
        budget = int(max_batch_seconds * self.sample_rate) if max_batch_seconds else None
        return len(bucket_batches(lengths, batch_size, budget, shuffle=True, seed=0))

    def padding_fraction(self, ids: Sequence[str], batch_size: int, seed: int = 0) -> float:
        """Share of padded samples in one epoch of training batches."""
        lengths = [len(self.waves[i]) for i in ids]
        return padding_fraction(lengths, bucket_batches(lengths, batch_size, shuffle=True, seed=seed))

    def batches(self, ids: Sequence[str], batch_size: int, shuffle: bool, seed: int,
                max_batch_seconds: Optional[float] = None, max_duration: Optional[float] = None) -> Iterator[Batch]:
        """Length-bucketed batches; in training, long utterances are randomly cropped to ``max_duration`` s."""
        max_samples = int(max_duration * self.sample_rate) if max_duration else None
        lengths = [min(len(self.waves[i]), max_samples) if (shuffle and max_samples) else len(self.waves[i]) for i in ids]
        budget = int(max_batch_seconds * self.sample_rate) if max_batch_seconds else None
        rng = random.Random(seed)
        for b in bucket_batches(lengths, batch_size, budget, shuffle=shuffle, seed=seed):
            uids = [ids[i] for i in b]
            waves = [random_crop(self.waves[u], max_samples, rng) if shuffle else self.waves[u] for u in uids]
            wavs, lens = pad_waves(waves)
            yield Batch((wavs, lens), torch.tensor([self.targets[u] for u in uids]), uids)

    @staticmethod
    def forward(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Logits of the whole model on waveforms."""
        wavs, lengths = batch.inputs
        return model(wavs, lengths)
