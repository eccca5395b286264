"""Helpers shared by test modules."""
from __future__ import annotations

from pathlib import Path
from typing import Dict


def recipe_for(root: Path, **sections) -> Dict:
    """A quick one-epoch fbank + stats + mlp recipe dict on the corpus at ``root``; ``sections`` are merged in."""
    r = {
        "name": "faults", "seed": 0,
        "corpus": {"name": "iemocap", "root": str(root)},
        "upstream": {"name": "fbank", "n_mels": 40},
        "aggregator": "stats",
        "classifier": {"name": "mlp", "hidden_sizes": [16]},
        "training": {"epochs": 1, "batch_size": 16, "patience": None},
        "output": {"tensorboard": False},
    }
    for key, value in sections.items():
        r[key] = {**r.get(key, {}), **value} if isinstance(value, dict) else value
    return r
