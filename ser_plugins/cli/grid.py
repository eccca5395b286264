"""The ``ser grid --launcher`` command-line options and their command (kept apart from cli.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

from ser_plugins.errors import UserError


def add_launcher_arguments(g: argparse.ArgumentParser) -> None:
    """``--launcher``, ``--jobs-per``, ``-L key=value`` and the resource flags of ``ser grid``."""
    g.add_argument(
        "--launcher",
        help="run the grid as recipe x fold jobs through this launcher plugin "
        "(built in: local, slurm, ray; see docs/scale-out.md)",
    )
    g.add_argument(
        "--jobs-per",
        choices=("fold", "recipe"),
        default="fold",
        help="with --launcher: one job per recipe x fold (default) or per recipe",
    )
    g.add_argument(
        "-L",
        "--launcher-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the launcher, e.g. -L workers=4 (local), -L executor=local or "
        "-L max_parallel=20 (slurm), -L address=auto (ray); repeatable",
    )
    for flag, kind, text in (
        ("gpus", int, "GPUs per job"),
        ("cpus", int, "CPU cores per job"),
        ("mem-gb", float, "memory per job in GB"),
        ("time-min", int, "time limit per job in minutes"),
        ("partition", str, "Slurm partition"),
    ):
        g.add_argument(
            f"--{flag}", type=kind, help=f"with --launcher: {text} (overrides the recipes' launcher: section)"
        )


def parse_options(items: List[str]) -> Dict[str, Any]:
    """``["workers=4", "executor=local"]`` -> ``{"workers": 4, "executor": "local"}`` (values read as YAML scalars)."""
    from ser_plugins.recipe import safe_load

    options: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--launcher-option {item!r} must look like key=value")
        key, value = item.split("=", 1)
        options[key.strip()] = safe_load(value) if value.strip() else None
    return options


def launched_grid(args: argparse.Namespace, folds: Optional[List[str]]) -> int:
    """Run ``ser grid --launcher``: print the report and every failed job with its log; exit 1 when a job failed."""
    from ser_plugins.launch.grid_launch import launch_grid

    resources = {
        "gpus": args.gpus,
        "cpus": args.cpus,
        "mem_gb": args.mem_gb,
        "time_min": args.time_min,
        "partition": args.partition,
    }
    result = launch_grid(
        args.recipes,
        Path(args.out),
        args.launcher,
        parse_options(args.launcher_option),
        args.override,
        args.sweep,
        folds,
        args.jobs_per,
        resources,
        args.cache_dir,
    )
    print(result.report)
    done = sum(r.state == "done" for r in result.jobs)
    print(
        f"{len(result.runs)} runs, {len(result.jobs)} jobs launched with {args.launcher}: {done} done, "
        f"{len(result.failed)} failed; grid directory: {args.out}"
    )
    for r in result.failed:
        print(
            f"FAILED {r.job.name}: {r.error}\n  log: {r.log}\n  re-submit alone: "
            f"{r.job.resubmit_command() if not r.job.extract else 'run the grid command again'}"
        )
    if result.failed:
        print("re-running the same grid command re-submits only the unfinished folds")
    return 1 if result.failed else 0
