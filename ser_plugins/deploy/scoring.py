"""Scoring audio files, the same way for every engine: the ``Scorer`` protocol, the per-file loop, the output.

``ser predict`` scores files with a run directory (``ser_plugins.deploy.predict.Predictor``, PyTorch) or an
exported folder (``ser_plugins.deploy.onnx_engine.OnnxPredictor``, onnxruntime); both are ``Scorer`` s and go
through ``score_files`` (decode, check, score) and ``write_results`` (text, JSON or CSV, warnings, exit
status). A file that cannot be read, or that training would have skipped, gets its reason instead of a
score; the other files are still scored.

Imports only numpy and ``ser_plugins.data.audio``: the ONNX engine uses it without torch.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Protocol, Sequence, TextIO, Union

import numpy as np

from ser_plugins.data.audio import AudioError, load_audio, signal_problem

FORMATS = ("text", "json", "csv")


class Problem(NamedTuple):
    """Why a file was not scored: a short ``reason`` key and a one-line ``detail``."""

    reason: str
    detail: str


#: what a scorer gives for one waveform: its class probabilities ``[C]``, or why it could not score it
Outcome = Union[np.ndarray, Problem]


class Scorer(Protocol):
    """Waveforms -> class probabilities: the PyTorch run predictor, the exported graph and the ONNX engine.

    ``labels``: the class order; ``sample_rate``: the rate waveforms must have; ``min_samples``: the
    shortest waveform the model takes.
    """

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def min_samples(self) -> int: ...

    def score(self, waves: Sequence[np.ndarray]) -> List[Outcome]:
        """One outcome per waveform (mono float32 at ``sample_rate``, at least ``min_samples`` long), in order."""


class WindowScorer(Scorer, Protocol):
    """A ``Scorer`` that also takes a batch of equal-length waveforms at once (``ser predict --window``)."""

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``[B, C]`` float32 probabilities for ``windows`` ``[B, S]``: ``B`` whole utterances of equal length."""


