"""``local``: a pool of worker processes on this machine, one ``python -m ser_plugins.launch`` per job."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Sequence

from ser_plugins.launch import Job, JobResult, LaunchError, Launcher, run_job_in_subprocess


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LocalLauncher(Launcher):
    """Runs at most ``workers`` jobs at once as subprocesses.

    A job's ``cpus`` sets its thread count; without it the cores are shared equally among the
    jobs that run at once.
    """

    def __init__(self, workers: int = 2) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise LaunchError(f"launcher local: workers must be an integer >= 1, got {workers!r}")
        self.workers = workers

    def launch(self, jobs: Sequence[Job], log_dir: Path) -> List[JobResult]:
        """Run ``jobs`` on the pool; returns when all have ended."""
        at_once = max(1, min(self.workers, len(jobs)))
        shared = max(1, available_cores() // at_once)  # jobs running together never start more threads than cores

        def one(job: Job) -> JobResult:
            cpus = str(job.resources.get("cpus") or shared)
            return run_job_in_subprocess(job, str(log_dir), {"OMP_NUM_THREADS": cpus, "MKL_NUM_THREADS": cpus})

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, jobs))
