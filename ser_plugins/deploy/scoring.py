"""Scoring audio files, the same way for every engine: the ``Scorer`` protocol, the per-file loop, the output.

``ser predict`` scores files with a run directory (``ser_plugins.deploy.predict.Predictor``, PyTorch) or an
exported folder (``ser_plugins.deploy.onnx_engine.OnnxPredictor``, onnxruntime); both are ``Scorer`` s and go
through ``score_files`` (decode, check, score) and ``write_results`` (text, JSON or CSV, warnings, exit
status). A file that cannot be read, or that training would have skipped, gets its reason instead of a
score; the other files are still scored.

A scorer predicts classes (``labels``), continuous targets (``targets``: dimensional emotion such as
arousal, valence, dominance) or both (a multitask run): one outcome per waveform is one row of
``len(labels)`` class probabilities followed by ``len(targets)`` target values, the layout of
``ser_plugins.task``. A scorer without ``targets`` (written before targets existed) predicts classes only.

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


#: what a scorer gives for one waveform: ``[C + K]``, its ``C`` class probabilities then its ``K`` target
#: values (``[C]`` for a classification scorer), or why it could not score it
Outcome = Union[np.ndarray, Problem]


class Scorer(Protocol):
    """Waveforms -> class probabilities and target values: the PyTorch run predictor, the exported graph and
    the ONNX engine.

    ``labels``: the class order (empty for a regression model); ``targets``: the names of the continuous
    targets, in the order of their values (empty for a classification model); ``sample_rate``: the rate
    waveforms must have; ``min_samples``: the shortest waveform the model takes.
    """

    @property
    def labels(self) -> Sequence[str]: ...

    @property
    def targets(self) -> Sequence[str]: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def min_samples(self) -> int: ...

    def score(self, waves: Sequence[np.ndarray]) -> List[Outcome]:
        """One outcome per waveform (mono float32 at ``sample_rate``, at least ``min_samples`` long), in order."""


class WindowScorer(Scorer, Protocol):
    """A ``Scorer`` that also takes a batch of equal-length waveforms at once (``ser predict --window``)."""

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``[B, C + K]`` float32 for ``windows`` ``[B, S]``: ``B`` whole utterances of equal length; each row
        the class probabilities, then the target values (``[B, C]`` for a classification scorer)."""


def scorer_targets(scorer: object) -> List[str]:
    """The target names of a scorer; ``[]`` for one without ``targets`` (classes only, written before targets)."""
    return [str(t) for t in (getattr(scorer, "targets", None) or ())]


class OneByOne:
    """``score`` and ``predict_files`` for a ``WindowScorer``: each file alone, as a batch of one (never padded)."""

    labels: Sequence[str]
    targets: Sequence[str] = ()
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
    """One result per file, in order: ``{"path", "emotion", "probabilities", "problem", "detail"}``, and
    ``"values"`` (``{target: value}``) when the scorer has targets.

    A scored file has ``problem`` None. A file that cannot be read or that training would skip has
    ``emotion``, ``probabilities`` (and ``values``) None and ``problem`` set to the reason (those of
    ``check_audio``, or the scorer's: ``non_finite_features``, ``non_finite_output``) with a one-line
    ``detail``. The usable files go to the scorer together (a speaker-normalised run pools their
    statistics). A regression scorer (no labels) leaves ``emotion`` and ``probabilities`` None.
    """
    labels, targets = list(scorer.labels), scorer_targets(scorer)
    results: List[Dict[str, Any]] = [
        {"path": str(p), "emotion": None, "probabilities": None, "problem": None, "detail": ""} for p in paths
    ]
    if targets:
        for r in results:
            r["values"] = None
    nan = "probabilities" if not targets else "values" if not labels else "probabilities or values"
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
            _flag(results[i], Problem("non_finite_output", f"the model gives non-finite {nan}"))
        else:
            c = len(labels)
            if labels:
                results[i]["emotion"] = labels[int(np.argmax(outcome[:c]))]
                results[i]["probabilities"] = {lab: float(p) for lab, p in zip(labels, outcome[:c])}
            if targets:
                results[i]["values"] = {t: float(v) for t, v in zip(targets, outcome[c : c + len(targets)])}
    return results


