"""The run directory has one owner (``ser_plugins/results/run_dir.py``): its names, readers and writers.

A source scan checks that no other module under ``ser_plugins/`` spells out a run-directory file name
(docstrings and comments may name them); the rest are unit tests of the readers and writers.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import List

import numpy as np
import pytest
import yaml

from ser_plugins.recipe import dump_recipe, load_recipe, recipe_differences, resume_differences
from ser_plugins.results import run_dir as rd
from ser_plugins.results.run_dir import FoldDir, RunDir, predictions_csv, run_info
from ser_plugins.results.summary import Summary

PACKAGE = Path(__file__).resolve().parents[1] / "ser_plugins"
OWNER = PACKAGE / "results" / "run_dir.py"
LOCK_OWNER = PACKAGE / "runtime" / "locking.py"  # names the lock files; run_dir.LOCK_FILE is its LOCK_NAME


# --- the source scan ------------------------------------------------------------------------------
def literals(source: str, lock_allowed: bool = False) -> List[str]:
    """``line: text`` of each string literal in ``source`` that names a run-directory file.

    Docstrings (and other bare string statements) are documentation and are not counted; f-string
    parts are. ``"folds"`` and ``"tensorboard"`` count only as an operand of ``/`` (a path).
    """
    tree = ast.parse(source)
    docs = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
            names = [n for n in rd.FILE_NAMES if n in text] + [f"{rd.FOLDS_DIR}/"] * (f"{rd.FOLDS_DIR}/" in text)
            if not lock_allowed and rd.LOCK_FILE in text.split("/"):
                names.append(rd.LOCK_FILE)
            if names:
                found.append(f"{node.lineno}: {text!r}")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if isinstance(side, ast.Constant) and side.value in (rd.FOLDS_DIR, rd.TENSORBOARD_DIR):
                    found.append(f"{side.lineno}: {side.value!r} as a path part")
    return found


def test_the_scan_finds_file_names_in_code_but_not_in_docs():
    source = '''
"""Writes recipe.yaml and folds/<name>/metrics.json."""
def f(run_dir, name, path):
    """Reads ``run.json``."""
    # best.safetensors in a comment
    done = run_dir / "folds" / name / "metrics.json"
    logs = run_dir / "tensorboard" / name
    raise ValueError(f"{run_dir} is not a run directory (no recipe.yaml)")
    pattern = "*/best.safetensors"
    lock = path / ".lock"
    key = {"folds": [], "tensorboard": True, "recipe": "x"}
'''
    found = literals(source)
    assert len(found) == 6, found
    assert not any("Reads" in f or "Writes" in f or "comment" in f for f in found)
    assert literals('x = {"folds": 1}\ny = "model.json"\nz = ".lock.holder"') == []


def test_no_module_but_run_dir_holds_a_run_directory_file_name():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == OWNER:
            continue
        found = literals(path.read_text(), lock_allowed=path == LOCK_OWNER)
        if found:
            offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert offenders == {}, "use ser_plugins.results.run_dir instead of these literals"


def test_the_owner_itself_is_found_by_the_scan():  # the scan would see the names if they were elsewhere
    assert len(literals(OWNER.read_text())) >= len(rd.FILE_NAMES)


# --- names and layout -------------------------------------------------------------------------------
def test_the_file_names_are_those_runs_have_always_had():
    assert (rd.RECIPE_FILE, rd.RUN_FILE, rd.SUMMARY_FILE, rd.RESULTS_FILE, rd.POOLED_CONFUSION_FILE,
            rd.LAYER_WEIGHTS_FILE, rd.GRID_FILE, rd.FOLDS_DIR, rd.TENSORBOARD_DIR, rd.LOCK_FILE) == (
        "recipe.yaml", "run.json", "summary.json", "results.md", "confusion_pooled.png", "layer_weights.png",
        "grid.json", "folds", "tensorboard", ".lock")
    assert (rd.METRICS_FILE, rd.PREDICTIONS_FILE, rd.BEST_FILE, rd.NORMALIZER_FILE, rd.CURVES_FILE,
            rd.CONFUSION_FILE, rd.STATE_FILE, rd.REFIT_STATE_FILE, rd.SELECTION_FILE) == (
        "metrics.json", "predictions.csv", "best.safetensors", "normalizer.safetensors", "curves.png",
        "confusion.png", "last_state.pt", "refit_state.pt", "selection.json")
    from ser_plugins.data.normalize import NORMALIZER_FILE  # the old import still works

    assert NORMALIZER_FILE == rd.NORMALIZER_FILE


def test_paths_of_a_run_and_its_folds(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.is_run and not (tmp_path / "r").exists()  # nothing is created by naming it
    assert (run.recipe, run.run_file, run.summary, run.results) == tuple(
        tmp_path / "r" / n for n in ("recipe.yaml", "run.json", "summary.json", "results.md"))
    assert (run.pooled_confusion, run.layer_weights, run.lock) == tuple(
        tmp_path / "r" / n for n in ("confusion_pooled.png", "layer_weights.png", ".lock"))
    assert run.tensorboard("S1") == tmp_path / "r" / "tensorboard" / "S1"
    fold = run.fold("S1")
    base = tmp_path / "r" / "folds" / "S1"
    assert fold.path == base and fold.name == "S1" and Path(fold) == base and fold / "x" == base / "x"
    assert [fold.metrics, fold.predictions, fold.best, fold.normalizer, fold.curves, fold.confusion, fold.state,
            fold.refit_state, fold.selection, fold.lock] == [base / n for n in (
                "metrics.json", "predictions.csv", "best.safetensors", "normalizer.safetensors", "curves.png",
                "confusion.png", "last_state.pt", "refit_state.pt", "selection.json", ".lock")]
    assert fold.mkdir() is fold and base.is_dir() and not fold.finished


def test_run_dir_imports_neither_torch_nor_the_recipe_model():
    code = ("import sys; import ser_plugins.results.run_dir\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m in ('ser_plugins.recipe', 'pydantic')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- readers and writers ------------------------------------------------------------------------------
def _recipe(**sections):
    r = {"corpus": {"name": "iemocap", "root": "x"}, "upstream": {"name": "fbank", "n_mels": 6},
         "aggregator": "mean", "classifier": "linear"}
    r.update(sections)
    return load_recipe(r)


def test_recipe_is_written_as_the_resolved_yaml_and_read_back_as_data(tmp_path):
    run = RunDir(tmp_path)
    recipe = _recipe()
    run.write_recipe(recipe)
    assert run.is_run and run.recipe.read_text() == dump_recipe(recipe)
    assert run.read_recipe() == recipe.to_dict()
    run.recipe.write_text("a: !!python/object:os.system x\n")
    with pytest.raises(yaml.YAMLError):
        run.read_recipe()  # unsafe or broken YAML propagates: callers name the file in their own words


def _fold(name, train, dev, test):
    return SimpleNamespace(name=name, train=list(range(train)), dev=list(range(dev)), test=list(range(test)))


def test_run_info_is_the_run_json_schema(tmp_path):
    info = run_info(environment={"python": "3"}, device="cpu", precision="fp32", upstream={"name": "fbank"},
                    labels=["ang", "hap"], folds=[_fold("S1", 3, 1, 2)], skipped={"u2": "silent", "u1": "too_short"},
                    skipped_counts={"silent": 1, "too_short": 1}, paths={"u1": "/a/u1.wav"},
                    corpus_problems=["row 3: missing audio"], protocol="session", dev="speaker", refit=False,
                    normalize=None, transductive=False, notes={"upstream_forward_passes": 7})
    assert list(info) == ["environment", "device", "precision", "upstream", "labels", "folds", "skipped",
                          "skipped_files", "corpus_problems", "corpus_problem_details", "evaluation",
                          "upstream_forward_passes"]
    assert info["folds"] == [{"name": "S1", "train": 3, "dev": 1, "test": 2}]
    assert info["skipped_files"] == [{"id": "u1", "path": "/a/u1.wav", "reason": "too_short"},
                                     {"id": "u2", "path": "", "reason": "silent"}]  # sorted by id
    assert (info["corpus_problems"], info["corpus_problem_details"]) == (1, ["row 3: missing audio"])
    assert info["evaluation"] == {"protocol": "session", "dev": "speaker", "refit": False, "normalize": None,
                                  "transductive": False}
    run = RunDir(tmp_path)
    run.write_run_info(info)
    assert run.run_file.read_text() == json.dumps(info, indent=2) + "\n"
    assert run.read_run_info() == info and run.fold_order() == ["S1"]


def test_run_info_names_at_most_max_named_skips_but_counts_all():
    many = {f"u{i:05d}": "silent" for i in range(rd.MAX_NAMED_SKIPS + 5)}
    problems = [f"p{i}" for i in range(rd.MAX_NAMED_SKIPS + 2)]
    info = run_info(environment={}, device="cpu", precision="fp32", upstream={}, labels=["a"], folds=[],
                    skipped=many, skipped_counts={"silent": len(many)}, paths={}, corpus_problems=problems,
                    protocol="", dev="none", refit=False, normalize=None, transductive=False)
    assert len(info["skipped_files"]) == rd.MAX_NAMED_SKIPS and info["skipped"] == {"silent": len(many)}
    assert info["corpus_problems"] == len(problems) and len(info["corpus_problem_details"]) == rd.MAX_NAMED_SKIPS


def _summary(**changes):
    s = dict(name="r", upstream="fbank", finetune="frozen", layer="last", aggregator="mean", classifier="linear",
             labels=["a", "b"], folds={"S1": {"wa": 0.5, "ua": 0.5, "macro_f1": 0.5, "n": 4}},
             mean_std={k: {"mean": 0.5, "std": None} for k in ("wa", "ua", "macro_f1")},
             pooled={"wa": 0.5, "ua": 0.5, "macro_f1": 0.5, "confusion": [[1, 1], [1, 1]]}, complete=True)
    s.update(changes)
    return Summary(**s)


def test_summary_is_written_as_json_and_markdown(tmp_path):
    run = RunDir(tmp_path)
    summary = _summary()
    run.write_summary(summary)
    assert run.summary.read_text() == json.dumps(summary.to_dict(), indent=2) + "\n"
    assert run.results.read_text() == summary.to_markdown()
    assert run.read_summary() == summary


def _metrics(ua):
    return {"wa": ua, "ua": ua, "macro_f1": ua, "n": 2, "confusion": [[1, 0], [0, 1]]}


def test_fold_metrics_mark_a_fold_finished_and_are_read_in_the_run_order(tmp_path):
    run = RunDir(tmp_path)
    assert run.finished_folds() == {} and run.fold_order() == []
    for name, ua in (("S2", 0.2), ("S1", 0.1), ("zz", 0.9)):
        run.fold(name).mkdir()
        run.write_fold_metrics(name, _metrics(ua))
    run.fold("S3").mkdir()  # started, not finished
    assert run.fold_finished("S1") and not run.fold_finished("S3") and not run.fold("S4").finished
    assert run.read_fold_metrics("S2") == _metrics(0.2) == run.fold("S2").read_metrics()
    assert list(run.finished_folds()) == ["S1", "S2", "zz"]  # no run.json yet: sorted
    run.write_run_info({"folds": [{"name": n} for n in ("S3", "S2", "S1")]})
    assert list(run.finished_folds()) == ["S2", "S1", "zz"]  # the run's order, then any others sorted
    assert run.finished_folds()["zz"] == _metrics(0.9)
    from ser_plugins.results.partial import finished_folds

    assert finished_folds(tmp_path) == run.finished_folds()


def test_predictions_csv_text(tmp_path):
    test = {"ids": ["u1", "u2"], "targets": [0, 1], "predictions": [1, 1],
            "probabilities": np.array([[0.25, 0.75], [0.1234567, 0.8765433]])}
    text = predictions_csv(test["ids"], {"u1": "spk1", "u2": "spk2"}, ["ang", "hap"], test["targets"],
                           test["predictions"], test["probabilities"])
    assert text == ("id,speaker,label,prediction,p_ang,p_hap\r\n"
                    "u1,spk1,ang,hap,0.25000,0.75000\r\n"
                    "u2,spk2,hap,hap,0.12346,0.87654\r\n")
    fold = FoldDir(tmp_path / "S1")
    fold.write_predictions(test, {"u1": "spk1", "u2": "spk2"}, ["ang", "hap"])
    assert fold.predictions.read_bytes() == text.encode("utf-8")


def test_checkpoints_and_trained_folds(tmp_path):
    run = RunDir(tmp_path)
    for name in ("S1", "S1-x", "S2", "untrained"):
        run.fold(name).mkdir()
    for name in ("S2", "S1-x", "S1"):
        run.fold(name).best.write_bytes(b"")
    assert run.trained_folds() == ["S1", "S1-x", "S2"]  # by name
    assert run.checkpoints("S2") == [run.fold("S2").best] and run.checkpoints("untrained") == []
    assert sorted(run.checkpoints()) == run.checkpoints() and len(run.checkpoints()) == 3


def test_a_finished_fold_loses_only_its_resume_files(tmp_path):
    fold = FoldDir(tmp_path / "S1").mkdir()
    for path in (fold.state, fold.refit_state, fold.selection, fold.best, fold.metrics):
        path.write_text("x")
    fold.remove_resume_state()
    assert sorted(p.name for p in fold.path.iterdir()) == ["best.safetensors", "metrics.json"]
    fold.remove_resume_state()  # nothing left to remove: no error


def test_selection_round_trips_a_fit_result(tmp_path):
    from ser_plugins.training.trainer import FitResult

    fit = FitResult(history=[{"epoch": 1, "step": 3, "train_loss": 1.5, "lr": 0.1, "dev_ua": 0.5}], best_epoch=1,
                    best_dev_ua=0.5, nan_steps=0, total_steps=9, steps=3)
    assert list(fit.to_dict()) == ["history", "best_epoch", "best_dev_ua", "nan_steps", "total_steps", "steps",
                                   "best_dev"]
    fold = FoldDir(tmp_path / "S1")
    fold.write_selection(fit.to_dict())
    assert json.loads(fold.selection.read_text()) == fit.to_dict()
    assert FitResult.from_dict(fold.read_selection()) == fit
    assert FitResult.from_dict({**fit.to_dict(), "newer": 1}) == fit  # unknown keys ignored


# --- the resume check (recipe.py) -----------------------------------------------------------------------
def test_resume_differences():
    recipe = _recipe()
    saved = recipe.to_dict()
    assert resume_differences(saved, recipe) is None
    moved = _recipe(output={"dir": "elsewhere", "checkpoint_interval": 99.0}, data={"max_ram_gb": 2, "num_workers": 0},
                    launcher={"cpus": 8})
    assert resume_differences(saved, moved) is None  # where, how fast, on what: the same results
    assert resume_differences(saved, _recipe(training={"lr": 0.5})) == [f"training.lr: {recipe.training.lr!r} -> 0.5"]
    assert saved == recipe.to_dict()  # the saved data is not changed
    (junk,) = resume_differences("junk", recipe)  # not a mapping: named as a whole
    assert junk.startswith("recipe: 'junk' -> {'name': ") and "'launcher'" not in junk
    extra = {**saved, "training": {**saved["training"], "nothing": None}}  # differs only by a key's presence
    assert resume_differences(extra, recipe) == []
    assert recipe_differences({"a": {"b": 1}}, {"a": {"b": 2}, "d": 3}) == ["a.b: 1 -> 2", "d: None -> 3"]
    from ser_plugins.training.runner import recipe_differences as old_name  # still importable there

    assert old_name is recipe_differences
