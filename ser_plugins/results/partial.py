"""The summary of a run directory at any time: ``summary.json``, or one built from the folds finished so far.

Fold jobs of one run write ``folds/<name>/metrics.json`` independently; the job that finishes last
writes the complete ``summary.json``. Until then (or when a job died) ``ser report`` calls
``current_summary``, which rebuilds the summary from ``recipe.yaml``, ``run.json`` and the finished
folds' metrics, marked incomplete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from ser_plugins.results.metrics import summary_metric_keys
from ser_plugins.results.run_dir import RunDir
from ser_plugins.results.summary import Summary, fold_results, per_corpus_summary


def finished_folds(run_dir: Path) -> Dict[str, Dict[str, Any]]:
    """``{fold name: metrics}`` of every finished fold, in the run's fold order (``run.json``) when known."""
    return RunDir(run_dir).finished_folds()


def summary_from_folds(run_dir: Path) -> Optional[Summary]:
    """A summary built from the finished folds on disk (None when no fold has finished or the run files are missing)."""
    run_dir = Path(run_dir)
    files = RunDir(run_dir)
    if not files.run_file.exists() or not files.is_run:
        return None
    results = files.finished_folds()
    if not results:
        return None
    run = files.read_run_info()
    recipe = files.read_recipe()
    task = run.get("task") or {"kind": "classification", "targets": []}
    targets = list(task.get("targets", []))
    values = [files.fold(n).read_target_values(targets) for n in results] if targets else None
    parts = fold_results(results, task["kind"] != "regression", targets, values)
    evaluation = run.get("evaluation", {})
    protocol = recipe.get("protocol", {}) or {}
    return Summary(
        name=recipe.get("name", run_dir.name),
        upstream=recipe["upstream"]["name"],
        finetune=recipe.get("finetune", {}).get("mode", "frozen"),
        layer=recipe.get("features", {}).get("layer", "last"),
        aggregator=recipe["aggregator"]["name"],
        classifier=recipe["classifier"]["name"],
        labels=run["labels"],
        folds=parts["folds"],
        mean_std=parts["mean_std"],
        pooled=parts["pooled"],
        complete=len(results) == len(run.get("folds", [])),
        skipped_utterances=run.get("skipped", {}),
        corpus_problems=run.get("corpus_problems", 0),
        protocol=evaluation.get("protocol", ""),
        dev=evaluation.get("dev", "speaker"),
        refit=bool(evaluation.get("refit", False)),
        normalize=evaluation.get("normalize"),
        transductive=bool(evaluation.get("transductive", False)),
        task=task["kind"],
        targets=targets,
        per_corpus=per_corpus_summary(results, summary_metric_keys(task["kind"] != "regression", targets)),
        cross_corpus={"train": protocol["train"], "test": protocol["test"]} if protocol.get("train") else {},
    )


def current_summary(run_dir: Path) -> Optional[Summary]:
    """``summary.json`` when it covers every finished fold, else the summary of the finished folds; None if none."""
    files = RunDir(run_dir)
    if files.summary.exists():
        saved = files.read_summary()
        if saved.complete or set(saved.folds) == set(files.finished_folds()):
            return saved
    built = summary_from_folds(files.path)
    if built is None and files.summary.exists():
        return files.read_summary()
    return built
