"""One base class for every error that is the user's to fix.

The ``ser`` command prints a ``UserError`` as one ``error:`` line and exits with status 2 (``--debug``
shows the traceback); anything else is a bug and keeps its traceback. Plugins raise their own
subclasses of ``UserError`` for problems a user can fix (a missing checkpoint, a bad option).
"""
from __future__ import annotations

import pickle


class UserError(Exception):
    """An error whose message tells the user what is wrong and what to do; shown without a traceback."""


class RunError(UserError, RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A checkpoint holding objects other than tensors and plain data; it was refused, nothing ran."""


class CorruptFileError(UserError):
    """A file of a run directory (JSON, YAML, safetensors) that cannot be read; the message names it."""
