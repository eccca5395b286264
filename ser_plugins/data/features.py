"""Frozen upstreams: features computed once per utterance, held in RAM or streamed from the on-disk cache.

``compute_frozen_features`` is the one way in. It decides once, from the audio headers and the RAM
budget (``should_stream``), whether the features are held in RAM or left in their cache entries:
``hold_features`` gives the ``FeatureHolding`` for the pass, ``InRam`` or ``Streamed``, and the pass
asks only it how to take a cache hit, keep fresh frames, prepare the misses' audio (decoded in RAM,
or decoded per batch by DataLoader workers) and serve the result. One pass takes the cache hits,
extracts the misses (``extract.extract_features``), skips utterances whose features are not finite,
writes the cache and keeps what the head needs. Both cases give one ``FrozenFeatures``,
and its ``source(targets, frames_per_second)`` is the batch source: ``FeatureSource`` over the
features in RAM, or ``feature_stream.StreamedFeatureSource`` reading the entries batch by batch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from ser_plugins.data import temp_cache
from ser_plugins.data.decode import DataError, decode_corpus
from ser_plugins.data.extract import extract_features
from ser_plugins.data.feature_cache import FeatureCache
from ser_plugins.data.feature_stream import TRIM_EVERY_UTTERANCES, LazyFeatures, StreamedFeatureSource
from ser_plugins.data.memory import GB, STREAMED_LEVEL, HeapTrimmer, audio_samples, ram_budget_bytes, resolve_workers
from ser_plugins.data.normalize import Moments
from ser_plugins.data.sources import FeatureSource
from ser_plugins.data.wave_stream import scan_corpus, stream_batches
from ser_plugins.plugins.contracts import Upstream, Utterance
from ser_plugins.recipe import DataConfig
from ser_plugins.runtime import distributed as ddp_tools
from ser_plugins.task import TargetRow

log = logging.getLogger("ser_plugins")

__all__ = ["FrozenFeatures", "compute_frozen_features", "extract_features", "feature_bytes", "should_stream"]

Layers = List[torch.Tensor]
BatchLoader = Callable[..., Iterator[Tuple[torch.Tensor, torch.Tensor]]]  # extract_features' batch_loader


@dataclass
class FrozenFeatures:
    """What a frozen pass yields, held in RAM or streamed: one interface for both.

    ``features`` maps every usable utterance to its layers (frames ``[T, D]``, or ``[1, D]`` means
    when ``means_only``): a dict in RAM, or ``LazyFeatures`` reading the cache entries. ``moments``
    holds every utterance's frame statistics when a normaliser will need them; ``source`` gives the
    batch source.
    """

    features: Mapping[str, Layers]
    frame_counts: Dict[str, int]
    skipped: Dict[str, str]
    means_only: bool
    notes: Dict[str, Any] = field(default_factory=dict)
    moments: Optional[Dict[str, Moments]] = None

    def source(self, targets: Dict[str, TargetRow], frames_per_second: float) -> FeatureSource:
        """The batch source over these features for ``targets`` (per utterance, whatever the task's targets are)."""
        if isinstance(self.features, LazyFeatures):
            return StreamedFeatureSource(self.features, targets, frames_per_second)
        return FeatureSource(self.features, targets, frames_per_second, self.frame_counts if self.means_only else None)


def feature_bytes(
    upstream: Upstream,
    utterances: Sequence[Utterance],
    layers: Sequence[int],
    dtype: torch.dtype,
    frames: bool,
    samples: Optional[int] = None,
) -> int:
    """Estimated RAM of the features of ``utterances``: frames from the audio headers, or one mean per layer."""
    sizes = list(upstream.hidden_sizes) or [upstream.hidden_size]
    width = sum(sizes[k] if 0 <= k < len(sizes) else sizes[-1] for k in layers)
    if not frames:
        return len(utterances) * width * 4
    if samples is None:
        samples = audio_samples(utterances, upstream.sample_rate)
    return samples // max(1, upstream.hop_length) * width * torch.tensor([], dtype=dtype).element_size()


def should_stream(
    upstream: Upstream, utterances: Sequence[Utterance], layers: Sequence[int], data: DataConfig, frames: bool
) -> bool:
    """True when the in-RAM path would exceed ``data.max_ram_gb`` (logged with both figures).

    The in-RAM path holds the features and, while it extracts, the decoded audio (float32) of
    every utterance not in the cache: both count (an upper bound: every utterance a miss).
    """
    samples = audio_samples(utterances, upstream.sample_rate)
    need = feature_bytes(upstream, utterances, layers, getattr(torch, data.cache_dtype), frames, samples)
    need += samples * 4
    budget = ram_budget_bytes(data.max_ram_gb)
    if need <= budget:
        return False
    log.info(
        "frozen features: about %.2f GiB with the decoded audio > RAM budget %.2f GiB (data.max_ram_gb): "
        "served from the on-disk cache",
        need / GB,
        budget / GB,
    )
    return True


def open_caches(
    root: Optional[str],
    upstream: Upstream,
    layers: Sequence[int],
    dtype: torch.dtype,
    precision: str,
    device: str,
    write_frames: bool,
) -> Tuple[Optional[FeatureCache], Optional[FeatureCache]]:
    """``(frames cache, means cache)`` under ``root`` (both None without one; no means cache when frames are written).

    The key is the upstream's identity, the precision it runs at (fp32 off CUDA) and whether its
    features depend on the batch's padding.
    """
    if root is None:
        return None, None
    identity = dict(
        upstream.identity(),
        precision=precision if device.startswith("cuda") else "fp32",
        batch_invariant=upstream.batch_invariant,
    )
    frames_cache = FeatureCache(Path(root), identity, layers, dtype, variant="frames")
    means_cache = None if write_frames else FeatureCache(Path(root), identity, layers, dtype, "means")
    return frames_cache, means_cache


def finite_or_skipped(uid: str, feats: Sequence[torch.Tensor], strict: bool, skipped: Dict[str, str]) -> bool:
    """True when every layer of ``uid`` is finite; else the utterance is skipped (``strict``: a ``DataError``)."""
    if all(torch.isfinite(f).all() for f in feats):
        return True
    if strict:
        raise DataError(f"utterance {uid}: the upstream gives non-finite features (data.strict is on)")
    log.warning("skipping utterance %s: the upstream gives non-finite features (NaN/inf)", uid)
    skipped[uid] = "non_finite_features"
    return False


class FramesHit(NamedTuple):
    """A frames entry found in the cache: its layers (read whole) or its path (left in place), and its frame count."""

    layers: Optional[Layers]
    frame_count: int
    path: Optional[Path]


@dataclass
class MissAudio:
    """The misses' audio as ``extract_features`` takes it, the misses skipped, and the notes its preparation adds.

    In RAM: ``waves``, every usable miss decoded. Streamed: ``lengths`` of the usable misses and a
    ``loader`` that decodes them per extraction batch.
    """

    skipped: Dict[str, str]
    waves: Optional[Dict[str, np.ndarray]] = None
    lengths: Optional[Dict[str, int]] = None
    loader: Optional[BatchLoader] = None
    notes: Dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> int:
        """How many misses go through the upstream."""
        return len(self.lengths if self.lengths is not None else self.waves or {})


class FeatureHolding(ABC):
    """Where one frozen pass holds its frames, chosen once (``hold_features``): ``InRam`` or ``Streamed``.

    ``cache_root`` is the cache folder of the pass (None: no cache); ``shares_extraction`` says
    whether torchrun ranks may each extract a share of the misses into the shared cache.
    """

    cache_root: Optional[str]
    shares_extraction: bool

    @abstractmethod
    def find_frames(self, cache: FeatureCache, utt: Utterance) -> Optional[FramesHit]:
        """``utt``'s frames entry in ``cache``, or None."""

    @abstractmethod
    def fresh_path(self, cache: Optional[FeatureCache], utt: Utterance) -> Optional[Path]:
        """Where fresh frames of ``utt`` stay (its entry in ``cache``), or None: held in RAM."""

    @abstractmethod
    def prepare_audio(
        self, misses: Sequence[Utterance], upstream: Upstream, data: DataConfig, device: str, progress: bool
    ) -> MissAudio:
        """The audio of ``misses`` for extraction (validated: the unusable ones are skipped)."""

    @abstractmethod
    def tick(self) -> None:
        """One fresh utterance came from the upstream."""

    @abstractmethod
    def notes(self, data: DataConfig, means_only: bool) -> Dict[str, Any]:
        """What ``run.json`` says of this holding."""

    @abstractmethod
    def features(self, kept: _Kept, means_only: bool) -> Mapping[str, Layers]:
        """The ``features`` mapping over what ``kept`` holds (the temporary cache handed on or released)."""

    @abstractmethod
    def release(self) -> None:
        """Give up the temporary cache folder, if any (the pass failed)."""


class InRam(FeatureHolding):
    """Every utterance's layers held in RAM: entries read whole, misses decoded first (``decode_corpus``)."""

    shares_extraction = True

    def __init__(self, data: DataConfig) -> None:
        self.cache_root = data.cache_dir or None

    def find_frames(self, cache: FeatureCache, utt: Utterance) -> Optional[FramesHit]:
        """``utt``'s entry loaded whole, or None."""
        hit = cache.get(utt)
        return None if hit is None else FramesHit(hit[0], hit[1], None)

    def fresh_path(self, cache: Optional[FeatureCache], utt: Utterance) -> Optional[Path]:
        """None: fresh frames are held in RAM."""
        return None

    def prepare_audio(
        self, misses: Sequence[Utterance], upstream: Upstream, data: DataConfig, device: str, progress: bool
    ) -> MissAudio:
        """Every miss decoded once (``decode_corpus``)."""
        audio = decode_corpus(misses, upstream.sample_rate, upstream.min_samples, data.strict, progress)
        return MissAudio(audio.skipped, waves=audio.waves)

    def tick(self) -> None:
        """Nothing to count in RAM."""

    def notes(self, data: DataConfig, means_only: bool) -> Dict[str, Any]:
        """Nothing: in RAM is the default."""
        return {}

    def features(self, kept: _Kept, means_only: bool) -> Mapping[str, Layers]:
        """The layers ``kept`` holds."""
        return kept.features

    def release(self) -> None:
        """No temporary folder in RAM."""


class Streamed(FeatureHolding):
    """Frames left in their cache entries (``data.cache_dir``, or a temporary folder made here) and read per batch.

    Entries are located, not loaded; misses are validated (``scan_corpus``) and decoded again per
    extraction batch by DataLoader workers; a heap trimmer keeps the pass's RSS flat.
    """

    shares_extraction = False

    def __init__(self, data: DataConfig) -> None:
        self.tmp_dir = temp_cache.make() if not data.cache_dir else None
        self.cache_root = data.cache_dir or self.tmp_dir
        self.trimmer = HeapTrimmer(TRIM_EVERY_UTTERANCES, shared=STREAMED_LEVEL)

    def find_frames(self, cache: FeatureCache, utt: Utterance) -> Optional[FramesHit]:
        """``utt``'s entry located (its layers stay on disk), or None."""
        loc = cache.locate(utt)
        return None if loc is None else FramesHit(None, loc[1], loc[0])

    def fresh_path(self, cache: Optional[FeatureCache], utt: Utterance) -> Optional[Path]:
        """``utt``'s entry in ``cache``, just written."""
        assert cache is not None  # streamed: data.cache_dir or a temporary folder
        return cache.entry_path(utt)

    def prepare_audio(
        self, misses: Sequence[Utterance], upstream: Upstream, data: DataConfig, device: str, progress: bool
    ) -> MissAudio:
        """The misses' lengths (``scan_corpus``) and a loader decoding them per batch; notes the workers."""
        workers = resolve_workers(data.num_workers, len(misses))
        lengths, skipped = scan_corpus(
            misses, upstream.sample_rate, upstream.min_samples, data.strict, progress, workers
        )
        by_id = {u.id: u for u in misses}
        loader = stream_batches(
            [by_id[uid] for uid in lengths],
            upstream.sample_rate,
            upstream.min_samples,
            workers,
            pin_memory=device.startswith("cuda"),
        )
        return MissAudio(skipped, lengths=lengths, loader=loader, notes={"workers": workers})

    def tick(self) -> None:
        """Count the utterance for the heap trimmer."""
        self.trimmer.tick()

    def notes(self, data: DataConfig, means_only: bool) -> Dict[str, Any]:
        """The budget that was exceeded, and whether frames are served from disk."""
        return {"streamed": {"max_ram_gb": data.max_ram_gb, "frames_on_disk": not means_only}}

    def features(self, kept: _Kept, means_only: bool) -> Mapping[str, Layers]:
        """``LazyFeatures`` over the entries (owning the temporary folder); only means: ``kept``'s, folder released."""
        if means_only:  # only means are held: the temporary entries are no longer needed
            self.release()
            return kept.features
        return LazyFeatures(kept.paths, kept.frame_counts, kept.num_layers, self.tmp_dir)

    def release(self) -> None:
        """Remove the temporary cache folder, if this holding made one."""
        if self.tmp_dir is not None:
            temp_cache.release(self.tmp_dir)


def hold_features(
    upstream: Upstream, utterances: Sequence[Utterance], layers: Sequence[int], data: DataConfig, write_frames: bool
) -> FeatureHolding:
    """The one decision of a pass: ``Streamed`` over ``data.max_ram_gb`` (``should_stream``), else ``InRam``."""
    if should_stream(upstream, utterances, layers, data, frames=write_frames or bool(data.cache_dir)):
        return Streamed(data)
    return InRam(data)


@dataclass
class _Kept:
    """What one pass keeps of each utterance: its frame count, its layers in RAM or its entry's path (as
    ``holding`` says), and (``need_moments``) its frame statistics; ``means_only`` reduces frames to exact means.

    Fresh features (``fresh``) are checked, written to ``cache`` (the frames cache, or the means
    cache) and kept; the skips are in ``skipped``.
    """

    num_layers: int
    means_only: bool
    need_moments: bool
    write_frames: bool
    holding: FeatureHolding
    cache: Optional[FeatureCache]
    strict: bool
    features: Dict[str, Layers] = field(default_factory=dict)
    paths: Dict[str, Path] = field(default_factory=dict)  # frames left in their entries
    frame_counts: Dict[str, int] = field(default_factory=dict)
    moments: Dict[str, Moments] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    def __contains__(self, uid: object) -> bool:
        return uid in self.frame_counts

    def frames(self, uid: str, n: int, feats: Optional[Layers] = None, path: Optional[Path] = None) -> None:
        """``uid``'s ``n`` frames: ``feats``, or in the cache entry at ``path`` (then read only for means or moments).

        With a ``path`` the frames stay in the entry; without one they are held in RAM.
        """
        self.frame_counts[uid] = n
        if feats is None:
            if not (self.need_moments or self.means_only):
                assert path is not None  # frames are given, or where they are
                self.paths[uid] = path
                return
            assert path is not None
            feats = LazyFeatures({uid: path}, {uid: n}, self.num_layers)[uid]
        if self.need_moments:
            self.moments[uid] = Moments.of(feats)
        if self.means_only:
            self.features[uid] = [f.float().mean(0, keepdim=True) for f in feats]
        elif path is not None:
            self.paths[uid] = path
        else:
            self.features[uid] = feats

    def means(self, uid: str, feats: Layers, n: int) -> None:
        """``uid``'s utterance means (from a means entry or a mean-reducing extraction) and its frame count."""
        self.features[uid], self.frame_counts[uid] = feats, n

    def entry(self, uid: str, feats: Layers, n: int) -> None:
        """An entry of ``cache`` read whole (another rank's share)."""
        if self.write_frames:
            self.frames(uid, n, feats)
        else:
            self.means(uid, feats, n)

    def hits(
        self, utterances: Sequence[Utterance], frames_cache: FeatureCache, means_cache: Optional[FeatureCache]
    ) -> None:
        """The cache hits, in corpus order: frames entries (as ``holding`` finds them), then means."""
        for u in utterances:
            found = self.holding.find_frames(frames_cache, u)
            if found is not None:
                self.frames(u.id, found.frame_count, found.layers, found.path)
                continue
            hit = means_cache.get(u) if means_cache is not None else None
            if hit is not None:
                self.means(u.id, *hit)

    def fresh(self, utt: Utterance, feats: Layers, n: int) -> None:
        """Layers the upstream just gave: skipped when not finite, else written to the cache and kept."""
        self.holding.tick()
        if not finite_or_skipped(utt.id, feats, self.strict, self.skipped):
            return
        if self.cache is not None:
            self.cache.put(utt, feats, n)
        if not self.write_frames:
            self.means(utt.id, feats, n)
        else:
            self.frames(utt.id, n, feats, self.holding.fresh_path(self.cache, utt))


def _extract(
    upstream: Upstream,
    misses: Sequence[Utterance],
    layers: Sequence[int],
    data: DataConfig,
    precision: str,
    device: str,
    progress: bool,
    kept: _Kept,
) -> Tuple[int, Dict[str, Any]]:
    """``(forward passes, notes)`` of running the upstream once over ``misses``, each result handed to ``kept``.

    The misses' audio is prepared as ``kept.holding`` says (decoded first, or decoded per batch).
    """
    notes: Dict[str, Any] = {}
    if not misses:
        return 0, notes
    by_id = {u.id: u for u in misses}
    audio = kept.holding.prepare_audio(misses, upstream, data, device, progress)
    kept.skipped.update(audio.skipped)
    if audio.usable:
        stats: Dict[str, float] = {}
        extract_features(
            upstream.to(device),
            audio.waves,
            layers,
            device=device,
            max_batch_samples=int(data.extract_batch_seconds * upstream.sample_rate),
            dtype=getattr(torch, data.cache_dtype),
            progress=progress,
            precision=precision,
            stats=stats,
            reduce_mean=not kept.write_frames,
            lengths=audio.lengths,
            batch_loader=audio.loader,
            sink=lambda uid, feats, n: kept.fresh(by_id[uid], feats, n),
        )
        notes["extraction"] = {k: round(v, 4) for k, v in stats.items()}
    notes.update(audio.notes)
    return audio.usable, notes


@torch.inference_mode()
def _read_other_shares(
    ctx: ddp_tools.DistContext,
    forwards: int,
    skipped: Dict[str, str],
    misses: Sequence[Utterance],
    kept: _Kept,
) -> Tuple[int, Dict[str, str]]:
    """After a sharded extraction: sum the forward passes, merge the skips, read the other ranks' cache entries."""
    total = sum(ddp_tools.all_gather(forwards, ctx))
    merged: Dict[str, str] = {}
    for part in ddp_tools.all_gather(skipped, ctx):
        merged.update(part)
    ddp_tools.barrier(ctx)  # every rank has written its share
    assert kept.cache is not None  # sharded: data.cache_dir is set
    for u in misses:
        if u.id in kept or u.id in merged:
            continue
        hit = kept.cache.get(u)
        if hit is None:
            raise DataError(
                f"utterance {u.id}: another rank extracted it, but the shared feature cache "
                f"{kept.cache.dir} has no readable entry (is data.cache_dir on a filesystem all ranks share?)"
            )
        kept.entry(u.id, *hit)
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
    frames (``store_frames``: a grid knows a later head will).

    Features over ``data.max_ram_gb`` are streamed: frames stay in their cache entries (written as
    extraction produces them; a temporary cache folder when ``data.cache_dir`` is null, removed with
    the features, or by a later run if this one is killed), and only means and moments are held.
    """
    write_frames = not means_only or need_moments or store_frames
    # the one decision: over data.max_ram_gb, frames stay in the on-disk cache
    holding = hold_features(upstream, utterances, layers, data, write_frames)
    try:
        dtype = getattr(torch, data.cache_dtype)
        frames_cache, means_cache = open_caches(
            holding.cache_root, upstream, layers, dtype, precision, device, write_frames
        )
        cache = frames_cache if write_frames else means_cache
        kept = _Kept(len(layers), means_only, need_moments, write_frames, holding, cache, data.strict)
        if frames_cache is not None:
            kept.hits(utterances, frames_cache, means_cache)
        misses = all_misses = [u for u in utterances if u.id not in kept]
        ctx = ddp_tools.context()
        # torchrun, in RAM: each rank extracts its share into the shared cache
        sharded = ctx.active and bool(data.cache_dir) and holding.shares_extraction
        if sharded:  # rank 0's list of misses for all (another rank may already see some entries written meanwhile)
            missing = set(ddp_tools.broadcast([u.id for u in all_misses], ctx))
            all_misses = [u for u in utterances if u.id in missing]
            misses = [u for u in ddp_tools.shard(all_misses, ctx) if u.id not in kept]
        forwards, notes = _extract(upstream, misses, layers, data, precision, device, progress, kept)
        skipped = kept.skipped
        if sharded:  # every rank's skips and forward passes, then (after all have written) the others' entries
            forwards, skipped = _read_other_shares(ctx, forwards, skipped, all_misses, kept)
    except BaseException:
        holding.release()
        raise
    notes["upstream_forward_passes"] = forwards  # utterances run through the upstream by this run
    if data.cache_dir and frames_cache is not None:
        notes["feature_cache"] = {
            "dir": str(frames_cache.dir),
            "hits": len(utterances) - len(all_misses),
            "misses": len(all_misses),
            "written": "frames" if write_frames else "means",
        }
    notes.update(holding.notes(data, means_only))
    if means_only:  # frames (from the cache, or kept for moments / a later head) were reduced to exact means
        notes["mean_shortcut"] = True
    features = holding.features(kept, means_only)
    moments = {uid: kept.moments[uid] for uid in features} if need_moments else None
    return FrozenFeatures(features, kept.frame_counts, skipped, means_only, notes, moments)
