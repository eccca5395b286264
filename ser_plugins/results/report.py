"""``ser report``: one results table over many run directories (the paper's results table)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ser_plugins.errors import UserError
from ser_plugins.results.partial import current_summary
from ser_plugins.results.run_dir import SUMMARY_FILE
from ser_plugins.results.summary import dev_setting
from ser_plugins.runtime.atomic import atomic_write_text

COLUMNS = (
    "run",
    "upstream",
    "finetune",
    "layer",
    "aggregator",
    "classifier",
    "normalize",
    "dev",
    "folds",
    "WA",
    "UA",
    "F1",
)
_TEXT = COLUMNS[:9]
MARK = "†"


class ReportError(UserError, RuntimeError):
    """A directory that holds no finished run."""


def collect(run_dirs: Sequence[Path]) -> List[Dict[str, Any]]:
    """One row per run directory, from its ``summary.json``."""
    rows = []
    for d in run_dirs:
        if Path(d).is_file():  # a shell glob such as runs/* also matches earlier report files
            continue
        s = current_summary(Path(d))  # a run whose fold jobs are still running: its finished folds, partial
        if s is None:
            raise ReportError(f"{d}: no {SUMMARY_FILE} and no finished fold (is it a run directory?)")
        ms = s.mean_std
        rows.append(
            {
                "run": Path(d).name,
                "upstream": s.upstream,
                "finetune": s.finetune,
                "layer": str(s.layer),
                "aggregator": s.aggregator,
                "classifier": s.classifier,
                "normalize": s.normalize or "none",
                "dev": dev_setting(s.dev, s.refit),
                "refit": s.refit,
                "transductive": s.transductive,
                "comparable": s.speaker_independent_inductive,
                "folds": len(s.folds) if s.complete else f"{len(s.folds)} (partial)",  # incomplete runs are marked
                **{f"{k}_mean": ms[k]["mean"] for k in ("wa", "ua", "macro_f1")},
                **{f"{k}_std": ms[k]["std"] for k in ("wa", "ua", "macro_f1")},
            }
        )
    return rows


def to_markdown(rows: List[Dict[str, Any]]) -> str:
    """Markdown table; metrics as mean ± std in percent.

    The best UA among the complete, speaker-independent and non-transductive runs is in bold. Runs
    with transductive normalisation or a random (speaker-leaking) dev set are marked † and never
    bolded beside them.
    """
    fair = [r for r in rows if "partial" not in str(r["folds"]) and r["comparable"]]
    best = max((r["ua_mean"] for r in fair), default=None)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [str(r[c]) for c in _TEXT]
        if not r["comparable"]:
            cells[0] += f" {MARK}"
        for key in ("wa", "ua", "macro_f1"):
            std = r[f"{key}_std"]
            cell = f"{100 * r[f'{key}_mean']:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")
            if key == "ua" and r["comparable"] and r["ua_mean"] == best and len(rows) > 1:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    if any(not r["comparable"] for r in rows):
        lines += [
            "",
            f"{MARK} transductive normalisation (statistics of the test speakers' own audio) or a random "
            "dev set (training speakers in dev): not comparable with speaker-independent, non-transductive "
            "runs, and never ranked best beside them.",
        ]
    lines += ["", "± is the sample standard deviation over folds (ddof=1)."]
    return "\n".join(lines) + "\n"


def to_csv(rows: List[Dict[str, Any]]) -> str:
    """CSV with separate mean and std columns (fractions, not percent)."""
    buf = io.StringIO()
    fields = (
        list(_TEXT)
        + ["refit", "transductive"]
        + [f"{k}_{s}" for k in ("wa", "ua", "macro_f1") for s in ("mean", "std")]
    )
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_report(run_dirs: Sequence[Path], out: Optional[str] = None) -> str:
    """Build the table; with ``out`` also write ``<out>.md`` and ``<out>.csv``. Returns the markdown."""
    rows = collect(run_dirs)
    md = to_markdown(rows)
    if out:
        atomic_write_text(Path(f"{out}.md"), md)
        atomic_write_text(Path(f"{out}.csv"), to_csv(rows))
    return md
