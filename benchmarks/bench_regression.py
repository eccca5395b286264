"""Regression: the runner's CCC for every pooling head beside a converged scikit-learn ridge regression.

For each pooling aggregator x linear/mlp classifier and each normalisation (fbank upstream, the demo
recipe's corpus and leave-one-session-out folds, ``task: regression`` with its targets, default
arousal / valence / dominance), the runner's mean CCC over the folds (the mean over folds of each
fold's mean over targets, as summary.json's ``mean_std["ccc"]``; and per target) is printed beside
two references fitted per fold on exactly the runner's training utterances (train + dev: all it
could train on) and the same pooled features (the mean of the valid frames, after the same
normalisation, fitted fold by fold on the same utterances):

* ``RidgeCV(alphas=np.logspace(-3, 3, 13), alpha_per_target=True)`` on standardised features (the
  scaler fitted on the fold's training utterances; leave-one-out choice of the penalty per target:
  one ridge per target), the reference of the bar;
* ``LinearSVR`` (epsilon-insensitive loss with epsilon 0, C = 1) per target on standardised
  features and standardised targets (mapped back), a second reference with another loss.

CCC is ``ser_plugins.results.metrics.ccc`` per fold and target, averaged as the runner averages.

The bar (the classification benchmark's): mean + linear within 0.01 CCC of the RidgeCV reference
or above it; every other head at least the reference minus 0.01; the best head of each
normalisation above the reference.

    python benchmarks/bench_regression.py [--norms global speaker none] [--heads mean:linear stats:mlp]
                                          [--variants "task.loss=ccc,task.standardize=true" ...]
                                          [--jobs N] [--device cpu|cuda]
                                          [--recipe R.yaml | --manifest M.csv --attributes arousal=COL ...]
                                          [-o key=value ...]

``--variants``: runner settings, each a comma-separated list of recipe overrides; every head runs
once per variant (default: one, ``DEFAULT_VARIANT``). ``--recipe`` or ``--manifest`` (a CSV with
target columns, read by the manifest corpus with ``attributes``) replace the demo corpus; ``-o``
overrides apply to the references and the runner alike. ``--jobs N`` trains N rows at once in
separate processes; seconds are then each row's wall time under that contention.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from common import WORK, machine

from ser_plugins import list_plugins
from ser_plugins.data.normalize import Normalizer
from ser_plugins.data.prepare import prepare
from ser_plugins.recipe import load_recipe
from ser_plugins.results.metrics import ccc
from ser_plugins.training.runner import run_recipe

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
DEMO_ROOT = WORK / "demo_regression"  # the demo corpus generated afresh, so its brackets are the audio's attributes

POOLING = ("mean", "stats", "attentive_stats", "self_attention")
CLASSIFIERS = ("linear", "mlp")
ALPHAS = np.logspace(-3, 3, 13)  # RidgeCV's penalties (on standardised features)
DEFAULT_VARIANT = "task.loss=ccc,task.standardize=true,training.lr=0.003"  # measured best (README); --variants
NORMS = {"global": "global", "speaker": "speaker", "none": None, "null": None}


def builtin_heads() -> List[Tuple[str, str]]:
    """The built-in pooling aggregators x linear/mlp."""
    aggs = [s.name for s in list_plugins("aggregator") if s.dist == "ser-plugins" and s.name in POOLING]
    clss = [s.name for s in list_plugins("classifier") if s.dist == "ser-plugins" and s.name in CLASSIFIERS]
    return [(a, c) for a in aggs for c in clss]


def corpus_overrides(recipe: Optional[str], manifest: Optional[str], attributes: Sequence[str]) -> List[str]:
    """Recipe overrides that put the chosen corpus in place of the demo recipe's.

    No ``recipe`` and no ``manifest``: the demo corpus under ``DEMO_ROOT``. ``manifest``: the manifest
    corpus reading that CSV, ``attributes`` (``name=column`` or ``name``) naming its target columns.
    """
    if manifest:
        if not attributes:
            raise SystemExit("--manifest needs --attributes NAME=COLUMN ... (the columns of the targets)")
        columns = dict(a.split("=", 1) if "=" in a else (a, a) for a in attributes)
        return ["corpus=manifest", f"corpus.root={manifest}", f"corpus.attributes={json.dumps(columns)}",
                f"task.targets={json.dumps(list(columns))}"]
    return [] if recipe else [f"corpus.root={DEMO_ROOT}"]


def norm_override(norm: str) -> str:
    """The ``features.normalize`` override of a normalisation name (``none``: raw features)."""
    value = NORMS[norm]
    return f"features.normalize={value if value is not None else 'null'}"


def variant_overrides(variant: str) -> List[str]:
    """The recipe overrides of a ``--variants`` entry (comma-separated ``key=value``)."""
    return [item.strip() for item in variant.split(",") if item.strip()]


def fold_cccs(truth: np.ndarray, predictions: np.ndarray, names: Sequence[str]) -> Dict[str, float]:
    """CCC of ``[N, K]`` predictions per target (``ccc_<name>``) and their mean over targets (``ccc``)."""
    per = {f"ccc_{n}": ccc(truth[:, k], predictions[:, k]) for k, n in enumerate(names)}
    return {"ccc": float(np.mean(list(per.values()))), **per}


def average_folds(per_fold: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """The mean over folds of each key (the runner's ``mean_std[...]["mean"]``)."""
    return {k: float(np.mean([f[k] for f in per_fold])) for k in per_fold[0]}


def fit_references(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> Dict[str, Any]:
    """Test predictions ``[N, K]`` of the two references fitted on one fold's training utterances.

    ``ridgecv``: ``RidgeCV(ALPHAS, alpha_per_target=True)`` on standardised features; ``svr``: one
    ``LinearSVR`` per target on standardised features and targets, mapped back to the targets'
    scale. Also ``alphas`` (RidgeCV's penalty per target) and ``svr_unconverged`` (targets whose
    LinearSVR stopped at its iteration limit).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVR

    scaler = StandardScaler().fit(x_train)
    xs, xt = scaler.transform(x_train), scaler.transform(x_test)
    ridge = RidgeCV(alphas=ALPHAS, alpha_per_target=True).fit(xs, y_train)
    mu, sd = y_train.mean(0), y_train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    svr, unconverged = [], 0
    for k in range(y_train.shape[1]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = LinearSVR(C=1.0, epsilon=0.0, dual=True, max_iter=200_000, tol=1e-5, random_state=0)
            model.fit(xs, (y_train[:, k] - mu[k]) / sd[k])
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        svr.append(model.predict(xt) * sd[k] + mu[k])
    return {"ridgecv": ridge.predict(xt).reshape(len(x_test), -1), "svr": np.stack(svr, 1),
            "alphas": np.atleast_1d(ridge.alpha_).tolist(), "svr_unconverged": unconverged}


def pooled(prep: Any, norm: str, ids: Sequence[str], fitted_on: Sequence[str]) -> np.ndarray:
    """``[N, D]`` pooled features of ``ids``: the mean of the valid frames (averaged over the kept
    layers, as a uniform layer weighting starts), after the normalisation fitted on ``fitted_on``."""
    feats, speakers = prep.source.features, prep.speakers
    normalizer = Normalizer(NORMS[norm]).fit(prep.moments, speakers, fitted_on) if NORMS[norm] else None
    rows = []
    for u in ids:
        layers = feats[u] if normalizer is None else normalizer.transform(feats[u], speakers[u])
        rows.append(np.mean([layer.float().mean(0).numpy() for layer in layers], axis=0))
    return np.stack(rows).astype(np.float64)


def references(base: str, overrides: Sequence[str], norm: str) -> Dict[str, Any]:
    """Mean CCC (and per target) of both references over the folds, with the work counted."""
    recipe = load_recipe(base, [*overrides, "task.type=regression", "aggregator=mean", "classifier=linear",
                                norm_override(norm)])
    prep = prepare(recipe, "cpu", progress=False)
    names = list(prep.task.targets)
    scores: Dict[str, List[Dict[str, float]]] = {"ridgecv": [], "svr": []}
    alphas: List[float] = []
    unconverged = train_total = test_total = 0
    for fold in prep.folds:
        every = list(fold.train) + list(fold.dev)
        y = lambda ids: np.array([prep.targets[u] for u in ids], dtype=np.float64).reshape(len(ids), -1)  # noqa: E731
        fit = fit_references(pooled(prep, norm, every, every), y(every), pooled(prep, norm, fold.test, every))
        for name in scores:
            scores[name].append(fold_cccs(y(fold.test), fit[name], names))
        alphas += fit["alphas"]
        unconverged += fit["svr_unconverged"]
        train_total += len(every)
        test_total += len(fold.test)
    return {"targets": names, "folds": len(prep.folds), "train": train_total, "test": test_total,
            "alphas": alphas, "svr_unconverged": unconverged,
            **{name: average_folds(per) for name, per in scores.items()}}


def runner_ccc(base: str, overrides: Sequence[str], aggregator: str, classifier: str, norm: str, variant: str,
               device: Optional[str] = None) -> Dict[str, Any]:
    """The runner's mean CCC (and per target) with this head and variant, and the work it did."""
    tag = variant.replace("task.", "").replace("training.", "").replace(",", "_").replace("=", "-")
    out = WORK / "regression" / f"{aggregator}-{classifier}-{norm}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = load_recipe(base, [*overrides, "task.type=regression", f"aggregator={aggregator}",
                                f"classifier={classifier}", norm_override(norm), "output.tensorboard=false",
                                *variant_overrides(variant)] + ([f"training.device={device}"] if device else []))
    start = time.perf_counter()
    summary = run_recipe(recipe, str(out), progress=False)
    seconds = time.perf_counter() - start
    steps = train = 0
    for fold in summary.folds:
        metrics = json.loads((out / "folds" / fold / "metrics.json").read_text())
        steps += int(metrics["history"][-1]["step"]) if metrics.get("history") else 0
        train += int(metrics["train"])
    ccc_means = {k: float(v["mean"]) for k, v in summary.mean_std.items() if k == "ccc" or k.startswith("ccc_")}
    return {**ccc_means, "folds": len(summary.folds), "train": train, "steps": steps, "seconds": seconds,
            "dev": summary.dev + (" + refit" if summary.refit else "")}


