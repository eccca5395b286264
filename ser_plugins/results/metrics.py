"""The field's metrics: WA (accuracy), UA (mean per-class recall), macro-F1, confusion matrix."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np


def confusion_matrix(targets: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """``[C, C]`` counts: rows are true classes, columns predicted classes."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray) -> Dict[str, float]:
    """WA, UA and macro-F1 from a confusion matrix.

    UA averages the recalls of the classes present in the targets (a class with no test
    utterance has no recall); macro-F1 averages F1 over the same classes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    support = cm.sum(1)
    predicted = cm.sum(0)
    tp = np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "wa": float(tp.sum() / total) if total else 0.0,
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "n": int(total),
    }


def classification_metrics(targets: Sequence[int], predictions: Sequence[int], labels: Sequence[str]) -> Dict:
    """All metrics plus the confusion matrix and per-class recall, JSON-ready."""
    cm = confusion_matrix(targets, predictions, len(labels))
    out = metrics_from_confusion(cm)
    support = cm.sum(1)
    out["per_class_recall"] = {
        lab: (float(cm[i, i] / support[i]) if support[i] else None) for i, lab in enumerate(labels)
    }
    out["confusion"] = cm.tolist()
    out["labels"] = list(labels)
    return out


def mean_std(per_fold: List[Dict[str, float]], keys: Sequence[str] = ("wa", "ua", "macro_f1")) -> Dict[str, Dict[str, float]]:
    """Mean and (population) standard deviation over folds of each metric in ``keys``."""
    out = {}
    for k in keys:
        vals = np.array([m[k] for m in per_fold], dtype=np.float64)
        out[k] = {"mean": float(vals.mean()), "std": float(vals.std())} if len(vals) else {"mean": float("nan"), "std": float("nan")}
    return out
