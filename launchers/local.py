"""``local``: a pool of worker processes on this machine, one ``python -m ser_plugins.launch`` per job."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Sequence

from ser_plugins.launch import Job, JobResult, LaunchError, Launcher, run_job_in_subprocess


class LocalLauncher(Launcher):
    """Runs at most ``workers`` jobs at once as subprocesses; a job's ``cpus`` sets its thread count."""

    def __init__(self, workers: int = 2) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise LaunchError(f"launcher local: workers must be an integer >= 1, got {workers!r}")
        self.workers = workers

    def launch(self, jobs: Sequence[Job], log_dir: Path) -> List[JobResult]:
        """Run ``jobs`` on the pool; returns when all have ended."""
        def one(job: Job) -> JobResult:
            cpus = job.resources.get("cpus")
            env = {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus)} if cpus else None
            return run_job_in_subprocess(job, str(log_dir), env)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, jobs))
