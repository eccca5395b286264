"""CCC, Pearson r and MAE against plain numpy / scipy; the CCC, MSE and L1 training losses."""

import numpy as np
import pytest
import torch
from scipy import stats

from ser_plugins.results.metrics import ccc, mae, mean_std, pearson, regression_keys, regression_metrics
from ser_plugins.training.losses import RegressionLoss, TaskLoss, ccc_per_target


def numpy_ccc(t, p):
    t, p = np.asarray(t, float), np.asarray(p, float)
    cov = np.cov(t, p, bias=True)[0, 1]
    return 2 * cov / (t.var() + p.var() + (t.mean() - p.mean()) ** 2)


@pytest.mark.parametrize("seed", range(8))
def test_metrics_equal_numpy_and_scipy_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    t = rng.uniform(1, 7, n)
    p = 0.6 * t + rng.normal(0, 1, n) + rng.normal(0, 0.5)
    assert ccc(t, p) == pytest.approx(numpy_ccc(t, p), rel=1e-12, abs=1e-12)
    assert pearson(t, p) == pytest.approx(stats.pearsonr(t, p)[0], rel=1e-10, abs=1e-12)
    assert mae(t, p) == pytest.approx(np.abs(t - p).mean(), rel=1e-12)


def test_constant_predictions_and_perfect_predictions():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    const = np.full(4, 2.5)
    assert ccc(t, const) == 0.0  # no covariance: CCC 0, not NaN
    assert pearson(t, const) == 0.0  # scipy gives nan with a warning; a metric table needs a number
    assert ccc(t, t) == pytest.approx(1.0)
    assert ccc(const, const) == 1.0  # both constant and equal: perfect
    assert ccc(t, t + 1.0) < 1.0  # a shift is penalised (Pearson is not)
    assert pearson(t, t + 1.0) == pytest.approx(1.0)
    assert ccc([], []) == 0.0 and mae([], []) == 0.0


def test_regression_metrics_per_target_and_averaged():
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 5, (50, 3))
    p = t + rng.normal(0, [0.2, 0.8, 1.5], (50, 3))
    m = regression_metrics(t, p, ["arousal", "valence", "dominance"])
    per = [numpy_ccc(t[:, k], p[:, k]) for k in range(3)]
    assert m["ccc_arousal"] == pytest.approx(per[0]) and m["ccc_dominance"] == pytest.approx(per[2])
    assert m["ccc"] == pytest.approx(np.mean(per))
    assert m["mae"] == pytest.approx(np.abs(t - p).mean(0).mean())
    assert m["n"] == 50 and m["target_names"] == ["arousal", "valence", "dominance"]
    assert set(regression_keys(["arousal", "valence", "dominance"])) <= set(m)
    folds = [regression_metrics(t[i::2], p[i::2], ["arousal", "valence", "dominance"]) for i in range(2)]
    spread = mean_std(folds, ["ccc", "ccc_valence"])
    values = [f["ccc"] for f in folds]
    assert spread["ccc"]["mean"] == pytest.approx(np.mean(values))
    assert spread["ccc"]["std"] == pytest.approx(np.std(values, ddof=1))


def test_ccc_loss_is_one_minus_the_metric_and_trains():
    rng = np.random.default_rng(1)
    t = torch.tensor(rng.uniform(1, 7, (64, 2)), dtype=torch.float32)
    p = t * 0.5 + torch.tensor(rng.normal(0, 1, (64, 2)), dtype=torch.float32)
    per = ccc_per_target(p, t)
    assert per[0].item() == pytest.approx(numpy_ccc(t[:, 0], p[:, 0]), abs=1e-5)
    loss = RegressionLoss("ccc")(p, t)
    assert loss.item() == pytest.approx(1 - per.mean().item(), abs=1e-6)
    weighted = RegressionLoss("ccc", [3.0, 1.0])(p, t)
    assert weighted.item() == pytest.approx(0.75 * (1 - per[0].item()) + 0.25 * (1 - per[1].item()), abs=1e-6)
    assert RegressionLoss("mse")(p, t).item() == pytest.approx(((p - t) ** 2).mean().item(), rel=1e-5)
    assert RegressionLoss("l1")(p, t).item() == pytest.approx((p - t).abs().mean().item(), rel=1e-5)
    # constant predictions: finite loss, and a gradient that moves them
    q = torch.full((64, 2), 4.0, requires_grad=True)
    value = RegressionLoss("ccc")(q + 0.0 * torch.randn(64, 2), t)
    assert torch.isfinite(value)
    w = (torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 0.01).requires_grad_()
    opt = torch.optim.Adam([w], lr=0.1)
    start = RegressionLoss("ccc")(w, t).item()
    for _ in range(200):
        opt.zero_grad()
        RegressionLoss("ccc")(w, t).backward()
        opt.step()
    assert start > 0.9 and RegressionLoss("ccc")(w, t).item() < 0.05
    with pytest.raises(ValueError, match="unknown regression loss"):
        RegressionLoss("huber")


def test_task_loss_weights_both_parts():
    logits = torch.randn(8, 4)
    classes = torch.randint(0, 4, (8,))
    values, true = torch.randn(8, 3), torch.randn(8, 3)
    ce, reg = torch.nn.CrossEntropyLoss(), RegressionLoss("mse")
    both = TaskLoss(4, ce, reg, 0.3, 2.0)(logits, values, classes, true)
    assert both.item() == pytest.approx(0.3 * ce(logits, classes).item() + 2.0 * reg(values, true).item(), rel=1e-5)
    assert TaskLoss(4, ce, None).weight is None
    weighted = torch.nn.CrossEntropyLoss(weight=torch.ones(4))
    assert TaskLoss(4, weighted, None).weight is not None and TaskLoss(4, weighted, reg).weight is None
