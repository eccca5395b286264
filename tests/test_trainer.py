"""Training mechanics: schedule length, accumulation, precision on CPU, BatchNorm heads, resume state."""
from __future__ import annotations

import json

import pytest
import torch

from ser_plugins.data.sources import BatchPlan, FeatureSource
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import run_recipe
from ser_plugins.training.trainer import FoldTrainer, autocast, build_scheduler


def source(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {f"u{i}": [torch.randn(int(torch.randint(5, 60, (1,), generator=g)), 3, generator=g)] for i in range(n)}
    return FeatureSource(feats, {f"u{i}": i % 4 for i in range(n)}, frames_per_second=100)


def test_schedule_length_counts_the_real_dynamic_batches():
    src = source()
    ids = list(src.features)
    for budget in (None, 0.5, 1.0):
        plan = BatchPlan(8, max_batch_seconds=budget, shuffle=True, seed=3)
        planned = src.count_batches(ids, plan)
        actual = sum(1 for _ in src.batches(ids, plan))
        assert planned == actual
    assert src.count_batches(ids, BatchPlan(8, 0.5, shuffle=True)) > src.count_batches(ids, BatchPlan(8, shuffle=True))


def test_linear_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, "linear", warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0]) and lrs[-1] == pytest.approx(0.25)


def test_mixed_precision_is_a_no_op_on_cpu():
    layer = torch.nn.Linear(4, 4)
    with autocast("cpu", "bf16"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32


@pytest.fixture
def run_recipe_dict(fast_recipe):
    def make(**training):
        r = dict(fast_recipe)
        r["training"] = {**r["training"], **training}
        return r
    return make


def test_batchnorm_head_trains_with_singleton_batches(run_recipe_dict, tmp_path):
    recipe = run_recipe_dict(max_batch_seconds=6.0, epochs=1)
    recipe["classifier"] = {"name": "mlp", "hidden_sizes": [16], "norm": "batch"}
    summary = run_recipe(load_recipe(recipe), str(tmp_path / "bn"), folds=["1"], progress=False)
    assert 0 <= summary["folds"]["Session1"]["ua"] <= 1


def test_resume_keeps_the_best_weights_when_checkpoints_are_not_saved(run_recipe_dict, tmp_path, monkeypatch):
    recipe = run_recipe_dict(epochs=4, lr=0.01)
    recipe["output"] = {"tensorboard": False, "save_checkpoints": False}
    recipe = load_recipe(recipe)
    ref = run_recipe(recipe, str(tmp_path / "ref"), folds=["1"], progress=False)

    class Crash(BaseException):
        pass

    real = FoldTrainer._save_last

    def save_then_die(self, optimizer, scheduler, progress, best):
        real(self, optimizer, scheduler, progress, best)
        if progress["epoch"] == 3:
            raise Crash()

    with monkeypatch.context() as mp:
        mp.setattr(FoldTrainer, "_save_last", save_then_die)
        with pytest.raises(Crash):
            run_recipe(recipe, str(tmp_path / "crash"), folds=["1"], progress=False)
    assert not (tmp_path / "crash" / "folds" / "Session1" / "best.safetensors").exists()
    resumed = run_recipe(recipe, str(tmp_path / "crash"), folds=["1"], resume=True, progress=False)
    assert resumed["folds"] == ref["folds"]
    a = (tmp_path / "ref" / "folds" / "Session1" / "predictions.csv").read_text()
    b = (tmp_path / "crash" / "folds" / "Session1" / "predictions.csv").read_text()
    assert a == b
    m = json.loads((tmp_path / "crash" / "folds" / "Session1" / "metrics.json").read_text())
    assert len(m["history"]) == 4
