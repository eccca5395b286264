"""Audio streamed from disk: worker processes decode and resample, a batch sampler keeps the bucketed plan.

Used when the decoded waveforms would exceed the RAM budget (``data.max_ram_gb``): the validation
pass (``scan_corpus``) decodes every utterance once, in ``data.num_workers`` worker processes, and
keeps only its length and, for unusable audio, the same skip reason ``decode_corpus`` gives; the
passes that follow (fine-tuning epochs, evaluation, frozen extraction) decode each batch again in
the workers. Batches are the ones ``WaveSource`` would give: the same plan, the same random crops
(drawn in the main process in the same order), so a seed gives the same results whatever the
worker count.
"""

from __future__ import annotations

import logging
import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ser_plugins.data.audio import AudioError, load_audio, signal_problem
from ser_plugins.data.batching import pad_waves
from ser_plugins.data.decode import DataError
from ser_plugins.data.memory import GB, audio_samples, ram_budget_bytes, resolve_workers
from ser_plugins.data.sources import Batch, BatchPlan, WaveSource
from ser_plugins.plugins.contracts import Utterance
from ser_plugins.recipe import DataConfig
from ser_plugins.task import TargetRow

log = logging.getLogger("ser_plugins")

Key = Tuple[int, int, Optional[int]]  # (utterance index, first sample, end sample or None: the end) of one item


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)  # workers decode; the main process's threads run the model


def _as_list(items: list) -> list:
    return items


class ScanItems(Dataset):
    """The validation pass, item by item: ``(index, samples or None, reason, detail)`` per utterance."""

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int, min_samples: int) -> None:
        self.utterances = list(utterances)
        self.sample_rate = sample_rate
        self.min_samples = min_samples

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> Tuple[int, Optional[int], Optional[str], Optional[Tuple[str, str]]]:
        u = self.utterances[i]
        try:
            wav = load_audio(u.path, self.sample_rate, u.start, u.end, min_samples=self.min_samples)
        except AudioError as exc:
            return i, None, exc.reason, ("audio", str(exc))
        problem = signal_problem(wav)
        if problem is not None:
            return i, None, problem[0], ("signal", problem[1])
        return i, len(wav), None, None


def scan_corpus(
    utterances: Sequence[Utterance],
    sample_rate: int,
    min_samples: int = 1,
    strict: bool = False,
    progress: bool = True,
    num_workers: int = 0,
) -> Tuple[Dict[str, int], Dict[str, str]]:
    """``(samples per usable utterance, skipped id -> reason)``: ``decode_corpus`` without keeping the audio.

    Skips, reasons, warnings and the ``data.strict`` errors are those of ``decode_corpus``.
    """
    loader = DataLoader(
        ScanItems(utterances, sample_rate, min_samples),
        batch_size=8,
        num_workers=num_workers,
        collate_fn=_as_list,
        worker_init_fn=_one_thread if num_workers else None,
        generator=torch.Generator(),
    )
    lengths: Dict[str, int] = {}
    skipped: Dict[str, str] = {}
    bar = tqdm(total=len(utterances), desc="check audio", unit="utt", disable=not progress, leave=False)
    for items in loader:
        for i, samples, reason, detail in items:
            u = utterances[i]
            if samples is not None:
                lengths[u.id] = samples
                continue
            kind, text = detail
            if kind == "audio":
                if strict:
                    raise DataError(f"utterance {u.id}: {text} (data.strict is on)")
                log.warning("skipping utterance %s: %s", u.id, text)
            else:
                if strict:
                    raise DataError(f"utterance {u.id}: {u.path} is {text} (data.strict is on)")
                log.warning("skipping utterance %s: %s is %s", u.id, u.path, text)
            skipped[u.id] = reason
        bar.update(len(items))
    bar.close()
    return lengths, skipped


class AudioItems(Dataset):
    """Decoded audio by key ``(index, start, stop)``: the samples ``start:stop`` of utterance ``index``."""

    def __init__(self, utterances: Sequence[Utterance], sample_rate: int, min_samples: int = 1) -> None:
        self.utterances = list(utterances)
        self.sample_rate = sample_rate
        self.min_samples = min_samples

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, key: Key) -> np.ndarray:
        i, start, stop = key
        u = self.utterances[i]
        wav = load_audio(u.path, self.sample_rate, u.start, u.end, min_samples=self.min_samples)
        return wav[start:stop]


