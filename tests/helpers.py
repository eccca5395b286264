"""Helpers shared by test modules."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List


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


class LogCollector(logging.Handler):
    """Keeps every log record as ``"LEVEL message"`` (for module-scoped fixtures, where caplog is not available)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(f"{record.levelname} {record.getMessage()}")
