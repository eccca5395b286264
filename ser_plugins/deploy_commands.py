"""The ``ser export`` command and the ``--engine onnx`` / ``--window`` modes of ``ser predict``.

Imports nothing heavy at module level: ``ser predict --engine onnx`` never imports torch or the
training code (the PyTorch engine and the exporter are imported only when asked for).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, Iterable


def add_export_parser(sub: Any) -> None:
    """The ``ser export`` subcommand."""
    ex = sub.add_parser("export", help="export a trained fold to ONNX, written only if onnxruntime matches PyTorch")
    ex.add_argument("run_dir")
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--fold", help="the fold to export (default: the run's only fold)")
    which.add_argument("--all-folds", action="store_true", help="export every fold to OUT/<fold>/")
    ex.add_argument("--format", choices=["onnx"], default="onnx")
    ex.add_argument("--out", required=True, help="output folder (model.onnx + model.json)")
    ex.add_argument("--atol", type=float, default=None,
                    help="largest absolute probability difference allowed between onnxruntime and PyTorch (default 1e-4)")
    ex.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
                    help="auto: torch.onnx's dynamo exporter, then the TorchScript-based one if that fails")
    ex.add_argument("--check-audio", nargs="+", default=[], metavar="FILE",
                    help="audio files to verify on, beside the built-in synthetic utterances")
    ex.set_defaults(func=export_command)


def add_predict_arguments(pr: argparse.ArgumentParser) -> None:
    """``ser predict`` options for the ONNX engine and long recordings."""
    pr.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                    help="onnx: RUN_DIR is a folder written by 'ser export' (runs with onnxruntime, without torch)")
    pr.add_argument("--window", type=float, help="long recordings: window length in seconds (writes a CSV timeline and a PNG)")
    pr.add_argument("--hop", type=float, help="seconds between window starts (default: 1, or the window if shorter)")
    pr.add_argument("--vad", choices=["none", "energy"], default="none",
                    help="energy: score only windows with enough frames louder than --vad-db")
    pr.add_argument("--vad-db", type=float, default=-40.0, help="energy VAD threshold in dBFS (default -40)")
    pr.add_argument("--min-speech", type=float, default=0.3,
                    help="energy VAD: least share of loud 20 ms frames for a window to be scored (default 0.3)")
    pr.add_argument("--out", default=".", help="folder for <file>.timeline.csv and .png (default: current folder)")
    pr.add_argument("--batch-size", type=int, default=8, help="windows scored together (default 8)")
    pr.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: its own choice)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def print_predictions(results: Iterable[Dict[str, Any]]) -> None:
    """One line per file, as ``ser predict`` prints it: path, emotion, ``label=probability`` pairs."""
    for res in results:
        probs = " ".join(f"{k}={v:.3f}" for k, v in res["probabilities"].items())
        print(f"{res['path']}\t{res['emotion']}\t{probs}")


def wants_deploy_predict(args: argparse.Namespace) -> bool:
    """True when ``ser predict`` must go through this module (ONNX engine or sliding windows)."""
    return args.engine == "onnx" or args.window is not None or args.hop is not None or args.vad != "none"


def export_command(args: argparse.Namespace) -> int:
    """``ser export``: print one line per exported fold."""
    from ser_plugins.export import DEFAULT_ATOL, export_run

    atol = DEFAULT_ATOL if args.atol is None else args.atol
    results = export_run(Path(args.run_dir), Path(args.out), args.fold, args.all_folds, atol, args.exporter,
                         args.check_audio)
    for res in results:
        lengths = f"{min(res.check_lengths)}..{max(res.check_lengths)}"
        print(f"fold {res.fold}: {res.folder / 'model.onnx'} ({res.exporter} exporter); onnxruntime matches PyTorch "
              f"within {atol:g} (max |diff| {res.max_abs_diff:.1e} on {len(res.check_lengths)} utterances of {lengths} samples)")
    return 0


def _scorer(args: argparse.Namespace):
    if args.engine == "onnx":
        from ser_plugins.onnx_engine import OnnxPredictor

        folder = Path(args.run_dir) / args.fold if args.fold else Path(args.run_dir)
        return OnnxPredictor(folder, threads=args.threads)
    from ser_plugins.inference_graph import TorchScorer

    return TorchScorer(Path(args.run_dir), args.fold)


def predict_command(args: argparse.Namespace) -> int:
    """``ser predict`` with ``--engine onnx`` and/or ``--window``."""
    from ser_plugins.timeline import TimelineError, analyse_recording

    for given, name in ((args.hop is not None, "--hop"), (args.vad != "none", "--vad")):
        if given and args.window is None:
            raise TimelineError(f"{name} needs --window")
    if args.batch_size < 1:
        raise TimelineError(f"--batch-size must be at least 1, got {args.batch_size}")
    scorer = _scorer(args)
    if args.window is None:
        print_predictions(scorer.predict_files(args.files))
        return 0
    hop = args.hop if args.hop is not None else min(1.0, args.window)
    vad_db = args.vad_db if args.vad == "energy" else None
    for path in args.files:
        res = analyse_recording(Path(path), scorer, args.window, hop, Path(args.out), vad_db, args.min_speech,
                                args.batch_size, progress=not args.quiet)
        skipped = "".join(f"; {v} {k}" for k, v in res.skipped.items())
        share = " ".join(f"{k}={v:.2f}" for k, v in res.label_share.items())
        print(f"{path}\t{res.seconds:.1f} s\t{res.windows} windows ({res.scored} scored{skipped})\t{share}\t"
              f"{res.csv}\t{res.png}")
    return 0
