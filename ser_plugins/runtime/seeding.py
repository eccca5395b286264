"""Seeding every random number generator a run uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator (used by transformers' masking) and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)  # torch.manual_seed's CPU part, without its lazy-device bookkeeping
    if torch.cuda.is_available():  # the devices torch.manual_seed would seed (their generators, lazily)
        torch.cuda.manual_seed_all(seed)
    if torch.backends.mps.is_available():
        torch.mps.manual_seed(seed)
