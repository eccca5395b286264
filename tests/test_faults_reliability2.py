"""Reliability II: the faults a new user met on a manifest corpus with faults added, one test per case.

Nothing dropped or duplicated in silence, ``ser predict`` surviving bad files, no traceback for a
user's problem, checks before the run directory exists, result files honouring the umask, and a
portable run lock. (The recipe-number cases of the same issue are in tests/test_recipe_ranges.py.)
See docs/reliability.md.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from ser_plugins import registry
from ser_plugins.cli import commands as cli  # the command module: its _cmd_* functions are patched
from ser_plugins.data.decode import decode_corpus
from ser_plugins.data.prepare import plan
from ser_plugins.errors import CorruptFileError, DiskFullError, UnsafeCheckpointError
from ser_plugins.runtime.atomic import atomic_write_json, atomic_write_text
from ser_plugins.runtime.locking import LockedError, RunLock
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import run_recipe
from ser_plugins.runtime.checkpoint import load_state
from helpers import recipe_for

SR = 16000
LABELS = ["neu", "hap", "ang", "sad"]


def run_cli(argv: List[str], capsys) -> tuple:
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def error_lines(err: str) -> List[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def assert_one_error(rc: int, err: str, *words: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def write_recipe(path: Path, recipe: Dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def demo_utts(tiny_demo_root):
    """The tiny demo corpus's utterances (IEMOCAP reader): real wav files with labels and speakers."""
    return registry.create("corpus", "iemocap", root=str(tiny_demo_root)).load()


def write_manifest(path: Path, rows: List[List[str]], header=("path", "label", "speaker", "fold")) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def manifest_rows(utts) -> List[List[str]]:
    return [[u.path, u.label, u.speaker, u.session] for u in utts]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_demo_root):
    """One finished fold (speaker-normalised, so it has a normaliser) written under umask 022."""
    out = tmp_path_factory.mktemp("r2") / "run"
    recipe = load_recipe(recipe_for(tiny_demo_root, features={"normalize": "speaker"}))
    old = os.umask(0o022)
    try:
        run_recipe(recipe, str(out), folds=["1"], progress=False)
    finally:
        os.umask(old)
    return out


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run_copy"
    shutil.copytree(finished_run, dst)
    return dst


def good_wavs(tiny_demo_root: Path, n: int = 1) -> List[Path]:
    return sorted((tiny_demo_root / "Session1" / "sentences" / "wav").rglob("*.wav"))[:n]


# ==================================== nothing dropped or duplicated in silence =================================
def test_rows_dropped_for_a_label_outside_labels_are_warned_and_counted_in_run_json(tmp_path, demo_utts, caplog):
    rows = manifest_rows(demo_utts)
    rows[3][1] = rows[7][1] = "xyz"
    rows[11][1] = "fru"
    manifest = write_manifest(tmp_path / "m.csv", rows)
    recipe = load_recipe(recipe_for(tmp_path, corpus={"name": "manifest", "root": str(manifest), "labels": LABELS}))
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="ser_plugins"):
        run_recipe(recipe, str(out), folds=["1"], progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 row(s) with label 'xyz'" in w and "lines 5, 9" in w for w in warned), warned
    assert any("1 row(s) with label 'fru'" in w and "line 13" in w for w in warned), warned
    run = json.loads((out / "run.json").read_text())
    assert run["dropped_labels"] == {"xyz": 2, "fru": 1}
    assert sum(f["train"] + f["dev"] + f["test"] for f in run["folds"][:1]) == len(rows) - 3


def test_dropped_labels_are_not_an_error_under_strict(tmp_path, demo_utts):
    rows = manifest_rows(demo_utts)
    rows[0][1] = "xyz"
    manifest = write_manifest(tmp_path / "m.csv", rows)
    recipe = load_recipe(recipe_for(tmp_path, corpus={"name": "manifest", "root": str(manifest), "labels": LABELS},
                                    data={"strict": True}))
    assert plan(recipe).dropped == {"xyz": 1}  # choosing the classes is the recipe's business


def test_the_same_audio_in_two_folds_is_an_error_naming_both_lines_before_the_run_dir_exists(tmp_path, demo_utts,
                                                                                            capsys):
    rows = manifest_rows(demo_utts)
    twin = [rows[0][0], rows[0][1], "someone_else", "Session5"]  # Session1's audio listed again in fold Session5
    rows.append(twin)
    manifest = write_manifest(tmp_path / "m.csv", rows)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(tmp_path, corpus={"name": "manifest", "root": str(manifest)}))
    out = tmp_path / "run"
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "-q"], capsys)
    line = assert_one_error(rc, err, "corpus problems stop the run")
    assert f"line {len(rows) + 1} lists the same audio as line 2" in err and "'Session1'" in err and "'Session5'" in err
    assert not out.exists()
    assert line