def _flag(result: Dict[str, Any], problem: Problem) -> None:
    result["problem"], result["detail"] = problem.reason, problem.detail


def format_results(
    results: Sequence[Dict[str, Any]], labels: Sequence[str], fmt: str = "text", targets: Sequence[str] = ()
) -> str:
    """The results of ``score_files`` as ``text`` (one tab-separated line per file), ``json`` or ``csv``.

    text: ``path<TAB>emotion<TAB>label=p ...`` for a scored file, ``path<TAB>-<TAB>not scored: reason
    (detail)`` for the others. json: a list of objects with ``path``, ``status`` (``ok`` or
    ``error``), ``emotion``, ``probabilities``, ``problem``, ``detail``. csv: a header line
    ``path,status,emotion,problem,detail,p_<label>...``.

    With ``targets`` (a regression or multitask model): text appends ``<TAB>target=value ...``
    (a regression line is ``path<TAB>target=value ...``); json objects get ``values``
    (``{target: value}``) after ``probabilities``; csv gets one column per target, named after it,
    after the class columns. A regression model (no ``labels``) has no ``emotion`` and
    ``probabilities`` in json and no ``emotion`` and ``p_`` columns in csv.
    """
    targets = list(targets)
    classes = bool(labels) or not targets
    if fmt == "json":
        rows = []
        for r in results:
            row: Dict[str, Any] = {"path": r["path"], "status": "ok" if r["problem"] is None else "error"}
            if classes:
                row["emotion"], row["probabilities"] = r["emotion"], r["probabilities"]
            if targets:
                row["values"] = r.get("values")
            row["problem"], row["detail"] = r["problem"], r["detail"]
            rows.append(row)
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        head = ["path", "status"] + (["emotion"] if classes else []) + ["problem", "detail"]
        w.writerow(head + [f"p_{lab}" for lab in labels] + targets)
        for r in results:
            ok = r["problem"] is None
            probs = [f"{r['probabilities'][lab]:.5f}" for lab in labels] if ok else [""] * len(labels)
            values = [f"{r['values'][t]:.5f}" for t in targets] if ok else [""] * len(targets)
            cells = [r["path"], "ok" if ok else "error"] + ([r["emotion"] or ""] if classes else [])
            w.writerow(cells + [r["problem"] or "", r["detail"]] + probs + values)
        return buf.getvalue()
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    return "".join(_text_line(r) + "\n" for r in results)


def _text_line(result: Dict[str, Any]) -> str:
    if result["problem"] is not None:
        return not_scored_line(result["path"], Problem(result["problem"], result["detail"]))
    fields = [result["path"]]
    if result["probabilities"] is not None:
        fields += [result["emotion"], " ".join(f"{k}={v:.3f}" for k, v in result["probabilities"].items())]
    if result.get("values") is not None:
        fields.append(" ".join(f"{k}={v:.3f}" for k, v in result["values"].items()))
    return "\t".join(fields)


def not_scored_line(path: str, problem: Problem) -> str:
    """The text line of a file not scored: ``path<TAB>-<TAB>not scored: reason (detail)``."""
    return f"{path}\t-\tnot scored: {problem.reason} ({problem.detail})"


def write_results(
    results: Sequence[Dict[str, Any]],
    labels: Sequence[str],
    fmt: str = "text",
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
    targets: Sequence[str] = (),
) -> int:
    """Write the results to ``out`` (stdout) and a warning per file not scored to ``err`` (stderr).

    ``targets``: the scorer's target names (``format_results``). Returns the exit status of ``ser
    predict``: 0 when every file was scored, 1 when some was not.
    """
    (out or sys.stdout).write(format_results(results, labels, fmt, targets))
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