def collate_waves(waves: List[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Padded ``(wavs [B, S], lengths [B])``, built in the worker."""
    return pad_waves(waves)


class PlanSampler:
    """A batch sampler that serves whatever plan it was last given (one loader, many passes)."""

    def __init__(self) -> None:
        self.batches: List[List[Key]] = []

    def __iter__(self) -> Iterator[List[Key]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(
    items: AudioItems, sampler: PlanSampler, num_workers: int, pin_memory: bool, persistent: bool = False
) -> DataLoader:
    """A DataLoader over ``items`` following ``sampler``; ``num_workers`` processes decode and pad."""
    return DataLoader(
        items,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_waves,
        pin_memory=pin_memory,
        worker_init_fn=_one_thread if num_workers else None,
        persistent_workers=persistent and num_workers > 0,
        prefetch_factor=2 if num_workers else None,
        generator=torch.Generator(),
    )  # its seed draw must not move the global RNG (dropout)


def stream_batches(
    utterances: Sequence[Utterance], sample_rate: int, min_samples: int, num_workers: int, pin_memory: bool = False
):
    """A ``batch_loader`` for ``extract_features``: ``(ids, index batches) -> padded batches`` decoded by workers."""
    index = {u.id: k for k, u in enumerate(utterances)}
    items = AudioItems(utterances, sample_rate, min_samples)

    def load(ids: Sequence[str], batches: Sequence[Sequence[int]]) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        sampler = PlanSampler()
        sampler.batches = [[(index[ids[i]], 0, None) for i in b] for b in batches]
        return iter(make_loader(items, sampler, num_workers, pin_memory))

    return load


class PinnedBatch(Batch):
    """A batch in pinned memory: copied to the accelerator without blocking the host."""

    def to(self, device: str) -> "Batch":
        """The same batch on ``device`` (asynchronous copies from pinned memory)."""
        nb = str(device).startswith("cuda")
        inputs = (
            [x.to(device, non_blocking=nb) for x in self.inputs]
            if isinstance(self.inputs, list)
            else self.inputs.to(device, non_blocking=nb)
        )
        return Batch(
            inputs,
            self.lengths.to(device, non_blocking=nb),
            self.targets.to(device, non_blocking=nb),
            self.ids,
            self.features,
        )


class StreamedWaveSource(WaveSource):
    """``WaveSource`` with the audio left on disk: a DataLoader's workers decode every batch of every pass.

    ``lengths`` are the decoded lengths found by the validation pass (``scan_corpus``); with
    ``pin_memory`` (CUDA) batches come in pinned memory and are copied without blocking.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        lengths: Dict[str, int],
        targets: Dict[str, TargetRow],
        sample_rate: int,
        min_samples: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.utterances = [u for u in utterances if u.id in lengths]
        self.index = {u.id: k for k, u in enumerate(self.utterances)}
        self.lengths = dict(lengths)
        self.targets = targets
        self.rate = sample_rate
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.waves: Dict[str, np.ndarray] = {}  # nothing held: see batches()
        self._sampler = PlanSampler()
        self._loader: Optional[DataLoader] = None
        self._items = AudioItems(self.utterances, sample_rate, min_samples)

    def length(self, uid: str) -> int:
        """Number of samples of utterance ``uid`` (from the validation pass)."""
        return self.lengths[uid]

    def keys(self, ids: Sequence[str], plan: BatchPlan) -> List[List[Key]]:
        """The items of every batch of one pass, crops drawn as ``WaveSource`` draws them."""
        crop = self._max_len(plan.max_duration) if plan.shuffle else None
        rng = random.Random(plan.seed)
        out: List[List[Key]] = []
        for b in self.plan(ids, plan):
            keys: List[Key] = []
            for i in b:
                n = self.lengths[ids[i]]
                start = rng.randrange(0, n - crop + 1) if crop and n > crop else 0
                keys.append((self.index[ids[i]], start, start + crop if crop and n > crop else n))
            out.append(keys)
        return out

    def batches(self, ids: Sequence[str], plan: BatchPlan) -> Iterator[Batch]:
        """Length-bucketed batches decoded by the workers, in the plan's order."""
        planned = self.keys(ids, plan)
        if self._loader is None:
            self._loader = make_loader(self._items, self._sampler, self.num_workers, self.pin_memory, persistent=True)
        self._sampler.batches = planned
        for keys, (wavs, lens) in zip(planned, self._loader):
            uids = [self.utterances[k[0]].id for k in keys]
            cls = PinnedBatch if self.pin_memory else Batch
            yield cls(wavs, lens, torch.tensor([self.targets[u] for u in uids]), uids, features=False)


class StreamedAudio:
    """The validation pass of a streamed run: decoded lengths and skips; ``source`` serves the batches."""

    def __init__(
        self, lengths: Dict[str, int], skipped: Dict[str, str], sample_rate: int, min_samples: int, num_workers: int
    ) -> None:
        self.lengths = lengths
        self.skipped = skipped
        self.sample_rate = sample_rate
        self.min_samples = min_samples
        self.num_workers = num_workers

    def source(self, usable: Sequence[Utterance], targets: Dict[str, TargetRow], device: str) -> StreamedWaveSource:
        """The batch source over ``usable`` utterances (pinned memory on CUDA)."""
        return StreamedWaveSource(
            usable,
            self.lengths,
            targets,
            self.sample_rate,
            self.min_samples,
            self.num_workers,
            pin_memory=str(device).startswith("cuda"),
        )


def stream_audio(
    utterances: Sequence[Utterance], sample_rate: int, min_samples: int, data: DataConfig, progress: bool = True
) -> Optional[StreamedAudio]:
    """The validation pass without keeping the audio, when the decoded audio would exceed ``data.max_ram_gb``.

    Returns None when it fits (the caller decodes into RAM as before).
    """
    need = audio_samples(utterances, sample_rate) * 4  # float32
    budget = ram_budget_bytes(data.max_ram_gb)
    if need <= budget:
        return None
    workers = resolve_workers(data.num_workers, len(utterances))
    log.info(
        "audio: about %.2f GiB decoded > RAM budget %.2f GiB (data.max_ram_gb): streamed from disk by %d "
        "DataLoader worker(s)",
        need / GB,
        budget / GB,
        workers,
    )
    lengths, skipped = scan_corpus(utterances, sample_rate, min_samples, data.strict, progress, workers)
    return StreamedAudio(lengths, skipped, sample_rate, min_samples, workers)
