"""Frozen features served from their on-disk cache entries when they would not fit the RAM budget.

``features.compute_frozen_features`` decides to stream when the features it would hold (estimated
from the audio headers, the kept layers' sizes and the storage dtype) exceed ``data.max_ram_gb``.
Every utterance's layers then stay in its safetensors cache entry (written as extraction produces
them; a temporary cache folder when ``data.cache_dir`` is null), ``LazyFeatures`` maps the ids to
them, and ``StreamedFeatureSource`` reads them back, entry by entry, in the order the bucketed plan
wants them, with the next batches prepared by a background thread. Batches, and so results, are
those of the in-RAM ``FeatureSource``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import sys
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ser_plugins.data import temp_cache
from ser_plugins.data.entry_reader import EntryReader, byte_view
from ser_plugins.data.memory import STREAMED_LEVEL, HeapTrimmer
from ser_plugins.data.sources import Batch, BatchPlan, FeatureSource, Transform
from ser_plugins.task import TargetRow

log = logging.getLogger("ser_plugins")

PREFETCH_BATCHES = 2
# streamed passes check their RSS this often and trim the C heap when it grew (memory.HeapTrimmer)
TRIM_EVERY_UTTERANCES = 16  # extraction (features.compute_frozen_features)
TRIM_EVERY_BATCHES = 1
TRIM_COOLDOWN_BATCHES = 16  # training: batches between two trims at least
SWITCH_INTERVAL = 0.0005  # seconds: the GIL's hand-over period while a reading thread feeds training


class LazyFeatures(Mapping):
    """Utterance id -> its layers, read from its cache entry on every access (one entry's bytes at a time).

    ``frame_counts`` are known without reading; ``tmp_dir`` (a temporary cache) is removed with the object.
    """

    def __init__(
        self, paths: Dict[str, Path], frame_counts: Dict[str, int], num_layers: int, tmp_dir: Optional[str] = None
    ) -> None:
        self.paths = paths
        self.frame_counts = frame_counts
        self.num_layers = num_layers
        self.tmp_dir = tmp_dir
        self._reader = EntryReader([f"layer{k}" for k in range(num_layers)])
        if tmp_dir is not None:
            weakref.finalize(self, temp_cache.release, tmp_dir)

    def __getitem__(self, uid: str) -> List[torch.Tensor]:
        return self._reader.read(uid, self.paths[uid])

    def read_padded(self, uids: Sequence[str], starts: Sequence[int], lengths: Sequence[int]) -> List[torch.Tensor]:
        """Rows ``starts[i]`` ... ``+ lengths[i]`` of each utterance, zero-padded: ``[B, T, D]`` per layer.

        The same tensors as padding what ``self[uid]`` returns (``batching.pad_features``), read
        straight into the batch where the entry's layout is known (``EntryReader.read_rows``).
        """
        layout = self._reader.layout(uids[0], self.paths[uids[0]])
        if layout is None:
            widths: List[Tuple[torch.dtype, Tuple[int, ...]]] = [(f.dtype, f.shape[1:]) for f in self[uids[0]]]
        else:
            widths = [(dtype, shape[1:]) for dtype, shape, _ in layout[0]]
        out = [torch.zeros((len(uids), max(lengths), *tail), dtype=dtype) for dtype, tail in widths]
        views = [byte_view(t) for t in out]
        for i, (uid, start, n) in enumerate(zip(uids, starts, lengths)):
            total = self.frame_counts[uid]
            if not self._reader.read_rows(uid, self.paths[uid], [v[i, :n] for v in views], start, total):
                for k, f in enumerate(self[uid]):  # unusual entry: read whole, copied (shape errors surface here)
                    if f.shape[0] != total:
                        raise ValueError(
                            f"feature cache entry {self.paths[uid]} holds {f.shape[0]} frames of "
                            f"utterance {uid}, its header says {total}"
                        )
                    out[k][i, :n] = f[start : start + n]
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


_END = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(items: Iterator[Any], depth: int = PREFETCH_BATCHES) -> Iterator[Any]:
    """``items`` produced by a background thread, at most ``depth`` ahead of the consumer.

    An exception in the producer is raised in the consumer; a consumer that stops early stops the thread.
    """
    q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_Failure(exc))

    thread = threading.Thread(target=work, name="ser-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@contextlib.contextmanager
def short_switch_interval(seconds: float = SWITCH_INTERVAL) -> Iterator[None]:
    """Python's thread switch interval set to ``seconds`` for the block (restored after).

    While a reading thread prepares batches beside the training thread, the trainer, back from a
    torch call, waits for the reader's time slice (5 ms by default) before it holds the GIL again;
    0.5 ms measured about 15 % more training throughput on the streamed 16x demo corpus.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def _trimming(items: Iterator[Any], every: int) -> Iterator[Any]:
    """``items``, with the RSS checked every ``every`` items (in the producing thread) and the C heap trimmed when it
    grew."""
    trimmer = HeapTrimmer(every, shared=STREAMED_LEVEL, cooldown=TRIM_COOLDOWN_BATCHES)
    for item in items:
        yield item
        trimmer.tick()


class StreamedFeatureSource(FeatureSource):
    """``FeatureSource`` over ``LazyFeatures``: batches read from disk and prepared ahead in a thread."""

    features: LazyFeatures

    def __init__(
        self,
        features: LazyFeatures,
        targets: Dict[str, TargetRow],
        frames_per_second: float,
        transform: Optional[Transform] = None,
        depth: int = PREFETCH_BATCHES,
    ) -> None:
        super().__init__(features, targets, frames_per_second, features.frame_counts, transform)
        self.depth = depth

    def with_transform(self, transform: Optional[Transform]) -> "StreamedFeatureSource":
        """The same entries served through ``transform``."""
        return StreamedFeatureSource(self.features, self.targets, self.rate, transform, self.depth)

    def batches(self, ids: Sequence[str], plan: BatchPlan) -> Iterator[Batch]:
        """``FeatureSource.batches``, read in plan order and prefetched ``depth`` batches ahead."""
        with short_switch_interval():
            yield from prefetch(_trimming(self._read_batches(ids, plan), TRIM_EVERY_BATCHES), self.depth)

    def _read_batches(self, ids: Sequence[str], plan: BatchPlan) -> Iterator[Batch]:
        """The batches of ``FeatureSource.batches`` (same crops from the same random draws), each entry's
        rows read straight into the padded batch."""
        crop = self._max_len(plan.max_duration) if plan.shuffle else None
        rng = random.Random(plan.seed)
        counts = self.features.frame_counts
        for b in self.plan(ids, plan):
            uids = [ids[i] for i in b]
            starts, lengths = [], []
            for u in uids:
                n = counts[u]
                if crop and n > crop:
                    starts.append(rng.randrange(0, n - crop + 1))
                    lengths.append(crop)
                else:
                    starts.append(0)
                    lengths.append(n)
            states = self.features.read_padded(uids, starts, lengths)
            if self.transform is not None:
                states = self.transform(uids, states)
            yield Batch(
                states,
                torch.tensor(lengths, dtype=torch.long),
                torch.tensor([self.targets[u] for u in uids]),
                uids,
                features=True,
            )