def test_the_same_audio_for_two_speakers_is_refused_after_the_folds_are_built(tmp_path, demo_utts, capsys):
    rows = [[u.path, u.label, u.speaker] for u in demo_utts]  # no fold column: leave-one-speaker-out
    other = next(u.speaker for u in demo_utts if u.speaker != demo_utts[0].speaker)
    rows.append([rows[0][0], rows[0][1], other])  # the same file under a speaker of another fold
    manifest = write_manifest(tmp_path / "m.csv", rows, header=("path", "label", "speaker"))
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(tmp_path, corpus={"name": "manifest", "root": str(manifest)}))
    out = tmp_path / "run"
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "-q"], capsys)
    stem = Path(rows[0][0]).stem
    assert_one_error(rc, err, f"'{stem}' and '{stem}_2' ({manifest} lines 2 and {len(rows) + 1}) are the same audio",
                     "would leak")
    assert not out.exists()


def test_the_same_audio_twice_in_one_set_is_a_warning(tmp_path, demo_utts, caplog):
    rows = manifest_rows(demo_utts)
    rows.append(list(rows[0]))  # same file, same speaker, same fold
    manifest = write_manifest(tmp_path / "m.csv", rows)
    recipe = load_recipe(recipe_for(tmp_path, corpus={"name": "manifest", "root": str(manifest)}))
    with caplog.at_level(logging.WARNING, logger="ser_plugins"):
        planned = plan(recipe)
    assert len(planned.utterances) == len(rows)
    warned = [r.getMessage() for r in caplog.records]
    assert any(f"line {len(rows) + 1} lists the same audio as line 2" in w and "both rows are kept" in w
               for w in warned), warned


# ============================================== ser predict =====================================================
def test_predict_scores_the_good_file_and_reports_the_missing_one(finished_run, tiny_demo_root, tmp_path, capsys):
    (good,) = good_wavs(tiny_demo_root)
    missing = tmp_path / "missing.wav"
    rc, out, err = run_cli(["predict", str(finished_run), str(good), str(missing)], capsys)
    assert rc == 1, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{good}\t") and lines[0].split("\t")[1] in LABELS
    assert lines[1].startswith(f"{missing}\t-\tnot scored: unreadable")
    assert f"warning: {missing}: not scored: unreadable" in err and "1 of 2 files not scored" in err
    assert "Traceback" not in err and not error_lines(err)
    rc, out, _ = run_cli(["predict", str(finished_run), str(good)], capsys)
    assert rc == 0 and len(out.splitlines()) == 1


def test_predict_help_states_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 when every file was scored, 1 when some file was not" in text and "--format" in text


def _odd_files(tmp_path: Path, good: Path) -> Dict[str, Path]:
    x, rate = sf.read(str(good), dtype="float32")
    files = {"silent": tmp_path / "silence.wav", "constant": tmp_path / "dc.wav",
             "non_finite_features": tmp_path / "huge.wav", "too_short": tmp_path / "short.wav"}
    sf.write(files["silent"], np.zeros_like(x), rate, subtype="PCM_16")
    sf.write(files["constant"], np.full_like(x, 0.25), rate, subtype="PCM_16")
    sf.write(files["non_finite_features"], x * np.float32(1e30), rate, subtype="FLOAT")
    sf.write(files["too_short"], x[:100], rate, subtype="PCM_16")
    return files


def test_predict_flags_audio_that_training_would_skip(finished_run, tiny_demo_root, tmp_path, capsys):
    (good,) = good_wavs(tiny_demo_root)
    odd = _odd_files(tmp_path, good)
    rc, out, err = run_cli(["predict", str(finished_run), str(good), *map(str, odd.values()), "--format", "json"],
                           capsys)
    assert rc == 1, err
    rows = json.loads(out)
    assert [r["path"] for r in rows] == [str(good), *map(str, odd.values())]
    assert rows[0]["status"] == "ok" and rows[0]["emotion"] in LABELS and rows[0]["problem"] is None
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    for row, reason in zip(rows[1:], odd):
        assert (row["status"], row["problem"], row["emotion"], row["probabilities"]) == ("error", reason, None, None)
        assert row["detail"]
    # training skips the same audio, for the same reasons
    from ser_plugins.plugins.contracts import Utterance

    utts = [Utterance(k, str(p), "neu", "s") for k, p in odd.items() if k in ("silent", "constant", "too_short")]
    audio = decode_corpus(utts, SR, 400, progress=False)
    assert audio.skipped == {"silent": "silent", "constant": "constant", "too_short": "too_short"}


