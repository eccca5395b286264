"""Predictions from an exported folder (``ser export``) with onnxruntime: no torch, no training code.

Imports only numpy, onnxruntime, ``ser_plugins.deploy.scoring`` (numpy, soundfile + soxr) and the run
directory's file names (``ser_plugins.results.run_dir``, standard library only). A folder holds one
``model.onnx`` + ``model.json``, or one subfolder per fold (``ser export --all-folds``), whose
probabilities are averaged like ``ser predict`` averages a run's folds. Files are decoded, checked and
reported by the same code as the PyTorch engine's (``ser_plugins.deploy.scoring.score_files``).

A regression or multitask export (format version 2) records its ``task`` (kind, labels, targets) and
has a ``values`` output (the target values, on the corpus's scale) beside or instead of
``probabilities``; the engine names the values after the task's targets and averages them over folds too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ser_plugins.deploy.scoring import OneByOne, Outcome
from ser_plugins.errors import UserError
from ser_plugins.results.run_dir import RECIPE_FILE

#: an export's files and format, defined once here (``ser export`` writes what this engine reads)
SIDECAR = "model.json"
ONNX_FILE = "model.onnx"
FORMAT = "ser-plugins-onnx"
FORMAT_VERSION = 1
#: the format of an export with continuous targets (a ``task`` and a ``values`` output): an engine that reads
#: only version 1 refuses it rather than mistaking the values for probabilities
TARGETS_FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (FORMAT_VERSION, TARGETS_FORMAT_VERSION)


class EngineError(UserError, ValueError):
    """An exported folder that cannot be used, or audio it cannot take."""


def find_exports(folder: Path) -> List[Path]:
    """Sidecar files of an exported folder: its own ``model.json``, else one per fold subfolder."""
    folder = Path(folder)
    if (folder / SIDECAR).is_file():
        return [folder / SIDECAR]
    found = sorted(folder.glob(f"*/{SIDECAR}"))
    if found:
        return found
    if (folder / RECIPE_FILE).is_file():
        raise EngineError(
            f"{folder} is a run directory, not an exported model: run 'ser export {folder} --out DIR' "
            "and pass DIR, or drop --engine onnx"
        )
    raise EngineError(
        f"{folder} holds no exported model ({SIDECAR}); make one with 'ser export RUN_DIR --out {folder}'"
    )


def read_sidecar(path: Path) -> Dict[str, Any]:
    """Read and check one ``model.json``."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path}: cannot read the export description ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") not in SUPPORTED_VERSIONS:
        raise EngineError(
            f"{path}: not a ser-plugins ONNX export this version reads "
            f"(format {meta.get('format')!r} version {meta.get('format_version')!r})"
        )
    return meta


def sidecar_task(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``{"kind", "labels", "targets"}`` of a sidecar (a version 1 export: classification over its ``labels``)."""
    task = meta.get("task") or {}
    labels = list(task.get("labels", meta.get("labels", [])))
    return {"kind": task.get("kind", "classification"), "labels": labels, "targets": list(task.get("targets", []))}


def sidecar_outputs(meta: Dict[str, Any]) -> List[str]:
    """The graph outputs to run, in the order of a score row: ``probabilities`` (classes), then ``values``."""
    task = sidecar_task(meta)
    names = [meta["output"]["name"]] if task["kind"] != "regression" else []
    if task["kind"] != "classification":
        names.append(meta["values"]["name"])
    return names


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise EngineError(f"--engine onnx needs onnxruntime: pip install 'ser-plugins[onnx]' ({exc})") from None
    return onnxruntime


class OnnxPredictor(OneByOne):
    """Class probabilities (and target values) from one or several exported folds (averaged), with onnxruntime
    on CPU (a ``Scorer``).

    ``threads``: onnxruntime intra-op threads (0: its default). ``min_speaker_files``: as for
    ``ser_plugins.deploy.predict.Predictor``; an exported speaker-normalised model applies its fold's typical
    speaker statistics, so scoring at least that many files at once (where the PyTorch engine would use
    the files' own statistics) is refused rather than answered differently.
    """

    def __init__(self, folder: Path, threads: int = 0, min_speaker_files: int = 10) -> None:
        ort = _onnxruntime()
        self.folder = Path(folder)
        self.min_speaker_files = min_speaker_files
        self.metas = [read_sidecar(p) for p in find_exports(self.folder)]
        first = self.metas[0]
        for meta in self.metas[1:]:
            if (
                meta["labels"] != first["labels"]
                or meta["sample_rate"] != first["sample_rate"]
                or sidecar_task(meta) != sidecar_task(first)
            ):
                raise EngineError(f"{self.folder}: the exported folds disagree on labels, targets or sample rate")
        task = sidecar_task(first)
        self.labels: List[str] = list(task["labels"])
        self.targets: List[str] = list(task["targets"])
        try:
            self.outputs = [sidecar_outputs(m) for m in self.metas]
        except (KeyError, TypeError) as exc:
            raise EngineError(f"{self.folder}: an export description without its output names ({exc})") from None
        self.sample_rate = int(first["sample_rate"])
        self.min_samples = max(int(m["input"].get("min_samples", 1)) for m in self.metas)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        self.sessions = []
        for path, meta in zip(find_exports(self.folder), self.metas):
            model = path.parent / meta["onnx"]
            if not model.is_file():
                raise EngineError(f"{model} is missing (named in {path})")
            self.sessions.append(ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]))

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``[B, C + K]`` probabilities (then target values) for ``windows`` ``[B, S]``: ``B`` whole utterances
        of equal length."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] < self.min_samples:
            raise EngineError(
                f"the model takes [batch, samples] with at least {self.min_samples} samples, got shape {x.shape}"
            )
        total: Optional[np.ndarray] = None
        for session, meta, names in zip(self.sessions, self.metas, self.outputs):
            parts = session.run(names, {meta["input"]["name"]: x})
            out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
            total = out if total is None else total + out
        assert total is not None  # one session per fold, at least one fold (checked on loading)
        return (total / len(self.sessions)).astype(np.float32)

    @property
    def speaker_normalised(self) -> bool:
        """True when a fold standardises with speaker statistics (the typical ones, baked into the graph)."""
        return any((m.get("normalisation") or {}).get("kind") == "speaker" for m in self.metas)

    def score(self, waves: Sequence[np.ndarray]) -> List[Outcome]:
        """The probabilities of each waveform, one at a time; refuses what only the PyTorch engine can do."""
        if self.speaker_normalised and len(waves) >= self.min_speaker_files:
            raise EngineError(
                f"{self.folder}: {len(waves)} usable files reach --min-speaker-files {self.min_speaker_files}, where "
                "ser predict standardises them with their own speaker statistics; the exported model can only use "
                "its fold's typical speaker statistics. Score them with the run directory (--engine torch), or "
                f"pass --min-speaker-files {len(waves) + 1} to use the typical statistics"
            )
        self.speaker_statistics = "typical" if self.speaker_normalised else None  # as the torch engine's attribute
        return super().score(waves)
