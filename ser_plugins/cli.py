"""The ``ser`` command line: run, list, predict, export, demo-corpus, report, validate."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ser_plugins import deploy_commands, registry

USER_ERRORS = (
    "RecipeError", "PluginError", "RunError", "CompositionError", "ProtocolError", "DataError",
    "LockedError", "PredictError", "TrainingDiverged", "AudioError", "ReportError", "WeightsNotFoundError",
    "UnsafeCheckpointError", "JSONDecodeError", "ExportError", "EngineError", "TimelineError", "GraphError",
)


def _cmd_run(args: argparse.Namespace) -> int:
    from ser_plugins.recipe import load_recipe
    from ser_plugins.runner import run_recipe

    recipe = load_recipe(args.recipe, args.override)
    folds = args.folds.split(",") if args.folds else None
    summary = run_recipe(recipe, args.out, folds, args.resume, progress=not args.quiet)
    from ser_plugins.runner import results_markdown, run_dir_for

    print(results_markdown(summary))
    print(f"run directory: {run_dir_for(recipe, args.out)}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ser_plugins.model import build_from_recipe
    from ser_plugins.recipe import load_recipe

    from ser_plugins.recipe import plugin_kwargs

    recipe = load_recipe(args.recipe, args.override)
    try:  # the corpus's options are checked too (its utterances are not read)
        corpus = registry.create("corpus", recipe["corpus"]["name"], **plugin_kwargs(recipe["corpus"]))
        labels = list(corpus.labels)
    except FileNotFoundError:
        labels = recipe["corpus"].get("labels") or ["neu", "hap", "ang", "sad"]
    except (ValueError, TypeError) as exc:
        raise registry.PluginError(f"corpus {recipe['corpus']['name']!r}: {exc}") from None
    model = build_from_recipe(recipe, len(labels), labels)
    n_head = sum(p.numel() for p in model.head.parameters())
    n_up = sum(p.numel() for p in model.upstream.parameters())
    print(f"recipe OK: upstream {recipe['upstream']['name']} ({n_up:,} parameters, {model.upstream.num_layers} layers), "
          f"head {n_head:,} parameters, finetune {recipe['finetune']['mode']}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    specs = registry.list_plugins(args.kind, args.pattern)
    if args.json:
        print(json.dumps([s.__dict__ for s in specs], indent=2))
        return 0
    width = max([len(s.name) for s in specs] + [4])
    for s in specs:
        line = f"{s.kind:<11} {s.name:<{width}}  {s.dist}"
        if args.check:
            try:
                registry.load(s.kind, s.qualified_name)
                line += "  ok"
            except registry.PluginError as exc:
                line += f"  BROKEN: {exc}"
        print(line)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    if deploy_commands.wants_deploy_predict(args):  # --engine onnx, --window: no torch import on the ONNX path
        return deploy_commands.predict_command(args)
    from ser_plugins.predict import Predictor

    predictor = Predictor(Path(args.run_dir), args.fold, min_speaker_files=args.min_speaker_files)
    for res in predictor.predict_files(args.files):
        probs = " ".join(f"{k}={v:.3f}" for k, v in res["probabilities"].items())
        print(f"{res['path']}\t{res['emotion']}\t{probs}")
    return 0


def _cmd_demo_corpus(args: argparse.Namespace) -> int:
    demo = registry.load("corpus", "demo")
    summary = demo.generate(args.dir, seed=args.seed, utterances_per_speaker=args.utterances_per_speaker,
                            overwrite=args.overwrite)
    print(f"demo corpus written to {args.dir}: {summary}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ser_plugins.report import write_report

    table = write_report([Path(d) for d in args.run_dirs], args.out)
    print(table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``ser`` argument parser."""
    p = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition with plugin upstreams and heads.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate a recipe over the folds of its corpus")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. -o training.epochs=5 (repeatable)")
    r.add_argument("--folds", help="comma-separated fold numbers (1-based) or names to run")
    r.add_argument("--out", help="run directory (default: output.dir or runs/<name>)")
    r.add_argument("--resume", action="store_true", help="continue a run: finished folds are not recomputed")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_run)

    v = sub.add_parser("validate", help="check a recipe and build its model, without data")
    v.add_argument("recipe")
    v.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(func=_cmd_validate)

    ls = sub.add_parser("list", help="list installed plugins (nothing is imported unless --check)")
    ls.add_argument("kind", nargs="?", choices=list(registry.KINDS), help="only this kind")
    ls.add_argument("--pattern", default="*", help="glob on plugin names, e.g. '*hubert*'")
    ls.add_argument("--check", action="store_true", help="import every plugin and report broken ones")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)

    pr = sub.add_parser("predict", help="print the emotion and class probabilities of audio files")
    pr.add_argument("run_dir")
    pr.add_argument("files", nargs="+")
    pr.add_argument("--fold", help="use one fold's checkpoint (default: average all folds)")
    pr.add_argument("--min-speaker-files", type=int, default=10,
                    help="speaker-normalised runs: with at least this many files, standardise with their own "
                         "statistics (one speaker); with fewer, use the run's typical speaker statistics")
    deploy_commands.add_predict_arguments(pr)
    pr.set_defaults(func=_cmd_predict)

    deploy_commands.add_export_parser(sub)

    d = sub.add_parser("demo-corpus", help="generate the synthetic demo corpus in IEMOCAP's layout")
    d.add_argument("dir")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--utterances-per-speaker", type=int, default=40)
    d.add_argument("--overwrite", action="store_true")
    d.set_defaults(func=_cmd_demo_corpus)

    rp = sub.add_parser("report", help="one results table (markdown and CSV) over many run directories")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", help="write report.md and report.csv with this path prefix")
    rp.set_defaults(func=_cmd_report)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``ser`` command; user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING,
                        format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        user_error = any(c.__name__ in USER_ERRORS for c in type(exc).__mro__) or isinstance(exc, (FileNotFoundError, FileExistsError))
        if args.debug or not user_error:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