def test_predict_csv_output_is_one_row_per_file(finished_run, tiny_demo_root, tmp_path, capsys):
    (good,) = good_wavs(tiny_demo_root)
    silent = _odd_files(tmp_path, good)["silent"]
    rc, out, _ = run_cli(["predict", str(finished_run), str(good), str(silent), "--format", "csv"], capsys)
    assert rc == 1
    rows = list(csv.DictReader(out.splitlines()))
    assert list(rows[0]) == ["path", "status", "emotion", "problem", "detail"] + [f"p_{lab}" for lab in LABELS]
    assert rows[0]["status"] == "ok" and rows[0]["emotion"] in LABELS
    assert sum(float(rows[0][f"p_{lab}"]) for lab in LABELS) == pytest.approx(1.0, abs=1e-3)
    assert (rows[1]["status"], rows[1]["problem"], rows[1]["p_neu"]) == ("error", "silent", "")


def test_speaker_statistics_pool_only_the_scored_files(finished_run, tiny_demo_root, tmp_path):
    from ser_plugins.deploy.predict import Predictor

    wavs = [str(w) for w in good_wavs(tiny_demo_root, 3)]
    silent = str(_odd_files(tmp_path, Path(wavs[0]))["silent"])
    with_bad = Predictor(finished_run, min_speaker_files=3).predict_files(wavs + [silent])
    alone = Predictor(finished_run, min_speaker_files=3).predict_files(wavs)
    for a, b in zip(with_bad, alone):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)


# ===================================== no traceback for a user's problem ========================================
@pytest.mark.parametrize("name", ["best.safetensors", "normalizer.safetensors"])
def test_a_corrupt_safetensors_file_in_a_run_dir_is_one_error_naming_it(finished_run, tiny_demo_root, tmp_path,
                                                                        capsys, name):
    run = copy_run(finished_run, tmp_path)
    target = run / "folds" / "Session1" / name
    target.write_bytes((2**62).to_bytes(8, "little") + b"{garbage")  # header length far beyond the file: "too large"
    (good,) = good_wavs(tiny_demo_root)
    rc, _, err = run_cli(["predict", str(run), str(good)], capsys)
    assert_one_error(rc, err, str(target), "not a readable safetensors file")


def test_a_foreign_safetensors_file_as_normaliser_is_one_error_naming_it(finished_run, tiny_demo_root, tmp_path,
                                                                         capsys):
    from safetensors.torch import save_file

    run = copy_run(finished_run, tmp_path)
    target = run / "folds" / "Session1" / "normalizer.safetensors"
    save_file({"something": torch.zeros(3)}, str(target))  # readable, but not ours
    (good,) = good_wavs(tiny_demo_root)
    rc, _, err = run_cli(["predict", str(run), str(good)], capsys)
    assert_one_error(rc, err, str(target), "not a normaliser")


def test_a_tag_in_a_run_dirs_recipe_yaml_is_one_error_for_predict_and_resume(finished_run, tiny_demo_root, tmp_path,
                                                                             capsys):
    run = copy_run(finished_run, tmp_path)
    marker = tmp_path / "PWNED"
    (run / "recipe.yaml").write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    (good,) = good_wavs(tiny_demo_root)
    rc, _, err = run_cli(["predict", str(run), str(good)], capsys)
    assert_one_error(rc, err, "recipe.yaml", "not a readable recipe")
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(tiny_demo_root, features={"normalize": "speaker"}))
    rc, _, err = run_cli(["run", str(recipe), "--out", str(run), "--resume", "-q"], capsys)
    assert_one_error(rc, err, "recipe.yaml", "not a readable recipe")
    assert not marker.exists()


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_refused_pickle_in_an_hf_model_folder_is_one_error_with_our_advice(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "hf_model"
    transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                                conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2,
                                num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2).save_pretrained(str(folder))
    marker = tmp_path / "PWNED"
    torch.save({"w": _RunsShell(marker)}, folder / "pytorch_model.bin")
    recipe = write_recipe(tmp_path / "r.yaml", {"corpus": {"name": "iemocap", "root": str(tmp_path)},
                                                "upstream": {"name": "hf", "model": str(folder)},
                                                "aggregator": "mean", "classifier": "linear"})
    rc, _, err = run_cli(["validate", str(recipe)], capsys)
    line = assert_one_error(rc, err, "refused to load", str(folder), "nothing was executed", "system")
    assert "weights_only" not in line and "likely succeed" not in line
    assert not marker.exists()


