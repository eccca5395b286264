"""``ser export``: one fold of a run as one ONNX file, written only when onnxruntime reproduces PyTorch.

For each fold: build its inference graph (``ser_plugins.deploy.inference_graph.FoldGraph``), export it
with ``torch.onnx`` (the dynamo exporter by default; the TorchScript-based exporter only when the
dynamo one fails and ``--exporter auto`` allows it), run the ONNX file with onnxruntime on
synthetic utterances of several lengths (and any ``check_files``) and compare its probabilities
with ``ser predict``'s (``Predictor``) within ``atol``. Only then are ``model.onnx`` and its
sidecar ``model.json`` moved into the output folder; a mismatch or a failed export writes nothing.

A regression or multitask fold exports its target values as a second output, ``values`` (alone for
regression), compared with ``ser predict``'s values within the same ``atol``; its sidecar (format
version 2) records the task and names the values' targets.

Needs the optional extra: ``pip install 'ser-plugins[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ser_plugins.deploy.inference_graph import FoldGraph, NamedOutputs, fold_names, load_fold_graphs, output_names
from ser_plugins.errors import UserError
from ser_plugins.plugins.boundary import describe
from ser_plugins.results.run_dir import BEST_FILE, FOLDS_DIR, NORMALIZER_FILE, RECIPE_FILE, RunDir
from ser_plugins.runtime.atomic import atomic_write_json

log = logging.getLogger("ser_plugins")

#: the largest absolute difference of any class probability (or target value) allowed between onnxruntime
#: and PyTorch
DEFAULT_ATOL = 1e-4
#: lengths (seconds) of the synthetic check utterances, beside one of exactly ``min_samples`` samples;
#: two of 1.5 s also run together as a batch of 2
CHECK_SECONDS = (0.61, 1.5, 3.2)
EXPORTERS = ("auto", "dynamo", "torchscript")
from ser_plugins.deploy.onnx_engine import (  # noqa: E402 - defined once, there
    FORMAT,
    FORMAT_VERSION,
    ONNX_FILE,
    SIDECAR,
    TARGETS_FORMAT_VERSION,
)


class ExportError(UserError, RuntimeError):
    """A fold that cannot be exported, or whose export does not reproduce PyTorch; nothing was written."""


@dataclass
class ExportResult:
    """What ``export_fold`` wrote and how closely onnxruntime matched PyTorch."""

    fold: str
    folder: Path
    exporter: str
    max_abs_diff: float
    check_lengths: List[int] = field(default_factory=list)
    #: the largest difference of each output (``probabilities``, ``values``)
    max_abs_diff_by_output: Dict[str, float] = field(default_factory=dict)


def require_onnx() -> Tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime`` (and check ``onnxscript``) or explain how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter's op library)
    except ImportError as exc:
        raise ExportError(f"ser export needs the onnx extra: pip install 'ser-plugins[onnx]' ({exc})") from None
    return onnx, onnxruntime


# --- exporting ------------------------------------------------------------------------------------
def _one_line(exc: BaseException) -> str:
    """The most useful single line of an exporter error: the innermost cause and the plugin code line."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    text = "\n".join(str(e) for e in chain)
    summary = re.search(r"## Exception summary\s*\n\s*\n?(.+)", text)
    reason = summary.group(1).strip() if summary else ""
    if not reason:
        inner = chain[-1]
        first = next((ln.strip() for ln in str(inner).splitlines() if ln.strip()), "")
        reason = f"{type(inner).__name__}: {first}"
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    reason = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", reason)  # "<class 'a.b.Error'>" -> "Error"
    reason = reason.split("[Caused by")[0].strip()
    where = re.search(r"The following call raised this error:\s*\n\s*(File \"[^\"]+\", line \d+, in \S+)", text)
    return reason[:300] + (f" (at {where.group(1)})" if where else "")


def _dynamo_export(
    module: torch.nn.Module,
    example: Tuple[torch.Tensor, ...],
    dynamic: Dict[str, Dict[int, Any]],
    path: Optional[Path],
    input_names: Sequence[str],
    output_names: Sequence[str],
):
    import warnings

    # the exporter's chatter ("torchvision is not installed", optimiser notes) and torch's structured trace
    # (debug records whenever a handler is attached, e.g. pytest's): quiet while exporting, restored after
    quiet = {
        "torch.onnx": logging.ERROR,
        "onnxscript": logging.WARNING,
        "onnx_ir": logging.WARNING,
        "torch.__trace": logging.WARNING,
    }
    loggers = [logging.getLogger(name) for name in quiet]
    levels = [lg.level for lg in loggers]
    for lg, level in zip(loggers, quiet.values()):
        lg.setLevel(level)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(
                module,
                example,
                None,
                dynamo=True,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic,
                verbose=False,
                optimize=True,
            )
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    if path is not None:
        assert program is not None  # dynamo=True returns the program
        program.save(str(path), external_data=False)
    return program


