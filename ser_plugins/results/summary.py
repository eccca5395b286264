"""The run summary: one dataclass written as summary.json and results.md, read by ``ser report``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ser_plugins.results.metrics import FOLD_SPREAD
from ser_plugins.runtime.atomic import read_json

FoldMetrics = Dict[str, float]  # wa, ua, macro_f1, n


def _pm(cell: Dict[str, Optional[float]], scale: float = 1.0, digits: int = 4) -> str:
    """``mean ± std`` (just the mean when std is undefined: one fold; n/a without a fold)."""
    mean_value, std = cell["mean"], cell.get("std")
    if mean_value is None:
        return "n/a"
    mean = f"{scale * mean_value:.{digits}f}"
    return mean if std is None else f"{mean} ± {scale * std:.{digits}f}"


def dev_setting(dev: str, refit: bool = False) -> str:
    """The dev protocol in a word or two: ``none``, ``speaker``, ``speaker, refit`` ..."""
    return f"{dev}, refit" if refit else dev


def evaluation_setting(normalize: Optional[str], dev: str, refit: bool = False) -> str:
    """A short description of how honest a run's evaluation is, for tables."""
    parts = [
        f"normalisation {normalize or 'none'}"
        + (" (transductive: test speakers' own statistics)" if normalize == "speaker" else "")
    ]
    notes = {
        "random": " (random utterances: leaks training speakers)",
        "none": " (no dev set: every training speaker trains)",
    }
    parts.append(f"dev {dev}" + notes.get(dev, "") + (" + refit on train + dev for the chosen length" if refit else ""))
    return ", ".join(parts)


@dataclass
class Summary:
    """What a run found: per-fold and pooled metrics, mean ± std over folds, and what was skipped."""

    name: str
    upstream: str
    finetune: str
    layer: Union[str, int]
    aggregator: str
    classifier: str
    labels: List[str]
    folds: Dict[str, FoldMetrics]
    mean_std: Dict[str, Dict[str, Optional[float]]]
    pooled: Dict[str, Any]
    complete: bool
    skipped_utterances: Dict[str, int] = field(default_factory=dict)
    corpus_problems: int = 0
    fold_warnings: List[str] = field(default_factory=list)
    seconds: float = 0.0
    protocol: str = ""
    dev: str = "speaker"
    refit: bool = False
    normalize: Optional[str] = None
    transductive: bool = False
    fold_spread: str = FOLD_SPREAD

    @property
    def speaker_independent_inductive(self) -> bool:
        """True when nothing of the test speakers (labels or statistics) and no training speaker in dev shaped the
        result."""
        return not self.transductive and self.dev != "random"

    def __getitem__(self, key: str) -> Any:
        """Read access by summary.json key (``summary["mean_std"]``), as before the dataclass existed."""
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (summary.json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Summary":
        """From summary.json's content (unknown keys ignored: newer files stay readable)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: Path) -> "Summary":
        """Read a summary.json file."""
        return cls.from_dict(read_json(path))

    def to_markdown(self) -> str:
        """The run's results as a markdown table: one row per fold, then mean ± std (results.md)."""
        lines = [
            f"# {self.name}",
            "",
            f"upstream `{self.upstream}` ({self.finetune}, layer {self.layer}), "
            f"aggregator `{self.aggregator}`, classifier `{self.classifier}`",
            "",
            f"Evaluation: protocol {self.protocol or 'default'}, "
            f"{evaluation_setting(self.normalize, self.dev, self.refit)}; "
            f"± is the {self.fold_spread.split(';')[0]}.",
            "",
            "| fold | WA | UA | macro-F1 | n |",
            "|---|---|---|---|---|",
        ]
        for name, m in self.folds.items():
            lines.append(f"| {name} | {m['wa']:.4f} | {m['ua']:.4f} | {m['macro_f1']:.4f} | {m['n']} |")
        ms = self.mean_std
        lines.append(f"| **mean ± std** | {_pm(ms['wa'])} | {_pm(ms['ua'])} | {_pm(ms['macro_f1'])} | |")
        if self.skipped_utterances:
            lines += [
                "",
                "Skipped utterances by reason: " + ", ".join(f"{k}: {v}" for k, v in self.skipped_utterances.items()),
            ]
        if not self.complete:
            lines += ["", "Not all folds were run: this table covers the selected folds only."]
        return "\n".join(lines) + "\n"
