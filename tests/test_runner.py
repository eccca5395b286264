"""The fold runner end to end on the generated corpus: outputs, resume, predict, report, lock."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from ser_plugins.runtime.locking import LockedError, RunLock
from ser_plugins.deploy.predict import Predictor
from ser_plugins.recipe import load_recipe
from ser_plugins.results.report import MARK, write_report
from ser_plugins.training.runner import RunError, run_recipe


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_demo_root):
    recipe = load_recipe({
        "name": "fast", "seed": 0, "corpus": {"name": "iemocap", "root": str(tiny_demo_root)},
        "upstream": {"name": "fbank", "n_mels": 40}, "features": {"normalize": "speaker"},
        "aggregator": "stats", "classifier": {"name": "mlp", "hidden_sizes": [32]},
        "training": {"epochs": 3, "batch_size": 16, "patience": None}, "output": {"tensorboard": False},
    })
    out = tmp_path_factory.mktemp("runs") / "full"
    summary = run_recipe(recipe, str(out), progress=False)
    return recipe, out, summary


def test_run_writes_every_result(finished_run):
    recipe, out, summary = finished_run
    assert set(summary["folds"]) == {f"Session{i}" for i in range(1, 6)}
    assert summary["complete"] and summary["labels"] == ["neu", "hap", "ang", "sad"]
    for name in ("recipe.yaml", "run.json", "summary.json", "results.md", "confusion_pooled.png"):
        assert (out / name).is_file(), name
    total = 0
    for fold in summary["folds"]:
        d = out / "folds" / fold
        m = json.loads((d / "metrics.json").read_text())
        rows = list(csv.DictReader((d / "predictions.csv").open()))
        assert len(rows) == m["n"] == m["test"] and sum(map(sum, m["confusion"])) == m["n"]
        assert all(r["id"].startswith(f"Ses0{fold[-1]}") for r in rows)  # test = the held-out session
        assert m["wa"] == pytest.approx(sum(r["label"] == r["prediction"] for r in rows) / len(rows))
        assert (d / "best.safetensors").is_file() and (d / "confusion.png").is_file() and (d / "curves.png").is_file()
        assert not (d / "last_state.pt").exists()
        total += m["n"]
    assert summary["pooled"]["n"] == total == 100
    ua = [summary["folds"][f]["ua"] for f in summary["folds"]]
    assert summary["mean_std"]["ua"]["mean"] == pytest.approx(sum(ua) / len(ua))
    assert "| **mean ± std** |" in (out / "results.md").read_text()


def test_resume_skips_finished_folds_and_matches_an_uninterrupted_run(finished_run, tmp_path):
    recipe, _, summary = finished_run
    out = tmp_path / "partial"
    run_recipe(recipe, str(out), folds=["1", "Session2"], progress=False)
    first = (out / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns
    with pytest.raises(RunError, match="--resume"):
        run_recipe(recipe, str(out), progress=False)
    resumed = run_recipe(recipe, str(out), resume=True, progress=False)
    assert (out / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns == first
    assert resumed["folds"] == summary["folds"]  # same seed, deterministic CPU path
    changed = recipe.model_copy(update={"seed": 1})
    with pytest.raises(RunError, match="differs"):
        run_recipe(changed, str(out), resume=True, progress=False)


def test_predict_prints_emotions_for_files(finished_run, tiny_demo_root):
    _, out, summary = finished_run
    wavs = sorted((tiny_demo_root / "Session1" / "sentences" / "wav").rglob("*.wav"))[:3]
    res = Predictor(out).predict_files([str(w) for w in wavs])
    assert len(res) == 3
    for r in res:
        assert r["emotion"] in summary["labels"]
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # few files: the typical statistics of each fold's training speakers (a file's own would erase it)
    assert all((out / "folds" / f / "normalizer.safetensors").is_file() for f in summary["folds"])
    assert res[0]["probabilities"] != res[1]["probabilities"]
    alone = Predictor(out).predict_files([str(wavs[0])])[0]
    assert alone["probabilities"] == pytest.approx(res[0]["probabilities"], abs=1e-5)  # files do not interact
    together = Predictor(out, min_speaker_files=3).predict_files([str(w) for w in wavs])
    assert together[0]["probabilities"] != res[0]["probabilities"]  # their own statistics now
    cli = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "predict", str(out), str(wavs[0])],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert str(wavs[0]) in cli.stdout and "neu=" in cli.stdout


def test_report_tables_many_runs(finished_run, tmp_path):
    _, out, summary = finished_run
    md = write_report([out, out], str(tmp_path / "report"))
    assert md.count(f"| full {MARK} | fbank | frozen |") == 2  # speaker normalisation is transductive: marked
    assert "transductive normalisation" in md
    ua = 100 * summary["mean_std"]["ua"]["mean"]
    assert f"{ua:.2f}" in md
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert float(rows[0]["ua_mean"]) == pytest.approx(summary["mean_std"]["ua"]["mean"])


def test_a_locked_run_directory_is_refused(fast_recipe, tmp_path):
    recipe = load_recipe(fast_recipe)
    out = tmp_path / "locked"
    with RunLock(out):
        with pytest.raises(LockedError, match="in use"):
            run_recipe(recipe, str(out), progress=False)


def test_cli_reports_user_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: demo\nupstream: fbank\naggregator: stats\nclassifier: mlp\ntrainig: {}\n")
    res = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "run", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "trainig" in res.stderr and "did you mean 'training'" in res.stderr and "Traceback" not in res.stderr
