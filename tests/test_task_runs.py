"""Dimensional emotion through the runner: the recipe's task, targets from the corpus, losses, metrics, reports."""
from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import recipe_for
from ser_plugins.data.prepare import MISSING_TARGET, PrepareError, plan, prepare
from ser_plugins.recipe import RecipeError, load_recipe
from ser_plugins.results.metrics import regression_metrics
from ser_plugins.results.report import collect, to_csv, to_markdown
from ser_plugins.task import TaskSpec
from ser_plugins.training.runner import Runner

TARGETS = ["arousal", "valence", "dominance"]


def _recipe(root, **sections):
    base = recipe_for(root, name="task", upstream={"n_mels": 24}, classifier={"hidden_sizes": [16]},
                      training={"epochs": None, "max_steps": 40, "batch_size": 16, "lr": 0.01})
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_recipe(base)


# --- the recipe -------------------------------------------------------------------------------------
def test_task_defaults_to_classification_and_accepts_a_word(tiny_demo_root):
    assert _recipe(tiny_demo_root).task.type == "classification"
    r = _recipe(tiny_demo_root, task="regression")
    assert r.task.type == "regression" and r.task.targets == TARGETS and r.task.loss == "ccc"
    r = load_recipe(recipe_for(tiny_demo_root), ["task=multitask", "task.targets=[arousal]", "task.loss=mse"])
    assert r.task.type == "multitask" and r.task.targets == ["arousal"] and r.task.loss == "mse"
    assert "task" in r.to_dict() and load_recipe(r.to_dict()).task == r.task  # the saved recipe round-trips


@pytest.mark.parametrize("override, message", [
    (["task.targets=[arousal]"], "task.targets needs task.type: regression or multitask"),
    (["task=regression", "training.select=dev_ua"], "reads class predictions"),
    (["task=regression", "training.select=dev_macro_f1"], "reads class predictions"),
    (["training.select=dev_ccc"], "dev_ccc needs continuous targets"),
    (["task=regression", "task.target_weights=[1, 2]"], "2 weights for 3 targets"),
    (["task=regression", "task.targets=[arousal, arousal]"], "names a target twice"),
    (["task=regression", "training.class_weights=true"], "class_weights needs classes"),
    (["task=regression", "task.loss=huber"], "task.loss"),
    (["task=ordinal"], "task.type"),
])
def test_bad_task_settings_are_one_clear_error(tiny_demo_root, override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe_for(tiny_demo_root), override)


def test_margin_classifier_refused_for_regression(tiny_demo_root):
    r = _recipe(tiny_demo_root, task="regression", classifier="cosine")
    with pytest.raises(Exception, match="needs classes"):
        plan(r)


# --- targets from the corpus --------------------------------------------------------------------------
def test_demo_corpus_gives_targets_in_its_scale(tiny_demo_root):
    prep = prepare(_recipe(tiny_demo_root, task="regression"), "cpu", progress=False)
    assert prep.task == TaskSpec("regression", (), tuple(TARGETS)) and prep.labels == []
    rows = np.array(list(prep.targets.values()))
    assert rows.shape == (len(prep.utterances), 3) and rows.min() >= 1 and rows.max() <= 5
    u = next(iter(prep.utterances.values()))
    assert tuple(prep.targets[u.id]) == tuple(u.attributes[t] for t in TARGETS)
    multi = prepare(_recipe(tiny_demo_root, task="multitask"), "cpu", progress=False)
    row = multi.targets[u.id]
    assert multi.labels[int(row[0])] == u.label and tuple(row[1:]) == tuple(u.attributes[t] for t in TARGETS)


def test_a_target_the_corpus_lacks_is_one_error_naming_it(tiny_demo_root):
    with pytest.raises(PrepareError, match=r"gives no 'happiness' target \(it gives: arousal, dominance, valence\)"):
        plan(_recipe(tiny_demo_root, task={"type": "regression", "targets": ["happiness"]}))


