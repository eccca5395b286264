"""A run-directory lock: two runs never write the same run directory at once.

The lock is an OS file lock taken through the ``filelock`` package (``flock`` on POSIX,
``msvcrt.locking`` on Windows), so the operating system releases it when the holding process
dies, even by ``kill -9``. Who holds it (pid and host) is written beside it, in ``.lock.holder``,
for the message a second run gets.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from ser_plugins.errors import UserError
from ser_plugins.runtime.atomic import atomic_write_text

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.holder"


class LockedError(UserError, RuntimeError):
    """Another process holds the lock."""


def holder_text() -> str:
    """How this process names itself in the holder file: ``pid N on HOST``."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


#: phases in which a run holds its run-directory lock briefly (setting up, writing the summary): a fold
#: job that finds the lock held in one of them waits for it instead of giving up
BRIEF_PHASES = ("preparing the run", "writing the summary")


class RunLock:
    """Exclusive lock on ``<dir>/.lock``; released on exit or when the process dies.

    Non-blocking by default. ``phase`` is written beside the holder's pid (``pid N on HOST (phase)``);
    with ``wait`` a holder in one of ``BRIEF_PHASES`` is waited for, any other holder is refused at
    once. ``hint`` ends the refusal message.
    """

    def __init__(
        self,
        directory: Path,
        phase: Optional[str] = None,
        wait: bool = False,
        hint: str = "wait for it or choose another --out",
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.holder_path = self.directory / HOLDER_NAME
        self.phase = phase
        self.wait = wait
        self.hint = hint
        self._lock: Optional[FileLock] = None

    def __enter__(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=0)
        unknown_since = None
        while True:
            try:
                lock.acquire()
                break
            except Timeout:
                holder = self._holder()
                brief = self.wait and holder.endswith(tuple(f"({p})" for p in BRIEF_PHASES))
                if not brief and self.wait:  # the holder may not have written its name yet: look again shortly
                    unknown_since = unknown_since or time.monotonic()
                    brief = time.monotonic() - unknown_since < 1.0
                if not brief:
                    raise LockedError(f"{self.directory} is in use by {holder}; {self.hint}") from None
                time.sleep(0.1)
        self._lock = lock
        atomic_write_text(self.holder_path, holder_text() + (f" ({self.phase})" if self.phase else "") + "\n")
        return self

    def _holder(self) -> str:
        try:
            text = self.holder_path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text or "another process"

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def remove_files(self) -> None:
        """Delete the lock and holder files (only after ``__exit__``, for a directory this run created)."""
        for p in (self.holder_path, self.path):
            p.unlink(missing_ok=True)


def held_elsewhere(directory: Path) -> bool:
    """True when another process holds ``<directory>/.lock`` right now (a fold job training that fold)."""
    path = Path(directory) / LOCK_NAME
    if not path.exists():
        return False
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False