def _torchscript_export(
    graph: torch.nn.Module, example: torch.Tensor, path: Path, outputs: Sequence[str] = ("probabilities",)
) -> None:
    """The TorchScript-based exporter (a trace). A trace records one path through the Python code, so any
    ``TracerWarning`` (a tensor value turned into a Python number or branch) refuses the export: the
    graph would be right only for inputs like the example, which a few check utterances cannot rule out."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            input_names=["waveform"],
            output_names=list(outputs),
            dynamic_axes={"waveform": {0: "batch", 1: "samples"}, **{name: {0: "batch"} for name in outputs}},
        )
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer:
        first = tracer[0]
        where = f"{Path(first.filename).name}:{first.lineno}"
        raise ExportError(
            f"the trace holds Python values computed from tensors ({where}: "
            f"{str(first.message).splitlines()[0][:200]}), so it would be valid only for inputs "
            "like the example"
        )


def _example(graph: FoldGraph, batch: int = 2, seconds: float = 1.0) -> torch.Tensor:
    samples = max(int(seconds * graph.sample_rate), graph.min_samples + 1)
    return 0.1 * torch.randn(batch, samples, generator=torch.Generator().manual_seed(0))


def _graph_dims(graph: FoldGraph) -> Dict[str, Dict[int, Any]]:
    return {
        "waveform": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("samples", min=max(graph.min_samples, 2))}
    }


class _UpstreamPart(torch.nn.Module):
    def __init__(self, graph: FoldGraph) -> None:
        super().__init__()
        self.upstream, self.layers = graph.upstream, graph.layers

    def forward(self, waveform: torch.Tensor):
        lengths = torch.full((waveform.shape[0],), waveform.shape[1], dtype=torch.long)
        out = self.upstream(waveform, lengths)
        return tuple(out.hidden_states[i] for i in self.layers) + (out.lengths,)


class _AggregatorPart(torch.nn.Module):
    def __init__(self, aggregator: torch.nn.Module) -> None:
        super().__init__()
        self.aggregator = aggregator

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lengths = torch.full((features.shape[0],), features.shape[1], dtype=torch.long)
        return self.aggregator(features, lengths)


def diagnose(graph: FoldGraph) -> str:
    """Which plugin keeps the graph from exporting, and why: each part is exported alone (dynamo)."""
    wave = _example(graph)
    with torch.no_grad():
        out = graph.upstream(wave, torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long))
        states = [out.hidden_states[i] for i in graph.layers]
        if graph.standardise is not None:
            states = graph.standardise(states)
        feats = graph.head.projection(graph.head.layer_use(states).float())
        pooled = graph.head.aggregator(feats, out.lengths)
    parts = [
        (describe(graph.upstream, "upstream"), _UpstreamPart(graph), (wave,), _graph_dims(graph)),
        (
            describe(graph.head.aggregator, "aggregator"),
            _AggregatorPart(graph.head.aggregator),
            (feats,),
            {"features": {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("frames", min=2)}},
        ),
        (
            describe(graph.head.classifier, "classifier"),
            graph.head.classifier,
            (pooled,),
            {"x": {0: torch.export.Dim("batch", min=1)}},
        ),
    ]
    for label, module, example, dims in parts:
        names = list(dims)
        try:
            _dynamo_export(module.eval(), example, dims, None, names, ["out"])
        except Exception as exc:  # noqa: BLE001 - any exporter failure is the answer we want
            return f"{label} cannot be exported: {_one_line(exc)}"
    return "each plugin exports alone; their composition does not"


def export_graph(graph: FoldGraph, path: Path, exporter: str = "auto") -> Tuple[str, List[str]]:
    """Write ``graph`` as ONNX to ``path``; returns ``(exporter used, failures of exporters tried before)``.

    ``auto`` tries the dynamo exporter, then the TorchScript-based one. Raises ``ExportError``
    naming the plugin that cannot be exported when no allowed exporter succeeds.
    """
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    failures: List[str] = []
    outputs = output_names(graph.task)
    module: torch.nn.Module = graph if len(outputs) == 1 else NamedOutputs(graph).eval()
    if exporter in ("auto", "dynamo"):
        try:
            _dynamo_export(module, (_example(graph),), _graph_dims(graph), path, ["waveform"], outputs)
            return "dynamo", failures
        except Exception as exc:  # noqa: BLE001
            log.info("dynamo exporter failed: %s", _one_line(exc))
            failures.append(f"dynamo exporter: {diagnose(graph)}")
    if exporter in ("auto", "torchscript"):
        try:
            _torchscript_export(module, _example(graph), path, outputs)
            return "torchscript", failures
        except Exception as exc:  # noqa: BLE001
            failures.append(f"TorchScript exporter: {_one_line(exc)}")
    raise ExportError(
        "cannot export to ONNX: " + "; ".join(failures) + ". See 'Exportable plugins' in docs/plugins.md."
    )


# --- verification ---------------------------------------------------------------------------------
def check_waves(
    sample_rate: int, min_samples: int, seconds: Sequence[float] = CHECK_SECONDS, seed: int = 0
) -> List[np.ndarray]:
    """Synthetic speech-like check utterances: one of exactly ``min_samples`` samples, then ``seconds``
    long ones, and a second utterance as long as the middle one (they also run together as a batch).

    A harmonic tone with a wandering pitch, syllable-like amplitude bursts and a little noise.
    """
    rng = np.random.default_rng(seed)
    lengths = [max(min_samples, 1)] + [max(int(s * sample_rate), min_samples) for s in seconds]
    lengths.append(lengths[1 + len(seconds) // 2])
    waves = []
    for n in lengths:
        t = np.arange(n) / sample_rate
        f0 = rng.uniform(100, 250) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voice = sum(np.sin(k * phase) / k for k in range(1, 6))
        bursts = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, np.pi)) ** 2
        wave = 0.2 * bursts * voice + 0.01 * rng.standard_normal(n)
        waves.append(wave.astype(np.float32))
    return waves


def _reference(predictor, waves: Sequence[np.ndarray], sample_rate: int, folder: Path) -> np.ndarray:
    """``ser predict``'s scores for ``waves`` (written as float WAV files and read back): ``[N, C + K]``, the
    class probabilities, then the target values."""
    import soundfile as sf

    paths = []
    for i, wave in enumerate(waves):
        path = folder / f"check_{i}.wav"
        sf.write(str(path), wave, sample_rate, subtype="FLOAT")
        paths.append(str(path))
    results = predictor.predict_files(paths)
    targets = list(getattr(predictor, "targets", ()))
    rows = []
    for r in results:
        row = [r["probabilities"][lab] for lab in predictor.labels] if predictor.labels else []
        rows.append(row + ([r["values"][t] for t in targets] if targets else []))
    return np.array(rows, dtype=np.float64).reshape(len(results), -1)


def verify(
    onnx_path: Path,
    waves: Sequence[np.ndarray],
    reference: np.ndarray,
    atol: float,
    threads: int = 0,
    outputs: Sequence[str] = ("probabilities",),
) -> float:
    """Run ``onnx_path`` with onnxruntime on every wave (and the equal-length ones as one batch);
    return the largest absolute probability difference, or raise ``ExportError`` above ``atol``.

    ``outputs``: the graph's outputs whose columns, side by side, are ``reference``'s (``verify_outputs``).
    """
    return max(verify_outputs(onnx_path, waves, reference, atol, threads, outputs).values())


def verify_outputs(
    onnx_path: Path,
    waves: Sequence[np.ndarray],
    reference: np.ndarray,
    atol: float,
    threads: int = 0,
    outputs: Sequence[str] = ("probabilities",),
) -> Dict[str, float]:
    """``verify``, output by output: the largest absolute difference of each of ``outputs`` (``probabilities``:
    ``reference``'s first columns; ``values``: the target values after them); ``ExportError`` when any
    is above ``atol`` (or not finite)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    worst = {name: (0.0, "") for name in outputs}

    def compare(batch: np.ndarray, want: np.ndarray, where: str) -> None:
        got = session.run(list(outputs), {"waveform": batch})
        if sum(g.shape[1] for g in got) != want.shape[1]:
            raise ExportError(
                f"onnxruntime gives {sum(g.shape[1] for g in got)} scores per utterance, PyTorch "
                f"{want.shape[1]}; nothing was written"
            )
        col = 0
        for name, part in zip(outputs, got):
            width = part.shape[1]
            diff = float(np.max(np.abs(part.astype(np.float64) - want[:, col : col + width]))) if width else 0.0
            col += width
            if not np.isfinite(diff) or diff > worst[name][0]:
                worst[name] = (diff, where)

    for i, wave in enumerate(waves):
        compare(wave[None, :], reference[i : i + 1], f"utterance of {len(wave)} samples")
    by_length: Dict[int, List[int]] = {}
    for i, wave in enumerate(waves):
        by_length.setdefault(len(wave), []).append(i)
    for n, idx in by_length.items():
        if len(idx) > 1:
            compare(np.stack([waves[i] for i in idx]), reference[idx], f"batch of {len(idx)} utterances of {n} samples")
    for name, (diff, where) in worst.items():
        if not np.isfinite(diff) or diff > atol:
            what = "probabilities" if name == "probabilities" else "target values"
            raise ExportError(
                f"onnxruntime does not reproduce PyTorch: {what} differ by up to {diff:.3g} "
                f"(tolerance {atol:g}) on a {where}; nothing was written"
            )
    return {name: diff for name, (diff, _) in worst.items()}


# --- one fold, a whole run --------------------------------------------------------------------------
def _sidecar(
    graph: FoldGraph,
    predictor,
    run_dir: Path,
    fold: str,
    exporter: str,
    atol: float,
    worst: float,
    lengths: List[int],
    opset: Optional[int],
    by_output: Optional[Dict[str, float]] = None,
) -> Dict[str, Any]:
    """``model.json``. An export with targets (regression, multitask) adds ``task`` after ``labels`` and the
    ``values`` output after ``output`` (a regression export has no ``output``: no probabilities), and
    the largest difference of each output to ``verification``."""
    recipe = predictor.recipe
    task = graph.task
    targets = task.has_targets
    verification = {"engine": "onnxruntime", "atol": atol, "max_abs_diff": worst, "lengths_samples": lengths}
    if targets:
        verification["max_abs_diff_by_output"] = dict(by_output or {})
    return {
        "format": FORMAT,
        "format_version": TARGETS_FORMAT_VERSION if targets else FORMAT_VERSION,
        "onnx": ONNX_FILE,
        "labels": list(predictor.labels),
        **({"task": task.to_dict()} if targets else {}),
        "sample_rate": graph.sample_rate,
        "input": {
            "name": "waveform",
            "dtype": "float32",
            "shape": ["batch", "samples"],
            "min_samples": graph.min_samples,
            "description": "mono waveform at sample_rate, floats in [-1, 1]; each row is one whole utterance "
            "(rows of one batch have equal length, never padding)",
        },
        **(
            {
                "output": {
                    "name": "probabilities",
                    "dtype": "float32",
                    "shape": ["batch", len(predictor.labels)],
                    "description": "softmax over labels",
                }
            }
            if task.has_classes
            else {}
        ),
        **(
            {
                "values": {
                    "name": "values",
                    "dtype": "float32",
                    "shape": ["batch", len(task.targets)],
                    "targets": list(task.targets),
                    "description": "the continuous targets' values, in the order of targets, on the corpus's scale",
                }
            }
            if targets
            else {}
        ),
        "normalisation": _normalisation(graph, fold),
        "upstream": {
            "name": recipe.upstream.name,
            "finetune": recipe.finetune.mode,
            "layers": list(graph.layers),
            "identity": _plain(graph.upstream.identity()),
        },
        "run_dir": str(Path(run_dir).resolve()),
        "fold": fold,
        "recipe": _plain(recipe.to_dict()),
        "exporter": {"name": exporter, "torch": torch.__version__, "opset": opset},
        "verification": verification,
    }


def _normalisation(graph: FoldGraph, fold: str) -> Dict[str, Any]:
    """What the exported graph standardises its features with (the fold's saved normaliser), for the sidecar."""
    if graph.standardise is None:
        return {"kind": None, "statistics": None, "applied": None}
    saved = f"{FOLDS_DIR}/{fold}/{NORMALIZER_FILE}"
    if graph.standardise.kind == "global":
        return {
            "kind": "global",
            "statistics": "training",
            "applied": (
                "(x - mean) / std on every kept upstream layer, with the mean and standard deviation of the fold's "
                f"training frames ({saved}), as in training and ser predict"
            ),
        }
    return {
        "kind": "speaker",
        "statistics": "typical",
        "applied": (
            "(x - mean) / std on every kept upstream layer, with the fold's typical speaker statistics "
            f"({saved}: the mean over the fold's training speakers of their means and standard deviations), as "
            "ser predict uses for fewer files than --min-speaker-files; the exported model never uses a test "
            "speaker's own statistics"
        ),
    }


def _plain(obj: Any) -> Any:
    """A JSON-safe copy: tuples become lists, anything else unusual its ``str``."""
    return json.loads(json.dumps(obj, default=str))


def export_fold(
    run_dir: Path,
    fold: str,
    out: Path,
    atol: float = DEFAULT_ATOL,
    exporter: str = "auto",
    check_files: Sequence[str] = (),
    threads: int = 0,
) -> ExportResult:
    """Export ``fold`` of ``run_dir`` to ``out/model.onnx`` + ``out/model.json`` after proving it equal."""
    onnx, _ = require_onnx()
    from ser_plugins.data.audio import load_audio

    run_dir, out = Path(run_dir), Path(out)
    (graph,), predictor = load_fold_graphs(run_dir, fold)
    waves = check_waves(graph.sample_rate, graph.min_samples)
    waves += [load_audio(p, graph.sample_rate, min_samples=graph.min_samples) for p in check_files]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ser-export-", dir=out.parent) as tmp:
        tmp_dir = Path(tmp)
        reference = _reference(predictor, waves, graph.sample_rate, tmp_dir)
        onnx_tmp = tmp_dir / ONNX_FILE
        used, failures = export_graph(graph, onnx_tmp, exporter)
        try:
            by_output = verify_outputs(onnx_tmp, waves, reference, atol, threads, output_names(graph.task))
        except ExportError as exc:
            raise ExportError(f"fold {fold}: {exc}" + (f" ({'; '.join(failures)})" if failures else "")) from None
        worst = max(by_output.values())
        model = onnx.load(str(onnx_tmp), load_external_data=False)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        lengths = [len(w) for w in waves]
        meta = _sidecar(graph, predictor, run_dir, fold, used, atol, worst, lengths, opset, by_output)
        if failures:
            meta["exporter"]["fallback_because"] = failures
        out.mkdir(parents=True, exist_ok=True)
        os.replace(onnx_tmp, out / ONNX_FILE)
        atomic_write_json(out / SIDECAR, meta)
        _readable(out / SIDECAR)
    log.debug("fold %s exported to %s (%s exporter, max |diff| %.2e)", fold, out, used, worst)
    return ExportResult(fold, out, used, worst, lengths, by_output)


def _readable(path: Path) -> None:
    """Give the sidecar the permissions of a normally created file (the atomic writer's temp file is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def export_run(
    run_dir: Path,
    out: Path,
    fold: Optional[str] = None,
    all_folds: bool = False,
    atol: float = DEFAULT_ATOL,
    exporter: str = "auto",
    check_files: Sequence[str] = (),
    threads: int = 0,
) -> List[ExportResult]:
    """Export one fold to ``out`` (``fold``, or the run's only fold) or, with ``all_folds``, every fold
    to ``out/<fold>/`` (``ser predict --engine onnx out`` then averages them, like ``ser predict``)."""
    run_dir, out = Path(run_dir), Path(out)
    if not RunDir(run_dir).is_run:
        raise ExportError(f"{run_dir} is not a run directory (no {RECIPE_FILE})")
    names = fold_names(run_dir)
    if not names:
        raise ExportError(f"{run_dir} has no trained fold (no {FOLDS_DIR}/*/{BEST_FILE})")
    if fold and all_folds:
        raise ExportError("give either --fold or --all-folds, not both")
    if all_folds:
        return [export_fold(run_dir, name, out / name, atol, exporter, check_files, threads) for name in names]
    if fold is None:
        if len(names) > 1:
            raise ExportError(f"{run_dir} has {len(names)} folds ({', '.join(names)}): pass --fold NAME or --all-folds")
        fold = names[0]
    if fold not in names:
        raise ExportError(f"no fold {fold!r} with a checkpoint in {run_dir}; folds: {', '.join(names)}")
    return [export_fold(run_dir, fold, out, atol, exporter, check_files, threads)]
