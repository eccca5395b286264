"""Atomic file writes: a killed run never leaves a half-written result behind.

Files get the mode ``open()`` would give them (0666 less the umask), not ``mkstemp``'s 0600; a
write that fails for lack of room raises ``DiskFullError`` naming the file and its directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Union

from ser_plugins.errors import CorruptFileError, DiskFullError, disk_full_errno

PathLike = Union[str, Path]


def current_umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The file ends with mode 0666 less the umask, like any file ``open()`` creates. A failure for
    lack of room (full disk, size limit, quota) becomes ``DiskFullError``; ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())  # after the writer: some (safetensors) recreate the file
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except Exception as exc:
        code = disk_full_errno(exc)
        if code is None:
            raise
        raise DiskFullError(
            f"cannot write {path.name} in {path.parent}: {os.strerror(code)} (no room left on "
            f"the disk, or over a size limit); the previous {path.name}, if any, is intact"
        ) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (NaN is refused: results must be real numbers)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_save(path: PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` (e.g. a safetensors or figure save) and move the result atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def read_json(path: PathLike) -> Dict[str, Any]:
    """Read a JSON file; a damaged one is a ``CorruptFileError`` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc}); delete it or restore it") from None
