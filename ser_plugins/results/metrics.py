"""The field's metrics: WA (accuracy), UA (mean per-class recall), macro-F1, confusion matrix."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

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
    averages over the classes present in the targets or the predictions.
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
    return {
        "wa": float(tp.sum() / total) if total else 0.0,
        "ua": float(recall[in_targets].mean()) if in_targets.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
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
