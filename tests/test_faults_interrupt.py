"""Interruption, atomic writes, the run lock, a shared feature cache and unwritable output: a real
``kill -9`` of a real run in fold 3, a writer killed mid-write, two processes on one cache, a disk
that refuses writes. See docs/reliability.md.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest
import torch
import yaml

from ser_plugins import cli
from ser_plugins.runtime.checkpoint import load_state
from ser_plugins.runtime.atomic import atomic_save, atomic_write_json, read_json
from ser_plugins.runtime.locking import LockedError
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import RunError, run_recipe
from helpers import recipe_for


def recipe_dict(root: Path, epochs: int = 1, **sections) -> Dict:
    """The shared quick recipe with ``epochs`` epochs and one torch thread."""
    data = {"num_threads": 1, **sections.pop("data", {})}
    training = {"epochs": epochs, **sections.pop("training", {})}
    output = {"checkpoint_interval": 0, **sections.pop("output", {})}  # a resume checkpoint after every epoch
    return recipe_for(root, name="interrupt", training=training, data=data, output=output, **sections)


def run_in_process(recipe: Dict, out: Path, **kw):
    """``run_recipe`` restoring torch's thread count afterwards (``data.num_threads`` sets it)."""
    threads = torch.get_num_threads()
    try:
        return run_recipe(recipe, str(out), progress=False, **kw)
    finally:
        torch.set_num_threads(threads)


def all_json_parses(run_dir: Path) -> int:
    files = list(run_dir.rglob("*.json"))
    for f in files:
        json.loads(f.read_text())  # raises on a half-written file
    return len(files)


def fold_metrics(run_dir: Path, fold: str) -> Dict:
    m = read_json(run_dir / "folds" / fold / "metrics.json")
    m.pop("seconds")
    return m


# --- kill -9 during fold 3, then ser run --resume -------------------------------------------------------
def test_kill_9_during_fold_3_then_resume_matches_an_uninterrupted_run(tiny_demo_root, tmp_path):
    spec = recipe_dict(tiny_demo_root, epochs=12)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    recipe = load_recipe(spec)
    out = tmp_path / "killed"
    folds = out / "folds"
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ser_plugins.cli", "run", str(path), "--out", str(out), "-q"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    state3 = folds / "Session3" / "last_state.pt"
    lock_checked, seen = False, None
    deadline = time.time() + 240
    try:
        while True:
            assert proc.poll() is None, "the run ended before fold 3 could be killed:\n" + log_path.read_text()
            assert time.time() < deadline, "fold 3 never started"
            if not lock_checked and (folds / "Session1" / "last_state.pt").exists():
                # concurrency: a second run on the same directory is refused while this one holds it
                with pytest.raises(LockedError, match=f"in use by pid {proc.pid}"):
                    run_in_process(recipe, out, resume=True)
                lock_checked = True
            try:
                mtime = state3.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime is not None:
                if seen is not None and mtime != seen:
                    # fold 3 has just checkpointed its second epoch: kill it while it trains the third
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                seen = mtime
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert lock_checked
    done = {f: folds / f / "metrics.json" for f in ("Session1", "Session2")}
    assert all(p.exists() for p in done.values())
    assert not (folds / "Session3" / "metrics.json").exists(), "fold 3 finished before the kill"
    assert not (out / "summary.json").exists()
    progress = load_state(state3)["progress"]
    assert 2 <= progress["epoch"] < 12
    assert all_json_parses(out) >= 3  # run.json + two metrics.json: none half-written
    before = {p: p.stat().st_mtime_ns for f in done for p in (folds / f).iterdir()}

    res = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "run", str(path), "--out", str(out), "--resume"],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fold Session1 already finished; skipping" in res.stderr
    assert "fold Session2 already finished; skipping" in res.stderr
    assert f"fold Session3: resuming after epoch {progress['epoch']}" in res.stderr
    assert {p: p.stat().st_mtime_ns for p in before} == before, "a finished fold was recomputed"

    ref = tmp_path / "uninterrupted"
    summary = run_in_process(recipe, ref)
    resumed = read_json(out / "summary.json")
    assert resumed["folds"] == summary["folds"] and resumed["mean_std"] == summary["mean_std"]
    assert resumed["pooled"] == summary["pooled"] and resumed["complete"]
    for fold in summary["folds"]:
        assert fold_metrics(out, fold) == fold_metrics(ref, fold), fold
        assert (out / "folds" / fold / "predictions.csv").read_text() == \
            (ref / "folds" / fold / "predictions.csv").read_text(), fold
        assert not (out / "folds" / fold / "last_state.pt").exists()
    assert all_json_parses(out) == all_json_parses(ref)


def test_a_crash_between_the_two_last_checkpoint_files_does_not_change_the_result(tiny_demo_root, tmp_path):
    import ser_plugins.training.trainer as trainer_mod

    recipe = load_recipe(recipe_dict(tiny_demo_root, epochs=4))
    run_in_process(recipe, tmp_path / "ref", folds=["1"])

    class _Crash(BaseException):
        pass

    real = trainer_mod.save_state

    def die_before_state(path, state):
        if state["progress"]["epoch"] == 2:  # die while writing epoch 2's resume state
            raise _Crash()
        real(path, state)

    out = tmp_path / "crashed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "save_state", die_before_state)
        with pytest.raises(_Crash):
            run_in_process(recipe, out, folds=["1"])
    run_in_process(recipe, out, folds=["1"], resume=True)
    assert fold_metrics(out, "Session1") == fold_metrics(tmp_path / "ref", "Session1")


