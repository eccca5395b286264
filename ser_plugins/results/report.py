"""``ser report``: one results table over many run directories (the paper's results table)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_plugins.errors import UserError
from ser_plugins.results.partial import current_summary
from ser_plugins.results.run_dir import SUMMARY_FILE, RunDir
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
_CLASS_KEYS = ("wa", "ua", "macro_f1")
MARK = "†"
MISSING = "–"  # a metric the run does not have (WA of a regression run, CCC of a classification run)


def _targets_of(rows: List[Dict[str, Any]]) -> List[str]:
    """Every continuous target of the rows, in first-seen order (each gets a CCC column)."""
    return list(dict.fromkeys(t for r in rows for t in r.get("targets", [])))


def _metric_columns(rows: List[Dict[str, Any]]) -> List[Tuple[str, str]]:
    """``(key, header)`` of the metric columns: WA/UA/F1 when a run has classes, CCC (mean, per target) when one
    has targets, so classification and regression runs share one table without sharing a column."""
    cols: List[Tuple[str, str]] = []
    if not rows or any(r.get("task", "classification") != "regression" for r in rows):
        cols += [("wa", "WA"), ("ua", "UA"), ("macro_f1", "F1")]
    targets = _targets_of(rows)
    if targets:
        cols += [("ccc", "CCC")] + [(f"ccc_{t}", f"CCC {t}") for t in targets]
    return cols


class ReportError(UserError, RuntimeError):
    """A directory that holds no finished run."""


#: the corpus plugin whose runs get the EmoBox table (by its registered name: the core imports no corpus)
EMOBOX_CORPUS = "emobox"
#: the EmoBox table's metric columns: ``(summary key, header)``
EMOBOX_METRICS = (("wa", "WA"), ("ua", "UA"), ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"))
_SETTING_SKIP = {"name", "output"}  # recipe sections that do not make a different setting of the EmoBox table


def _corpus_of(run_dir: Path) -> Tuple[str, str, str]:
    """``(corpus name, data set, setting key)`` from a run's recipe.yaml; the data set is the corpus's ``dataset``
    option (EmoBox) or the corpus name, the setting key the recipe without its name, output, corpus ``dataset``
    and the number in ``corpus.fold`` (runs of one setting share a table; runs of one fold each and runs of
    all folds do not). Empty strings when recipe.yaml is unreadable."""
    try:
        recipe = RunDir(run_dir).read_recipe()
    except Exception:  # an old or partial run directory: no EmoBox row for it, the main table still has it
        return "", "", ""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("corpus"), dict):
        return "", "", ""
    corpus = dict(recipe["corpus"])
    name = str(corpus.get("name", ""))
    dataset = str(corpus.pop("dataset", "") or name)
    corpus["fold"] = "one" if corpus.get("fold") is not None else "all"  # fold-by-fold runs: their own table
    setting = {k: v for k, v in recipe.items() if k not in _SETTING_SKIP}
    setting["corpus"] = corpus
    data = dict(setting.get("data") or {})
    data.pop("cache_dir", None)  # a grid's shared feature cache
    setting["data"] = data
    return name, dataset, json.dumps(setting, sort_keys=True, default=str)


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
        corpus, dataset, setting = _corpus_of(Path(d))
        metric_keys = [k for k in ms if k in _CLASS_KEYS or k.startswith("ccc")]
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
                "task": s.task,
                "targets": list(s.targets),
                "cross_train": "+".join(s.cross_corpus.get("train") or []),
                "cross_test": "+".join(s.cross_corpus.get("test") or []),
                "corpus": corpus,
                "dataset": dataset,
                "setting": setting,
                "fold_metrics": {n: dict(m) for n, m in s.folds.items()},
                **{f"{k}_mean": ms[k]["mean"] for k in metric_keys},
                **{f"{k}_std": ms[k]["std"] for k in metric_keys},
            }
        )
    return rows


def to_markdown(rows: List[Dict[str, Any]]) -> str:
    """Markdown table; metrics as mean ± std (WA/UA/F1 in percent, CCC as a fraction).

    Runs with classes fill WA, UA and F1; runs with continuous targets fill CCC (mean over targets,
    then one column per target); a cell a run has no figure for is ``–``. The best UA and the best
    CCC among the complete, speaker-independent and non-transductive runs is in bold. Runs
    with transductive normalisation or a random (speaker-leaking) dev set are marked † and never
    bolded beside them.
    """
    fair = [r for r in rows if "partial" not in str(r["folds"]) and r["comparable"]]
    best = {
        key: max((r[f"{key}_mean"] for r in fair if r.get(f"{key}_mean") is not None), default=None)
        for key in ("ua", "ccc")
    }
    metrics = _metric_columns(rows)
    header = list(_TEXT) + [name for _, name in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [str(r[c]) for c in _TEXT]
        if not r["comparable"]:
            cells[0] += f" {MARK}"
        for key, _ in metrics:
            mean = r.get(f"{key}_mean")
            if mean is None:
                cells.append(MISSING)
                continue
            std = r.get(f"{key}_std")
            scale, digits = (100, 2) if key in _CLASS_KEYS else (1, 4)  # accuracies in percent, CCC as is
            cell = f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if std is not None else "")
            if key in best and r["comparable"] and mean == best[key] and len(rows) > 1:
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


def to_matrix(rows: List[Dict[str, Any]]) -> str:
    """The cross-corpus matrix of ``protocol: cross_corpus`` runs: one row per training corpus, one column per
    test corpus, UA (CCC for runs without classes) as mean ± std in each cell; ``–`` for a pair no run covers."""
    cross = [r for r in rows if r.get("cross_train")]
    if not cross:
        return ""
    trains = list(dict.fromkeys(r["cross_train"] for r in cross))
    tests = list(dict.fromkeys(r["cross_test"] for r in cross))
    lines = []
    for key, name in (("ua", "UA"), ("macro_f1", "macro-F1"), ("ccc", "CCC")):
        cells = {(r["cross_train"], r["cross_test"]): r for r in cross if r.get(f"{key}_mean") is not None}
        if not cells:
            continue
        scale, digits = (100, 2) if key in _CLASS_KEYS else (1, 4)
        lines += [f"{name}: train on the row's corpus, test on the column's", ""]
        lines += ["| train ↓ test → | " + " | ".join(tests) + " |", "|" + "---|" * (len(tests) + 1)]
        for t in trains:
            row = []
            for c in tests:
                r = cells.get((t, c))
                if r is None:
                    row.append(MISSING)
                    continue
                std = r.get(f"{key}_std")
                row.append(f"{scale * r[f'{key}_mean']:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if std else ""))
            lines.append(f"| {t} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _emobox_groups(rows: List[Dict[str, Any]]) -> List[Tuple[List[Dict[str, Any]], Dict[str, List[Dict[str, Any]]]]]:
    """The EmoBox runs grouped by setting (first-seen order), each group's runs by data set."""
    groups: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    members: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("corpus") != EMOBOX_CORPUS:
            continue
        groups.setdefault(r["setting"], {}).setdefault(r["dataset"], []).append(r)
        members.setdefault(r["setting"], []).append(r)
    return [(members[k], groups[k]) for k in groups]


