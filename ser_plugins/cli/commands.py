"""The ``ser`` command line: run, grid, validate, schema, list, predict, export, demo-corpus, report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import ser_plugins.cli.deploy as deploy_commands
from ser_plugins.errors import user_message
from ser_plugins.plugins import registry
from ser_plugins.results.run_dir import GRID_FILE


def _cmd_run(args: argparse.Namespace) -> int:
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    recipe = load_recipe(args.recipe, args.override)
    folds = args.folds.split(",") if args.folds else None
    summary = run_recipe(recipe, args.out, folds, args.resume, progress=not args.quiet)
    from ser_plugins.runtime.distributed import context
    from ser_plugins.training.runner import run_dir_for

    if not context().main:  # torchrun: rank 0 speaks for the run
        return 0
    print(summary.to_markdown())
    print(f"run directory: {run_dir_for(recipe, args.out)}")
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from ser_plugins.launch.grid import run_grid

    folds = args.folds.split(",") if args.folds else None
    if args.launcher:
        from ser_plugins.cli.grid import launched_grid

        return launched_grid(args, folds)
    result = run_grid(
        args.recipes,
        Path(args.out),
        args.override,
        args.sweep,
        folds,
        args.resume,
        progress=not args.quiet,
        cache_dir=args.cache_dir,
    )
    print(result.report)
    print(
        f"{len(result.runs)} runs, {result.forward_passes} upstream forward passes (utterances) in total; "
        f"grid directory: {args.out}"
    )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ser_plugins.model import build_from_recipe, corpus_labels
    from ser_plugins.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.override)
    labels = corpus_labels(recipe.corpus)  # the corpus's options are checked too (its data is not read)
    note = ""
    if labels is None:
        labels, note = ["class0", "class1"], " (classes unknown until the corpus is read: built with 2)"
    model = build_from_recipe(recipe, len(labels))
    from ser_plugins.plugins.probe import probe_model

    probe_model(model, len(labels))  # one forward pass on synthetic audio (every plugin boundary checked), padding
    n_head = sum(p.numel() for p in model.head.parameters())
    n_up = sum(p.numel() for p in model.upstream.parameters())
    print(
        f"recipe OK: upstream {recipe.upstream.name} ({n_up:,} parameters, {model.upstream.num_layers} layers), "
        f"head {n_head:,} parameters{note}, finetune {recipe.finetune.mode}; "
        "one forward pass on synthetic audio OK, padding checks OK"
    )
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from ser_plugins.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    specs = registry.list_plugins(args.kind, args.pattern)
    if args.json:
        print(json.dumps([s.__dict__ for s in specs], indent=2))
        return 0
    width = max([len(s.name) for s in specs] + [4])
    broken = 0
    for s in specs:
        line = f"{s.kind:<11} {s.name:<{width}}  {s.dist}"
        if args.check:
            from ser_plugins.plugins.probe import probe_plugin

            try:
                line += f"  {probe_plugin(s)}"
            except Exception as exc:  # a broken third-party plugin may raise anything: report it, go on
                broken += 1
                message = str(exc) if isinstance(exc, registry.PluginError) else f"{type(exc).__name__}: {exc}"
                line += "  BROKEN: " + " ".join(message.split())
        print(line)
    if not args.check:
        return 0
    from ser_plugins.plugins.probe import report_clashes

    ambiguous = report_clashes(args.kind, args.pattern)
    if broken or ambiguous:
        print(f"{broken} broken plugin(s), {ambiguous} ambiguous name(s)", file=sys.stderr)
        return 1
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    # both engines, whole files and --window: one code path (the ONNX one imports no torch)
    return deploy_commands.predict_command(args)


DEFAULT_GENERATED = "demo"  # ser demo-corpus without --corpus, when several corpora can generate their data


def _cmd_demo_corpus(args: argparse.Namespace) -> int:
    name = args.corpus
    if name is None:
        able = [
            spec.qualified_name
            for spec in registry.list_plugins("corpus")
            if registry.load("corpus", spec.qualified_name).can_generate()
        ]
        if len(able) == 1:
            name = able[0]
        elif f"ser-plugins:{DEFAULT_GENERATED}" in able:  # the built-in IEMOCAP look-alike (README's command)
            name = DEFAULT_GENERATED
        else:
            raise registry.PluginError(
                f"pass --corpus NAME; corpora that can generate their data: {', '.join(able) or 'none'}"
            )
    corpus_cls = registry.load("corpus", name)
    if not corpus_cls.can_generate():
        raise registry.PluginError(f"corpus {name!r} cannot generate its data")
    summary = corpus_cls.generate(
        args.dir, seed=args.seed, utterances_per_speaker=args.utterances_per_speaker, overwrite=args.overwrite
    )
    print(f"{name} corpus written to {args.dir}: {summary}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ser_plugins.results.report import write_report

    table = write_report([Path(d) for d in args.run_dirs], args.out)
    print(table)
    return 0


def version_text() -> str:
    """``ser --version``: ser-plugins' version and those of torch and transformers (read from the installed
    metadata: nothing is imported)."""
    from importlib import metadata

    from ser_plugins import __version__

    def installed(dist: str) -> str:
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            return f"{dist} not installed"

    python = ".".join(str(v) for v in sys.version_info[:3])
    return f"ser-plugins {__version__} ({installed('torch')}, {installed('transformers')}; Python {python})"


class _VersionAction(argparse.Action):
    """``--version``: computed when asked for, not each time the parser is built."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``ser`` argument parser."""
    p = argparse.ArgumentParser(prog="ser", description="Speech emotion recognition with plugin upstreams and heads.")
    p.add_argument(
        "--version", action=_VersionAction, help="print the versions of ser-plugins, torch and transformers and exit"
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train and evaluate a recipe over the folds of its corpus")
    r.add_argument("recipe", help="recipe YAML file")
    r.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. -o training.epochs=5 (repeatable)",
    )
    r.add_argument("--folds", help="comma-separated fold numbers (1-based) or names to run")
    r.add_argument("--out", help="run directory (default: output.dir or runs/<name>)")
    r.add_argument("--resume", action="store_true", help="continue a run: finished folds are not recomputed")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=_cmd_run)

    g = sub.add_parser(
        "grid", help="run several recipes (and --sweep variants) as one study: shared frozen extraction, one report"
    )
    g.add_argument("recipes", nargs="+", help="recipe YAML files")
    g.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value in every recipe (repeatable)",
    )
    g.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run every recipe once per value, e.g. --sweep aggregator=mean,stats (repeatable: all combinations)",
    )
    g.add_argument(
        "--out", required=True, help=f"grid directory: one run directory per run, {GRID_FILE}, report.md/.csv"
    )
    g.add_argument(
        "--cache-dir",
        help="feature cache shared by the frozen runs (default: OUT/feature_cache, "
        "unless a recipe sets data.cache_dir)",
    )
    g.add_argument("--folds", help="comma-separated fold numbers (1-based) or names to run")
    g.add_argument("--resume", action="store_true", help="continue: finished runs and folds are not recomputed")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    from ser_plugins.cli.grid import add_launcher_arguments

    add_launcher_arguments(g)
    g.set_defaults(func=_cmd_grid)

    v = sub.add_parser(
        "validate",
        help="check a recipe and build its model, without data; run it once on synthetic "
        "audio and check its plugins' padding (finite, unchanged by padding)",
    )
    v.add_argument("recipe")
    v.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    v.set_defaults(func=_cmd_validate)

    sc = sub.add_parser("schema", help="print the recipe JSON Schema (for editors: completion and checks)")
    sc.set_defaults(func=_cmd_schema)

    ls = sub.add_parser("list", help="list installed plugins (nothing is imported unless --check)")
    ls.add_argument("kind", nargs="?", choices=list(registry.KINDS), help="only this kind")
    ls.add_argument("--pattern", default="*", help="glob on plugin names, e.g. '*hubert*'")
    ls.add_argument(
        "--check",
        action="store_true",
        help="import every plugin, run each that builds from its defaults once on synthetic input "
        "(with the padding checks of ser validate), report broken ones and name clashes "
        "(exit 1 when any is broken or ambiguous)",
    )
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)

    pr = sub.add_parser(
        "predict",
        help="print the emotion and class probabilities (and any continuous targets) of audio files",
        description="Score audio files with a finished run (the folds' checkpoints averaged). Every readable "
        "file is scored; a file that cannot be read or that training would have skipped (silent, "
        "constant, non-finite, too short, non-finite features) gets its own line saying why it "
        "was not scored. Exit status: 0 when every file was scored, 1 when some file was not "
        "(the others are still scored and printed), 2 when the run directory cannot be used.",
    )
    pr.add_argument("run_dir")
    pr.add_argument("files", nargs="+")
    pr.add_argument(
        "--format",
        choices=("text", "json", "csv"),
        default="text",
        help="output: text (tab-separated lines, default), json (a list of objects with path, status, "
        "emotion, probabilities, problem, detail; values for runs with targets) or csv "
        "(path,status,emotion,problem,detail,p_<label>..., then one column per target)",
    )
    pr.add_argument("--fold", help="use one fold's checkpoint (default: average all folds)")
    pr.add_argument(
        "--min-speaker-files",
        type=int,
        default=10,
        help="speaker-normalised runs: with at least this many files, standardise with their own "
        "statistics (one speaker); with fewer, use the run's typical speaker statistics",
    )
    deploy_commands.add_predict_arguments(pr)
    pr.set_defaults(func=_cmd_predict)

    deploy_commands.add_export_parser(sub)

    d = sub.add_parser("demo-corpus", help="generate a synthetic corpus (the demo corpus, in IEMOCAP's layout)")
    d.add_argument("dir")
    d.add_argument("--corpus", help="corpus plugin that generates its data (default: demo, or the only one that can)")
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
    logging.basicConfig(
        level=logging.INFO if not getattr(args, "quiet", False) else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:
        message = user_message(exc)
        if args.debug or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        code = 2
    if "torch.distributed" in sys.modules:  # a torchrun rank: ends here, see end_process
        from ser_plugins.runtime.distributed import end_process

        end_process(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
