"""Training faults: a NaN or inf loss, produced for real by a classifier plugin of an installed
(fake) distribution, is detected with a clear message: skipped and counted (``nan_policy: skip``) or
the fold stopped (``stop``); never silently written as a result. See docs/reliability.md.
"""
from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Dict

import pytest

from ser_plugins.errors import UserError
import yaml

from ser_plugins import cli
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import run_recipe
from ser_plugins.training.trainer import FoldTrainer, TrainingDiverged

POISON = '''
"""A linear classifier that returns non-finite logits on chosen batches (test plugin)."""
import torch
from torch import nn


class PoisonClassifier(nn.Module):
    """``value``: nan (all logits NaN) or inf (-inf for every class but the first: the loss of any
    other target is +inf). Training batches smaller than ``below`` are poisoned (with batch size 16
    that is the last, partial batch of every epoch: deterministic, and the same after a resume);
    with ``in_eval`` every evaluation batch is poisoned."""

    def __init__(self, input_dim, num_classes, value="nan", below=16, in_eval=False):
        super().__init__()
        self.linear = nn.Linear(input_dim, num_classes)
        self.value, self.below, self.in_eval = value, below, in_eval

    def forward(self, x):
        out = self.linear(x)
        if (self.training and x.shape[0] < self.below) or (not self.training and self.in_eval):
            if self.value == "nan":
                return out * float("nan")
            mask = torch.full_like(out, float("-inf"))
            mask[:, 0] = 0.0
            return out + mask
        return out
'''


@pytest.fixture(scope="module")
def poison_site(tmp_path_factory):
    """Install a distribution ``ser-poison`` with the classifier entry point ``poison``."""
    site = tmp_path_factory.mktemp("site_poison")
    (site / "ser_poison_mod.py").write_text(textwrap.dedent(POISON))
    info = site / "ser_poison-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ser-poison\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ser_plugins.classifiers]\npoison = ser_poison_mod:PoisonClassifier\n")
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("ser_poison_mod", None)


def recipe_for(root: Path, classifier: Dict, **sections) -> Dict:
    r = {
        "name": "nan", "seed": 0,
        "corpus": {"name": "iemocap", "root": str(root)},
        "upstream": {"name": "fbank", "n_mels": 40},
        "aggregator": "mean",
        "classifier": {"name": "poison", **classifier},
        "training": {"epochs": 3, "batch_size": 16, "patience": None},
        "protocol": {"dev": "speaker"},  # the poisoned tail batch of each epoch comes from this split
        "output": {"tensorboard": False},
    }
    for key, value in sections.items():
        r[key] = {**r.get(key, {}), **value}
    return r


def finite_numbers(obj) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite_numbers(v) for v in obj)
    return True


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_skip_policy_counts_skipped_steps_and_writes_finite_results(poison_site, tiny_demo_root, tmp_path, caplog,
                                                                     value):
    out = tmp_path / "run"
    recipe = load_recipe(recipe_for(tiny_demo_root, {"value": value}))
    assert recipe.training.nan_policy == "skip"  # the default
    summary = run_recipe(recipe, str(out), folds=["1"], progress=False)
    metrics = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    warned = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert metrics["nan_steps"] >= 1 and len(warned) == metrics["nan_steps"]
    if value == "nan":
        assert metrics["nan_steps"] == 3  # one poisoned (partial) batch per epoch
    assert "step skipped" in warned[0] and "fold Session1" in warned[0] and "first: Ses" in warned[0]
    assert all(math.isfinite(h["train_loss"]) for h in metrics["history"]) and len(metrics["history"]) == 3
    assert finite_numbers(metrics) and finite_numbers(summary)
    for name in ("metrics.json",):
        assert "NaN" not in (out / "folds" / "Session1" / name).read_text()
    assert "NaN" not in (out / "summary.json").read_text() and "Infinity" not in (out / "summary.json").read_text()


