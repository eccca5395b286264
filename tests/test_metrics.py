"""WA, UA, macro-F1 and the confusion matrix against hand-computed values."""
import numpy as np
import pytest

from ser_plugins.results.metrics import classification_metrics, mean_std


def test_metrics_match_hand_computation():
    labels = ["neu", "hap", "ang", "sad"]
    targets = [0, 0, 0, 0, 1, 1, 2, 3]
    preds = [0, 0, 0, 1, 1, 0, 2, 2]
    m = classification_metrics(targets, preds, labels)
    assert m["confusion"] == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert m["wa"] == pytest.approx(5 / 8)
    assert m["ua"] == pytest.approx((3 / 4 + 1 / 2 + 1 + 0) / 4)
    f1 = [2 * 0.75 * 0.75 / 1.5, 0.5, 2 * 0.5 * 1 / 1.5, 0.0]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["per_class_recall"]["sad"] == 0.0


def test_ua_ignores_classes_absent_from_targets():
    m = classification_metrics([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert m["ua"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["per_class_recall"]["c"] is None


def test_mean_std_over_folds():
    ms = mean_std([{"wa": 0.5, "ua": 0.4, "macro_f1": 0.3}, {"wa": 0.7, "ua": 0.6, "macro_f1": 0.5}])
    # sample standard deviation (ddof=1): sqrt(((0.4-0.5)^2 + (0.6-0.5)^2) / 1)
    assert ms["ua"]["mean"] == pytest.approx(0.5) and ms["ua"]["std"] == pytest.approx(0.02 ** 0.5)
    assert mean_std([{"wa": 0.5, "ua": 0.4, "macro_f1": 0.3}])["ua"] == {"mean": 0.4, "std": None}  # one fold
