"""The RAM budget (``data.max_ram_gb``): how much a run may hold in memory before it streams from disk.

Sizes are estimated from audio headers before anything is decoded or loaded, so the choice between
holding data in RAM and streaming it is made up front and logged.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Literal, Optional, Sequence, Union

from ser_plugins.plugins.contracts import Utterance

if TYPE_CHECKING:
    import ctypes

GB = 1024**3
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


_LIBC: Union[None, Literal[False], "ctypes.CDLL"] = None  # None: not looked up yet; False: no malloc_trim


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim``); False where there is none.

    Streamed passes allocate and free one utterance's tensors after another; glibc keeps the freed
    pages in its heaps (measured: 16x demo corpus, RSS 371 -> 873 MB over one streamed extraction,
    402 MB after one trim), so a long streamed pass trims every so often to keep its RAM flat.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            _LIBC = libc if hasattr(libc, "malloc_trim") else False
        except OSError:  # not glibc (macOS, Windows, musl)
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


def resident_bytes() -> Optional[int]:
    """This process's resident set size now (Linux ``/proc/self/statm``), None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


# the level every streamed pass of this process keeps to (extraction, then each epoch): one level, so
# that a pass starting where the previous one ended does not raise it
STREAMED_LEVEL: List[Optional[int]] = [None]


class HeapTrimmer:
    """Keeps a streamed pass's RSS near its level at the start: trims the C heap when it grew by ``slack``.

    Every ``every`` ticks (utterances or batches) the RSS is read (a few microseconds); above the
    level of the first reading by more than ``slack`` the heap is trimmed (``release_free_heap``).
    Trimming costs more than reading (freed pages are faulted in again when reused), so a pass that
    stays flat never trims; after a trim the level becomes what the trim left (live memory), and
    two trims are at least ``cooldown`` checks apart. Where the RSS cannot be read, every check trims.
    """

    def __init__(
        self, every: int, slack: float = 0.1, shared: Optional[List[Optional[int]]] = None, cooldown: int = 16
    ) -> None:
        self.every = max(1, every)
        self.slack = slack
        self.cooldown = cooldown  # checks between two trims at least
        self.count = 0
        self.trims = 0
        self.since_trim = cooldown
        self._level: List[Optional[int]] = shared if shared is not None else [None]

    @property
    def level(self) -> Optional[int]:
        """The RSS this trimmer keeps the process near (None before the first check)."""
        return self._level[0]

    @level.setter
    def level(self, value: Optional[int]) -> None:
        self._level[0] = value

    def tick(self, n: int = 1) -> None:
        """Count ``n`` more; check (and maybe trim) when a multiple of ``every`` was passed."""
        before = self.count // self.every
        self.count += n
        if self.count // self.every != before:
            self.check()

    def check(self) -> bool:
        """Trim if the RSS is over the level by more than ``slack``; True when it trimmed."""
        rss = resident_bytes()
        if rss is None:
            return release_free_heap()
        if self.level is None:
            self.level = rss
            return False
        self.since_trim += 1
        if rss <= self.level * (1 + self.slack) or self.since_trim < self.cooldown:
            return False
        release_free_heap()
        self.trims += 1
        self.since_trim = 0
        # the level follows what the trim could not give back (live memory), so a transient peak just
        # over the line does not make every later check trim again
        self.level = max(self.level, resident_bytes() or rss)
        return True
