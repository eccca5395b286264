"""The run summary: one dataclass written as summary.json and results.md, read by ``ser report``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ser_plugins.results.metrics import (
    FOLD_SPREAD,
    mean_std,
    metrics_from_confusion,
    regression_metrics,
    summary_metric_keys,
)
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


def fold_results(
    results: Dict[str, Dict[str, Any]],
    has_classes: bool,
    targets: List[str],
    target_values: Optional[List[Any]] = None,
) -> Dict[str, Any]:
    """``folds``, ``mean_std`` and ``pooled`` of a summary from the finished folds' metrics.

    Classes: WA, UA and macro-F1 per fold and mean ± std, the pooled confusion matrix and its
    metrics. Continuous targets: CCC, Pearson r and MAE (mean and per target) per fold and mean ±
    std, and pooled over every test utterance of the folds: ``target_values`` holds each fold's
    ``(true, predicted)`` arrays (``FoldDir.read_target_values``).
    """
    per_fold = list(results.values())
    keys = summary_metric_keys(has_classes, targets)
    pooled: Dict[str, Any] = {}
    if has_classes:
        import numpy as np

        confusion = np.sum([np.array(m["confusion"]) for m in per_fold], axis=0)
        pooled.update(metrics_from_confusion(confusion), confusion=confusion.tolist())
    if targets and target_values is not None:
        import numpy as np

        parts = target_values
        true = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, len(targets)))
        pred = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(targets)))
        reg = regression_metrics(true, pred, targets)
        reg.pop("target_names")
        pooled.update(reg)
    return {
        "folds": {n: {k: m[k] for k in [*keys, "n"]} for n, m in results.items()},
        "mean_std": mean_std(per_fold, keys),
        "pooled": pooled,
    }


def per_corpus_summary(results: Dict[str, Dict[str, Any]], keys: List[str]) -> Dict[str, Any]:
    """Mean ± std over folds of each corpus's test metrics (multi-corpus runs: ``per_corpus`` of the folds)."""
    corpora: Dict[str, List[Dict[str, Any]]] = {}
    for m in results.values():
        for name, part in m.get("per_corpus", {}).items():
            corpora.setdefault(name, []).append(part)
    return {
        name: {"mean_std": mean_std(parts, [k for k in keys if k in parts[0]]), "n": sum(p["n"] for p in parts)}
        for name, parts in corpora.items()
    }


_COLUMN_NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro-F1", "ccc": "CCC"}


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
    task: str = "classification"  # classification, regression or multitask (ser_plugins.task)
    targets: List[str] = field(default_factory=list)  # the continuous targets (regression, multitask)
    per_corpus: Dict[str, Any] = field(default_factory=dict)  # multi-corpus runs: each corpus's test results
    cross_corpus: Dict[str, Any] = field(default_factory=dict)  # protocol cross_corpus: {train: [...], test: [...]}

    @property
    def has_classes(self) -> bool:
        """True when the run predicts classes (WA/UA/macro-F1 columns)."""
        return self.task != "regression"

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
        ]
        columns = (["wa", "ua", "macro_f1"] if self.has_classes else []) + (
            ["ccc"] + [f"ccc_{t}" for t in self.targets] if self.targets else []
        )
        lines += [
            "| fold | " + " | ".join(_COLUMN_NAMES.get(c, c.replace("ccc_", "CCC ")) for c in columns) + " | n |",
            "|---|" + "---|" * len(columns) + "---|",
        ]
        for name, m in self.folds.items():
            lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in columns) + f" | {m['n']} |")
        ms = self.mean_std
        lines.append("| **mean ± std** | " + " | ".join(_pm(ms[c]) for c in columns) + " | |")
        if self.targets and "ccc" in self.pooled:
            pooled = ", ".join(f"{t} {self.pooled['ccc_' + t]:.4f}" for t in self.targets)
            lines += [
                "",
                f"Pooled over the test folds: CCC {self.pooled['ccc']:.4f} ({pooled}); "
                f"Pearson r {self.pooled['pearson']:.4f}; MAE {self.pooled['mae']:.4f}.",
            ]
        if self.per_corpus:
            lines += ["", "Per corpus (test utterances of each corpus, mean ± std over folds):", ""]
            lines += [
                "| corpus | " + " | ".join(_COLUMN_NAMES.get(c, c.replace("ccc_", "CCC ")) for c in columns) + " | n |",
                "|---|" + "---|" * len(columns) + "---|",
            ]
            for name, part in self.per_corpus.items():
                cells = [_pm(part["mean_std"][c]) if c in part["mean_std"] else "–" for c in columns]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {part['n']} |")
        if self.skipped_utterances:
            lines += [
                "",
                "Skipped utterances by reason: " + ", ".join(f"{k}: {v}" for k, v in self.skipped_utterances.items()),
            ]
        if not self.complete:
            lines += ["", "Not all folds were run: this table covers the selected folds only."]
        return "\n".join(lines) + "\n"
