"""``ray``: jobs as Ray tasks on a Ray cluster (``pip install ser-plugins[ray]``).

Each task runs the job as ``python -m ser_plugins.launch`` on the node Ray picks, with its log on
the (shared) ``log_dir``; ``gpus``/``cpus``/``mem_gb`` become the task's Ray resources.
``address`` is passed to ``ray.init`` (None: connect to a running cluster, else start a local one).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from ser_plugins.launch import Job, JobResult, LaunchError, Launcher, job_files, run_job_in_subprocess


class RayLauncher(Launcher):
    """Runs every job as a Ray task and waits for all of them."""

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
        self.address = address
        self.num_cpus = num_cpus

    def launch(self, jobs: Sequence[Job], log_dir: Path) -> List[JobResult]:
        """Submit one task per job; returns when all have ended."""
        try:
            import ray
        except ImportError:
            raise LaunchError("launcher ray needs Ray: pip install ser-plugins[ray]") from None
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
        task = ray.remote(run_job_in_subprocess)
        refs = []
        for job in jobs:
            r = job.resources
            options = {"num_cpus": r.get("cpus") or 1, "num_gpus": r.get("gpus") or 0}
            if r.get("mem_gb"):
                options["memory"] = int(r["mem_gb"] * 2**30)
            env = {"OMP_NUM_THREADS": str(r["cpus"])} if r.get("cpus") else None
            refs.append(task.options(**options).remote(job, str(log_dir), env))
        results = []
        for job, ref in zip(jobs, refs):
            try:
                results.append(ray.get(ref))
            except Exception as exc:  # the task itself died (node lost, out of memory)
                log = job_files(job, Path(log_dir))[1]
                results.append(JobResult(job, "failed", str(log), f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
        return results
