"""``slurm``: jobs as Slurm array jobs through submitit (``pip install ser-plugins[slurm]``).

Jobs that ask for the same resources go into one array (``sbatch --array``); each array task calls
``ser_plugins.launch.run_job`` on its job. ``executor: local`` runs the same submission through
submitit's local executor (real subprocesses, no ``sbatch``): how it is tested without a cluster.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ser_plugins.launch import Job, JobResult, LaunchError, Launcher, last_error, run_job

#: our resource keys -> submitit's generic AutoExecutor parameters
PARAMETERS = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem_gb", "time_min": "timeout_min",
              "partition": "slurm_partition"}


def executor_parameters(resources: Dict[str, Any], name: str = "ser") -> Dict[str, Any]:
    """submitit ``update_parameters`` keywords for one job's resources (unset ones left to Slurm's defaults)."""
    params: Dict[str, Any] = {"name": name, "tasks_per_node": 1, "nodes": 1}
    for key, value in resources.items():
        if value is not None:
            params[PARAMETERS[key]] = value
    return params


class SlurmLauncher(Launcher):
    """Submits jobs as Slurm arrays with submitit and waits for them.

    ``executor``: ``slurm`` (default), ``local`` (submitit's local executor) or ``auto`` (Slurm
    when ``sbatch`` is found, else local). ``max_parallel`` bounds the running tasks of an array
    (``--array=...%N``); ``account``/``qos``/``constraint`` are passed to Slurm as is.
    """

    def __init__(self, executor: str = "slurm", max_parallel: Optional[int] = None, account: Optional[str] = None,
                 qos: Optional[str] = None, constraint: Optional[str] = None) -> None:
        if executor not in ("slurm", "local", "auto"):
            raise LaunchError(f"launcher slurm: executor must be slurm, local or auto, got {executor!r}")
        self.executor = executor
        self.extra = {k: v for k, v in (("slurm_array_parallelism", max_parallel), ("slurm_account", account),
                                        ("slurm_qos", qos), ("slurm_constraint", constraint)) if v is not None}

    def _executor(self, folder: Path):
        try:
            import submitit
        except ImportError:
            raise LaunchError("launcher slurm needs submitit: pip install ser-plugins[slurm]") from None
        cluster = None if self.executor == "auto" else self.executor
        return submitit.AutoExecutor(folder=str(folder), cluster=cluster)

    def launch(self, jobs: Sequence[Job], log_dir: Path) -> List[JobResult]:
        """One array per distinct resource request; waits for every task."""
        folder = Path(log_dir) / "submitit" / "%j"
        groups: Dict[tuple, List[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(tuple(sorted(job.resources.items())), []).append(i)
        handles: Dict[int, Any] = {}
        for key, members in groups.items():
            executor = self._executor(folder)
            params = executor_parameters(dict(key))
            if executor.cluster != "slurm":  # Slurm-only keys mean nothing to the local executor
                params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
            executor.update_parameters(**params, **(self.extra if executor.cluster == "slurm" else {}))
            for i, handle in zip(members, executor.map_array(run_job, [jobs[i] for i in members])):
                handles[i] = handle
        return [self._result(jobs[i], handles[i]) for i in range(len(jobs))]

    @staticmethod
    def _result(job: Job, handle) -> JobResult:
        log = str(handle.paths.stderr)
        try:
            value = handle.result()
        except Exception as exc:  # submitit raises FailedJobError / UncompletedJobError with the task's traceback
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            detail = next((ln.strip() for ln in reversed(lines) if "Error" in ln.split(":")[0]), None)
            return JobResult(job, "failed", log, f"{type(exc).__name__}: {detail or last_error(Path(log))}")
        return JobResult(job, "done", log, value=value or {})
