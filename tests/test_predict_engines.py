"""`ser predict` with both engines, torch (a run directory) and onnx (its export): the same per-file reasons,
exit status and text/json/csv output, from the one shared loop (ser_plugins.deploy.scoring). See docs/deploy.md.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("onnxruntime", reason="pip install 'ser-plugins[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'ser-plugins[onnx]'")

from helpers import recipe_for  # noqa: E402
from ser_plugins import cli  # noqa: E402

ENGINES = ("torch", "onnx")


@pytest.fixture(scope="module")
def models(tiny_demo_root, tmp_path_factory) -> Dict[str, List[str]]:
    """One speaker-normalised fold, trained once and exported once: ``ser predict`` arguments per engine."""
    from ser_plugins.deploy.export import export_run
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    base = tmp_path_factory.mktemp("engines")
    recipe = load_recipe(recipe_for(tiny_demo_root, name="engines", features={"normalize": "speaker"}))
    run_recipe(recipe, str(base / "run"), folds=["1"], progress=False)
    export_run(base / "run", base / "export", threads=1)
    return {"torch": [str(base / "run")], "onnx": [str(base / "export"), "--engine", "onnx", "--threads", "1"]}


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def wavs(tiny_demo_root, tmp_path_factory) -> Dict[str, str]:
    """Three good utterances and the bad files of the issue, at the corpus's rate."""
    good = sorted((Path(tiny_demo_root) / "Session1" / "sentences" / "wav").rglob("*.wav"))[:3]
    x, rate = sf.read(str(good[0]), dtype="float32")
    d = tmp_path_factory.mktemp("bad_audio")
    files = {f"good{i}": str(p) for i, p in enumerate(good)}
    files["missing"] = str(d / "missing.wav")
    bad = {"nan": (np.where(np.arange(len(x)) % 7 == 0, np.nan, x).astype(np.float32), "FLOAT"),
           "one_sample": (x[:1], "PCM_16"), "silence": (np.zeros_like(x), "PCM_16"),
           "dc": (np.full_like(x, 0.25), "PCM_16"), "huge": (x * np.float32(1e30), "FLOAT")}
    for name, (samples, subtype) in bad.items():
        files[name] = str(d / f"{name}.wav")
        sf.write(files[name], samples, rate, subtype=subtype)
    return files