class OneByOne:
    """``score`` and ``predict_files`` for a ``WindowScorer``: each file alone, as a batch of one (never padded)."""

    labels: Sequence[str]
    sample_rate: int
    min_samples: int

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``WindowScorer.probabilities``: each subclass defines it."""
        raise NotImplementedError

    def score(self, waves: Sequence[np.ndarray]) -> List[Outcome]:
        """The probabilities of each waveform, one at a time."""
        return [self.probabilities(wave[None, :])[0] for wave in waves]

    def predict_files(self, paths: Sequence[str]) -> List[Dict[str, Any]]:
        """``score_files`` with this scorer."""
        return score_files(self, paths)


def check_audio(path: str, sample_rate: int, min_samples: int = 1) -> Union[np.ndarray, Problem]:
    """The decoded waveform of ``path``, or why it cannot be scored (the reasons training skips files for).

    ``unreadable`` (missing, not audio), ``empty``, ``non_finite`` (NaN/inf samples), ``too_short``,
    ``silent`` (digital silence), ``constant`` (a DC signal).
    """
    try:
        wave = load_audio(str(path), sample_rate, min_samples=min_samples)
    except AudioError as exc:
        return audio_problem(exc)
    problem = signal_problem(wave)
    return Problem(*problem) if problem is not None else wave


def audio_problem(exc: AudioError) -> Problem:
    """The ``Problem`` an ``AudioError`` stands for (its message is ``path: reason (detail)``)."""
    detail = str(exc)[len(f"{exc.path}: {exc.reason}") :].strip(" ()")
    return Problem(exc.reason, detail or exc.reason)


def score_files(scorer: Scorer, paths: Sequence[str]) -> List[Dict[str, Any]]:
    """One result per file, in order: ``{"path", "emotion", "probabilities", "problem", "detail"}``.

    A scored file has ``problem`` None. A file that cannot be read or that training would skip has
    ``emotion`` and ``probabilities`` None and ``problem`` set to the reason (those of ``check_audio``,
    or the scorer's: ``non_finite_features``, ``non_finite_output``) with a one-line ``detail``. The
    usable files go to the scorer together (a speaker-normalised run pools their statistics).
    """
    results: List[Dict[str, Any]] = [
        {"path": str(p), "emotion": None, "probabilities": None, "problem": None, "detail": ""} for p in paths
    ]
    waves: Dict[int, np.ndarray] = {}
    for i, path in enumerate(paths):
        checked = check_audio(path, scorer.sample_rate, scorer.min_samples)
        if isinstance(checked, Problem):
            _flag(results[i], checked)
        else:
            waves[i] = checked
    for i, outcome in zip(waves, scorer.score(list(waves.values()))):
        if isinstance(outcome, Problem):
            _flag(results[i], outcome)
        elif not np.all(np.isfinite(outcome)):
            _flag(results[i], Problem("non_finite_output", "the model gives non-finite probabilities"))
        else:
            results[i]["emotion"] = scorer.labels[int(np.argmax(outcome))]
            results[i]["probabilities"] = {lab: float(p) for lab, p in zip(scorer.labels, outcome)}
    return results


def _flag(result: Dict[str, Any], problem: Problem) -> None:
    result["problem"], result["detail"] = problem.reason, problem.detail


def format_results(results: Sequence[Dict[str, Any]], labels: Sequence[str], fmt: str = "text") -> str:
    """The results of ``score_files`` as ``text`` (one tab-separated line per file), ``json`` or ``csv``.

    text: ``path<TAB>emotion<TAB>label=p ...`` for a scored file, ``path<TAB>-<TAB>not scored: reason
    (detail)`` for the others. json: a list of objects with ``path``, ``status`` (``ok`` or
    ``error``), ``emotion``, ``probabilities``, ``problem``, ``detail``. csv: a header line
    ``path,status,emotion,problem,detail,p_<label>...``.
    """
    if fmt == "json":
        rows = [
            {
                "path": r["path"],
                "status": "ok" if r["problem"] is None else "error",
                "emotion": r["emotion"],
                "probabilities": r["probabilities"],
                "problem": r["problem"],
                "detail": r["detail"],
            }
            for r in results
        ]
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "status", "emotion", "problem", "detail"] + [f"p_{lab}" for lab in labels])
        for r in results:
            ok = r["problem"] is None
            probs = [f"{r['probabilities'][lab]:.5f}" for lab in labels] if ok else [""] * len(labels)
            w.writerow(
                [r["path"], "ok" if ok else "error", r["emotion"] or "", r["problem"] or "", r["detail"]] + probs
            )
        return buf.getvalue()
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return "".join(_text_line(r) + "\n" for r in results)


def _text_line(result: Dict[str, Any]) -> str:
    if result["problem"] is not None:
        return not_scored_line(result["path"], Problem(result["problem"], result["detail"]))
    probs = " ".join(f"{k}={v:.3f}" for k, v in result["probabilities"].items())
    return f"{result['path']}\t{result['emotion']}\t{probs}"


def not_scored_line(path: str, problem: Problem) -> str:
    """The text line of a file not scored: ``path<TAB>-<TAB>not scored: reason (detail)``."""
    return f"{path}\t-\tnot scored: {problem.reason} ({problem.detail})"


def write_results(
    results: Sequence[Dict[str, Any]],
    labels: Sequence[str],
    fmt: str = "text",
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> int:
    """Write the results to ``out`` (stdout) and a warning per file not scored to ``err`` (stderr).

    Returns the exit status of ``ser predict``: 0 when every file was scored, 1 when some was not.
    """
    (out or sys.stdout).write(format_results(results, labels, fmt))
    return warn_not_scored(
        [(r["path"], Problem(r["problem"], r["detail"])) for r in results if r["problem"] is not None],
        len(results),
        err,
    )


def warn_not_scored(bad: Sequence[tuple], total: int, err: Optional[TextIO] = None) -> int:
    """One ``warning:`` line per ``(path, Problem)`` not scored and a count; 1 when there is any, else 0."""
    err = err or sys.stderr
    for path, problem in bad:
        print(f"warning: {path}: not scored: {problem.reason} ({problem.detail})", file=err)
    if bad:
        print(f"warning: {len(bad)} of {total} files not scored", file=err)
    return 1 if bad else 0
