"""Target 1: a frozen 5-fold grid of 3 heads with the feature cache vs the upstream on every step.

Prints: the wall time of the cached grid, one extraction pass, the heads' own training time,
the cached grid's cost as a multiple of (extraction + heads), and the speed-up over the same
grid without precomputation (S3PRL's way: the frozen upstream runs on every training step).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time

from common import WORK, demo_corpus, hubert_base_folder, machine

from ser_plugins.recipe import load_recipe
from ser_plugins.runner import run_recipe

HEADS = [("mean", "linear"), ("stats", "mlp"), ("attentive_stats", "mlp")]


def recipe(root, model, aggregator, classifier, epochs, cache, precompute):
    return load_recipe({
        "name": f"{aggregator}-{classifier}", "seed": 0,
        "corpus": {"name": "iemocap", "root": str(root)},
        "upstream": {"name": "hf", "model": str(model)},
        "features": {"layer": "weighted_sum"},
        "aggregator": aggregator, "classifier": classifier,
        "training": {"epochs": epochs, "batch_size": 8, "patience": None},
        "data": {"cache_dir": str(cache) if cache else None, "precompute": precompute},
        "output": {"tensorboard": False, "save_checkpoints": False},
    })


def grid(root, model, epochs, cache, precompute, tag):
    start = time.perf_counter()
    heads = extraction = 0.0
    for agg, clf in HEADS:
        out = WORK / "runs" / tag / f"{agg}-{clf}"
        shutil.rmtree(out, ignore_errors=True)
        summary = run_recipe(recipe(root, model, agg, clf, epochs, cache, precompute), str(out), progress=False)
        folds = [json.loads((out / "folds" / f / "metrics.json").read_text()) for f in summary["folds"]]
        heads += sum(f["seconds"] for f in folds)
        run = json.loads((out / "run.json").read_text())
        extraction += run.get("extraction", {}).get("seconds", 0.0)
    return time.perf_counter() - start, extraction, heads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--utterances-per-speaker", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--skip-baseline", action="store_true")
    args = p.parse_args()
    root, model = demo_corpus(args.utterances_per_speaker), hubert_base_folder()
    cache = WORK / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    print(machine())
    wall, extraction, heads = grid(root, model, args.epochs, cache, True, "cached")
    print(f"cached grid: {wall:.1f} s wall; one extraction pass {extraction:.1f} s; heads' training {heads:.1f} s")
    print(f"ratio cached / (extraction + heads) = {wall / (extraction + heads):.2f}  (target <= 1.2)")
    if not args.skip_baseline:
        base_wall, _, _ = grid(root, model, args.epochs, None, False, "every-step")
        print(f"upstream on every step: {base_wall:.1f} s wall")
        print(f"speed-up of the cache = {base_wall / wall:.1f}x  (target >= 5)")


if __name__ == "__main__":
    main()
