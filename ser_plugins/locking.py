"""A run-directory lock: two runs never write the same run directory at once."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Optional

from ser_plugins.errors import UserError


class LockedError(UserError, RuntimeError):
    """Another process holds the lock."""


class RunLock:
    """Exclusive, non-blocking ``flock`` on ``<dir>/.lock``; released on exit or process death."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / ".lock"
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LockedError(f"{self.path.parent} is in use by {holder}; wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
