"""Own checkpoints: weights as safetensors, training state loaded with ``weights_only=True``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ser_plugins.errors import CorruptFileError, UnsafeCheckpointError, is_refusal, refused_pickle, unpickler_detail
from ser_plugins.runtime.atomic import atomic_save


def save_weights(path: Path, state: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Write tensors as a safetensors file, atomically (no pickle: loading it runs no code)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    """Read a safetensors file into a dict of CPU tensors; a damaged file is a ``CorruptFileError`` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError for damaged files
        raise CorruptFileError(f"{path}: not a readable safetensors file ({exc}); delete it or restore it") from None


def read_metadata(path: Path) -> Dict[str, str]:
    """The string metadata stored in a safetensors file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CorruptFileError(f"{path}: not a readable safetensors file ({exc}); delete it or restore it") from None


def save_state(path: Path, state: Dict[str, Any]) -> None:
    """Save optimiser/scheduler state and progress (tensors, numbers, lists, dicts only), atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a Python file: a failed write keeps its OSError (full disk) as the cause
            torch.save(state, fh)

    atomic_save(path, write)


def load_state(path: Path) -> Dict[str, Any]:
    """Load what ``save_state`` wrote, with ``weights_only=True`` (refuses arbitrary objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not is_refusal(exc):  # e.g. "invalid load key": a damaged file, not a refused object
            raise CorruptFileError(
                f"{path}: not a readable training state ({unpickler_detail(exc)}); delete it "
                "(the fold restarts from its first epoch) or restore it"
            ) from None
        refused = refused_pickle(str(path), exc)
        raise UnsafeCheckpointError(
            f"{refused}. A training state written by ser-plugins never holds such "
            "objects: delete the file (the fold restarts) or restore it"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:  # truncated or foreign file (not a torch.save zip)
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFileError(
            f"{path}: not a readable training state ({type(exc).__name__}); delete it "
            "(the fold restarts from its first epoch) or restore it"
        ) from None
