"""Launchers: ``ser grid --launcher`` runs recipe x fold jobs on a process pool, submitit, or Ray."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from ser_plugins import cli, registry
from ser_plugins.runtime.atomic import read_json
from ser_plugins.launch import Job
from ser_plugins.runtime.locking import RunLock

N_UTTS = 100  # the tiny demo corpus: 5 sessions x 2 speakers x 10 usable utterances


@pytest.fixture
def grid_recipe(tmp_path, tiny_demo_root, monkeypatch) -> Path:
    from helpers import recipe_for

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "lj.yaml"
    path.write_text(yaml.safe_dump(recipe_for(tiny_demo_root, name="lj", training={"max_steps": 4, "epochs": 2},
                                              data={"num_threads": 1})))
    return path


def grid(recipe: Path, out: Path, *extra: str) -> int:
    return cli.main(["grid", str(recipe), "--out", str(out), "-q", "--folds", "1,2", *extra])


def jobs_of(out: Path) -> dict:
    return {j["name"]: j for j in read_json(out / "grid.json")["jobs"]}


def test_launchers_are_plugins_of_their_own_group():
    names = {s.name for s in registry.list_plugins("launcher")}
    assert {"local", "slurm", "ray"} <= names
    with pytest.raises(registry.PluginError, match="worker"):
        registry.create("launcher", "local", worker=2)


def test_local_pool_runs_fold_jobs_and_a_failed_one_is_resubmitted_alone(grid_recipe, tmp_path, capsys):
    out = tmp_path / "grid"
    # a fold held by someone else: its job fails (and says why), the other fold's job finishes
    with RunLock(out / "lj" / "folds" / "Session2"):
        rc = grid(grid_recipe, out, "--launcher", "local", "-L", "workers=2", "--cpus", "1")
    printed = capsys.readouterr().out
    assert rc == 1
    jobs = jobs_of(out)
    assert set(jobs) == {"extract-1", "lj/Session1", "lj/Session2"}
    assert jobs["extract-1"]["state"] == jobs["lj/Session1"]["state"] == "done"
    failed = jobs["lj/Session2"]
    assert failed["state"] == "failed" and "in use by pid" in failed["error"] and Path(failed["log"]).is_file()
    assert "FAILED lj/Session2" in printed and failed["log"] in printed and "--folds Session2" in printed
    assert read_json(out / "grid.json")["upstream_forward_passes"] == N_UTTS  # extracted once, by the first job
    assert json.loads((out / "lj" / "run.json").read_text())["feature_cache"]["hits"] == N_UTTS
    assert "1 (partial)" in (out / "report.md").read_text()
    before = (out / "lj" / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns

    assert grid(grid_recipe, out, "--launcher", "local") == 0  # the same command again: only the failed fold
    assert set(jobs_of(out)) == {"extract-1", "lj/Session2"} and all(j["state"] == "done" for j in jobs_of(out).values())
    assert read_json(out / "grid.json")["upstream_forward_passes"] == 0  # the cache is full
    assert (out / "lj" / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns == before
    summary = read_json(out / "lj" / "summary.json")
    assert list(summary["folds"]) == ["Session1", "Session2"]



def test_slurm_launcher_builds_array_jobs_run_by_submitits_local_executor(grid_recipe, tmp_path, capsys):
    from launchers.slurm import executor_parameters

    assert executor_parameters({"gpus": 1, "cpus": 8, "mem_gb": 32, "time_min": 120, "partition": "gpu"}) == {
        "name": "ser", "tasks_per_node": 1, "nodes": 1, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32,
        "timeout_min": 120, "slurm_partition": "gpu"}
    out = tmp_path / "grid"
    rc = grid(grid_recipe, out, "--launcher", "slurm", "-L", "executor=local", "--jobs-per", "recipe",
              "--time-min", "10", "--partition", "ignored-locally")
    assert rc == 0, capsys.readouterr()
    jobs = jobs_of(out)
    assert set(jobs) == {"extract-1", "lj"} and all(j["state"] == "done" for j in jobs.values())
    assert all("submitit" in j["log"] and Path(j["log"]).is_file() for j in jobs.values())
    summary = read_json(out / "lj" / "summary.json")
    assert list(summary["folds"]) == ["Session1", "Session2"]


def test_slurm_launcher_reports_a_failed_task_with_its_log(tmp_path):
    from launchers.slurm import SlurmLauncher

    bad = Job("broken", str(tmp_path / "missing.yaml"), str(tmp_path / "run"), ["1"])
    [result] = SlurmLauncher(executor="local").launch([bad], tmp_path / "logs")
    assert result.state == "failed" and "missing.yaml" in result.error and Path(result.log).is_file()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install ser-plugins[ray])")
def test_ray_launcher_runs_fold_jobs_on_a_local_ray_instance(grid_recipe, tmp_path, capsys):
    import ray

    out = tmp_path / "grid"
    try:
        rc = grid(grid_recipe, out, "--launcher", "ray", "-L", "num_cpus=2")
    finally:
        ray.shutdown()
    assert rc == 0, capsys.readouterr()
    jobs = jobs_of(out)
    assert set(jobs) == {"extract-1", "lj/Session1", "lj/Session2"} and all(j["state"] == "done" for j in jobs.values())
    assert list(read_json(out / "lj" / "summary.json")["folds"]) == ["Session1", "Session2"]


def test_ray_launcher_without_ray_says_what_to_install(monkeypatch, tmp_path):
    import builtins

    from launchers.ray_launcher import RayLauncher
    from ser_plugins.launch import LaunchError

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "ray" else real_import(name, *a, **k))
    with pytest.raises(LaunchError, match=r"pip install ser-plugins\[ray\]"):
        RayLauncher().launch([], tmp_path)


def test_job_resources_come_from_the_recipe_section_and_the_flags_override_them(tmp_path, tiny_demo_root):
    from helpers import recipe_for

    from ser_plugins.launch.grid import expand
    from ser_plugins.launch.grid_launch import resources_for
    from ser_plugins.recipe import RecipeError, load_recipe

    path = tmp_path / "res.yaml"
    path.write_text(yaml.safe_dump(recipe_for(tiny_demo_root, name="res",
                                              launcher={"gpus": 1, "mem_gb": 16, "partition": "gpu"})))
    [run] = expand([str(path)], [], [], tmp_path / "grid")
    assert resources_for(run, {}) == {"gpus": 1, "mem_gb": 16, "partition": "gpu"}
    assert resources_for(run, {"gpus": 2, "time_min": 30, "cpus": None}) == {
        "gpus": 2, "mem_gb": 16, "partition": "gpu", "time_min": 30}
    with pytest.raises(RecipeError, match="launcher.gpu"):
        load_recipe(str(path), ["launcher.gpu=1"])
    with pytest.raises(RecipeError, match="launcher.cpus"):
        load_recipe(str(path), ["launcher.cpus=0"])


def test_resources_do_not_block_a_resume(tmp_path, fast_recipe, one_torch_thread):
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    out = tmp_path / "run"
    run_recipe(load_recipe(fast_recipe, ["training.epochs=1"]), str(out), folds=["1"], progress=False)
    summary = run_recipe(load_recipe(fast_recipe, ["training.epochs=1", "launcher.gpus=4"]), str(out),
                         folds=["1"], resume=True, progress=False)
    assert list(summary.folds) == ["Session1"]