@pytest.fixture
def edited_corpus(tiny_demo_root, tmp_path):
    """A copy of the tiny demo corpus (annotations copied, audio linked) whose first session's brackets can change."""
    root = tmp_path / "IEMOCAP_full_release"
    for session in sorted(tiny_demo_root.glob("Session*")):
        (root / session.name / "dialog").mkdir(parents=True)
        shutil.copytree(session / "dialog" / "EmoEvaluation", root / session.name / "dialog" / "EmoEvaluation")
        (root / session.name / "sentences").mkdir()
        (root / session.name / "sentences" / "wav").symlink_to(session / "sentences" / "wav")
    return root


def _edit_first_brackets(root: Path, replace: str, count: int) -> list:
    path = sorted((root / "Session1" / "dialog" / "EmoEvaluation").glob("Ses*.txt"))[0]
    lines, edited = path.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("[") and "\t[" in line and line.split("\t")[2] in ("neu", "ang", "sad") and len(edited) < count:
            lines[i] = line.rsplit("\t", 1)[0] + replace
            edited.append(line.split("\t")[1])
    path.write_text("\n".join(lines) + "\n")
    return edited


def test_utterances_without_the_targets_are_counted_and_skipped(edited_corpus):
    gone = _edit_first_brackets(edited_corpus, "", 2)  # the bracket removed: no attributes
    prep = prepare(_recipe(edited_corpus, task="regression"), "cpu", progress=False)
    assert all(u not in prep.utterances and prep.skipped[u] == MISSING_TARGET for u in gone)
    cls = prepare(_recipe(edited_corpus), "cpu", progress=False)  # classification does not need them
    assert all(u in cls.utterances for u in gone)
    assert not any(reason == MISSING_TARGET for reason in cls.skipped.values())
    with pytest.raises(PrepareError, match="data.strict is on.*missing_target: 2"):
        plan(_recipe(edited_corpus, task="regression", data={"strict": True}))


def test_values_outside_the_scale_are_warned_about_with_counts(edited_corpus):
    edited = _edit_first_brackets(edited_corpus, "\t[6.5000, 3.0000, 0.5000]", 3)
    prep = prepare(_recipe(edited_corpus, task="regression"), "cpu", progress=False)
    n = len([u for u in edited if u in prep.utterances])
    assert n >= 2
    text = "\n".join(prep.warnings)
    assert f"target 'valence': {n} utterance(s) outside the corpus's scale 1-5" in text
    assert f"target 'dominance': {n} utterance(s) outside" in text and "target 'arousal'" not in text
    assert prep.targets[edited[0]] == (3.0, 6.5, 0.5)  # kept as the corpus gives them (arousal, valence, dominance)


# --- runs ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def regression_run(tiny_demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("reg") / "run"
    r = _recipe(tiny_demo_root, task={"type": "regression", "standardize": True, "loss": "mse"},
                protocol={"dev": "speaker"}, training={"select": "dev_ccc"})
    summary = Runner(r, out, progress=False).run()
    return out, summary


