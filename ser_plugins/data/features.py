"""Frozen upstreams: features computed once per utterance (cache hits first, then one extraction pass)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch

from ser_plugins.data.decode import AudioSet, DataError, decode_corpus
from ser_plugins.data.extract import FrozenFeatures, extract_features  # noqa: F401 - extract_features: also importable from here
from ser_plugins.data.feature_cache import FeatureCache
from ser_plugins.data.normalize import Moments
from ser_plugins.plugins.contracts import Upstream, Utterance
from ser_plugins.recipe import DataConfig
from ser_plugins.runtime import distributed as ddp_tools

log = logging.getLogger("ser_plugins")


@torch.inference_mode()
def _read_other_shares(
    ctx: ddp_tools.DistContext,
    forwards: int,
    skipped: Dict[str, str],
    misses: Sequence[Utterance],
    features: Dict[str, List[torch.Tensor]],
    frame_counts: Dict[str, int],
    cache: FeatureCache,
) -> Tuple[int, Dict[str, str]]:
    """After a sharded extraction: sum the forward passes, merge the skips, read the other ranks' cache entries."""
    total = sum(ddp_tools.all_gather(forwards, ctx))
    merged: Dict[str, str] = {}
    for part in ddp_tools.all_gather(skipped, ctx):
        merged.update(part)
    ddp_tools.barrier(ctx)  # every rank has written its share
    for u in misses:
        if u.id in features or u.id in merged:
            continue
        hit = cache.get(u)
        if hit is None:
            raise DataError(
                f"utterance {u.id}: another rank extracted it, but the shared feature cache "
                f"{cache.dir} has no readable entry (is data.cache_dir on a filesystem all ranks share?)"
            )
        features[u.id], frame_counts[u.id] = hit
    return total, merged


def compute_frozen_features(
    upstream: Upstream,
    utterances: Sequence[Utterance],
    layers: Sequence[int],
    data: DataConfig,
    precision: str,
    device: str,
    means_only: bool,
    need_moments: bool = False,
    progress: bool = True,
    store_frames: bool = False,
) -> FrozenFeatures:
    """Features of every usable utterance: from the cache when possible, else decoded and extracted once.

    ``data`` is the recipe's data section. ``means_only`` keeps each layer's utterance mean instead
    of its frames (exact for heads that see only means; the memory of a frozen large model drops
    from frames to one vector per layer). ``need_moments`` also keeps every utterance's frame
    statistics (for normalisation). With ``data.cache_dir`` a ``frames`` entry serves every head
    (means are computed from it exactly); ``means`` entries are written only when nothing needs
    frames (``store_frames``: a grid knows a later head will). Features over ``data.max_ram_gb``
    are served from the cache instead (``feature_stream``).
    """
    keep_frames = not means_only or need_moments
    write_frames = keep_frames or store_frames
    from ser_plugins.data.feature_stream import should_stream, stream_frozen_features

    # over data.max_ram_gb: frames stay in the on-disk cache (frames cache hits are loaded whole below)
    if should_stream(upstream, utterances, layers, data, frames=write_frames or bool(data.cache_dir)):
        return stream_frozen_features(
            upstream, utterances, layers, data, precision, device, means_only, need_moments, progress, store_frames
        )
    dtype = getattr(torch, data.cache_dtype)
    features: Dict[str, List[torch.Tensor]] = {}
    frame_counts: Dict[str, int] = {}
    notes: Dict[str, Any] = {}
    frames_cache: Optional[FeatureCache] = None
    means_cache: Optional[FeatureCache] = None
    from_frames: Set[str] = set()
    if data.cache_dir:
        identity = dict(
            upstream.identity(),
            precision=precision if device.startswith("cuda") else "fp32",
            batch_invariant=upstream.batch_invariant,
        )
        frames_cache = FeatureCache(Path(data.cache_dir), identity, layers, dtype, variant="frames")
        means_cache = None if write_frames else FeatureCache(Path(data.cache_dir), identity, layers, dtype, "means")
        for u in utterances:
            hit = frames_cache.get(u)
            if hit is not None:
                from_frames.add(u.id)
            elif means_cache is not None:
                hit = means_cache.get(u)
            if hit is not None:
                features[u.id], frame_counts[u.id] = hit
    misses = all_misses = [u for u in utterances if u.id not in features]
    ctx = ddp_tools.context()
    sharded = ctx.active and bool(data.cache_dir)  # torchrun: each rank extracts its share into the shared cache
    if sharded:  # rank 0's list of misses for all (another rank may already see some entries written meanwhile)
        missing = set(ddp_tools.broadcast([u.id for u in all_misses], ctx))
        all_misses = [u for u in utterances if u.id in missing]
        misses = [u for u in ddp_tools.shard(all_misses, ctx) if u.id not in features]
    audio = (
        decode_corpus(misses, upstream.sample_rate, upstream.min_samples, data.strict, progress)
        if misses
        else AudioSet()
    )
    forwards = 0
    if audio.waves:
        stats: Dict[str, float] = {}
        fresh_counts: Dict[str, int] = {}
        fresh = extract_features(
            upstream.to(device),
            audio.waves,
            layers,
            device=device,
            max_batch_samples=int(data.extract_batch_seconds * upstream.sample_rate),
            dtype=dtype,
            progress=progress,
            precision=precision,
            stats=stats,
            reduce_mean=not write_frames,
            frame_counts=fresh_counts,
        )
        forwards = len(audio.waves)
        notes["extraction"] = {k: round(v, 4) for k, v in stats.items()}
        skipped = dict(audio.skipped)
        for uid in [uid for uid, feats in fresh.items() if not all(torch.isfinite(f).all() for f in feats)]:
            if data.strict:
                raise DataError(f"utterance {uid}: the upstream gives non-finite features (data.strict is on)")
            log.warning("skipping utterance %s: the upstream gives non-finite features (NaN/inf)", uid)
            skipped[uid] = "non_finite_features"
            del fresh[uid]
        audio.skipped = skipped
        cache = frames_cache if write_frames else means_cache
        if cache is not None:
            by_id = {u.id: u for u in utterances}
            for uid, feats in fresh.items():
                cache.put(by_id[uid], feats, fresh_counts[uid])
        if write_frames:
            from_frames.update(fresh)
        features.update(fresh)
        frame_counts.update(fresh_counts)
        audio.waves.clear()
    if sharded:  # every rank's skips and forward passes, then (after all have written) the others' entries
        shared = frames_cache if write_frames else means_cache
        assert shared is not None  # sharded: data.cache_dir is set
        forwards, audio.skipped = _read_other_shares(
            ctx, forwards, audio.skipped, all_misses, features, frame_counts, shared
        )
        if write_frames:
            from_frames.update(u.id for u in all_misses if u.id in features)
    notes["upstream_forward_passes"] = forwards  # utterances run through the upstream by this run
    if frames_cache is not None:  # data.cache_dir is set
        notes["feature_cache"] = {
            "dir": str(frames_cache.dir),
            "hits": len(utterances) - len(all_misses),
            "misses": len(all_misses),
            "written": "frames" if write_frames else "means",
        }
    result = FrozenFeatures(features, frame_counts, audio.skipped, means_only, notes)
    if need_moments:
        result.moments = {uid: Moments.of(fs) for uid, fs in features.items()}
    if means_only:  # frames (from the cache, or kept for moments / a later head) reduced to exact means
        result.features = {
            uid: [f.float().mean(0, keepdim=True) for f in fs] if uid in from_frames or need_moments else fs
            for uid, fs in features.items()
        }
        notes["mean_shortcut"] = True
    return result
