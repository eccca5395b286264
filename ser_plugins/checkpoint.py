"""Own checkpoints: weights as safetensors, training state loaded with ``weights_only=True``."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ser_plugins.io import atomic_save


def save_weights(path: Path, state: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """Write tensors as a safetensors file, atomically (no pickle: loading it runs no code)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_save(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: Path) -> Dict[str, torch.Tensor]:
    """Read a safetensors file into a dict of CPU tensors."""
    from safetensors.torch import load_file

    return load_file(str(path))


def save_state(path: Path, state: Dict[str, Any]) -> None:
    """Save optimiser/scheduler state and progress (tensors, numbers, lists, dicts only), atomically."""
    atomic_save(path, lambda tmp: torch.save(state, tmp))


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A training-state file holding something other than tensors and plain data."""


def load_state(path: Path) -> Dict[str, Any]:
    """Load what ``save_state`` wrote, with ``weights_only=True`` (refuses arbitrary objects)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain data "
                                    f"(it may run code; nothing was executed). {first}") from None