def test_the_refused_pickle_message_never_advises_weights_only_false(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "PWNED"
    path = tmp_path / "last_state.pt"
    torch.save({"model": {}, "x": _RunsShell(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_state(path)
    for text in (str(info.value),):
        assert "refused to load" in text and str(path) in text
        assert "weights_only" not in text and "likely succeed" not in text
    from upstreams.safe_checkpoint import load_checkpoint

    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value) and "likely succeed" not in str(info.value)
    # any other loader's refusal that reaches the command line gets our advice, not PyTorch's
    try:
        torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        torch_error = exc
    assert "weights_only` set to `False` will likely succeed" in str(torch_error)  # PyTorch's own advice

    def refuse(args):
        raise torch_error

    monkeypatch.setattr(cli, "_cmd_schema", refuse)
    rc, _, err = run_cli(["schema"], capsys)
    line = assert_one_error(rc, err, "refused to load", "nothing was executed")
    assert "weights_only" not in line and "likely succeed" not in line
    assert not marker.exists()


def test_a_corrupt_run_json_is_named(finished_run, tiny_demo_root, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "run.json").write_text("{\n")
    (good,) = good_wavs(tiny_demo_root)
    rc, _, err = run_cli(["predict", str(run), str(good)], capsys)
    assert_one_error(rc, err, str(run / "run.json"), "not valid JSON")
    with pytest.raises(CorruptFileError):
        cli.main(["--debug", "predict", str(run), str(good)])  # --debug keeps the traceback
    capsys.readouterr()
    (run / "run.json").write_text('{"labels": 3}\n')
    rc, _, err = run_cli(["predict", str(run), str(good)], capsys)
    assert_one_error(rc, err, str(run / "run.json"), "labels")


def test_a_corrupt_metrics_json_on_resume_is_named(finished_run, tiny_demo_root, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    metrics = run / "folds" / "Session1" / "metrics.json"
    metrics.write_text('{"wa": 0.5,')
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(tiny_demo_root, features={"normalize": "speaker"}))
    rc, _, err = run_cli(["run", str(recipe), "--out", str(run), "--resume", "--folds", "1", "-q"], capsys)
    assert_one_error(rc, err, str(metrics), "not valid JSON")


def test_a_full_disk_mid_run_is_a_clear_error_and_finished_folds_stay_intact(tiny_demo_root, tmp_path, capsys):
    if signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("SIGXFSZ is not ignored in this interpreter")
    # a head of ~170 KB: its checkpoint is the first file over the limit set below
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(tiny_demo_root, classifier={"hidden_sizes": [512]}))
    out = tmp_path / "run"
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "--folds", "1", "-q"], capsys)
    assert rc == 0, err
    fold1 = {p: p.read_bytes() for p in (out / "folds" / "Session1").iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, hard))  # the kernel refuses writes past 128 KiB (EFBIG)
    try:
        rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "--folds", "1,2", "--resume", "-q"], capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    line = assert_one_error(rc, err, "File too large", str(out / "folds" / "Session2"), "--resume")
    assert "enforce fail" not in line
    assert {p: p.read_bytes() for p in (out / "folds" / "Session1").iterdir()} == fold1  # finished fold intact
    assert not (out / "folds" / "Session2" / "metrics.json").exists()
    assert not list(out.rglob("*.tmp"))
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "--folds", "1,2", "--resume", "-q"], capsys)
    assert rc == 0, err
    assert (out / "folds" / "Session2" / "metrics.json").is_file()


def test_a_torch_save_on_a_full_disk_is_a_disk_full_error(tmp_path):
    if signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("SIGXFSZ is not ignored in this interpreter")
    from ser_plugins.runtime.checkpoint import save_state, save_weights

    state = {"w": torch.zeros(100_000)}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        for save in (save_state, save_weights):
            with pytest.raises(DiskFullError, match=re.escape(f"in {tmp_path}: File too large")):
                save(tmp_path / "x.bin", state)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