def row_bar(aggregator: str, classifier: str, gap: float) -> Tuple[str, bool]:
    """The bar of one row (beside the best-head check): mean + linear and the other heads alike,
    at least the reference minus 0.01 (above it passes too)."""
    target = "gap >= -0.01" if (aggregator, classifier) != ("mean", "linear") else "gap >= -0.01 (mean + linear)"
    return target, gap >= -0.01


def best_heads(rows: Sequence[Tuple[str, str, str, str, float, float]]) -> Dict[Tuple[str, str], Tuple[str, float]]:
    """Per (normalisation, variant), the head with the highest runner CCC and its gap to the reference.

    ``rows``: ``(norm, variant, aggregator, classifier, runner CCC, gap)``.
    """
    best: Dict[Tuple[str, str], Tuple[str, float, float]] = {}
    for norm, variant, agg, cls, score, gap in rows:
        if (norm, variant) not in best or score > best[(norm, variant)][1]:
            best[(norm, variant)] = (f"{agg} + {cls}", score, gap)
    return {k: (head, gap) for k, (head, _, gap) in best.items()}


def _share_threads(threads: int) -> None:
    """A worker process's torch CPU threads (its share of the machine when rows run at once)."""
    import torch

    torch.set_num_threads(threads)


def _per_target(values: Dict[str, float], names: Sequence[str]) -> str:
    return " / ".join(f"{values[f'ccc_{n}']:.4f}" for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["global", "speaker", "none"], choices=sorted(NORMS),
                        help="global (the default for frozen features), speaker, none (raw features)")
    parser.add_argument("--heads", nargs="+", help="aggregator:classifier pairs (default: pooling heads x linear/mlp)")
    parser.add_argument("--variants", nargs="+", default=[DEFAULT_VARIANT],
                        help="runner settings, each comma-separated overrides (e.g. task.loss=mse,training.lr=0.001)")
    parser.add_argument("--recipe", help="a recipe whose corpus has the targets (default: the demo recipe)")
    parser.add_argument("--manifest", help="a CSV manifest with target columns (the manifest corpus)")
    parser.add_argument("--attributes", nargs="+", default=[], help="with --manifest: NAME=COLUMN of each target")
    parser.add_argument("-o", "--override", action="append", default=[], help="recipe override for every fit")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once, in separate processes")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="training.device (default: the recipe's auto)")
    args = parser.parse_args()
    base = str(args.recipe or DEMO)
    overrides = corpus_overrides(args.recipe, args.manifest, args.attributes) + list(args.override)
    heads = [tuple(h.split(":")) for h in args.heads] if args.heads else builtin_heads()
    print(f"machine: {machine()}")
    print(f"recipe: {base} {' '.join('-o ' + o for o in overrides)}".rstrip())
    refs: Dict[str, Dict[str, Any]] = {}

    def add_reference(norm: str) -> None:
        refs[norm] = ref = references(base, overrides, norm)
        alphas = ", ".join(f"{a:g}" for a in sorted(set(ref["alphas"])))
        ridge, svr = _per_target(ref["ridgecv"], ref["targets"]), _per_target(ref["svr"], ref["targets"])
        print(f"reference {norm}: RidgeCV CCC {ref['ridgecv']['ccc']:.4f} ({ridge}), "
              f"LinearSVR CCC {ref['svr']['ccc']:.4f} ({svr}); "
              f"{ref['folds']} folds, {ref['train']} training / {ref['test']} test utterances in all; "
              f"RidgeCV alphas chosen: {alphas}; LinearSVR fits unconverged: {ref['svr_unconverged']}", flush=True)

    add_reference(args.norms[0])  # also prepares the corpus (generated on first use) before any row runs
    names = refs[args.norms[0]]["targets"]
    rows = [(agg, cls, norm, v) for norm in args.norms for v in args.variants for agg, cls in heads]
    done: List[Tuple[str, str, str, str, float, float]] = []
    missed = 0
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:  # rows train in worker processes while the other references are fitted here
            pool = stack.enter_context(ProcessPoolExecutor(
                args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_share_threads,
                initargs=(max(1, (os.cpu_count() or 1) // args.jobs),)))
            futures = [(row, pool.submit(runner_ccc, base, overrides, *row, args.device)) for row in rows]
            results = ((row, f.result) for row, f in futures)  # printed in the grid's order
        else:
            results = ((row, functools.partial(runner_ccc, base, overrides, *row, args.device)) for row in rows)
        for norm in args.norms[1:]:
            add_reference(norm)
        print(f"| normalisation | head | runner settings | runner CCC | runner {' / '.join(names)} | RidgeCV CCC "
              f"| RidgeCV {' / '.join(names)} | gap | bar | met | LinearSVR CCC | folds | training utterances "
              "| steps | seconds |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
        for (agg, cls, norm, variant), outcome in results:
            try:
                r = outcome()
            except Exception as exc:  # one broken row is reported alone; the others still run
                missed += 1
                print(f"| {norm} | {agg} + {cls} | {variant} | failed: {exc!r} | | | | | | NO | | | | | |", flush=True)
                continue
            ref = refs[norm]
            gap = r["ccc"] - ref["ridgecv"]["ccc"]
            target, met = row_bar(agg, cls, gap)
            missed += not met
            done.append((norm, variant, agg, cls, r["ccc"], gap))
            print(f"| {norm} | {agg} + {cls} | {variant} | {r['ccc']:.4f} | {_per_target(r, names)} | "
                  f"{ref['ridgecv']['ccc']:.4f} | {_per_target(ref['ridgecv'], names)} | {gap:+.4f} | {target} | "
                  f"{'yes' if met else 'NO'} | {ref['svr']['ccc']:.4f} | {r['folds']} | {r['train']} | "
                  f"{r['steps']} | {r['seconds']:.0f} |", flush=True)
    for (norm, variant), (head, gap) in sorted(best_heads(done).items()):
        above = gap > 0
        missed += not above
        print(f"best head, {norm}, {variant}: {head}, gap {gap:+.4f} to RidgeCV: "
              f"{'above the reference' if above else 'NOT above the reference'}")
    print(f"bars missed: {missed}")


if __name__ == "__main__":
    main()
