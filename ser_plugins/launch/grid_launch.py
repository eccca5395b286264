"""``ser grid --launcher NAME``: the grid's runs cut into recipe x fold jobs and handed to a launcher plugin.

The frozen upstreams run first, one ``extract`` job per shared feature cache (so the fold jobs only
read the cache), then every unfinished fold (``--jobs-per fold``) or run (``--jobs-per recipe``) is
one job. Jobs always resume: finished folds are skipped, so re-running the same grid command
re-submits only what failed or never ran. The report covers whatever has finished (a run with a
missing fold is marked partial); ``grid.json`` lists every job with its state and log file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_plugins.data.prepare import plan
from ser_plugins.launch import RESOURCE_KEYS, Job, JobResult, LaunchError
from ser_plugins.launch.grid import GridResult, GridRun, _upstream_key, expand
from ser_plugins.plugins import registry
from ser_plugins.recipe import dump_recipe
from ser_plugins.results.partial import current_summary
from ser_plugins.results.report import write_report
from ser_plugins.results.run_dir import GRID_FILE, RunDir
from ser_plugins.runtime.atomic import atomic_write_json, atomic_write_text
from ser_plugins.training.runner import select_folds

log = logging.getLogger("ser_plugins")

JOBS_PER = ("fold", "recipe")


def resources_for(run: GridRun, overrides: Dict[str, Any]) -> Dict[str, Any]:
    """A run's ``launcher:`` section with the command line's resource flags on top (unset ones dropped)."""
    merged = run.recipe.launcher.model_dump()
    merged.update({k: v for k, v in overrides.items() if v is not None})
    return {k: merged[k] for k in RESOURCE_KEYS if merged.get(k) is not None}


def plan_jobs(
    runs: Sequence[GridRun], out: Path, folds: Optional[Sequence[str]], jobs_per: str, resources: Dict[str, Any]
) -> Tuple[List[Job], List[Job], int]:
    """``(extract jobs, fold jobs, folds already finished)`` of a grid; each run's recipe is written to ``out/jobs``."""
    if jobs_per not in JOBS_PER:
        raise LaunchError(f"--jobs-per must be one of {', '.join(JOBS_PER)}, got {jobs_per!r}")
    extract: Dict[tuple, Job] = {}
    jobs: List[Job] = []
    finished = 0
    for run in runs:
        recipe_file = out / "jobs" / f"{run.name}.yaml"
        atomic_write_text(recipe_file, dump_recipe(run.recipe))
        res = resources_for(run, resources)
        r = run.recipe
        if r.finetune.mode == "frozen" and r.data.precompute and r.data.cache_dir:
            key = _upstream_key(r) + (run.store_frames,)
            if key not in extract:
                extract[key] = Job(
                    f"extract-{len(extract) + 1}",
                    str(recipe_file),
                    str(run.run_dir),
                    store_frames=run.store_frames,
                    extract=True,
                    resources=res,
                )
        names = [f.name for f in select_folds(plan(r).folds, folds)]
        todo = [n for n in names if not RunDir(run.run_dir).fold_finished(n)]
        finished += len(names) - len(todo)
        if not todo:
            continue
        if jobs_per == "fold":
            jobs += [
                Job(
                    f"{run.name}/{n}",
                    str(recipe_file),
                    str(run.run_dir),
                    [n],
                    store_frames=run.store_frames,
                    resources=res,
                )
                for n in todo
            ]
        else:
            jobs.append(
                Job(
                    run.name,
                    str(recipe_file),
                    str(run.run_dir),
                    list(folds) if folds else None,
                    store_frames=run.store_frames,
                    resources=res,
                )
            )
    extract_jobs = list(extract.values()) if jobs else []  # nothing left to train: nothing to extract
    return extract_jobs, jobs, finished


def launch_grid(
    recipe_paths: Sequence[str],
    out: Path,
    launcher: str,
    launcher_options: Dict[str, Any],
    overrides: Sequence[str] = (),
    sweeps: Sequence[str] = (),
    folds: Optional[Sequence[str]] = None,
    jobs_per: str = "fold",
    resources: Optional[Dict[str, Any]] = None,
    cache_dir: Optional[str] = None,
) -> GridResult:
    """Run a grid through launcher plugin ``launcher``; returns the result with ``failed`` jobs listed."""
    out = Path(out)
    runs = expand(recipe_paths, overrides, sweeps, out, cache_dir)  # every recipe validated before any work
    engine = registry.create("launcher", launcher, **launcher_options)
    extract_jobs, jobs, finished = plan_jobs(runs, out, folds, jobs_per, resources or {})
    log_dir = out / "logs"
    log.info(
        "grid: %d job(s) to launch with %s (%d fold(s) already finished), %d extraction job(s) first",
        len(jobs),
        launcher,
        finished,
        len(extract_jobs),
    )
    results: List[JobResult] = engine.launch(extract_jobs, log_dir) if extract_jobs else []
    failed_extract = [r for r in results if r.state != "done"]
    if failed_extract:  # the fold jobs would all repeat the failing extraction: stop here, say where to look
        results += [JobResult(j, "not run", "", "its feature extraction job failed") for j in jobs]
    elif jobs:
        results += engine.launch(jobs, log_dir)
    result = GridResult(runs)
    result.forward_passes = sum(int(r.value.get("upstream_forward_passes", 0)) for r in results)
    for run in runs:
        files = RunDir(run.run_dir)
        info = files.read_run_info() if files.run_file.exists() else {}
        run.forward_passes = int(info.get("upstream_forward_passes", 0)) if not run.recipe.data.cache_dir else 0
        result.forward_passes += run.forward_passes
    result.jobs = results
    result.failed = [r for r in results if r.state != "done"]
    atomic_write_json(
        out / GRID_FILE,
        {
            "launcher": launcher,
            "jobs_per": jobs_per,
            "runs": [{"name": r.name, "dir": str(r.run_dir), "stored_frames": r.store_frames} for r in runs],
            "jobs": [
                {
                    "name": r.job.name,
                    "state": r.state,
                    "log": r.log,
                    "error": r.error,
                    "folds": r.job.folds,
                    "extract": r.job.extract,
                    "resubmit": None if r.job.extract else r.job.resubmit_command(),
                }
                for r in results
            ],
            "upstream_forward_passes": result.forward_passes,
        },
    )
    reportable = [r.run_dir for r in runs if current_summary(r.run_dir) is not None]
    result.report = write_report(reportable, str(out / "report")) if reportable else "(no finished fold yet)\n"
    return result
