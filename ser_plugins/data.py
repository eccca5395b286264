"""Audio decoded once, frozen features extracted once, and length-bucketed batches."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ser_plugins.audio import AudioError, load_audio
from ser_plugins.boundary import check_upstream_output
from ser_plugins.corpus import Utterance

log = logging.getLogger("ser_plugins")


class DataError(RuntimeError):
    """Audio problems that stop a run in strict mode (or when nothing usable is left)."""


@dataclass
class AudioSet:
    """Decoded, resampled mono audio of every usable utterance, and the skips by reason."""

    waves: Dict[str, np.ndarray] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)  # utterance id -> reason


def decode_corpus(utterances: Sequence[Utterance], sample_rate: int, min_samples: int = 1,
                  strict: bool = False, progress: bool = True) -> AudioSet:
    """Decode every utterance once (the validation pass): skip unusable audio with a counted reason.

    With ``strict`` the first unusable file raises ``DataError`` instead.
    """
    out = AudioSet()
    for u in tqdm(utterances, desc="decode audio", unit="utt", disable=not progress, leave=False):
        try:
            wav = load_audio(u.path, sample_rate, u.start, u.end, min_samples=min_samples)
        except AudioError as exc:
            if strict:
                raise DataError(f"utterance {u.id}: {exc} (data.strict is on)") from None
            log.warning("skipping utterance %s: %s", u.id, exc)
            out.skipped[u.id] = exc.reason
            continue
        peak = float(np.max(np.abs(wav))) if wav.size else 0.0
        if peak == 0.0:
            if strict:
                raise DataError(f"utterance {u.id}: {u.path} is digital silence (data.strict is on)")
            log.warning("skipping utterance %s: %s is digital silence", u.id, u.path)
            out.skipped[u.id] = "silent"
            continue
        out.waves[u.id] = wav
    return out


def bucket_batches(lengths: Sequence[int], batch_size: int, max_batch_length: Optional[int] = None,
                   shuffle: bool = False, seed: int = 0, bucket_factor: int = 50) -> List[List[int]]:
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
        chunk = sorted(idx[start:start + bucket], key=lambda i: lengths[i])
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


def pad_waves(waves: Sequence[np.ndarray]) -> tuple:
    """``(wavs [B, S] float32, lengths [B])`` right-padded with zeros."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    batch = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    return batch, lengths


def pad_features(per_utt: Sequence[List[torch.Tensor]]) -> tuple:
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
    return wave[start:start + max_samples]


@torch.inference_mode()
def extract_features(upstream: torch.nn.Module, waves: Dict[str, np.ndarray], layers: Sequence[int],
                     max_batch_samples: int = 16000 * 64, batch_size: int = 16, device: str = "cpu",
                     dtype: torch.dtype = torch.float16, progress: bool = True, precision: str = "fp32",
                     stats: Optional[Dict[str, float]] = None, reduce_mean: bool = False,
                     frame_counts: Optional[Dict[str, int]] = None) -> Dict[str, List[torch.Tensor]]:
    """Run a frozen upstream once over every utterance; keep ``layers`` as ``[T, D]`` tensors on CPU.

    Batches are length-bucketed under ``max_batch_samples`` padded samples (an utterance longer
    than that runs alone), so memory stays bounded. With ``reduce_mean`` only each layer's
    time-average is kept (``[1, D]`` float32), for heads that see nothing else. ``frame_counts``
    receives every utterance's number of frames; ``stats`` the padding fraction, the number of
    batches, the audio seconds and the wall time.
    """
    import time

    ids = list(waves)
    lengths = [len(waves[i]) for i in ids]
    if not getattr(upstream, "batch_invariant", True):
        batch_size = 1  # padding would change the features: each utterance alone, as at prediction time
    batches = bucket_batches(lengths, batch_size, max_batch_samples)
    out: Dict[str, List[torch.Tensor]] = {}
    upstream.eval()
    amp = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
           if precision != "fp32" and str(device).startswith("cuda") else None)
    t0 = time.perf_counter()
    bar = tqdm(total=len(ids), desc="extract features", unit="utt", disable=not progress, leave=False)
    for b in batches:
        wavs, wav_lengths = pad_waves([waves[ids[i]] for i in b])
        if amp is not None:
            with amp:
                res = upstream(wavs.to(device), wav_lengths.to(device))
        else:
            res = upstream(wavs.to(device), wav_lengths.to(device))
        check_upstream_output(upstream, res, wav_lengths.to(device))
        frames = res.lengths.cpu()
        for j, i in enumerate(b):
            n = int(frames[j])
            if reduce_mean:
                # rounded to the storage dtype first: the same numbers as the mean of stored frames
                out[ids[i]] = [res.hidden_states[k][j, :n].to(dtype).float().mean(0, keepdim=True).cpu() for k in layers]
            else:
                out[ids[i]] = [res.hidden_states[k][j, :n].to("cpu", dtype).clone() for k in layers]
            if frame_counts is not None:
                frame_counts[ids[i]] = n
        bar.update(len(b))
    bar.close()
    if stats is not None:
        stats.update(padding_fraction=padding_fraction(lengths, batches), batches=len(batches),
                     audio_seconds=sum(lengths) / getattr(upstream, "sample_rate", 16000),
                     seconds=time.perf_counter() - t0)
    return out


def speaker_normalize(features: Dict[str, List[torch.Tensor]], speaker_of: Dict[str, str],
                      eps: float = 1e-5) -> Dict[str, Dict[str, List[torch.Tensor]]]:
    """Standardise every utterance's features with its speaker's per-dimension mean and std, in place.

    Statistics come from all of that speaker's utterances (for a test speaker: its unlabelled
    test utterances). Returns the statistics ``{speaker: {"mean": [...], "std": [...]}}`` per layer.
    """
    stats: Dict[str, Dict[str, List[torch.Tensor]]] = {}
    by_speaker: Dict[str, List[str]] = {}
    for uid in features:
        by_speaker.setdefault(speaker_of[uid], []).append(uid)
    for spk, uids in by_speaker.items():
        n_layers = len(features[uids[0]])
        means, stds = [], []
        for layer in range(n_layers):
            frames = torch.cat([features[u][layer].double() for u in uids], dim=0)
            means.append(frames.mean(0))
            stds.append(frames.std(0, unbiased=False).clamp(min=eps))
        for u in uids:
            features[u] = [((features[u][k].double() - means[k]) / stds[k]).to(features[u][k].dtype)
                           for k in range(n_layers)]
        stats[spk] = {"mean": [m.float() for m in means], "std": [s.float() for s in stds]}
    return stats
