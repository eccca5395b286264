"""Frozen upstreams: features computed once per utterance (cache hits first, then one extraction pass)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ser_plugins.boundary import check_upstream_output
from ser_plugins.contracts import Utterance
from ser_plugins.data.batching import bucket_batches, pad_waves, padding_fraction
from ser_plugins.data.decode import AudioSet, DataError, decode_corpus
from ser_plugins.data.feature_cache import FeatureCache
from ser_plugins.data.normalize import Moments
from ser_plugins.training import distributed as ddp_tools

log = logging.getLogger("ser_plugins")


@torch.inference_mode()
def extract_features(upstream: torch.nn.Module, waves: Optional[Dict[str, np.ndarray]], layers: Sequence[int],
                     max_batch_samples: int = 16000 * 64, batch_size: int = 16, device: str = "cpu",
                     dtype: torch.dtype = torch.float16, progress: bool = True, precision: str = "fp32",
                     stats: Optional[Dict[str, float]] = None, reduce_mean: bool = False,
                     frame_counts: Optional[Dict[str, int]] = None, lengths: Optional[Dict[str, int]] = None,
                     batch_loader: Optional[Callable[..., Iterator[tuple]]] = None,
                     sink: Optional[Callable[[str, List[torch.Tensor], int], None]] = None,
                     ) -> Dict[str, List[torch.Tensor]]:
    """Run a frozen upstream once over every utterance; keep ``layers`` as ``[T, D]`` tensors on CPU.

    Batches are length-bucketed under ``max_batch_samples`` padded samples (an utterance longer
    than that runs alone), so memory stays bounded. With ``reduce_mean`` only each layer's
    time-average is kept (``[1, D]`` float32), for heads that see nothing else. ``frame_counts``
    receives every utterance's number of frames; ``stats`` the padding fraction, the number of
    batches, the audio seconds and the wall time. Streamed (``data/feature_stream.py``): ``lengths``
    replaces ``waves``, ``batch_loader(ids, batches)`` yields the padded batches, and
    ``sink(id, layers, frames)`` receives each utterance's layers instead of the returned dict.
    """
    ids = list(waves) if lengths is None else list(lengths)
    sizes = lengths
    lengths = [len(waves[i]) for i in ids] if sizes is None else [sizes[i] for i in ids]
    if not upstream.batch_invariant:
        batch_size = 1  # padding would change the features: each utterance alone, as at prediction time
    batches = bucket_batches(lengths, batch_size, max_batch_samples)
    out: Dict[str, List[torch.Tensor]] = {}
    upstream.eval()
    amp = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
           if precision != "fp32" and str(device).startswith("cuda") else None)
    t0 = time.perf_counter()
    bar = tqdm(total=len(ids), desc="extract features", unit="utt", disable=not progress, leave=False)
    padded = (batch_loader(ids, batches) if batch_loader is not None
              else (pad_waves([waves[ids[i]] for i in b]) for b in batches))
    for b, (wavs, wav_lengths) in zip(batches, padded):
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
                feats = [res.hidden_states[k][j, :n].to(dtype).float().mean(0, keepdim=True).cpu() for k in layers]
            else:
                feats = [res.hidden_states[k][j, :n].to("cpu", dtype).clone() for k in layers]
            if sink is not None:
                sink(ids[i], feats, n)
            else:
                out[ids[i]] = feats
            if frame_counts is not None:
                frame_counts[ids[i]] = n
        bar.update(len(b))
    bar.close()
    if stats is not None:
        stats.update(padding_fraction=padding_fraction(lengths, batches), batches=len(batches),
                     audio_seconds=sum(lengths) / upstream.sample_rate,
                     seconds=time.perf_counter() - t0)
    return out


@dataclass
class FrozenFeatures:
    """Per-utterance layer tensors (frames, or ``[1, D]`` means) with frame counts and run notes.

    ``moments`` holds every utterance's frame statistics when a normaliser will need them.
    """

    features: Dict[str, List[torch.Tensor]]
    frame_counts: Dict[str, int]
    skipped: Dict[str, str]
    means_only: bool
    notes: Dict[str, Any] = field(default_factory=dict)
    moments: Optional[Dict[str, Moments]] = None


def _read_other_shares(ctx: Any, forwards: int, skipped: Dict[str, str], misses: Sequence[Utterance],
                        features: Dict[str, List[torch.Tensor]], frame_counts: Dict[str, int],
                        cache: FeatureCache) -> tuple:
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
            raise DataError(f"utterance {u.id}: another rank extracted it, but the shared feature cache "
                            f"{cache.dir} has no readable entry (is data.cache_dir on a filesystem all ranks share?)")
        features[u.id], frame_counts[u.id] = hit
    return total, merged


def compute_frozen_features(upstream: torch.nn.Module, utterances: Sequence[Utterance], layers: Sequence[int],
                            data: Any, precision: str, device: str, means_only: bool, need_moments: bool = False,
                            progress: bool = True, store_frames: bool = False) -> FrozenFeatures:
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
        return stream_frozen_features(upstream, utterances, layers, data, precision, device, means_only,
                                      need_moments, progress, store_frames)
    dtype = getattr(torch, data.cache_dtype)
    features: Dict[str, List[torch.Tensor]] = {}
    frame_counts: Dict[str, int] = {}
    notes: Dict[str, Any] = {}
    frames_cache = means_cache = None
    from_frames: set = set()
    if data.cache_dir:
        identity = dict(upstream.identity(), precision=precision if device.startswith("cuda") else "fp32",
                        batch_invariant=upstream.batch_invariant)
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
    audio = decode_corpus(misses, upstream.sample_rate, upstream.min_samples, data.strict, progress) if misses else AudioSet()
    forwards = 0
    if audio.waves:
        stats: Dict[str, float] = {}
        fresh_counts: Dict[str, int] = {}
        fresh = extract_features(upstream.to(device), audio.waves, layers, device=device,
                                 max_batch_samples=int(data.extract_batch_seconds * upstream.sample_rate),
                                 dtype=dtype, progress=progress, precision=precision,
                                 stats=stats, reduce_mean=not write_frames, frame_counts=fresh_counts)
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
        forwards, audio.skipped = _read_other_shares(ctx, forwards, audio.skipped, all_misses, features, frame_counts,
                                                     frames_cache if write_frames else means_cache)
        if write_frames:
            from_frames.update(u.id for u in all_misses if u.id in features)
    notes["upstream_forward_passes"] = forwards  # utterances run through the upstream by this run
    if data.cache_dir:
        notes["feature_cache"] = {"dir": str(frames_cache.dir), "hits": len(utterances) - len(all_misses),
                                  "misses": len(all_misses), "written": "frames" if write_frames else "means"}
    result = FrozenFeatures(features, frame_counts, audio.skipped, means_only, notes)
    if need_moments:
        result.moments = {uid: Moments.of(fs) for uid, fs in features.items()}
    if means_only:  # frames (from the cache, or kept for moments / a later head) reduced to exact means
        result.features = {uid: [f.float().mean(0, keepdim=True) for f in fs] if uid in from_frames or need_moments
                           else fs for uid, fs in features.items()}
        notes["mean_shortcut"] = True
    return result