def predict(models, engine: str, files: List[str], capsys, *options: str) -> tuple:
    run_dir, *engine_options = models[engine]
    rc = cli.main(["predict", run_dir, *files, *engine_options, *options])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def error_lines(err: str) -> List[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def test_a_missing_file_beside_a_good_one_each_gets_its_own_line(models, engine, wavs, capsys):
    good, missing = wavs["good0"], wavs["missing"]
    rc, out, err = predict(models, engine, [good, missing], capsys)
    assert rc == 1, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{good}\t") and lines[0].split("\t")[1] in ("neu", "hap", "ang", "sad")
    assert lines[1].startswith(f"{missing}\t-\tnot scored: unreadable (")
    assert f"warning: {missing}: not scored: unreadable" in err and "1 of 2 files not scored" in err
    assert "Traceback" not in err and not error_lines(err)
    rc, out, err = predict(models, engine, [good], capsys)
    assert rc == 0 and len(out.splitlines()) == 1
    # one file of a speaker-normalised run: the typical statistics, said on stderr (nothing else there)
    assert err.strip().splitlines() == [err.strip()] and err.startswith("note: a speaker-normalised run: fewer than")


@pytest.mark.parametrize("name,reason", [("nan", "non_finite"), ("one_sample", "too_short"), ("silence", "silent"),
                                         ("dc", "constant"), ("missing", "unreadable")])
def test_a_bad_file_alone_is_its_reason_and_exit_1(models, engine, wavs, capsys, name, reason):
    rc, out, err = predict(models, engine, [wavs[name]], capsys)
    assert rc == 1, err
    assert out.splitlines() == [out.rstrip("\n")] and out.startswith(f"{wavs[name]}\t-\tnot scored: {reason} (")
    assert "1 of 1 files not scored" in err and not error_lines(err) and "Traceback" not in err


def _both(models, wavs, capsys, names: List[str], *options: str) -> Dict[str, tuple]:
    return {e: predict(models, e, [wavs[n] for n in names], capsys, *options) for e in ENGINES}


BAD = ["good0", "missing", "nan", "one_sample", "silence", "dc", "good1"]


def test_json_output_is_the_same_for_both_engines(models, wavs, capsys):
    got = _both(models, wavs, capsys, BAD, "--format", "json")
    assert got["torch"][0] == got["onnx"][0] == 1
    rows = {e: json.loads(out) for e, (_, out, _) in got.items()}
    for a, b in zip(rows["torch"], rows["onnx"]):
        assert list(a) == list(b) == ["path", "status", "emotion", "probabilities", "problem", "detail"]
        assert {k: a[k] for k in a if k != "probabilities"} == {k: b[k] for k in b if k != "probabilities"}
        if a["status"] == "ok":
            assert list(a["probabilities"]) == list(b["probabilities"])
            assert all(abs(a["probabilities"][k] - b["probabilities"][k]) <= 1e-4 for k in a["probabilities"])
        else:
            assert a["probabilities"] is b["probabilities"] is None and a["emotion"] is None
    assert [r["problem"] for r in rows["onnx"]] == [None, "unreadable", "non_finite", "too_short", "silent",
                                                    "constant", None]
    assert got["torch"][2] == got["onnx"][2]  # the same warnings


def test_csv_output_is_the_same_for_both_engines(models, wavs, capsys):
    got = _both(models, wavs, capsys, BAD, "--format", "csv")
    tables = {e: list(csv.reader(out.splitlines())) for e, (_, out, _) in got.items()}
    header = tables["torch"][0]
    assert header == tables["onnx"][0] == ["path", "status", "emotion", "problem", "detail",
                                           "p_neu", "p_hap", "p_ang", "p_sad"]
    assert len(tables["torch"]) == len(tables["onnx"]) == len(BAD) + 1
    for a, b in zip(tables["torch"][1:], tables["onnx"][1:]):
        assert a[:5] == b[:5]
        assert all(abs(float(x) - float(y)) <= 2e-5 for x, y in zip(a[5:], b[5:]) if x) and (a[5] == "") == (b[5] == "")


def test_features_that_overflow_are_flagged_by_both_engines(models, wavs, capsys):
    got = _both(models, wavs, capsys, ["huge"], "--format", "json")
    problems = {e: json.loads(out)[0]["problem"] for e, (_, out, _) in got.items()}
    # torch sees the features themselves; the exported graph only its non-finite probabilities
    assert problems == {"torch": "non_finite_features", "onnx": "non_finite_output"}
    assert got["torch"][0] == got["onnx"][0] == 1


def test_min_speaker_files_is_honoured_by_torch_and_refused_by_onnx_where_it_cannot_be(models, wavs, capsys):
    goods = ["good0", "good1", "good2"]
    typical = _both(models, wavs, capsys, goods + ["silence"], "--format", "json", "--min-speaker-files", "4")
    assert typical["torch"][0] == typical["onnx"][0] == 1  # 3 usable files < 4: the typical statistics, alike
    a, b = (json.loads(typical[e][1]) for e in ENGINES)
    assert all(abs(x["probabilities"][k] - y["probabilities"][k]) <= 1e-4
               for x, y in zip(a[:3], b[:3]) for k in x["probabilities"])
    assert all("typical statistics" in typical[e][2] for e in ENGINES)
    rc, out, err = predict(models, "torch", [wavs[n] for n in goods], capsys, "--format", "json",
                           "--min-speaker-files", "3")
    assert rc == 0 and "typical statistics" not in err  # the files' own statistics: other probabilities
    own = json.loads(out)
    assert any(abs(x["probabilities"][k] - y["probabilities"][k]) > 1e-3
               for x, y in zip(own, a[:3]) for k in x["probabilities"])
    rc, out, err = predict(models, "onnx", [wavs[n] for n in goods], capsys, "--min-speaker-files", "3")
    assert rc == 2 and not out and "Traceback" not in err
    (line,) = error_lines(err)
    assert "--min-speaker-files 3" in line and "--engine torch" in line and "--min-speaker-files 4" in line


def test_window_mode_reports_a_missing_recording_and_goes_on(models, engine, wavs, tmp_path, capsys):
    rc, out, err = predict(models, engine, [wavs["missing"], wavs["good0"]], capsys, "--window", "1", "-q",
                           "--out", str(tmp_path))
    assert rc == 1, err
    first, second = out.splitlines()
    assert first.startswith(f"{wavs['missing']}\t-\tnot scored: unreadable (")
    assert second.startswith(f"{wavs['good0']}\t") and "timeline.csv" in second
    assert "1 of 2 files not scored" in err and not error_lines(err)


def test_format_with_window_is_refused(models, engine, wavs, tmp_path, capsys):
    rc, out, err = predict(models, engine, [wavs["good0"]], capsys, "--window", "1", "--format", "json")
    assert rc == 2 and not out
    (line,) = error_lines(err)
    assert "--format json is for whole files" in line


def test_onnx_engine_reports_bad_files_without_torch(models, wavs):
    files = [wavs["good0"], wavs["missing"], wavs["silence"]]
    argv = ["predict", models["onnx"][0], *files, *models["onnx"][1:], "--format", "json"]
    code = (
        "import sys, json\n"
        "from ser_plugins.cli import main\n"
        f"rc = main({argv!r})\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m in "
        "('ser_plugins.deploy.predict', 'ser_plugins.model', 'ser_plugins.training.runner', 'ser_plugins.deploy.export'))\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *out, last = res.stdout.strip().splitlines()
    assert json.loads(last) == {"rc": 1, "heavy": []}
    assert [r["status"] for r in json.loads("\n".join(out))] == ["ok", "error", "error"]