def emobox_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per setting x data set of the ``emobox`` runs: the mean over every fold of its runs (a run of the
    whole data set contributes its folds, a ``corpus.fold: k`` run its one fold) of WA, UA, micro-F1 and
    macro-F1 (fractions), the number of folds, and whether a run is partial."""
    out = []
    for g, (members, by_dataset) in enumerate(_emobox_groups(rows), 1):
        for dataset, runs in by_dataset.items():
            folds = [m for r in runs for m in r["fold_metrics"].values()]
            row: Dict[str, Any] = {
                "setting": g,
                "dataset": dataset,
                "runs": " ".join(r["run"] for r in runs),
                "folds": len(folds),
                "partial": any("partial" in str(r["folds"]) for r in runs),
                **{c: members[0][c] for c in _TEXT if c not in ("run", "folds")},
            }
            for key, _ in EMOBOX_METRICS:
                values = [float(m[key]) for m in folds if m.get(key) is not None]
                row[key] = sum(values) / len(values) if values and len(values) == len(folds) else None
            out.append(row)
    return out


def to_emobox(rows: List[Dict[str, Any]]) -> str:
    """The EmoBox-layout table of the ``emobox`` runs: per setting (upstream, heads, ...), one row per data set,
    columns WA, UA, micro-F1 and macro-F1 in percent, each the mean over the data set's folds (EmoBox's
    published table reports the same means). Empty when no run reads the ``emobox`` corpus."""
    table = emobox_rows(rows)
    if not table:
        return ""
    lines: List[str] = []
    for g, (members, _) in enumerate(_emobox_groups(rows), 1):
        first = members[0]
        lines += [
            f"upstream `{first['upstream']}` ({first['finetune']}, layer {first['layer']}), aggregator "
            f"`{first['aggregator']}`, classifier `{first['classifier']}`, normalize {first['normalize']}, dev "
            f"{first['dev']}; runs: {', '.join(r['run'] for r in members)}",
            "",
            "| data set | folds | " + " | ".join(name for _, name in EMOBOX_METRICS) + " |",
            "|---|---|" + "---|" * len(EMOBOX_METRICS),
        ]
        for r in (t for t in table if t["setting"] == g):
            cells = [MISSING if r[k] is None else f"{100 * r[k]:.2f}" for k, _ in EMOBOX_METRICS]
            folds = f"{r['folds']} (partial)" if r["partial"] else str(r["folds"])
            lines.append(f"| {r['dataset']} | {folds} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Each cell is the mean over the data set's folds (EmoBox's fold lists; `corpus.fold: k` runs count as "
        "their fold), in percent; micro-F1 equals WA for single-label classification, as in EmoBox.",
        "",
    ]
    return "\n".join(lines)


def emobox_csv(rows: List[Dict[str, Any]]) -> str:
    """The EmoBox table as CSV (fractions, not percent), one line per setting x data set."""
    buf = io.StringIO()
    fields = ["setting", "dataset", "folds", *[k for k, _ in EMOBOX_METRICS], "partial", "runs"]
    fields += [c for c in _TEXT if c not in ("run", "folds")]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(emobox_rows(rows))
    return buf.getvalue()


def to_csv(rows: List[Dict[str, Any]]) -> str:
    """CSV with separate mean and std columns (fractions, not percent)."""
    buf = io.StringIO()
    targets = _targets_of(rows)
    keys = ["wa", "ua", "macro_f1"] + (["ccc"] + [f"ccc_{t}" for t in targets] if targets else [])
    fields = list(_TEXT) + ["refit", "transductive"] + (["task"] if targets else [])
    fields += [f"{k}_{s}" for k in keys for s in ("mean", "std")]
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_report(run_dirs: Sequence[Path], out: Optional[str] = None) -> str:
    """Build the table; with ``out`` also write ``<out>.md`` and ``<out>.csv`` (and ``<out>_emobox.csv`` when runs
    read the ``emobox`` corpus: see ``to_emobox``). Returns the markdown."""
    rows = collect(run_dirs)
    md = to_markdown(rows)
    matrix = to_matrix(rows)
    if matrix:  # cross-corpus runs: their matrix below the table
        md += "\n## Cross-corpus\n\n" + matrix
    emobox = to_emobox(rows)
    if emobox:  # runs of the emobox corpus: EmoBox's table (data set x metric, mean over folds) below
        md += "\n## EmoBox\n\n" + emobox
    if out:
        atomic_write_text(Path(f"{out}.md"), md)
        atomic_write_text(Path(f"{out}.csv"), to_csv(rows))
        if emobox:
            atomic_write_text(Path(f"{out}_emobox.csv"), emobox_csv(rows))
    return md
