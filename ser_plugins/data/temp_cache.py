"""Temporary feature-cache folders (streamed frozen features without ``data.cache_dir``) that a kill cannot leak.

Each folder holds an OS lock (``flock`` on ``.owner``) for as long as its process lives; the lock
goes with the process however it ends. Before a new folder is made, folders of this kind whose lock
is free (their process was killed before it could remove them) are removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no sweeping, folders are still removed on a normal exit
    fcntl = None  # type: ignore[assignment]  # the module, or None where there is none

log = logging.getLogger("ser_plugins")

PREFIX = "ser-features-"
OWNER = ".owner"
_OWNED: Dict[str, int] = {}  # folder -> the open, locked .owner of this process


def _free(folder: Path) -> bool:
    """True when no live process holds ``folder``'s lock (taking it for a moment to find out)."""
    try:
        fd = os.open(folder / OWNER, os.O_RDWR)
    except OSError:
        return False  # being created right now, or not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def sweep_stale(root: Optional[str] = None) -> List[str]:
    """Remove the temporary feature caches under ``root`` (the temp directory) left by killed runs."""
    if fcntl is None:
        return []
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(PREFIX + "*"):
        if str(folder) in _OWNED or not folder.is_dir() or not _free(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    if removed:
        log.info("removed %d temporary feature cache(s) left by killed runs: %s", len(removed), ", ".join(removed))
    return removed


def make(root: Optional[str] = None) -> str:
    """A new temporary feature-cache folder, locked by this process (stale ones are swept first)."""
    sweep_stale(root)
    folder = tempfile.mkdtemp(prefix=PREFIX, dir=root)
    if fcntl is not None:
        fd = os.open(os.path.join(folder, OWNER), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _OWNED[folder] = fd
    return folder


def release(folder: str) -> None:
    """Remove ``folder`` and give its lock up."""
    shutil.rmtree(folder, ignore_errors=True)
    fd = _OWNED.pop(folder, None)
    if fd is not None:
        os.close(fd)
