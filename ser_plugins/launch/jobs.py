"""The launcher contract: recipe x fold jobs handed to an engine (a process pool, Slurm, Ray) and waited for.

A ``Job`` names a recipe file, the folds to run (None: all) and the run directory; every job runs
``Runner(..., resume=True)``, so a re-submitted job skips the folds that are finished and each fold
trains under its own lock. An ``extract`` job only fills the shared feature cache (the frozen
upstream runs once, before the fold jobs read the cache). Launchers are plugins (entry-point group
``ser_plugins.launchers``); the core never imports one. ``python -m ser_plugins.launch JOB.json``
runs one job in this process (what the ``local`` and ``ray`` launchers start, one per job).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_plugins.errors import UserError

log = logging.getLogger("ser_plugins")

#: resource keys a job may ask for (the recipe's ``launcher:`` section, or ``ser grid`` flags)
RESOURCE_KEYS = ("gpus", "cpus", "mem_gb", "time_min", "partition")


class LaunchError(UserError, RuntimeError):
    """A launcher that cannot start (a missing engine, a bad option)."""


@dataclass
class Job:
    """One unit of scale-out: run ``folds`` (None: every fold) of ``recipe`` into ``run_dir``.

    ``extract`` jobs only fill the feature cache. ``resources`` holds the RESOURCE_KEYS the job asks
    for (unset keys are left to the engine's defaults).
    """

    name: str
    recipe: str
    run_dir: str
    folds: Optional[List[str]] = None
    overrides: List[str] = field(default_factory=list)
    store_frames: bool = False
    extract: bool = False
    resources: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (the job file a worker process reads)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Job":
        """From ``to_dict``'s form."""
        return cls(**data)

    def resubmit_command(self) -> str:
        """The shell command that runs this job alone (what a user types after a failure)."""
        folds = f" --folds {','.join(self.folds)}" if self.folds else ""
        extra = "".join(f" -o {o}" for o in self.overrides)
        return f"ser run {self.recipe}{extra}{folds} --out {self.run_dir} --resume"


@dataclass
class JobResult:
    """How a job ended: ``state`` is ``done`` or ``failed``; ``log`` is where its output went."""

    job: Job
    state: str
    log: str
    error: Optional[str] = None
    value: Dict[str, Any] = field(default_factory=dict)


class Launcher(abc.ABC):
    """Runs jobs on an engine and waits for them; subclasses are plugins (``ser_plugins.launchers``).

    ``launch`` submits every job (jobs of one call may run at once: they never share a fold) and
    returns one ``JobResult`` per job, in order, once all have ended; a failed job does not stop the
    others. ``log_dir`` is a folder for the jobs' logs and job files (on a shared filesystem for a
    cluster).
    """

    @abc.abstractmethod
    def launch(self, jobs: Sequence[Job], log_dir: Path) -> List[JobResult]:
        """Run ``jobs``, wait for all of them, return their results."""


def run_job(job: Job) -> Dict[str, Any]:
    """Run one job in this process; returns what it did (folds finished, upstream forward passes)."""
    from ser_plugins.data.prepare import prepare
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import Runner, pick_device

    recipe = load_recipe(job.recipe, job.overrides)
    if job.extract:
        prep = prepare(recipe, pick_device(recipe.training.device), False, store_frames=job.store_frames)
        return {
            "upstream_forward_passes": int(prep.notes.get("upstream_forward_passes", 0)),
            "utterances": len(prep.utterances),
        }
    summary = Runner(
        recipe, Path(job.run_dir), job.folds, resume=True, progress=False, store_frames=job.store_frames
    ).run()
    return {"finished_folds": list(summary.folds), "complete": summary.complete}


def last_error(log_path: Path) -> str:
    """The most telling line of a failed job's log: its ``error:`` line, else the last non-empty line."""
    try:
        lines = [ln.strip() for ln in Path(log_path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or ["(empty log)"])[-1]


def job_files(job: Job, log_dir: Path) -> Tuple[Path, Path, Path]:
    """``(job file, log file, result file)`` of ``job`` under ``log_dir``."""
    stem = Path(log_dir) / job.name.replace("/", "__")
    return stem.with_suffix(".job.json"), stem.with_suffix(".log"), stem.with_suffix(".result.json")


def run_job_in_subprocess(job: Job, log_dir: str, env: Optional[Dict[str, str]] = None) -> JobResult:
    """Run ``job`` as ``python -m ser_plugins.launch`` with its output in a log file; a crash is a failed result."""
    job_file, log_file, result_file = job_files(job, Path(log_dir))
    job_file.parent.mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps(job.to_dict(), indent=1))
    result_file.unlink(missing_ok=True)
    with open(log_file, "w") as out:
        rc = subprocess.call(
            [sys.executable, "-m", "ser_plugins.launch", str(job_file), str(result_file)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    if rc != 0 or not result_file.exists():
        why = f"exit status {rc}" if rc >= 0 else f"killed by signal {-rc}"
        return JobResult(job, "failed", str(log_file), f"{why}: {last_error(log_file)}")
    return JobResult(job, "done", str(log_file), value=json.loads(result_file.read_text()))


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m ser_plugins.launch JOB.json [RESULT.json]``: run one job; user errors print one line, exit 2."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    job = Job.from_dict(json.loads(Path(args[0]).read_text()))
    log.info("job %s: %s", job.name, job.resubmit_command())
    try:
        value = run_job(job)
    except Exception as exc:
        from ser_plugins.errors import user_message

        message = user_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    if len(args) > 1:
        from ser_plugins.runtime.atomic import atomic_write_json

        atomic_write_json(Path(args[1]), value)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
