"""Own checkpoints: weights as safetensors, training state loaded with ``weights_only=True``."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ser_plugins.errors import CorruptFileError, UnsafeCheckpointError
from ser_plugins.io import atomic_save


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
    atomic_save(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> Dict[str, Any]:
    """Load what ``save_state`` wrote, with ``weights_only=True`` (refuses arbitrary objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain data "
                                    "(it may run code; nothing was executed). A training state written by "
                                    "ser-plugins never does: delete the file (the fold restarts) or restore it") from None
