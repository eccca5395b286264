"""The run directory: every file name of it, its layout, and the readers and writers of its files.

This is the one module that knows what a run directory holds::

    runs/<name>/
      recipe.yaml  run.json  summary.json  results.md  confusion_pooled.png  layer_weights.png  .lock
      tensorboard/<fold>/
      folds/<fold>/
        metrics.json  predictions.csv  best.safetensors  normalizer.safetensors  curves.png  confusion.png
        targets.png
        last_state.pt  refit_state.pt  selection.json  .lock      (the last four only while the fold runs)

and a grid directory (``ser grid --out``) its ``grid.json``. The runner, ``ser predict``, ``ser export``,
the ONNX engine, partial reports and grid launching name files through it (``RunDir``, ``FoldDir`` and
the constants below), never by literal. A fold is finished when its ``metrics.json`` exists (written
last). Every writer is atomic (``ser_plugins.runtime.atomic``).

Imports stay light (no torch, no recipe model at import time): the torch-free ONNX engine reads it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

from ser_plugins.runtime.atomic import atomic_write_json, atomic_write_text, read_json
from ser_plugins.runtime.locking import LOCK_NAME

if TYPE_CHECKING:  # pragma: no cover - for annotations only
    from ser_plugins.recipe import Recipe
    from ser_plugins.results.summary import Summary

# --- the run directory's own files -------------------------------------------------------------
#: the resolved recipe (every default filled in); its presence makes a directory a run directory
RECIPE_FILE = "recipe.yaml"
#: environment, device, upstream identity, labels, fold sizes, skips (``run_info`` builds it)
RUN_FILE = "run.json"
#: per-fold and mean ± std WA/UA/F1, pooled confusion, skip counts (``results.summary.Summary``)
SUMMARY_FILE = "summary.json"
#: the results table printed at the end of a run
RESULTS_FILE = "results.md"
#: confusion matrix of all test folds together
POOLED_CONFUSION_FILE = "confusion_pooled.png"
#: learned layer weights per fold (weighted-sum runs)
LAYER_WEIGHTS_FILE = "layer_weights.png"
#: one sub-folder per fold
FOLDS_DIR = "folds"
#: ``tensorboard/<fold>/``: training loss, dev UA/WA, learning rate (when tensorboard is installed)
TENSORBOARD_DIR = "tensorboard"
#: the lock of a run directory (held while a run is set up and while its summary is written) and of a
#: fold directory (held while the fold trains); named by ``ser_plugins.runtime.locking``
LOCK_FILE = LOCK_NAME

# --- a fold's files (``folds/<fold>/``) ----------------------------------------------------------
#: WA, UA, macro-F1, confusion, per-class recall, history; written last: marks the fold finished
METRICS_FILE = "metrics.json"
#: per utterance: id, speaker, label, prediction, class probabilities
PREDICTIONS_FILE = "predictions.csv"
#: the kept weights (head only when the upstream is frozen): what ``ser predict`` and ``ser export`` load
BEST_FILE = "best.safetensors"
#: the fold's normalisation statistics (normalised runs; used by ``ser predict`` and ``ser export``)
NORMALIZER_FILE = "normalizer.safetensors"
#: training loss and dev curves
CURVES_FILE = "curves.png"
#: the fold's test confusion matrix
CONFUSION_FILE = "confusion.png"
#: predicted against true values, one panel per continuous target (regression and multitask runs)
TARGETS_PLOT_FILE = "targets.png"
#: the trainer's resume state (one file, written atomically; deleted when the fold ends)
STATE_FILE = "last_state.pt"
#: the refit's resume state (``training.refit``; deleted when the fold ends)
REFIT_STATE_FILE = "refit_state.pt"
#: a refitting fold's first pass: what the dev set chose (``FitResult`` as JSON; deleted when the fold ends)
SELECTION_FILE = "selection.json"
#: a fold's private resume files, removed once its ``metrics.json`` is written
RESUME_FILES = (STATE_FILE, REFIT_STATE_FILE, SELECTION_FILE)

# --- a grid directory (``ser grid --out``) ----------------------------------------------------------
#: the grid's runs (and with ``--launcher`` its jobs) and the upstream forward passes
GRID_FILE = "grid.json"

#: every file name above, for checks that no other module spells one out
FILE_NAMES = (
    RECIPE_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    RESULTS_FILE,
    POOLED_CONFUSION_FILE,
    LAYER_WEIGHTS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    BEST_FILE,
    NORMALIZER_FILE,
    CURVES_FILE,
    CONFUSION_FILE,
    TARGETS_PLOT_FILE,
    STATE_FILE,
    REFIT_STATE_FILE,
    SELECTION_FILE,
    GRID_FILE,
)

MAX_NAMED_SKIPS = 1000  # skipped utterances and corpus problems named one by one in run.json (all are counted)

PathLike = Union[str, Path]


def run_info(
    *,
    environment: Dict[str, Any],
    device: str,
    precision: str,
    upstream: Any,
    labels: Sequence[str],
    folds: Sequence[Any],
    skipped: Mapping[str, str],
    skipped_counts: Dict[str, int],
    paths: Mapping[str, str],
    corpus_problems: Sequence[Any],
    protocol: str,
    dev: str,
    refit: bool,
    normalize: Optional[str],
    transductive: bool,
    notes: Optional[Mapping[str, Any]] = None,
    task: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """The content of ``run.json`` (its schema, key order included).

    ``folds`` are ``data.folds.Fold``-like (``name``, ``train``, ``dev``, ``test``); ``skipped`` maps an
    utterance id to the reason it was skipped and ``paths`` ids to their audio files: the first
    ``MAX_NAMED_SKIPS`` skips and corpus problems are named one by one, all are counted. ``notes``
    (extraction and cache figures) are added at the top level.
    """
    skipped_files = [
        {"id": uid, "path": paths.get(uid, ""), "reason": reason}
        for uid, reason in sorted(skipped.items())[:MAX_NAMED_SKIPS]
    ]
    return {
        "environment": environment,
        "device": device,
        "precision": precision,
        "upstream": upstream,
        "labels": labels,
        **({"task": dict(task)} if task else {}),
        "folds": [{"name": f.name, "train": len(f.train), "dev": len(f.dev), "test": len(f.test)} for f in folds],
        "skipped": skipped_counts,
        "skipped_files": skipped_files,
        "corpus_problems": len(corpus_problems),
        "corpus_problem_details": corpus_problems[:MAX_NAMED_SKIPS],  # e.g. a manifest row's missing audio
        "evaluation": {
            "protocol": protocol,
            "dev": dev,
            "refit": refit,
            "normalize": normalize,
            "transductive": transductive,
        },
        **(notes or {}),
    }


def predictions_csv(
    ids: Sequence[str],
    speakers: Mapping[str, str],
    labels: Sequence[str],
    targets: Sequence[int],
    predictions: Sequence[int],
    probabilities: Sequence[Sequence[float]],
    target_names: Sequence[str] = (),
    true_values: Optional[Sequence[Sequence[float]]] = None,
    values: Optional[Sequence[Sequence[float]]] = None,
) -> str:
    """``predictions.csv``'s text: ``id, speaker, label, prediction, p_<label>...`` (probabilities to 5 decimals).

    With continuous targets (``target_names``): ``true_<name>, pred_<name>`` per target follow (the
    class columns only when ``labels`` is not empty); values are written in full (``repr``), so
    pooled metrics read back from the file are exact.
    """
    buf = io.StringIO()
    w = csv.writer(buf)
    head = ["id", "speaker"]
    if labels:
        head += ["label", "prediction"] + [f"p_{lab}" for lab in labels]
    head += [f"{kind}_{name}" for name in target_names for kind in ("true", "pred")]
    w.writerow(head)
    for i, uid in enumerate(ids):
        row = [uid, speakers[uid]]
        if labels:
            row += [labels[targets[i]], labels[predictions[i]]] + [f"{p:.5f}" for p in probabilities[i]]
        if target_names and true_values is not None and values is not None:
            for k in range(len(target_names)):
                row += [repr(float(true_values[i][k])), repr(float(values[i][k]))]
        w.writerow(row)
    return buf.getvalue()


def read_target_values(path: Path, target_names: Sequence[str]) -> Any:
    """``(true [N, K], predicted [N, K])`` float64 arrays of a ``predictions.csv`` with continuous targets."""
    import numpy as np

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    true = np.array([[float(r[f"true_{n}"]) for n in target_names] for r in rows], dtype=np.float64)
    pred = np.array([[float(r[f"pred_{n}"]) for n in target_names] for r in rows], dtype=np.float64)
    k = len(target_names)
    return true.reshape(-1, k), pred.reshape(-1, k)


class FoldDir:
    """One fold's folder, ``<run>/folds/<name>/``: its file paths, readers and writers."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        """The fold's name (the folder's name)."""
        return self.path.name

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"FoldDir({str(self.path)!r})"

    metrics = property(lambda self: self.path / METRICS_FILE, doc="``metrics.json``: the fold's test results")
    predictions = property(lambda self: self.path / PREDICTIONS_FILE, doc="``predictions.csv``")
    best = property(lambda self: self.path / BEST_FILE, doc="``best.safetensors``: the kept weights")
    normalizer = property(lambda self: self.path / NORMALIZER_FILE, doc="``normalizer.safetensors``")
    curves = property(lambda self: self.path / CURVES_FILE, doc="``curves.png``")
    confusion = property(lambda self: self.path / CONFUSION_FILE, doc="``confusion.png``")
    scatter = property(lambda self: self.path / TARGETS_PLOT_FILE, doc="``targets.png``: predicted vs true values")
    state = property(lambda self: self.path / STATE_FILE, doc="``last_state.pt``: the trainer's resume state")
    refit_state = property(lambda self: self.path / REFIT_STATE_FILE, doc="``refit_state.pt``: the refit's")
    selection = property(lambda self: self.path / SELECTION_FILE, doc="``selection.json``: the first pass's result")
    lock = property(lambda self: self.path / LOCK_FILE, doc="``.lock``: held while the fold trains")

    @property
    def finished(self) -> bool:
        """True when the fold's ``metrics.json`` exists (it is written last)."""
        return self.metrics.exists()

    def mkdir(self) -> "FoldDir":
        """Create the folder (and the run's ``folds/``); returns self."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def write_metrics(self, metrics: Dict[str, Any]) -> None:
        """Write ``metrics.json`` (last of a fold's results: it marks the fold finished)."""
        atomic_write_json(self.metrics, metrics)

    def read_metrics(self) -> Dict[str, Any]:
        """The fold's ``metrics.json`` (a damaged file is a ``CorruptFileError`` naming it)."""
        return read_json(self.metrics)

    def write_predictions(
        self, test: Mapping[str, Any], speakers: Mapping[str, str], labels: Sequence[str], task: Any = None
    ) -> None:
        """Write ``predictions.csv`` from an evaluation's result (``ids``, ``targets``, ``predictions``,
        ``probabilities``, and with continuous targets ``values`` and ``true_values``); ``task`` is the
        run's ``TaskSpec`` (None: classification over ``labels``)."""
        names = list(task.targets) if task is not None else []
        shown = labels if task is None or task.has_classes else []
        atomic_write_text(
            self.predictions,
            predictions_csv(
                test["ids"],
                speakers,
                shown,
                test["targets"],
                test["predictions"],
                test["probabilities"],
                names,
                test.get("true_values"),
                test.get("values"),
            ),
        )

    def read_target_values(self, target_names: Sequence[str]) -> Any:
        """``(true, predicted)`` ``[N, K]`` arrays of this fold's test utterances (``predictions.csv``)."""
        return read_target_values(self.predictions, target_names)

    def write_selection(self, fit: Dict[str, Any]) -> None:
        """Write ``selection.json``: a refitting fold's first pass (``FitResult.to_dict()``)."""
        atomic_write_json(self.selection, fit)

    def read_selection(self) -> Dict[str, Any]:
        """The first pass saved in ``selection.json``."""
        return read_json(self.selection)

    def remove_resume_state(self) -> None:
        """Delete the fold's private resume files (``RESUME_FILES``): the fold is finished."""
        for private in RESUME_FILES:
            (self.path / private).unlink(missing_ok=True)


class RunDir:
    """A run directory: the paths of its files, and their readers and writers.

    ``RunDir(path)`` touches nothing on disk; ``is_run`` says whether a run was ever written there
    (its ``recipe.yaml`` exists).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    recipe = property(lambda self: self.path / RECIPE_FILE, doc="``recipe.yaml``: the resolved recipe")
    run_file = property(lambda self: self.path / RUN_FILE, doc="``run.json``: what the run found and ran on")
    summary = property(lambda self: self.path / SUMMARY_FILE, doc="``summary.json``")
    results = property(lambda self: self.path / RESULTS_FILE, doc="``results.md``: the results table")
    pooled_confusion = property(lambda self: self.path / POOLED_CONFUSION_FILE, doc="``confusion_pooled.png``")
    layer_weights = property(lambda self: self.path / LAYER_WEIGHTS_FILE, doc="``layer_weights.png``")
    folds_dir = property(lambda self: self.path / FOLDS_DIR, doc="``folds/``: one folder per fold")
    lock = property(lambda self: self.path / LOCK_FILE, doc="``.lock``: the run directory's lock")

    @property
    def is_run(self) -> bool:
        """True when the directory holds a run (its ``recipe.yaml`` exists)."""
        return self.recipe.exists()

    def fold(self, name: str) -> FoldDir:
        """The folder of fold ``name`` (not created)."""
        return FoldDir(self.folds_dir / name)

    def tensorboard(self, fold: str) -> Path:
        """``tensorboard/<fold>/``: the fold's tensorboard logs."""
        return self.path / TENSORBOARD_DIR / fold

    # --- recipe.yaml ---------------------------------------------------------------------------
    def write_recipe(self, recipe: "Recipe") -> None:
        """Write the resolved recipe as ``recipe.yaml``."""
        from ser_plugins.recipe import dump_recipe

        atomic_write_text(self.recipe, dump_recipe(recipe))

    def read_recipe(self) -> Any:
        """The saved ``recipe.yaml`` as plain data (YAML problems propagate: callers name the file)."""
        from ser_plugins.recipe import safe_load

        return safe_load(self.recipe.read_text())

    # --- run.json --------------------------------------------------------------------------------
    def write_run_info(self, info: Dict[str, Any]) -> None:
        """Write ``run.json`` (its content from ``run_info``)."""
        atomic_write_json(self.run_file, info)

    def read_run_info(self) -> Dict[str, Any]:
        """The saved ``run.json``."""
        return read_json(self.run_file)

    def fold_order(self) -> List[str]:
        """The run's fold names in its order (``run.json``); empty when it has not been written."""
        if not self.run_file.exists():
            return []
        return [f["name"] for f in self.read_run_info().get("folds", [])]

    # --- summary.json, results.md ------------------------------------------------------------------
    def write_summary(self, summary: "Summary") -> None:
        """Write ``summary.json`` and ``results.md``."""
        atomic_write_json(self.summary, summary.to_dict())
        atomic_write_text(self.results, summary.to_markdown())

    def read_summary(self) -> "Summary":
        """The saved ``summary.json``."""
        from ser_plugins.results.summary import Summary

        return Summary.load(self.summary)

    # --- the folds ---------------------------------------------------------------------------------
    def fold_finished(self, name: str) -> bool:
        """True when fold ``name`` has its ``metrics.json``."""
        return self.fold(name).finished

    def read_fold_metrics(self, name: str) -> Dict[str, Any]:
        """Fold ``name``'s ``metrics.json``."""
        return self.fold(name).read_metrics()

    def write_fold_metrics(self, name: str, metrics: Dict[str, Any]) -> None:
        """Write fold ``name``'s ``metrics.json`` (it marks the fold finished)."""
        self.fold(name).write_metrics(metrics)

    def finished_folds(self) -> Dict[str, Dict[str, Any]]:
        """``{fold name: metrics}`` of every finished fold, in the run's fold order (``run.json``) when known."""
        order = self.fold_order()
        found = {p.parent.name: p for p in self.folds_dir.glob(f"*/{METRICS_FILE}")}
        names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
        return {n: read_json(found[n]) for n in names}

    def checkpoints(self, fold: Optional[str] = None) -> List[Path]:
        """The folds' ``best.safetensors`` files, sorted by fold (only ``fold``'s when given)."""
        found = sorted(self.folds_dir.glob(f"*/{BEST_FILE}"))
        return [c for c in found if c.parent.name == fold] if fold else found

    def trained_folds(self) -> List[str]:
        """Names of the folds that have a best checkpoint, sorted."""
        return sorted(c.parent.name for c in self.folds_dir.glob(f"*/{BEST_FILE}"))
