"""The field's metrics: WA (accuracy), UA (mean per-class recall), macro-F1, confusion matrix."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``[C, C]`` counts: rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray) -> Dict[str, float]:
    """WA, UA and macro-F1 from a confusion matrix, exactly as scikit-learn defines them.

    WA is ``accuracy_score``; UA is ``balanced_accuracy_score`` (the mean recall of the classes
    present in the targets); macro-F1 is ``f1_score(average="macro", zero_division=0)``, which
    averages over the classes present in the targets or the predictions; micro-F1 (EmoBox reports
    it) is ``f1_score(average="micro")``, which equals WA for single-label classification.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm)
    in_targets = support > 0
    seen = in_targets | (predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    accuracy = float(tp.sum() / total) if total else 0.0
    return {
        "wa": accuracy,
        "ua": float(recall[in_targets].mean()) if in_targets.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        # f1_score(average="micro"): one label per utterance, so micro precision = micro recall = accuracy
        "micro_f1": accuracy,
        "n": int(total),
    }


def classification_metrics(targets: Sequence[int], predictions: Sequence[int], labels: Sequence[str]) -> Dict[str, Any]:
    """All metrics plus the confusion matrix and per-class recall, JSON-ready."""
    cm = confusion_matrix(targets, predictions, len(labels))
    out: Dict[str, Any] = metrics_from_confusion(cm)
    support = cm.sum(1)
    out["per_class_recall"] = {
        lab: (float(cm[i, i] / support[i]) if support[i] else None) for i, lab in enumerate(labels)
    }
    out["confusion"] = cm.tolist()
    out["labels"] = list(labels)
    return out


#: How ``mean_std`` measures the spread over folds (written into every summary).
FOLD_SPREAD = "sample standard deviation over folds (ddof=1, as papers report); null with one fold"


def mean_std(
    per_fold: List[Dict[str, float]], keys: Sequence[str] = ("wa", "ua", "macro_f1")
) -> Dict[str, Dict[str, Optional[float]]]:
    """Mean and sample standard deviation (ddof=1) over folds of each metric; std is None for one fold."""
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for k in keys:
        vals = np.array([m[k] for m in per_fold], dtype=np.float64)
        if not len(vals):
            out[k] = {"mean": None, "std": None}
            continue
        out[k] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else None}
    return out


# --- continuous targets (dimensional emotion) ----------------------------------------------------
def ccc(targets: Any, predictions: Any) -> float:
    """Lin's concordance correlation coefficient, with population (ddof=0) moments as the field computes it.

    ``2 cov(t, p) / (var t + var p + (mean t - mean p)^2)``. Where the denominator is 0 (both
    sides constant and equal) the predictions equal the targets: 1.0. Empty input: 0.0.
    """
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    if not len(t):
        return 0.0
    mt, mp = t.mean(), p.mean()
    cov = ((t - mt) * (p - mp)).mean()
    denom = t.var() + p.var() + (mt - mp) ** 2
    if denom == 0:
        return 1.0
    return float(2 * cov / denom)


def pearson(targets: Any, predictions: Any) -> float:
    """Pearson's r; 0.0 where it is undefined (either side constant, or empty), where scipy gives nan."""
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    if len(t) < 2:
        return 0.0
    dt, dp = t - t.mean(), p - p.mean()
    denom = np.sqrt((dt * dt).sum() * (dp * dp).sum())
    if denom == 0:
        return 0.0
    return float(np.clip((dt * dp).sum() / denom, -1.0, 1.0))


def mae(targets: Any, predictions: Any) -> float:
    """Mean absolute error (0.0 for empty input)."""
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    return float(np.abs(t - p).mean()) if len(t) else 0.0


#: the regression metrics, each reported per target (``ccc_arousal``) and averaged over targets (``ccc``)
REGRESSION_METRICS = ("ccc", "pearson", "mae")
_REGRESSION_FUNCTIONS = {"ccc": ccc, "pearson": pearson, "mae": mae}


def regression_keys(names: Sequence[str]) -> List[str]:
    """Every regression metric key of a run with targets ``names``: averages first, then per target."""
    return list(REGRESSION_METRICS) + [f"{m}_{n}" for m in REGRESSION_METRICS for n in names]


def regression_metrics(targets: Any, predictions: Any, names: Sequence[str]) -> Dict[str, Any]:
    """CCC, Pearson r and MAE of ``[N, K]`` predictions per target (``ccc_<name>``) and averaged (``ccc``), JSON-ready.

    The averages are unweighted means over the ``K`` targets, as the Odyssey 2024 challenge reports them.
    """
    t = np.asarray(targets, dtype=np.float64).reshape(-1, len(names))
    p = np.asarray(predictions, dtype=np.float64).reshape(-1, len(names))
    out: Dict[str, Any] = {}
    for metric, fn in _REGRESSION_FUNCTIONS.items():
        per = [fn(t[:, k], p[:, k]) for k in range(len(names))]
        out[metric] = float(np.mean(per)) if per else 0.0
        out.update({f"{metric}_{n}": v for n, v in zip(names, per)})
    out["n"] = int(t.shape[0])
    out["target_names"] = list(names)
    return out


CLASSIFICATION_FOLD_KEYS = ("wa", "ua", "macro_f1", "micro_f1", "n", "per_class_recall", "confusion", "labels")
CLASSIFICATION_SUMMARY_KEYS = ("wa", "ua", "macro_f1", "micro_f1")


def fold_metric_keys(has_classes: bool, targets: Sequence[str]) -> List[str]:
    """The test results a fold's ``metrics.json`` keeps for a task (classes and/or ``targets``)."""
    keys = list(CLASSIFICATION_FOLD_KEYS) if has_classes else ["n"]
    if targets:
        keys += regression_keys(targets) + ["target_names"]
    return keys


def summary_metric_keys(has_classes: bool, targets: Sequence[str]) -> List[str]:
    """The metrics averaged over folds (mean ± std) for a task: WA, UA, macro-F1 and/or CCC, r, MAE."""
    keys = list(CLASSIFICATION_SUMMARY_KEYS) if has_classes else []
    return keys + (regression_keys(targets) if targets else [])


def metrics_by_group(
    result: Mapping[str, Any], groups: Sequence[str], labels: Sequence[str], targets: Sequence[str]
) -> Dict[str, Dict[str, Any]]:
    """An evaluation's metrics per group of its utterances (``groups[i]`` for the ``i``-th; e.g. per corpus).

    ``result`` holds ``targets``/``predictions`` (class indices) when ``labels`` is not empty and
    ``true_values``/``values`` (``[N, K]``) when ``targets`` is not: each group gets WA, UA and
    macro-F1 and/or CCC, Pearson r and MAE, and its ``n``.
    """
    out: Dict[str, Dict[str, Any]] = {}
    for group in sorted(set(groups)):
        rows = [i for i, g in enumerate(groups) if g == group]
        part: Dict[str, Any] = {"n": len(rows)}
        if labels:
            cm = confusion_matrix(
                [result["targets"][i] for i in rows], [result["predictions"][i] for i in rows], len(labels)
            )
            part.update({k: v for k, v in metrics_from_confusion(cm).items() if k != "n"})
        if targets:
            reg = regression_metrics(
                np.asarray(result["true_values"])[rows], np.asarray(result["values"])[rows], targets
            )
            part.update({k: v for k, v in reg.items() if k not in ("n", "target_names")})
        out[group] = part
    return out
