"""A run-directory lock: two runs never write the same run directory at once.

The lock is an OS file lock taken through the ``filelock`` package (``flock`` on POSIX,
``msvcrt.locking`` on Windows), so the operating system releases it when the holding process
dies, even by ``kill -9``. Who holds it (pid and host) is written beside it, in ``.lock.holder``,
for the message a second run gets.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional

from filelock import FileLock, Timeout

from ser_plugins.errors import UserError
from ser_plugins.io import atomic_write_text

LOCK_NAME = ".lock"
HOLDER_NAME = ".lock.holder"


class LockedError(UserError, RuntimeError):
    """Another process holds the lock."""


def holder_text() -> str:
    """How this process names itself in the holder file: ``pid N on HOST``."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


class RunLock:
    """Exclusive, non-blocking lock on ``<dir>/.lock``; released on exit or when the process dies."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.holder_path = self.directory / HOLDER_NAME
        self._lock: Optional[FileLock] = None

    def __enter__(self) -> "RunLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise LockedError(f"{self.directory} is in use by {self._holder()}; wait for it or choose another "
                              "--out") from None
        self._lock = lock
        atomic_write_text(self.holder_path, holder_text() + "\n")
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
