"""Length-bucketed batching and padding: one plan of index batches, then padded tensors."""

from __future__ import annotations

import random
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    max_batch_length: Optional[int] = None,
    shuffle: bool = False,
    seed: int = 0,
    bucket_factor: int = 50,
) -> List[List[int]]:
    """Index batches of similar lengths.

    Indices are (optionally) shuffled, cut into buckets of ``bucket_factor * batch_size``, sorted
    by length inside each bucket and cut into batches of at most ``batch_size`` items and at most
    ``max_batch_length`` padded samples (``len(batch) * longest``). Batches are shuffled again
    for training so that length does not follow a schedule.
    """
    idx = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(idx)
    bucket = max(1, bucket_factor * batch_size) if shuffle else max(1, len(idx))
    batches: List[List[int]] = []
    for start in range(0, len(idx), bucket):
        chunk = sorted(idx[start : start + bucket], key=lambda i: lengths[i])
        current: List[int] = []
        longest = 0
        for i in chunk:
            new_longest = max(longest, lengths[i])
            too_big = max_batch_length is not None and current and new_longest * (len(current) + 1) > max_batch_length
            if current and (len(current) >= batch_size or too_big):
                batches.append(current)
                current, new_longest = [], lengths[i]
            current.append(i)
            longest = new_longest
        if current:
            batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions over all batches (0 = no padding)."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    used = sum(lengths[i] for b in batches for i in b)
    return 1.0 - used / total if total else 0.0


def pad_waves(waves: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(wavs [B, S] float32, lengths [B])`` right-padded with zeros."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lengths


def pad_features(per_utt: Sequence[List[torch.Tensor]]) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Per-utterance lists of ``[T, D]`` layer tensors -> (list of ``[B, T, D]`` per layer, lengths)."""
    lengths = torch.tensor([f[0].shape[0] for f in per_utt], dtype=torch.long)
    layers = []
    for layer in range(len(per_utt[0])):
        layers.append(torch.nn.utils.rnn.pad_sequence([f[layer] for f in per_utt], batch_first=True))
    return layers, lengths


def random_crop(wave: np.ndarray, max_samples: Optional[int], rng: random.Random) -> np.ndarray:
    """A random window of at most ``max_samples`` (training-time crop of long utterances)."""
    if max_samples is None or len(wave) <= max_samples:
        return wave
    start = rng.randrange(0, len(wave) - max_samples + 1)
    return wave[start : start + max_samples]
