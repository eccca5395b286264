"""``ser grid``: several recipes (and ``--sweep`` variants) run as one study, one report at the end.

Frozen runs of one upstream share one extraction: the grid gives every frozen recipe without a
``data.cache_dir`` the grid's own cache folder, and when any head of an upstream needs frames,
every run of that upstream stores frames (a mean-only head computes its means from them, exactly),
so the upstream runs once per utterance for the whole grid. Each run writes its usual run
directory; ``grid.json`` counts the upstream forward passes of each run and in total.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ser_plugins.data.prepare import needs_frames
from ser_plugins.errors import UserError
from ser_plugins.recipe import Recipe, load_recipe
from ser_plugins.results.report import write_report
from ser_plugins.results.run_dir import GRID_FILE, RunDir
from ser_plugins.runtime.atomic import atomic_write_json
from ser_plugins.training.runner import Runner

log = logging.getLogger("ser_plugins")


class GridError(UserError, ValueError):
    """A grid that cannot be expanded (a malformed ``--sweep``)."""


@dataclass
class GridRun:
    """One run of a grid: its name, recipe and run directory."""

    name: str
    recipe: Recipe
    run_dir: Path
    store_frames: bool = False
    forward_passes: int = 0


@dataclass
class GridResult:
    """What a grid ran: the runs, the total upstream forward passes and the report (markdown)."""

    runs: List[GridRun] = field(default_factory=list)
    forward_passes: int = 0
    report: str = ""
    jobs: List[Any] = field(default_factory=list)  # launch.JobResult per job (ser grid --launcher)
    failed: List[Any] = field(default_factory=list)  # the jobs that did not finish


def parse_sweeps(sweeps: Sequence[str]) -> List[List[str]]:
    """``["aggregator=mean,stats", "training.lr=0.01,0.03"]`` -> lists of overrides, one list per key."""
    axes = []
    for item in sweeps or []:
        if "=" not in item:
            raise GridError(f"--sweep {item!r} must look like section.key=value1,value2")
        key, values = item.split("=", 1)
        options = [v for v in values.split(",") if v != ""]
        if not options:
            raise GridError(f"--sweep {item!r} lists no values")
        axes.append([f"{key}={v}" for v in options])
    return axes


def expand(
    recipe_paths: Sequence[str],
    overrides: Sequence[str],
    sweeps: Sequence[str],
    out: Path,
    cache_dir: Optional[str] = None,
) -> List[GridRun]:
    """Every recipe x every sweep combination, validated; frozen ones share the grid's feature cache."""
    axes = parse_sweeps(sweeps)
    shared_cache = cache_dir or str(out / "feature_cache")
    runs: List[GridRun] = []
    names: Dict[str, int] = {}
    for path in recipe_paths:
        for combo in itertools.product(*axes) if axes else [()]:
            extra = list(overrides) + list(combo)
            recipe = load_recipe(path, extra)
            if recipe.finetune.mode == "frozen" and recipe.data.precompute and not recipe.data.cache_dir:
                recipe = load_recipe(path, extra + [f"data.cache_dir={shared_cache}"])
            name = recipe.name + "".join("_" + c.split("=", 1)[1].replace("/", "-") for c in combo)
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name = f"{name}_{names[name]}"
            runs.append(GridRun(name, recipe, out / name))
    _mark_frame_storage(runs)
    return runs


def _upstream_key(recipe: Recipe) -> Tuple[Any, ...]:
    return (
        recipe.upstream.name,
        repr(sorted(recipe.upstream.options.items())),
        recipe.data.cache_dir,
        recipe.data.cache_dtype,
        recipe.training.precision,
    )


def _mark_frame_storage(runs: List[GridRun]) -> None:
    """Store frames for every frozen run of an upstream when any head of that upstream needs frames."""
    frozen = [r for r in runs if r.recipe.finetune.mode == "frozen" and r.recipe.data.precompute]
    wanting = {_upstream_key(r.recipe) for r in frozen if needs_frames(r.recipe)}
    for r in frozen:
        r.store_frames = _upstream_key(r.recipe) in wanting


def run_grid(
    recipe_paths: Sequence[str],
    out: Path,
    overrides: Sequence[str] = (),
    sweeps: Sequence[str] = (),
    folds: Optional[Sequence[str]] = None,
    resume: bool = False,
    progress: bool = True,
    cache_dir: Optional[str] = None,
) -> GridResult:
    """Run every recipe of the grid into ``out/<name>``, then write ``grid.json`` and ``report.md/.csv``."""
    out = Path(out)
    runs = expand(recipe_paths, overrides, sweeps, out, cache_dir)  # every recipe validated before any work
    result = GridResult(runs)
    for run in runs:
        log.info("grid: %s -> %s", run.name, run.run_dir)
        Runner(run.recipe, run.run_dir, folds, resume, progress, store_frames=run.store_frames).run()
        run.forward_passes = int(RunDir(run.run_dir).read_run_info().get("upstream_forward_passes", 0))
        result.forward_passes += run.forward_passes
    atomic_write_json(
        out / GRID_FILE,
        {
            "runs": [
                {
                    "name": r.name,
                    "dir": str(r.run_dir),
                    "upstream_forward_passes": r.forward_passes,
                    "stored_frames": r.store_frames,
                }
                for r in runs
            ],
            "upstream_forward_passes": result.forward_passes,
        },
    )
    result.report = write_report([r.run_dir for r in runs], str(out / "report"))
    return result
