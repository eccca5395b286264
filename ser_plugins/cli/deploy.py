"""The ``ser export`` command and ``ser predict`` (both engines, whole files and ``--window``).

Imports nothing heavy at module level: ``ser predict --engine onnx`` never imports torch or the
training code (the PyTorch engine and the exporter are imported only when asked for).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:  # numpy and the engines are imported only when a command needs them
    from ser_plugins.deploy.scoring import Scorer, WindowScorer


def add_export_parser(sub: Any) -> None:
    """The ``ser export`` subcommand."""
    ex = sub.add_parser("export", help="export a trained fold to ONNX, written only if onnxruntime matches PyTorch")
    ex.add_argument("run_dir")
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--fold", help="the fold to export (default: the run's only fold)")
    which.add_argument("--all-folds", action="store_true", help="export every fold to OUT/<fold>/")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", required=True, help="output folder (model.onnx + model.json)")
    ex.add_argument(
        "--atol",
        type=float,
        default=None,
        help="largest absolute difference of a probability (or a target value) allowed between onnxruntime and "
        "PyTorch (default 1e-4)",
    )
    ex.add_argument(
        "--exporter",
        choices=["auto", "dynamo", "torchscript"],
        default="auto",
        help="auto: torch.onnx's dynamo exporter, then the TorchScript-based one if that fails",
    )
    ex.add_argument(
        "--check-audio",
        nargs="+",
        default=[],
        metavar="FILE",
        help="audio files to verify on, beside the built-in synthetic utterances",
    )
    ex.set_defaults(func=export_command)


def add_predict_arguments(pr: argparse.ArgumentParser) -> None:
    """``ser predict`` options for the ONNX engine and long recordings."""
    pr.add_argument(
        "--engine",
        choices=["torch", "onnx"],
        default="torch",
        help="onnx: RUN_DIR is a folder written by 'ser export' (runs with onnxruntime, without torch)",
    )
    pr.add_argument(
        "--window", type=float, help="long recordings: window length in seconds (writes a CSV timeline and a PNG)"
    )
    pr.add_argument("--hop", type=float, help="seconds between window starts (default: 1, or the window if shorter)")
    pr.add_argument(
        "--vad",
        choices=["none", "energy"],
        default="none",
        help="energy: score only windows with enough frames louder than --vad-db",
    )
    pr.add_argument("--vad-db", type=float, default=-40.0, help="energy VAD threshold in dBFS (default -40)")
    pr.add_argument(
        "--min-speech",
        type=float,
        default=0.3,
        help="energy VAD: least share of loud 20 ms frames for a window to be scored (default 0.3)",
    )
    pr.add_argument("--out", default=".", help="folder for <file>.timeline.csv and .png (default: current folder)")
    pr.add_argument("--batch-size", type=int, default=8, help="windows scored together (default 8)")
    pr.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: its own choice)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def export_command(args: argparse.Namespace) -> int:
    """``ser export``: print one line per exported fold."""
    from ser_plugins.deploy.export import DEFAULT_ATOL, export_run

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    results = export_run(
        Path(args.run_dir), Path(args.out), args.fold, args.all_folds, atol, args.exporter, args.check_audio
    )
    for res in results:
        lengths = f"{min(res.check_lengths)}..{max(res.check_lengths)}"
        parts = res.max_abs_diff_by_output
        diff = (
            f"{res.max_abs_diff:.1e}"
            if list(parts) in ([], ["probabilities"])
            else ", ".join(f"{name} {d:.1e}" for name, d in parts.items())
        )
        print(
            f"fold {res.fold}: {res.folder / 'model.onnx'} ({res.exporter} exporter); onnxruntime matches PyTorch "
            f"within {atol:g} (max |diff| {diff} on {len(res.check_lengths)} utterances "
            f"of {lengths} samples)"
        )
    return 0


def file_scorer(
    run_dir: Path, engine: str = "torch", fold: Optional[str] = None, min_speaker_files: int = 10, threads: int = 0
) -> "Scorer":
    """The ``Scorer`` of whole files: a run directory's ``Predictor`` (torch) or an exported folder's
    ``OnnxPredictor``."""
    if engine == "onnx":
        from ser_plugins.deploy.onnx_engine import OnnxPredictor

        return OnnxPredictor(_export_folder(run_dir, fold), threads=threads, min_speaker_files=min_speaker_files)
    from ser_plugins.deploy.predict import Predictor

    return Predictor(Path(run_dir), fold, min_speaker_files=min_speaker_files)


def window_scorer(run_dir: Path, engine: str = "torch", fold: Optional[str] = None, threads: int = 0) -> "WindowScorer":
    """The ``WindowScorer`` of ``--window``: batches of equal-length windows (the exported graph, or the ONNX
    engine)."""
    if engine == "onnx":
        from ser_plugins.deploy.onnx_engine import OnnxPredictor

        return OnnxPredictor(_export_folder(run_dir, fold), threads=threads)
    from ser_plugins.deploy.inference_graph import TorchScorer

    return TorchScorer(Path(run_dir), fold)


def _export_folder(run_dir: Path, fold: Optional[str]) -> Path:
    return Path(run_dir) / fold if fold else Path(run_dir)


def predict_files(scorer: "Scorer", files: Sequence[str], fmt: str = "text") -> int:
    """Score whole files and write them as ``fmt`` (text, json, csv); the exit status of ``ser predict``."""
    from ser_plugins.deploy.scoring import score_files, scorer_targets, write_results

    results = score_files(scorer, files)
    if getattr(scorer, "speaker_statistics", None) == "typical":
        least = getattr(scorer, "min_speaker_files", 10)
        print(
            f"note: a speaker-normalised run: fewer than --min-speaker-files ({least}) usable "
            "files, so they were standardised with the training speakers' typical statistics, not their own; "
            "pass at least that many files of one speaker for their own statistics",
            file=sys.stderr,
        )
    return write_results(results, scorer.labels, fmt, targets=scorer_targets(scorer))


def predict_timelines(
    scorer: "WindowScorer",
    files: Sequence[str],
    window: float,
    hop: float,
    out_dir: Path,
    vad_db: Optional[float] = None,
    min_speech: float = 0.3,
    batch_size: int = 8,
    progress: bool = True,
) -> int:
    """A timeline per recording and one summary line each; a recording that cannot be read gets its reason.

    Returns the exit status of ``ser predict``: 0 when every recording was analysed, 1 when some was not.
    """
    from ser_plugins.data.audio import AudioError
    from ser_plugins.deploy.scoring import audio_problem, not_scored_line, warn_not_scored
    from ser_plugins.deploy.timeline import analyse_recording

    bad = []
    for path in files:
        try:
            res = analyse_recording(
                Path(path), scorer, window, hop, Path(out_dir), vad_db, min_speech, batch_size, progress=progress
            )
        except AudioError as exc:
            bad.append((path, audio_problem(exc)))
            print(not_scored_line(path, bad[-1][1]))
            continue
        skipped = "".join(f"; {v} {k}" for k, v in res.skipped.items())
        fields = [" ".join(f"{k}={v:.2f}" for k, v in res.label_share.items())] if res.label_share else []
        if res.target_means:  # a run with targets: their means over the scored windows
            fields.append("mean " + " ".join(f"{k}={v:.2f}" for k, v in res.target_means.items()))
        if not fields:
            fields = [""]
        print(
            f"{path}\t{res.seconds:.1f} s\t{res.windows} windows ({res.scored} scored{skipped})\t"
            + "\t".join(fields)
            + f"\t{res.csv}\t{res.png}"
        )
    return warn_not_scored(bad, len(files))


def check_predict_options(window: Optional[float], hop: Optional[float], vad: str, fmt: str, batch_size: int) -> None:
    """Refuse ``ser predict`` options that would be ignored or cannot work."""
    from ser_plugins.deploy.timeline import TimelineError

    for given, name in ((hop is not None, "--hop"), (vad != "none", "--vad")):
        if given and window is None:
            raise TimelineError(f"{name} needs --window")
    if window is not None and fmt != "text":
        raise TimelineError(
            f"--format {fmt} is for whole files; --window writes each recording's timeline as "
            "<name>.timeline.csv (and .png) under --out"
        )
    if batch_size < 1:
        raise TimelineError(f"--batch-size must be at least 1, got {batch_size}")


def predict_command(args: argparse.Namespace) -> int:
    """``ser predict``, both engines: whole files (``--format text|json|csv``) or, with ``--window``, timelines."""
    check_predict_options(args.window, args.hop, args.vad, args.format, args.batch_size)
    run_dir = Path(args.run_dir)
    if args.window is None:
        scorer = file_scorer(run_dir, args.engine, args.fold, args.min_speaker_files, args.threads)
        return predict_files(scorer, args.files, args.format)
    hop = args.hop if args.hop is not None else min(1.0, args.window)
    vad_db = args.vad_db if args.vad == "energy" else None
    return predict_timelines(
        window_scorer(run_dir, args.engine, args.fold, args.threads),
        args.files,
        args.window,
        hop,
        Path(args.out),
        vad_db,
        args.min_speech,
        args.batch_size,
        progress=not args.quiet,
    )
