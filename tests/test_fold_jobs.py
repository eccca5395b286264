"""Fold jobs: each fold trains under its own lock, so jobs of one run work at once into one run directory."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ser_plugins import cli
from ser_plugins.runtime.atomic import read_json
from ser_plugins.runtime.locking import LockedError, RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMPARED = ("folds", "mean_std", "pooled", "complete", "labels")


@pytest.fixture
def fold_recipe(tmp_path, tiny_demo_root) -> Path:
    from helpers import recipe_for

    path = tmp_path / "fold.yaml"
    path.write_text(yaml.safe_dump(recipe_for(tiny_demo_root, name="fj", training={"max_steps": 6, "epochs": 2},
                                              data={"num_threads": 1})))
    return path


def ser(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ser_plugins.cli", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_two_fold_jobs_in_parallel_give_the_sequential_summary(fold_recipe, tmp_path):
    par, seq = tmp_path / "parallel", tmp_path / "sequential"
    jobs = [ser("run", str(fold_recipe), "--folds", n, "--out", str(par), "-q") for n in ("1", "2")]
    outputs = [j.communicate(timeout=120)[0] for j in jobs]
    assert [j.returncode for j in jobs] == [0, 0], outputs
    one = ser("run", str(fold_recipe), "--folds", "1,2", "--out", str(seq), "-q")
    assert one.wait(timeout=120) == 0, one.communicate()[0]
    a, b = read_json(par / "summary.json"), read_json(seq / "summary.json")
    assert list(a["folds"]) == ["Session1", "Session2"]
    assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}
    for fold in ("Session1", "Session2"):
        assert (par / "folds" / fold / "predictions.csv").read_text() == \
            (seq / "folds" / fold / "predictions.csv").read_text()
    assert "Session1 | " in (par / "results.md").read_text() and "Session2 | " in (par / "results.md").read_text()
    # re-running a fold job skips its finished fold and leaves the summary as it was
    before = (par / "folds" / "Session2" / "metrics.json").stat().st_mtime_ns
    again = ser("run", str(fold_recipe), "--folds", "2", "--out", str(par), "-q")
    assert again.wait(timeout=120) == 0
    assert (par / "folds" / "Session2" / "metrics.json").stat().st_mtime_ns == before
    assert {k: read_json(par / "summary.json")[k] for k in COMPARED} == {k: b[k] for k in COMPARED}


def test_report_over_a_partly_finished_run_marks_it_partial(fold_recipe, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "run"
    assert cli.main(["run", str(fold_recipe), "--folds", "1", "--out", str(out), "-q"]) == 0
    (out / "summary.json").unlink()  # as while another fold job is still running: only folds/*/metrics.json
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| run | fbank |" in table and "| 1 (partial) |" in table
    m = read_json(out / "folds" / "Session1" / "metrics.json")
    assert f"{100 * m['ua']:.2f}" in table
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["report", str(empty)]) == 2
    assert "no finished fold" in capsys.readouterr().err


def test_a_killed_fold_job_leaves_no_stale_lock(tmp_path, tiny_demo_root):
    from helpers import recipe_for

    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(recipe_for(tiny_demo_root, name="long", data={"num_threads": 1},
                                              training={"max_steps": 100000, "epochs": 100})))
    out = tmp_path / "run"
    state = out / "folds" / "Session1" / "last_state.pt"
    job = ser("run", str(path), "--folds", "1", "--out", str(out), "-q")
    deadline = time.time() + 90
    try:
        while not state.exists():
            assert job.poll() is None, job.communicate()[0]
            assert time.time() < deadline, "fold 1 never checkpointed"
            time.sleep(0.05)
        holder = (out / "folds" / "Session1" / ".lock.holder").read_text()
        assert f"pid {job.pid} " in holder
        # meanwhile the fold is refused to anyone else, naming the holder; the run directory itself is free
        with pytest.raises(LockedError, match=f"Session1 is in use by pid {job.pid}"):
            with RunLock(out / "folds" / "Session1"):
                pass
        with RunLock(out / "folds" / "Session2"):
            pass
        os.kill(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert not (out / "folds" / "Session1" / "metrics.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "run", str(path), "--folds", "1", "--out",
                              str(out), "-q", "-o", "training.epochs=100"], env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "folds" / "Session1" / "metrics.json").exists()
    assert json.loads((out / "summary.json").read_text())["folds"].keys() == {"Session1"}
