"""Launching: the launcher contract and job runner (``jobs``), grids (``grid``) and grids over launchers
(``grid_launch``).

The launcher contract stays importable from here: ``from ser_plugins.launch import Job, JobResult, Launcher``.
"""

from ser_plugins.launch.jobs import (
    RESOURCE_KEYS,
    Job,
    JobResult,
    Launcher,
    LaunchError,
    job_files,
    last_error,
    run_job,
    run_job_in_subprocess,
)

__all__ = [
    "RESOURCE_KEYS",
    "Job",
    "JobResult",
    "LaunchError",
    "Launcher",
    "job_files",
    "last_error",
    "run_job",
    "run_job_in_subprocess",
]