# ========================================= checks before writing ================================================
def test_folds_out_of_range_is_refused_before_the_run_dir_exists(tiny_demo_root, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(tiny_demo_root))
    out = tmp_path / "runs" / "a"
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "--folds", "7", "-q"], capsys)
    assert_one_error(rc, err, "--folds: no fold '7'", "1..5", "Session1")
    assert not (tmp_path / "runs").exists()
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "--folds", "5", "-q"], capsys)  # corrected rerun
    assert rc == 0, err
    assert (out / "folds" / "Session5" / "metrics.json").is_file()


def test_a_corpus_error_leaves_no_run_directory(tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(tmp_path / "no_corpus"))
    out = tmp_path / "run"
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "-q"], capsys)
    assert_one_error(rc, err, "does not exist")
    assert not out.exists()


def test_an_audio_error_found_after_the_dir_was_created_removes_it(tiny_demo_root, tmp_path, capsys):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    for wav in root.rglob("*.wav"):
        wav.write_bytes(b"RIFF-broken")
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(root))
    out = tmp_path / "run"
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "-q"], capsys)
    assert_one_error(rc, err, "no usable audio")
    assert not out.exists()
    existing = tmp_path / "mine"  # a directory the user made is kept, without our lock files
    existing.mkdir()
    rc, _, err = run_cli(["run", str(recipe), "--out", str(existing), "-q"], capsys)
    assert rc == 2 and existing.is_dir() and list(existing.iterdir()) == []


# ========================================= umask and the portable lock ==========================================
def test_result_files_honour_the_umask(finished_run, tmp_path):
    files = [p for p in finished_run.rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(files) >= 8
    for p in files:  # written under umask 022
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    old = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert {stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.json", "b.txt")} == {0o640}


HOLD_LOCK = """
import sys, time
from ser_plugins.runtime.locking import RunLock
with RunLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_the_lock_names_its_holder_and_is_released_by_kill_9(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"in use by pid {proc.pid} on {socket.gethostname()}"):
            with RunLock(run):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with RunLock(run):  # the OS released it with the process
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


NO_FCNTL = """
import sys, warnings
sys.modules["fcntl"] = None  # as on Windows: no fcntl module
warnings.simplefilter("ignore")
from ser_plugins.runtime.locking import LockedError, RunLock
with RunLock(sys.argv[1]):
    try:
        with RunLock(sys.argv[1]):
            print("second lock granted")
    except LockedError as exc:
        print("refused:", exc)
"""


def test_the_lock_does_not_need_fcntl(tmp_path):
    source = Path(__file__).resolve().parents[1] / "ser_plugins" / "runtime" / "locking.py"
    assert "import fcntl" not in source.read_text()
    res = subprocess.run([sys.executable, "-c", NO_FCNTL, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("refused:") and "in use by pid" in res.stdout


def test_a_damaged_pickle_is_named_as_damaged_not_as_refused(tmp_path):
    from upstreams.safe_checkpoint import load_checkpoint

    good = tmp_path / "state.pt"
    torch.save({"w": torch.ones(1000)}, good)
    truncated, garbage = tmp_path / "truncated.pt", tmp_path / "garbage.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    garbage.write_bytes(b"garbage, not a pickle")
    for path in (truncated, garbage):
        with pytest.raises(CorruptFileError, match="not a readable training state") as info:
            load_state(path)
        assert str(path) in str(info.value) and "weights_only" not in str(info.value)
    with pytest.raises(CorruptFileError, match="not a readable checkpoint"):
        load_checkpoint(truncated)


def test_a_fold_number_never_shifts_to_another_fold_when_a_session_loses_its_audio(tiny_demo_root, tmp_path, capsys):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    for wav in (root / "Session3").rglob("*.wav"):
        wav.write_bytes(b"RIFF-broken")
    recipe = write_recipe(tmp_path / "r.yaml", recipe_for(root))
    out = tmp_path / "run"
    rc, _, err = run_cli(["run", str(recipe), "--out", str(out), "--folds", "3", "-q"], capsys)
    assert_one_error(rc, err, "fold 'Session3' has no usable utterances left")  # not Session4 trained as "3"
    assert not out.exists()
