"""The RAM budget (``data.max_ram_gb``): how much a run may hold in memory before it streams from disk.

Sizes are estimated from audio headers before anything is decoded or loaded, so the choice between
holding data in RAM and streaming it is made up front and logged.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from ser_plugins.contracts import Utterance

GB = 1024 ** 3
AUTO_FRACTION = 0.5  # data.max_ram_gb: null -> this share of the RAM available when the run starts
SMALL_PASS = 256  # data.num_workers: null -> no worker processes for a pass over fewer utterances


def available_ram_bytes() -> int:
    """RAM available to new allocations now (MemAvailable on Linux, else free physical pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * GB  # unknown platform: a conservative guess


def ram_budget_bytes(max_ram_gb: Optional[float]) -> int:
    """The budget in bytes: ``max_ram_gb`` GiB, or (null) half the RAM available now."""
    if max_ram_gb is not None:
        return int(max_ram_gb * GB)
    return int(available_ram_bytes() * AUTO_FRACTION)


def audio_samples(utterances: Sequence[Utterance], sample_rate: int) -> int:
    """Samples at ``sample_rate`` of every utterance, from the file headers (unreadable files count 0)."""
    import soundfile as sf

    total = 0
    for u in utterances:
        try:
            info = sf.info(str(u.path))
        except Exception:  # noqa: BLE001 - the validation pass reports it; the estimate just skips it
            continue
        seconds = info.frames / info.samplerate if info.samplerate else 0.0
        start = u.start or 0.0
        end = min(u.end, seconds) if u.end is not None else seconds
        total += int(max(0.0, end - start) * sample_rate)
    return total


def resolve_workers(num_workers: Optional[int], items: int) -> int:
    """Worker processes for a streamed pass: ``data.num_workers``, or (null) 0 for a small pass, else min(4, CPUs)."""
    if num_workers is not None:
        return num_workers
    if items < SMALL_PASS:
        return 0
    return min(4, os.cpu_count() or 1)
