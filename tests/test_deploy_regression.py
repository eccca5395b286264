"""Deployment of dimensional emotion: `ser predict`, `ser export` and the timeline for regression and multitask runs.

Two tiny runs on the demo corpus (fbank with few mels, mean pooling, a linear head, a few steps, standardised
targets): a one-fold regression run (arousal, valence, dominance) and a two-fold multitask run (the classes and
the same targets). Each is exported once and compared with PyTorch; classification is covered, unchanged, by
test_predict_engines.py, test_export_onnx.py and test_timeline.py.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("onnxruntime", reason="pip install 'ser-plugins[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'ser-plugins[onnx]'")

from helpers import recipe_for  # noqa: E402
from ser_plugins.cli import main  # noqa: E402
from ser_plugins.deploy.export import DEFAULT_ATOL, ExportError, check_waves, verify_outputs  # noqa: E402
from ser_plugins.deploy.onnx_engine import OnnxPredictor  # noqa: E402
from ser_plugins.deploy.predict import Predictor, read_labels, read_task  # noqa: E402
from ser_plugins.deploy.scoring import format_results, score_files  # noqa: E402
from ser_plugins.errors import CorruptFileError  # noqa: E402
from ser_plugins.task import TaskSpec  # noqa: E402

TARGETS = ["arousal", "valence", "dominance"]
LABELS = ["neu", "hap", "ang", "sad"]


@pytest.fixture(scope="module")
def runs(tiny_demo_root, tmp_path_factory) -> Dict[str, Dict[str, Path]]:
    """``{kind: {"run", "export", "export_line"}}``: trained once, exported once with ``ser export``."""
    import torch

    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    base = tmp_path_factory.mktemp("deploy_regression")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: Dict[str, Dict[str, Path]] = {}
    try:
        for kind, folds in (("regression", ["1"]), ("multitask", ["1", "2"])):
            recipe = recipe_for(tiny_demo_root, name=kind, upstream={"n_mels": 16}, aggregator="mean",
                                training={"epochs": None, "max_steps": 12, "batch_size": 16, "lr": 0.01},
                                task={"type": kind, "standardize": True})
            recipe["classifier"] = {"name": "linear"}
            run_recipe(load_recipe(recipe), str(base / kind), folds=folds, progress=False)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(["export", str(base / kind), "--fold", "Session1", "--out", str(base / f"{kind}_onnx")]) == 0
            out[kind] = {"run": base / kind, "export": base / f"{kind}_onnx", "export_line": printed.getvalue()}
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def wavs(tiny_demo_root, tmp_path_factory) -> Dict[str, str]:
    good = sorted((Path(tiny_demo_root) / "Session1" / "sentences" / "wav").rglob("*.wav"))[:3]
    x, rate = sf.read(str(good[0]), dtype="float32")
    files = {f"good{i}": str(p) for i, p in enumerate(good)}
    silence = tmp_path_factory.mktemp("silence") / "silence.wav"
    sf.write(str(silence), np.zeros_like(x), rate, subtype="PCM_16")
    files["silence"] = str(silence)
    return files


def predict(args: List[str], capsys) -> tuple:
    rc = main(["predict", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --- the run's task -----------------------------------------------------------------------------------
def test_run_json_task_is_read_and_a_regression_run_has_no_labels(runs, tmp_path):
    assert read_task(runs["regression"]["run"]) == TaskSpec("regression", (), tuple(TARGETS))
    assert read_labels(runs["regression"]["run"]) == []
    assert read_task(runs["multitask"]["run"]) == TaskSpec("multitask", tuple(LABELS), tuple(TARGETS))
    copy = tmp_path / "run"
    shutil.copytree(runs["regression"]["run"], copy)
    info = json.loads((copy / "run.json").read_text())
    for task in ({"kind": "classification"}, {"kind": "ordinal"}, {"kind": "regression", "targets": []}, "x"):
        (copy / "run.json").write_text(json.dumps({**info, "task": task}))
        with pytest.raises(CorruptFileError, match="run.json"):
            read_task(copy)
    del info["task"]  # a run written before tasks: classification over its labels, which must not be empty
    (copy / "run.json").write_text(json.dumps(info))
    with pytest.raises(CorruptFileError, match=r'has no list of class labels \("labels"\)'):
        read_labels(copy)


def test_heads_carry_the_saved_target_scale_and_values_are_on_the_corpus_scale(runs, wavs, one_torch_thread):
    from safetensors.torch import load_file

    predictor = Predictor(runs["regression"]["run"])
    assert predictor.labels == [] and predictor.targets == TARGETS
    scale = predictor.models[0].head.target_scale
    saved = load_file(str(runs["regression"]["run"] / "folds" / "Session1" / "best.safetensors"))
    (std_key,) = [k for k in saved if k.endswith("target_scale.std")]
    assert np.array_equal(scale.std.numpy(), saved[std_key].numpy()) and not np.allclose(scale.std.numpy(), 1.0)
    results = predictor.predict_files([wavs["good0"], wavs["good1"]])
    for r in results:
        assert r["emotion"] is None and r["probabilities"] is None and list(r["values"]) == TARGETS
        assert all(0.0 < v < 6.0 for v in r["values"].values())  # the demo's 1-5 scale, not standardised


def test_multitask_predictor_averages_probabilities_and_values_over_folds(runs, wavs, one_torch_thread):
    run = runs["multitask"]["run"]
    files = [wavs["good0"], wavs["good1"]]
    both = Predictor(run).predict_files(files)
    folds = [Predictor(run, fold=f).predict_files(files) for f in ("Session1", "Session2")]
    for i, r in enumerate(both):
        assert r["emotion"] in LABELS and sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        for key, names in (("probabilities", LABELS), ("values", TARGETS)):
            for name in names:
                mean = (folds[0][i][key][name] + folds[1][i][key][name]) / 2
                assert r[key][name] == pytest.approx(mean, abs=1e-6)
        assert folds[0][i]["values"] != folds[1][i]["values"]  # two different folds really were averaged


# --- ser predict: text, json, csv ---------------------------------------------------------------------
def test_regression_predict_prints_values_in_text_json_and_csv(runs, wavs, capsys, one_torch_thread):
    run = str(runs["regression"]["run"])
    files = [wavs["good0"], wavs["silence"]]
    want = Predictor(Path(run)).predict_files([wavs["good0"]])[0]["values"]
    rc, out, err = predict([run, *files], capsys)
    assert rc == 1 and "1 of 2 files not scored" in err
    good, bad = out.splitlines()
    path, values = good.split("\t")
    assert path == wavs["good0"] and values == " ".join(f"{t}={want[t]:.3f}" for t in TARGETS)
    assert bad.startswith(f"{wavs['silence']}\t-\tnot scored: silent (")
    rc, out, _ = predict([run, *files, "--format", "json"], capsys)
    rows = json.loads(out)
    assert [list(r) for r in rows] == [["path", "status", "values", "problem", "detail"]] * 2
    assert rows[0]["values"] == pytest.approx(want) and rows[1]["values"] is None and rows[1]["status"] == "error"
    rc, out, _ = predict([run, *files, "--format", "csv"], capsys)
    table = list(csv.reader(out.splitlines()))
    assert table[0] == ["path", "status", "problem", "detail", *TARGETS]
    assert [float(x) for x in table[1][4:]] == pytest.approx([want[t] for t in TARGETS], abs=1e-5)
    assert table[2][:3] == [wavs["silence"], "error", "silent"] and table[2][4:] == ["", "", ""]


def test_multitask_predict_prints_class_probabilities_and_values(runs, wavs, capsys, one_torch_thread):
    run = str(runs["multitask"]["run"])
    want = Predictor(Path(run)).predict_files([wavs["good0"]])[0]
    rc, out, err = predict([run, wavs["good0"]], capsys)
    assert rc == 0 and not err.strip()
    path, emotion, probs, values = out.rstrip("\n").split("\t")
    assert (path, emotion) == (wavs["good0"], want["emotion"])
    assert probs == " ".join(f"{k}={v:.3f}" for k, v in want["probabilities"].items())
    assert values == " ".join(f"{t}={want['values'][t]:.3f}" for t in TARGETS)
    rc, out, _ = predict([run, wavs["good0"], wavs["silence"], "--format", "json"], capsys)
    rows = json.loads(out)
    assert list(rows[0]) == ["path", "status", "emotion", "probabilities", "values", "problem", "detail"]
    assert rows[0]["values"] == pytest.approx(want["values"]) and rows[1]["values"] is rows[1]["emotion"] is None
    rc, out, _ = predict([run, wavs["good0"], wavs["silence"], "--format", "csv"], capsys)
    table = list(csv.reader(out.splitlines()))
    assert table[0] == ["path", "status", "emotion", "problem", "detail", *[f"p_{lab}" for lab in LABELS], *TARGETS]
    assert table[1][2] == want["emotion"] and table[2][5:] == [""] * 7


def test_a_classification_scorer_prints_exactly_as_before():
    """A scorer without targets (the protocol before them): the old layout, byte for byte."""

    class Fixed:
        labels = ["a", "b"]
        sample_rate, min_samples = 16000, 1

        def score(self, waves):
            return [np.array([0.25, 0.75], np.float32) for _ in waves]

    rows = [{"path": "x.wav", "emotion": "b", "probabilities": {"a": 0.25, "b": 0.75}, "problem": None, "detail": ""}]
    assert format_results(rows, ["a", "b"], "text") == "x.wav\tb\ta=0.250 b=0.750\n"
    assert format_results(rows, ["a", "b"], "csv") == "path,status,emotion,problem,detail,p_a,p_b\nx.wav,ok,b,,,0.25000,0.75000\n"
    assert list(json.loads(format_results(rows, ["a", "b"], "json"))[0]) == [
        "path", "status", "emotion", "probabilities", "problem", "detail"]
    assert "values" not in score_files(Fixed(), ["missing.wav"])[0]


# --- ser export and the ONNX engine -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["regression", "multitask"])
def test_export_proves_values_equal_and_the_engine_names_them(runs, wavs, kind, one_torch_thread):
    export, run = runs[kind]["export"], runs[kind]["run"]
    meta = json.loads((export / "model.json").read_text())
    classes = kind == "multitask"
    assert meta["format_version"] == 2 and meta["task"] == {"kind": kind, "labels": LABELS if classes else [],
                                                            "targets": TARGETS}
    assert meta["values"]["name"] == "values" and meta["values"]["targets"] == TARGETS
    assert meta["values"]["shape"] == ["batch", 3] and ("output" in meta) == classes
    by_output = meta["verification"]["max_abs_diff_by_output"]
    assert list(by_output) == (["probabilities", "values"] if classes else ["values"])
    assert max(by_output.values()) == meta["verification"]["max_abs_diff"] <= DEFAULT_ATOL
    line = runs[kind]["export_line"]
    assert "onnxruntime matches PyTorch within 0.0001" in line and f"values {by_output['values']:.1e}" in line
    engine = OnnxPredictor(export, threads=1)
    assert engine.labels == (LABELS if classes else []) and engine.targets == TARGETS
    files = [wavs["good0"], wavs["good1"], wavs["good2"]]
    got = engine.predict_files(files)
    want = Predictor(run, fold="Session1").predict_files(files)
    for g, w in zip(got, want):
        assert max(abs(g["values"][t] - w["values"][t]) for t in TARGETS) <= DEFAULT_ATOL
        if classes:
            assert g["emotion"] == w["emotion"]
            assert max(abs(g["probabilities"][k] - w["probabilities"][k]) for k in LABELS) <= DEFAULT_ATOL
        else:
            assert g["probabilities"] is g["emotion"] is None


def test_export_verification_refuses_values_that_differ(runs):
    export = runs["multitask"]["export"]
    meta = json.loads((export / "model.json").read_text())
    waves = check_waves(meta["sample_rate"], meta["input"]["min_samples"])
    engine = OnnxPredictor(export, threads=1)
    reference = np.stack([engine.probabilities(w[None, :])[0] for w in waves]).astype(np.float64)
    found = verify_outputs(export / "model.onnx", waves, reference, DEFAULT_ATOL, 1, ["probabilities", "values"])
    assert found["values"] <= DEFAULT_ATOL and found["probabilities"] <= DEFAULT_ATOL
    reference[:, len(LABELS) + 1] += 10 * DEFAULT_ATOL  # valence off by 1e-3: the values are checked too
    with pytest.raises(ExportError, match=r"target values differ by up to 0\.001 \(tolerance 0\.0001\)"):
        verify_outputs(export / "model.onnx", waves, reference, DEFAULT_ATOL, 1, ["probabilities", "values"])


def test_onnx_predict_cli_matches_torch_for_multitask(runs, wavs, capsys, one_torch_thread):
    files = [wavs["good0"], wavs["good1"]]
    rc, onnx_out, _ = predict([str(runs["multitask"]["export"]), *files, "--engine", "onnx", "--threads", "1",
                               "--format", "csv"], capsys)
    rc2, torch_out, _ = predict([str(runs["multitask"]["run"]), *files, "--fold", "Session1", "--format", "csv"],
                                capsys)
    a, b = (list(csv.reader(o.splitlines())) for o in (onnx_out, torch_out))
    assert rc == rc2 == 0 and a[0] == b[0] and a[0][-3:] == TARGETS
    for x, y in zip(a[1:], b[1:]):
        assert x[:5] == y[:5] and all(abs(float(p) - float(q)) <= 2e-5 for p, q in zip(x[5:], y[5:]))


# --- the timeline -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recording(tiny_demo_root, tmp_path_factory) -> Path:
    parts = []
    for wav in sorted(Path(tiny_demo_root).rglob("*.wav"))[:3]:
        data, rate = sf.read(str(wav), dtype="float32")
        parts += [data, np.zeros(rate // 2, np.float32)]
    path = tmp_path_factory.mktemp("recording") / "talk.wav"
    sf.write(str(path), np.concatenate(parts), rate)
    return path


@pytest.mark.parametrize("kind", ["regression", "multitask"])
def test_timeline_writes_and_draws_the_targets(runs, recording, kind, tmp_path, capsys, one_torch_thread):
    args = [str(recording), "--window", "1.5", "--hop", "0.5", "-q"]
    assert main(["predict", str(runs[kind]["run"]), *args, "--fold", "Session1", "--out", str(tmp_path / "t")]) == 0
    assert main(["predict", str(runs[kind]["export"]), *args, "--engine", "onnx", "--threads", "1",
                 "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("\tmean arousal=" in ln and "talk.timeline.csv" in ln for ln in lines)
    rows = {e: list(csv.DictReader(open(tmp_path / e / "talk.timeline.csv", newline=""))) for e in ("t", "o")}
    classes = [f"p_{lab}" for lab in LABELS] + ["label"] if kind == "multitask" else []
    assert list(rows["t"][0]) == ["start", "end", "speech", *classes, *TARGETS] == list(rows["o"][0])
    assert len(rows["t"]) == len(rows["o"]) > 5
    for a, b in zip(rows["t"], rows["o"]):
        assert a["start"] == b["start"] and all(abs(float(a[t]) - float(b[t])) <= 1e-4 for t in TARGETS)
    means = [float(x.split("=")[1]) for x in lines[0].split("\tmean ")[1].split("\t")[0].split()]
    want = [np.mean([float(r[t]) for r in rows["t"]]) for t in TARGETS]
    assert means == pytest.approx(want, abs=0.006)  # printed to 2 decimals
    png = tmp_path / "t" / "talk.timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_of_a_stand_in_scorer_with_targets_skips_and_blanks_them(tmp_path):
    from ser_plugins.deploy.timeline import analyse_recording

    class Loudness:
        """Regression stand-in: arousal is the window's RMS level."""

        labels: List[str] = []
        targets = ["arousal"]
        sample_rate, min_samples = 16000, 400

        def probabilities(self, windows):
            return np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1, keepdims=True)).astype(np.float32)

    t = np.arange(16000 * 3) / 16000
    wave = np.concatenate([0.1 * np.sin(2 * np.pi * 220 * t), np.zeros(16000 * 3), 0.4 * np.sin(2 * np.pi * 220 * t)])
    path = tmp_path / "a.wav"
    sf.write(str(path), wave.astype(np.float32), 16000, subtype="FLOAT")
    res = analyse_recording(path, Loudness(), 1.0, 1.0, tmp_path, vad_db=-40, progress=False)
    rows = list(csv.DictReader(open(res.csv, newline="")))
    assert list(rows[0]) == ["start", "end", "speech", "arousal"]
    assert [r["arousal"] == "" for r in rows] == [False] * 3 + [True] * 3 + [False] * 3
    assert float(rows[0]["arousal"]) == pytest.approx(0.1 / np.sqrt(2), abs=1e-3)
    assert res.label_share == {} and res.target_means["arousal"] == pytest.approx(0.25 / np.sqrt(2), abs=1e-3)
    assert res.skipped == {"no_speech": 3} and res.png.is_file()
