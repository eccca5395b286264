"""Accuracy: every built-in head, trained by the runner with its defaults, beside a converged linear model.

For each pooling aggregator x linear/mlp classifier (``--all``: every built-in aggregator x
classifier; the frame-level networks take 5-15 minutes per fold here) (fbank upstream, the demo
recipe's corpus and folds, every head under its defaults: a head's ``training_defaults`` apply) and
each normalisation, the runner's mean UA over the 5 leave-one-session-out folds is
printed beside scikit-learn's ``LogisticRegression(max_iter=5000)`` fitted on the same pooled
features (the mean of the valid frames, after the same normalisation) of every training utterance
of the same folds -- all the runner could train on -- and the gap; so a dev set that costs training
data shows as a miss. A second reference column fits the logistic regression without one held-out
dev speaker per fold (``protocol.dev: speaker``), for comparison.

Targets (the results issue): mean + linear within 0.01 of the reference; every other head at least
the reference minus 0.01; the demo recipe at or above the reference for its own normalisation. A
cosine classifier after parameter-free pooling keeps only the pooled vector's direction and has no
bias: it is held to the same logistic regression restricted to that (unit-length inputs, no
intercept), the best its model class can do; after a learned embedding (frame-level networks) the
usual target applies.

    python benchmarks/bench_accuracy.py [--norms global speaker null] [--heads mean:linear stats:mlp]
                                        [--jobs N] [--device cpu|cuda]

``--jobs N`` trains N rows at once in separate processes (each with its share of the CPU threads);
the seconds column is then each row's wall time under that contention. ``--device`` sets
``training.device`` (default: the recipe's ``auto``, the GPU where there is one).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from common import WORK, machine

from ser_plugins import list_plugins
from ser_plugins.data.normalize import Normalizer
from ser_plugins.data.prepare import prepare
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import run_recipe

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


POOLING = ("mean", "stats", "attentive_stats", "self_attention")  # frame-level networks: bench_frame_heads.py
CLASSIFIERS = ("linear", "mlp")


def builtin_heads(everything: bool = False) -> List[Tuple[str, str]]:
    """The pooling aggregators x linear/mlp (or, with ``everything``, every built-in aggregator x classifier)."""
    aggs = [s.name for s in list_plugins("aggregator") if s.dist == "ser-plugins" and (everything or s.name in POOLING)]
    clss = [s.name for s in list_plugins("classifier") if s.dist == "ser-plugins" and (everything or s.name in CLASSIFIERS)]
    return [(a, c) for a in aggs for c in clss]


PENALTIES = (0.1, 1.0, 10.0, 100.0, 1e4)  # the reference's C (inverse L2 strength); the reference: C = 1


def references(norm: str) -> Dict[str, float]:
    """Mean UA of a converged logistic regression on pooled features of the demo folds.

    ``all``: fitted on every training utterance of the fold (what the runner trains on when no dev
    set is held out, and what a refit trains on: the target's reference). ``reduced``: fitted on the
    fold's training utterances less one held-out dev speaker (``protocol.dev: speaker``), for
    comparison: the cost of a dev set. Also ``C=<c>``: the ``all`` fit with other L2 penalties (how
    far a converged linear model moves with its regularisation alone), and ``direction``: the ``all``
    fit restricted to what a cosine classifier sees of a pooled vector (unit-length inputs, no
    intercept).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    recipe = load_recipe(DEMO, ["aggregator=mean", "classifier=linear", f"features.normalize={norm}",
                                "protocol.dev=speaker"])
    prep = prepare(recipe, "cpu", progress=False)
    feats, speakers = prep.source.features, prep.speakers
    scores: Dict[str, List[float]] = {"all": [], "reduced": [], "direction": [],
                                      **{f"C={c:g}": [] for c in PENALTIES}}
    for fold in prep.folds:
        y = lambda ids: np.array([prep.targets[u] for u in ids])  # noqa: E731
        unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
        y_test = y(fold.test)

        def pooled(ids, fitted_on):
            normalizer = Normalizer(norm).fit(prep.moments, speakers, fitted_on) if norm != "null" else None
            rows = []
            for u in ids:
                layers = feats[u] if normalizer is None else normalizer.transform(feats[u], speakers[u])
                rows.append(layers[0].float().mean(0).numpy())
            return np.stack(rows)

        def score(x: np.ndarray, labels: np.ndarray, test: np.ndarray, **options) -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf = LogisticRegression(**{"max_iter": 5000, **options}).fit(x, labels)
            return balanced_accuracy_score(y_test, clf.predict(test))

        every = list(fold.train) + list(fold.dev)
        x_all, x_test = pooled(every, every), pooled(fold.test, every)
        scores["all"].append(score(x_all, y(every), x_test))
        scores["reduced"].append(score(pooled(fold.train, fold.train), y(fold.train), pooled(fold.test, fold.train)))
        scores["direction"].append(score(unit(x_all), y(every), unit(x_test), fit_intercept=False))
        for c in PENALTIES:
            scores[f"C={c:g}"].append(score(x_all, y(every), x_test, C=c, max_iter=20000))
    return {k: float(np.mean(v)) for k, v in scores.items()}


def runner_ua(aggregator: str, classifier: str, norm: str, resume: bool = False,
              device: Optional[str] = None) -> Tuple[float, float, str]:
    """(mean UA, seconds, dev protocol) of the runner with the demo recipe's defaults and this head.

    ``resume``: keep the folds an earlier (killed) run of this row finished (``ser run --resume``:
    the same results) and train the rest; seconds then count this call only. ``device``: the
    recipe's ``training.device`` (default ``auto``).
    """
    out = WORK / "accuracy" / f"{aggregator}-{classifier}-{norm}"
    if not resume:
        shutil.rmtree(out, ignore_errors=True)
    overrides = [f"aggregator={aggregator}", f"classifier={classifier}", f"features.normalize={norm}",
                 "output.tensorboard=false"] + ([f"training.device={device}"] if device else [])
    recipe = load_recipe(DEMO, overrides)
    start = time.perf_counter()
    summary = run_recipe(recipe, str(out), resume=resume and out.exists(), progress=False)
    dev = summary.dev + (" + refit" if summary.refit else "")
    return summary.mean_std["ua"]["mean"], time.perf_counter() - start, dev


def _share_threads(threads: int) -> None:
    """A worker process's torch CPU threads (its share of the machine when rows run at once)."""
    import torch

    torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["global", "speaker"],
                        help="global (the default for frozen features), speaker, null (raw features)")
    parser.add_argument("--heads", nargs="+", help="aggregator:classifier pairs (default: pooling heads x linear/mlp)")
    parser.add_argument("--all", action="store_true", help="every built-in aggregator x classifier (frame-level "
                                                           "networks take minutes per run)")
    parser.add_argument("--resume", action="store_true", help="keep the folds a killed earlier run of a row "
                                                              "finished (frame-level rows take an hour or more)")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once, in separate processes")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="training.device (default: the recipe's auto)")
    args = parser.parse_args()
    heads = [tuple(h.split(":")) for h in args.heads] if args.heads else builtin_heads(args.all)
    print(f"machine: {machine()}")
    print("| normalisation | head | runner dev | runner UA | reference UA (all training speakers) | gap | target | met "
          "| reference UA (less a dev speaker) | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    demo = load_recipe(DEMO)
    missed = 0
    refs: Dict[str, Dict[str, float]] = {}

    def add_reference(norm: str) -> None:
        refs[norm] = ref = references(norm)
        sweep = ", ".join(f"{k} {v:.4f}" for k, v in ref.items() if k.startswith("C="))
        print(f"| {norm} | reference, L2 penalty swept (all): {sweep} | | | | | | | | |", flush=True)

    add_reference(args.norms[0])  # also prepares the corpus before any row runs
    rows = [(agg, cls, norm) for norm in args.norms for agg, cls in heads]
    with contextlib.ExitStack() as stack:
        if args.jobs > 1:  # rows train in worker processes while the other references are fitted here
            pool = stack.enter_context(ProcessPoolExecutor(
                args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_share_threads,
                initargs=(max(1, (os.cpu_count() or 1) // args.jobs),)))
            futures = {pool.submit(runner_ua, *row, args.resume, args.device): row for row in rows}
            results = ((futures[f], f.result) for f in as_completed(futures))
        else:
            results = ((row, functools.partial(runner_ua, *row, args.resume, args.device)) for row in rows)
        for norm in args.norms[1:]:
            add_reference(norm)
        for (agg, cls, norm), outcome in results:
            try:
                ua, seconds, dev = outcome()
            except Exception as exc:  # one broken row is reported alone; the others still run
                missed += 1
                print(f"| {norm} | {agg} + {cls} | | failed: {exc!r} | | | | NO | | |", flush=True)
                continue
            ref = refs[norm]
            gap = ua - ref["all"]
            is_demo = (agg, cls, norm) == (demo.aggregator.name, demo.classifier.name, demo.features.normalize)
            if (agg, cls) == ("mean", "linear"):
                target, met = "abs(gap) <= 0.01", abs(gap) <= 0.01
            elif cls == "cosine" and agg in POOLING:  # no learned embedding: the cosine head sees directions only
                target = f"gap to direction-only reference ({ref['direction']:.4f}) >= -0.01"
                met = ua - ref["direction"] >= -0.01
            elif is_demo:
                target, met = "gap >= 0 (demo)", gap >= 0
            else:
                target, met = "gap >= -0.01", gap >= -0.01
            missed += not met
            print(f"| {norm} | {agg} + {cls}{' (demo)' if is_demo else ''} | {dev} | {ua:.4f} | {ref['all']:.4f} | "
                  f"{gap:+.4f} | {target} | {'yes' if met else 'NO'} | {ref['reduced']:.4f} | {seconds:.0f} |",
                  flush=True)
    print(f"targets missed: {missed}")


if __name__ == "__main__":
    main()
