"""One base class for every error that is the user's to fix.

The ``ser`` command prints a ``UserError`` as one ``error:`` line and exits with status 2 (``--debug``
shows the traceback); anything else is a bug and keeps its traceback. Plugins raise their own
subclasses of ``UserError`` for problems a user can fix (a missing checkpoint, a bad option).
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from typing import Optional

#: errno values meaning "no room left": a full disk, a file-size limit, a disk quota
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e is not None)

_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors) report an errno
_GLOBAL_IN_TEXT = re.compile(r"GLOBAL ([\w.]+)")  # the global torch's weights-only unpickler refused


class UserError(Exception):
    """An error whose message tells the user what is wrong and what to do; shown without a traceback."""


class RunError(UserError, RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint holding objects other than tensors and plain data; it was refused, nothing ran."""


class CorruptFileError(UserError):
    """A file of a run directory (JSON, YAML, safetensors) that cannot be read; the message names it."""


class DiskFullError(UserError, OSError):
    """A write failed for lack of room (full disk, file-size limit, quota); the message names the file.

    An ``OSError`` still, so code that catches write errors keeps catching it.
    """


def disk_full_errno(exc: BaseException) -> Optional[int]:
    """The "no room left" errno behind ``exc`` (searched along its cause/context chain), else None.

    Some writers wrap the ``OSError``: torch.save raises ``RuntimeError`` with the OSError as its
    context, safetensors puts ``(os error 28)`` in its message.
    """
    seen = set()
    link: Optional[BaseException] = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
            return link.errno
        match = _OS_ERROR_IN_TEXT.search(str(link))
        if match and int(match.group(1)) in DISK_FULL_ERRNOS:
            return int(match.group(1))
        link = link.__cause__ or link.__context__
    return None


def is_refusal(exc: BaseException) -> bool:
    """True when an ``UnpicklingError`` is torch's weights-only unpickler refusing a global (code it would run)."""
    return bool(_GLOBAL_IN_TEXT.search(str(exc)))


def unpickler_detail(exc: BaseException) -> str:
    """The unpickler's own complaint, one line, without torch's advice to retry with ``weights_only=False``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [
        ln for ln in lines if not any(w in ln for w in ("weights_only", "Weights only", "torch.load", "file an issue"))
    ]
    text = " ".join(keep).replace("WeightsUnpickler error:", "").strip()
    return text or "not a pickle"


def refused_pickle(what: str, exc: Optional[BaseException] = None) -> UnsafeCheckpointError:
    """Our own message for a pickle that the weights-only unpickler refused (never PyTorch's hint).

    PyTorch's message suggests ``weights_only=False``, which would run whatever the file holds; we
    name the refused global (when torch named it) and say what is safe to do instead.
    """
    match = _GLOBAL_IN_TEXT.search(str(exc)) if exc is not None else None
    named = f" (it references {match.group(1)})" if match else ""
    return UnsafeCheckpointError(
        f"refused to load {what}: its pickle holds objects other than tensors and plain data{named}, "
        "so loading it could run code; nothing was executed. Use a safetensors copy of these weights, "
        "or convert the file to safetensors on a machine where you trust its source"
    )


def user_message(exc: BaseException) -> Optional[str]:
    """The one-line message of an error that is the user's to fix, or None for a bug (keeps its traceback).

    Besides ``UserError``: a missing file, a full disk (named by its errno wherever it was raised) and
    a pickle the weights-only unpickler refused (with our advice, never PyTorch's ``weights_only=False``).
    """
    if isinstance(exc, (UserError, FileNotFoundError, FileExistsError)):
        return str(exc)
    code = disk_full_errno(exc)
    if code is not None:
        where = getattr(exc, "filename", None)
        return (
            f"cannot write{f' {where}' if where else ''}: {os.strerror(code)} "
            "(no room left on the disk, or over a size limit)"
        )
    if isinstance(exc, pickle.UnpicklingError):
        if is_refusal(exc):
            return str(refused_pickle("a pickled file", exc))
        return f"cannot read a pickled file: {unpickler_detail(exc)} (nothing was executed)"
    return None