def test_stop_policy_stops_the_fold_with_a_clear_error_and_writes_no_result(poison_site, tiny_demo_root, tmp_path,
                                                                            capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_for(tiny_demo_root, {"value": "nan"}, training={"nan_policy": "stop"})))
    out = tmp_path / "run"
    rc = cli.main(["run", str(path), "--out", str(out), "--folds", "1", "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: fold Session1: non-finite loss (nan)") and "nan_policy is 'stop'" in err
    assert "Traceback" not in err
    assert not (out / "folds" / "Session1" / "metrics.json").exists()
    assert not (out / "summary.json").exists()


def test_too_many_skipped_steps_stop_the_fold(poison_site, tiny_demo_root, tmp_path):
    recipe = load_recipe(recipe_for(tiny_demo_root, {"value": "nan"},
                                    training={"max_nan_steps": 1}))
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"more than training\.max_nan_steps=1 skipped"):
        run_recipe(recipe, str(out), folds=["1"], progress=False)
    assert not (out / "folds" / "Session1" / "metrics.json").exists()


def test_no_finite_loss_in_a_whole_epoch_stops_the_fold(poison_site, tiny_demo_root, tmp_path):
    recipe = load_recipe(recipe_for(tiny_demo_root, {"value": "nan", "below": 10_000}))  # every batch
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite loss|no finite loss"):
        run_recipe(recipe, str(out), folds=["1"], progress=False)
    assert not (out / "folds" / "Session1" / "metrics.json").exists()


def test_non_finite_outputs_at_evaluation_are_never_written_as_a_result(poison_site, tiny_demo_root, tmp_path):
    recipe = load_recipe(recipe_for(tiny_demo_root, {"value": "nan", "below": 0, "in_eval": True},
                                    training={"epochs": 1}))
    out = tmp_path / "run"
    with pytest.raises(Exception, match="non-finite") as info:
        run_recipe(recipe, str(out), folds=["1"], progress=False)
    assert isinstance(info.value, UserError)
    assert not (out / "folds" / "Session1" / "metrics.json").exists()


class _Crash(BaseException):
    """Stands for the process dying: nothing in the code under test catches it."""


@pytest.fixture(scope="module")
def crash_and_resume(poison_site, tiny_demo_root, tmp_path_factory):
    """An uninterrupted 4-epoch fold with one NaN step per epoch, and the same fold crashed right
    after its epoch-2 checkpoint and resumed."""
    base = tmp_path_factory.mktemp("nan_resume")
    recipe = load_recipe(recipe_for(tiny_demo_root, {"value": "nan"}, training={"epochs": 4}))
    run_recipe(recipe, str(base / "ref"), folds=["1"], progress=False)
    ref = json.loads((base / "ref" / "folds" / "Session1" / "metrics.json").read_text())

    real = FoldTrainer._save_last

    def save_then_die(self, optimizer, scheduler, progress, *rest):
        real(self, optimizer, scheduler, progress, *rest)
        if progress["epoch"] == 2:
            raise _Crash()

    out = base / "crashed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FoldTrainer, "_save_last", save_then_die)
        with pytest.raises(_Crash):
            run_recipe(recipe, str(out), folds=["1"], progress=False)
    assert (out / "folds" / "Session1" / "last_state.pt").exists()
    assert not (out / "folds" / "Session1" / "metrics.json").exists()
    run_recipe(recipe, str(out), folds=["1"], resume=True, progress=False)
    resumed = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    return ref, resumed


def test_a_fold_resumed_after_a_crash_matches_the_uninterrupted_fold(crash_and_resume):
    ref, resumed = crash_and_resume
    skip = {"seconds", "nan_steps"}
    assert {k: v for k, v in resumed.items() if k not in skip} == {k: v for k, v in ref.items() if k not in skip}


def test_skipped_step_count_survives_a_resume(crash_and_resume):
    ref, resumed = crash_and_resume
    assert ref["nan_steps"] == 4
    assert resumed["nan_steps"] == ref["nan_steps"]
