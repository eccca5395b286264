"""``ser report``: one results table over many run directories (the paper's results table)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ser_plugins.errors import UserError
from ser_plugins.io import atomic_write_text
from ser_plugins.results.summary import Summary

COLUMNS = ("run", "upstream", "finetune", "layer", "aggregator", "classifier", "folds", "WA", "UA", "F1")


class ReportError(UserError, RuntimeError):
    """A directory that holds no finished run."""


def collect(run_dirs: Sequence[Path]) -> List[Dict[str, object]]:
    """One row per run directory, from its ``summary.json``."""
    rows = []
    for d in run_dirs:
        if Path(d).is_file():  # a shell glob such as runs/* also matches earlier report files
            continue
        path = Path(d) / "summary.json"
        if not path.exists():
            raise ReportError(f"{d}: no summary.json (is it a finished run directory?)")
        s = Summary.load(path)
        ms = s.mean_std
        rows.append({
            "run": Path(d).name, "upstream": s.upstream, "finetune": s.finetune, "layer": str(s.layer),
            "aggregator": s.aggregator, "classifier": s.classifier,
            "folds": len(s.folds) if s.complete else f"{len(s.folds)} (partial)",
            **{f"{k}_mean": ms[k]["mean"] for k in ("wa", "ua", "macro_f1")},
            **{f"{k}_std": ms[k]["std"] for k in ("wa", "ua", "macro_f1")},
        })
    return rows


def to_markdown(rows: List[Dict[str, object]]) -> str:
    """Markdown table; metrics as mean ± std in percent, the best UA of the complete runs in bold."""
    best = max((r["ua_mean"] for r in rows if "partial" not in str(r["folds"])), default=None)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [str(r[c]) for c in COLUMNS[:7]]
        for key in ("wa", "ua", "macro_f1"):
            cell = f"{100 * r[f'{key}_mean']:.2f} ± {100 * r[f'{key}_std']:.2f}"
            if key == "ua" and r["ua_mean"] == best and len(rows) > 1:
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: List[Dict[str, object]]) -> str:
    """CSV with separate mean and std columns (fractions, not percent)."""
    buf = io.StringIO()
    fields = list(COLUMNS[:7]) + [f"{k}_{s}" for k in ("wa", "ua", "macro_f1") for s in ("mean", "std")]
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
