"""The summary of a run directory at any time: ``summary.json``, or one built from the folds finished so far.

Fold jobs of one run write ``folds/<name>/metrics.json`` independently; the job that finishes last
writes the complete ``summary.json``. Until then (or when a job died) ``ser report`` calls
``current_summary``, which rebuilds the summary from ``recipe.yaml``, ``run.json`` and the finished
folds' metrics, marked incomplete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ser_plugins.runtime.atomic import read_json
from ser_plugins.recipe import safe_load
from ser_plugins.results.metrics import mean_std, metrics_from_confusion
from ser_plugins.results.summary import Summary


def finished_folds(run_dir: Path) -> Dict[str, Dict[str, Any]]:
    """``{fold name: metrics}`` of every finished fold, in the run's fold order (``run.json``) when known."""
    run_dir = Path(run_dir)
    order: List[str] = []
    if (run_dir / "run.json").exists():
        order = [f["name"] for f in read_json(run_dir / "run.json").get("folds", [])]
    found = {p.parent.name: p for p in (run_dir / "folds").glob("*/metrics.json")}
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    return {n: read_json(found[n]) for n in names}


def summary_from_folds(run_dir: Path) -> Optional[Summary]:
    """A summary built from the finished folds on disk (None when no fold has finished or the run files are missing)."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists() or not (run_dir / "recipe.yaml").exists():
        return None
    results = finished_folds(run_dir)
    if not results:
        return None
    run = read_json(run_dir / "run.json")
    recipe = safe_load((run_dir / "recipe.yaml").read_text())
    per_fold = list(results.values())
    pooled = np.sum([np.array(m["confusion"]) for m in per_fold], axis=0)
    evaluation = run.get("evaluation", {})
    return Summary(
        name=recipe.get("name", run_dir.name), upstream=recipe["upstream"]["name"],
        finetune=recipe.get("finetune", {}).get("mode", "frozen"), layer=recipe.get("features", {}).get("layer", "last"),
        aggregator=recipe["aggregator"]["name"], classifier=recipe["classifier"]["name"], labels=run["labels"],
        folds={n: {k: m[k] for k in ("wa", "ua", "macro_f1", "n")} for n, m in results.items()},
        mean_std=mean_std(per_fold), pooled={**metrics_from_confusion(pooled), "confusion": pooled.tolist()},
        complete=len(results) == len(run.get("folds", [])), skipped_utterances=run.get("skipped", {}),
        corpus_problems=run.get("corpus_problems", 0), protocol=evaluation.get("protocol", ""),
        dev=evaluation.get("dev", "speaker"), refit=bool(evaluation.get("refit", False)),
        normalize=evaluation.get("normalize"),
        transductive=bool(evaluation.get("transductive", False)),
    )


def current_summary(run_dir: Path) -> Optional[Summary]:
    """``summary.json`` when it covers every finished fold, else the summary of the finished folds; None if none."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if path.exists():
        saved = Summary.load(path)
        if saved.complete or set(saved.folds) == set(finished_folds(run_dir)):
            return saved
    built = summary_from_folds(run_dir)
    if built is None and path.exists():
        return Summary.load(path)
    return built