# --- atomic writes -----------------------------------------------------------------------------------------
def test_a_writer_failing_mid_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"fold": "old", "wa": 0.5})

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text('{"fold": "new", "wa": 0.')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_save(path, half_then_fail)
    assert read_json(path) == {"fold": "old", "wa": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # the temporary file is removed
    with pytest.raises(ValueError):
        atomic_write_json(path, {"wa": float("nan")})  # NaN is never written as a result
    assert read_json(path) == {"fold": "old", "wa": 0.5}


KILLED_WRITER = """
import os, signal, sys
from ser_plugins.runtime.atomic import atomic_save, atomic_write_json
path = sys.argv[1]
atomic_write_json(path, {"fold": "old", "wa": 0.5})
def writer(tmp):
    with open(tmp, "w") as fh:
        fh.write('{"fold": "new", "wa": 0.')
        fh.flush()
        os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
atomic_save(path, writer)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "summary.json"
    res = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert read_json(path) == {"fold": "old", "wa": 0.5}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "summary.json"]
    assert all(n.startswith(".summary.json.") and n.endswith(".tmp") for n in leftovers)  # never a *.json


def test_every_result_file_of_a_run_is_written_by_an_atomic_rename(tiny_demo_root, tmp_path, monkeypatch):
    renamed = set()
    real_replace = os.replace

    def spy(src, dst, *a, **k):
        renamed.add(str(Path(dst)))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", spy)
    out, cache = tmp_path / "run", tmp_path / "cache"
    run_in_process(load_recipe(recipe_dict(tiny_demo_root, epochs=2, data={"cache_dir": str(cache)})), out,
                   folds=["1"])
    written = [p for d in (out, cache) for p in d.rglob("*") if p.is_file() and p.name != ".lock"]
    assert any(p.suffix == ".safetensors" for p in written) and any(p.name == "metrics.json" for p in written)
    assert len([p for p in written if p.is_relative_to(cache)]) > 100  # spec.json + one entry per utterance
    not_atomic = [str(p) for p in written if str(p) not in renamed]
    assert not not_atomic, f"written without an atomic rename: {not_atomic}"
    assert not [p for p in written if p.name.endswith(".tmp")]


# --- a feature cache shared by two processes -------------------------------------------------------------
CACHE_WORKER = """
import inspect, sys, time
from pathlib import Path
import torch
from ser_plugins.plugins.contracts import Utterance
from ser_plugins.data.feature_cache import FeatureCache
root, wav_dir, go = sys.argv[1:4]
utts = [Utterance(p.stem, str(p), "neu", "s") for p in sorted(Path(wav_dir).rglob("*.wav"))[:12]]
def feats(i):
    g = torch.Generator().manual_seed(i)
    return [torch.randn(40 + i, 8, generator=g), torch.randn(40 + i, 8, generator=g)]
while not Path(go).exists():
    time.sleep(0.001)
cache = FeatureCache(Path(root), {"name": "shared"}, [0, 1], torch.float16)
with_frames = "frames" in inspect.signature(FeatureCache.put).parameters
bad = 0
for rep in range(3):
    for i, u in enumerate(utts):
        f = feats(i)
        cache.put(u, f, f[0].shape[0]) if with_frames else cache.put(u, f)
        got = cache.get(u)
        if isinstance(got, tuple):  # (layers, frame count)
            got = got[0]
        bad += got is None or not all(torch.equal(a, b.to(torch.float16)) for a, b in zip(got, f))
print("bad", bad)
"""


def test_two_processes_sharing_a_feature_cache_never_see_a_partial_entry(tiny_demo_root, tmp_path):
    from ser_plugins.plugins.contracts import Utterance
    from ser_plugins.data.feature_cache import FeatureCache

    cache, go = tmp_path / "cache", tmp_path / "go"
    wav_dir = tiny_demo_root / "Session1" / "sentences" / "wav"
    procs = [subprocess.Popen([sys.executable, "-c", CACHE_WORKER, str(cache), str(wav_dir), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-2000:]
        assert stdout.strip() == "bad 0", stderr[-2000:]
    shared = FeatureCache(cache, {"name": "shared"}, [0, 1], torch.float16)
    utts = [Utterance(p.stem, str(p), "neu", "s") for p in sorted(wav_dir.rglob("*.wav"))[:12]]
    assert all(shared.get(u) is not None for u in utts) and shared.hits == 12
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


# --- unwritable output directory / full disk ----------------------------------------------------------
def test_an_output_path_under_a_regular_file_is_a_clear_error_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where a folder is expected\n")
    missing_corpus = tmp_path / "no_corpus"  # were the corpus read first, the error would be about it
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(missing_corpus)))
    with pytest.raises(RunError, match="cannot write to the run directory"):
        run_in_process(load_recipe(str(path)), blocker / "run")
    rc = cli.main(["run", str(path), "--out", str(blocker / "run"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot write to the run directory") and "Traceback" not in err


def test_a_full_disk_is_a_clear_error_before_any_work(tmp_path, capsys):
    if signal.getsignal(signal.SIGXFSZ) != signal.SIG_IGN:
        pytest.skip("SIGXFSZ is not ignored in this interpreter")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path / "no_corpus")))
    out = tmp_path / "run"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # the kernel refuses any write past 16 KiB (EFBIG) -- a disk with almost no room left, even for root
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, hard))
    try:
        rc = cli.main(["run", str(path), "--out", str(out), "-q"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: cannot write to the run directory") and "File too large" in err
    assert "Traceback" not in err
    assert not (out / "recipe.yaml").exists() and not (out / "folds").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions (the cases above fail for real)")
def test_a_read_only_output_directory_is_a_clear_error(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        with pytest.raises(RunError, match="cannot write to the run directory"):
            run_in_process(load_recipe(recipe_dict(tmp_path / "no_corpus")), parent / "run")
    finally:
        parent.chmod(0o700)