def test_regression_run_writes_ccc_per_fold_pooled_and_per_target(regression_run):
    out, summary = regression_run
    assert summary.task == "regression" and summary.targets == TARGETS
    assert set(summary.mean_std) >= {"ccc", "ccc_arousal", "pearson", "mae_dominance"} and "ua" not in summary.mean_std
    fold = sorted((out / "folds").iterdir())[0]
    metrics = json.loads((fold / "metrics.json").read_text())
    assert {"ccc", "ccc_valence", "pearson_valence", "mae", "target_names", "best_dev_ccc"} <= set(metrics)
    assert "wa" not in metrics and not (fold / "confusion.png").exists() and (fold / "targets.png").exists()
    with open(fold / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["id", "speaker"] + [f"{k}_{t}" for t in TARGETS for k in ("true", "pred")]
    true = np.array([[float(r[f"true_{t}"]) for t in TARGETS] for r in rows])
    pred = np.array([[float(r[f"pred_{t}"]) for t in TARGETS] for r in rows])
    assert regression_metrics(true, pred, TARGETS)["ccc"] == pytest.approx(metrics["ccc"], abs=1e-12)
    parts = [[], []]
    for f in sorted((out / "folds").iterdir()):
        with open(f / "predictions.csv") as fh:
            for r in csv.DictReader(fh):
                parts[0].append([float(r[f"true_{t}"]) for t in TARGETS])
                parts[1].append([float(r[f"pred_{t}"]) for t in TARGETS])
    assert summary.pooled["ccc"] == pytest.approx(regression_metrics(*parts, TARGETS)["ccc"], abs=1e-12)
    assert pred.mean() == pytest.approx(true.mean(), abs=1.0)  # standardised targets mapped back to the scale
    history = metrics["history"]
    assert "dev_ccc" in history[0] and "dev_ua" not in history[0]
    md = (out / "results.md").read_text()
    assert "| fold | CCC | CCC arousal | CCC valence | CCC dominance | n |" in md and "Pooled over the test folds" in md
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == {"kind": "regression", "labels": [], "targets": TARGETS}


def test_standardised_head_keeps_its_statistics_in_the_checkpoint(regression_run):
    from safetensors.torch import load_file

    out, _ = regression_run
    state = load_file(str(sorted((out / "folds").glob("*/best.safetensors"))[0]))
    assert state["head.target_scale.mean"].shape == (3,) and (state["head.target_scale.std"] > 0).all()
    assert 1.0 < float(state["head.target_scale.mean"][0]) < 5.0


def test_regression_learns_the_demo_targets(regression_run):
    _, summary = regression_run
    assert summary.pooled["ccc"] > 0.3  # 40 steps on 12 utterances a speaker: far above chance (0)


def test_multitask_run_reports_classes_and_targets_and_report_mixes_runs(tiny_demo_root, tmp_path, fast_recipe):
    r = _recipe(tiny_demo_root, task={"type": "multitask", "regression_weight": 0.5})
    multi = Runner(r, tmp_path / "multi", progress=False).run()
    assert {"wa", "ua", "macro_f1", "ccc", "ccc_arousal"} <= set(multi.mean_std)
    assert {"confusion", "ccc"} <= set(multi.pooled)
    fold = sorted((tmp_path / "multi" / "folds").iterdir())[0]
    with open(fold / "predictions.csv") as fh:
        head = next(csv.reader(fh))
    assert head[:4] == ["id", "speaker", "label", "prediction"] and head[-2:] == ["true_dominance", "pred_dominance"]
    assert (fold / "confusion.png").exists() and (fold / "targets.png").exists()
    cls = Runner(load_recipe(fast_recipe), tmp_path / "cls", progress=False).run()
    reg = Runner(_recipe(tiny_demo_root, task="regression"), tmp_path / "reg", progress=False).run()
    rows = collect([tmp_path / "cls", tmp_path / "reg", tmp_path / "multi"])
    md = to_markdown(rows)
    header = md.splitlines()[0]
    assert "| WA | UA | F1 | CCC | CCC arousal | CCC valence | CCC dominance |" in header
    cells = {line.split(" | ")[0].strip("| †"): line for line in md.splitlines()[2:] if line.startswith("|")}
    assert cells["cls"].count("–") == 4 and cells["reg"].count("–") == 3 and "–" not in cells["multi"]
    assert f"{reg.mean_std['ccc']['mean']:.4f}" in cells["reg"]
    text = to_csv(rows)
    assert "ccc_mean" in text.splitlines()[0] and "task" in text.splitlines()[0]
    only_cls = to_markdown(collect([tmp_path / "cls"]))
    assert "CCC" not in only_cls and only_cls.splitlines()[0].endswith("| WA | UA | F1 |")  # unchanged when no targets
    assert cls.task == "classification"


def test_select_dev_macro_f1_keeps_the_best_f1_epoch(tiny_demo_root, tmp_path):
    r = _recipe(tiny_demo_root, protocol={"dev": "speaker"}, training={"select": "dev_macro_f1", "max_steps": 30})
    Runner(r, tmp_path / "f1", progress=False).run()
    metrics = json.loads(sorted((tmp_path / "f1" / "folds").glob("*/metrics.json"))[0].read_text())
    f1 = [h["dev_macro_f1"] for h in metrics["history"]]
    assert metrics["best_epoch"] == 1 + int(np.argmax(f1))


def test_class_weights_follow_the_label_set(tiny_demo_root):
    from ser_plugins.training.trainer import class_weights

    six = _recipe(tiny_demo_root, corpus={"labels": ["neu", "hap", "ang", "sad", "exc", "fru"], "merge": {}},
                  training={"class_weights": True})
    prep = prepare(six, "cpu", progress=False)
    assert prep.labels == ["neu", "hap", "ang", "sad", "exc", "fru"]
    w = class_weights(list(prep.targets.values()), len(prep.labels))
    counts = np.bincount(list(prep.targets.values()), minlength=6)
    assert w.shape == (6,) and torch.all((w > 0) == torch.tensor(counts > 0))
    assert float(w[int(np.argmax(counts))]) == float(w.min())  # the most frequent class weighs least
    assert copy.deepcopy(six).task.type == "classification"


# --- MSP-Podcast's partitions (the generated miniature) ---------------------------------------------------
@pytest.fixture(scope="module")
def msp_root(tmp_path_factory):
    from ser_plugins.plugins import registry

    root = tmp_path_factory.mktemp("msp") / "MSP-Podcast"
    registry.load("corpus", "msp_podcast").generate(str(root), seed=0)
    return root


def _msp_recipe(root, **sections):
    base = {
        "name": "msp", "corpus": {"name": "msp_podcast", "root": str(root)},
        "protocol": {"name": "split", "dev": "split"},
        "upstream": {"name": "fbank", "n_mels": 24}, "aggregator": "stats",
        "classifier": {"name": "mlp", "hidden_sizes": [16], "norm": "layer"},
        "training": {"max_steps": 40, "batch_size": 16, "lr": 0.01}, "output": {"tensorboard": False},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_recipe(base)


def test_msp_podcast_partitions_as_one_fold_for_both_tracks(msp_root, tmp_path):
    dim = _msp_recipe(msp_root, task={"type": "regression", "standardize": True}, training={"select": "dev_ccc"})
    summary = Runner(dim, tmp_path / "dim", progress=False).run()
    assert list(summary.folds) == ["split"] and summary.targets == TARGETS
    run = json.loads((tmp_path / "dim" / "run.json").read_text())
    sizes = run["folds"][0]
    assert sizes["dev"] > 0 and sizes["test"] > 0  # Development selects, Test1 tests
    values = np.array([float(r["true_arousal"]) for r in
                       csv.DictReader(open(tmp_path / "dim" / "folds" / "split" / "predictions.csv"))])
    assert values.min() >= 1 and values.max() <= 7  # MSP-Podcast's 1-7 scale
    cat = _msp_recipe(msp_root, training={"select": "dev_macro_f1", "class_weights": True})
    cls = Runner(cat, tmp_path / "cat", progress=False).run()
    assert cls.labels == ["ang", "hap", "sad", "fea", "sur", "con", "dis", "neu"]
    assert len(cls.pooled["confusion"]) == 8 and 0.0 <= cls.mean_std["macro_f1"]["mean"] <= 1.0
    # O (other) and X (no agreement) rows train the regression, not the classes
    assert run["skipped"].get("no_class_label", 0) == 0
    assert json.loads((tmp_path / "cat" / "run.json").read_text())["skipped"].get("no_class_label", 0) > 0
