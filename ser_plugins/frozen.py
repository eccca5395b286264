"""Frozen upstreams: features computed once per utterance (cache hits first, then one extraction pass)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import logging

import torch

from ser_plugins.corpus import Utterance
from ser_plugins.data import AudioSet, DataError, decode_corpus, extract_features, speaker_normalize
from ser_plugins.feature_cache import FeatureCache

log = logging.getLogger("ser_plugins")


@dataclass
class FrozenFeatures:
    """Per-utterance layer tensors (frames, or ``[1, D]`` means) with frame counts and run notes."""

    features: Dict[str, List[torch.Tensor]]
    frame_counts: Dict[str, int]
    skipped: Dict[str, str]
    means_only: bool
    notes: Dict[str, Any] = field(default_factory=dict)
    speaker_stats: Optional[Dict[str, Any]] = None


def compute_frozen_features(upstream: torch.nn.Module, utterances: Sequence[Utterance], layers: Sequence[int],
                            recipe: Dict[str, Any], device: str, means_only: bool,
                            progress: bool = True) -> FrozenFeatures:
    """Features of every usable utterance: from the cache when possible, else decoded and extracted once.

    ``means_only`` keeps each layer's utterance mean instead of its frames (exact for heads that
    see only means; the memory of a frozen large model drops from frames to one vector per layer).
    Speaker normalisation needs frames, so with it the means are taken after normalising.
    """
    data = recipe["data"]
    speaker_norm = recipe["features"]["normalize"] == "speaker"
    reduce_now = means_only and not speaker_norm
    dtype = getattr(torch, data["cache_dtype"])
    features: Dict[str, List[torch.Tensor]] = {}
    frame_counts: Dict[str, int] = {}
    notes: Dict[str, Any] = {}
    cache = None
    if data["cache_dir"]:
        identity = dict(upstream.identity(), precision=recipe["training"]["precision"] if device.startswith("cuda") else "fp32",
                        batch_invariant=getattr(upstream, "batch_invariant", True))
        cache = FeatureCache(Path(data["cache_dir"]), identity, layers, dtype, variant="means" if reduce_now else "frames")
        for u in utterances:
            hit = cache.get(u)
            if hit is not None:
                features[u.id], frame_counts[u.id] = hit
    misses = [u for u in utterances if u.id not in features]
    audio = decode_corpus(misses, upstream.sample_rate, upstream.min_samples, data["strict"], progress) if misses else AudioSet()
    if audio.waves:
        stats: Dict[str, float] = {}
        fresh_counts: Dict[str, int] = {}
        fresh = extract_features(upstream.to(device), audio.waves, layers, device=device,
                                 max_batch_samples=int(data["extract_batch_seconds"] * upstream.sample_rate),
                                 dtype=dtype, progress=progress, precision=recipe["training"]["precision"],
                                 stats=stats, reduce_mean=reduce_now, frame_counts=fresh_counts)
        notes["extraction"] = {k: round(v, 4) for k, v in stats.items()}
        skipped = dict(audio.skipped)
        for uid in [uid for uid, feats in fresh.items() if not all(torch.isfinite(f).all() for f in feats)]:
            if data["strict"]:
                raise DataError(f"utterance {uid}: the upstream gives non-finite features (data.strict is on)")
            log.warning("skipping utterance %s: the upstream gives non-finite features (NaN/inf)", uid)
            skipped[uid] = "non_finite_features"
            del fresh[uid]
        audio.skipped = skipped
        if cache is not None:
            by_id = {u.id: u for u in utterances}
            for uid, feats in fresh.items():
                cache.put(by_id[uid], feats, fresh_counts[uid])
        features.update(fresh)
        frame_counts.update(fresh_counts)
        audio.waves.clear()
    if cache is not None:
        notes["feature_cache"] = cache.stats()
    result = FrozenFeatures(features, frame_counts, audio.skipped, means_only, notes)
    if speaker_norm:
        result.speaker_stats = speaker_normalize(features, {u.id: u.speaker for u in utterances if u.id in features})
        if means_only:
            result.features = {uid: [f.float().mean(0, keepdim=True) for f in fs] for uid, fs in features.items()}
    if means_only:
        notes["mean_shortcut"] = True
    return result
