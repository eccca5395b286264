"""Target 1: a frozen 5-fold grid of 3 heads, run as users run it (``ser grid``: one shared extraction).

1a: the grid's wall time against one extraction pass + the heads' own training (target <= 1.2 x).
1b: the same grid without precomputation (``data.precompute: false``: the frozen upstream runs on
every training and evaluation step, as S3PRL's runner does) against the cached grid (target >= 5 x).

Each cached grid runs ``run_grid`` (the code of ``ser grid``) over three recipe files in a fresh
output folder, so its feature cache starts empty every time. Figures come from what the run wrote:
the extraction time from each run's run.json (``extraction.seconds``: the batched/one-at-a-time
upstream forward and the float16 copy-out; audio decoding, cache I/O and model loading are left in
the "rest"), the forward-pass count from grid.json, the heads' seconds from every fold's
metrics.json (training + test evaluation of the head). A wrapper on the upstream's forward counts
the utterances it sees, as a second count (and the only one for the baseline).

    python benchmarks/bench_grid.py            # HuBERT-base (random weights), about 7 minutes idle
    python benchmarks/bench_grid.py --quick    # a tiny model: checks the script, figures mean nothing
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List

import yaml
from common import WORK, ForwardCounter, demo_corpus, hubert_base_folder, load_average, machine, median, spread

from ser_plugins.launch.grid import run_grid
from ser_plugins.runtime.atomic import read_json
from upstreams.hf import TransformersEncoderUpstream

HEADS = [("mean", "linear"), ("stats", "mlp"), ("attentive_stats", "mlp")]


def write_recipes(folder: Path, root: Path, model: Path, epochs: int, precompute: bool) -> List[str]:
    """One recipe file per head (what a user passes to ``ser grid``); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for aggregator, classifier in HEADS:
        recipe = {
            "name": f"{aggregator}-{classifier}", "seed": 0,
            "corpus": {"name": "iemocap", "root": str(root)},
            "upstream": {"name": "hf", "model": str(model)},
            # no normalisation on either side (it needs precomputed features): the recipes differ only in precompute
            "features": {"layer": "weighted_sum", "normalize": None},
            "aggregator": {"name": aggregator}, "classifier": {"name": classifier},
            "training": {"max_steps": None, "epochs": epochs, "batch_size": 8},
            "data": {"precompute": precompute},
            "output": {"tensorboard": False, "save_checkpoints": False},
        }
        path = folder / f"{aggregator}-{classifier}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        paths.append(str(path))
    return paths


def run_once(recipes: List[str], out: Path, counter: ForwardCounter) -> Dict[str, Any]:
    """One whole grid in a fresh ``out`` (fresh feature cache); the figures it wrote."""
    shutil.rmtree(out, ignore_errors=True)
    counter.take()
    start = time.perf_counter()
    with counter.counting():
        run_grid(recipes, out, progress=False)
    wall = time.perf_counter() - start
    grid = read_json(out / "grid.json")
    runs, heads, folds, caches = [], 0.0, 0, []
    for entry in grid["runs"]:
        run = read_json(Path(entry["dir"]) / "run.json")
        runs.append(run)
        for metrics in sorted((Path(entry["dir"]) / "folds").glob("*/metrics.json")):
            heads += json.loads(metrics.read_text())["seconds"]
            folds += 1
        cache = run.get("feature_cache")
        caches.append(f"{entry['name']}: " + (f"{cache['hits']} hits, {cache['misses']} misses, writes {cache['written']}"
                                               if cache else "no cache"))
    return {
        "wall": wall,
        "extraction": sum(r.get("extraction", {}).get("seconds", 0.0) for r in runs),
        "heads": heads, "folds": folds,
        "utterances": sum(f["test"] for f in runs[0]["folds"]),  # leave-one-session-out: each usable one tested once
        "grid_forwards": int(grid["upstream_forward_passes"]),
        "counted_forwards": counter.take()["utterances"],
        "caches": caches,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances-per-speaker", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="cached grids, each with a fresh cache")
    p.add_argument("--baseline-repeats", type=int, default=1, help="grids without precomputation (long)")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 utterances per speaker: checks the script runs")
    args = p.parse_args()
    if args.quick:
        args.utterances_per_speaker, args.epochs = 2, 1
    if args.repeats < 1 or args.baseline_repeats < 1:
        p.error("--repeats and --baseline-repeats must be at least 1")
    root, model = demo_corpus(args.utterances_per_speaker), hubert_base_folder(tiny=args.quick)
    work = WORK / ("grid_quick" if args.quick else "grid")
    counter = ForwardCounter(TransformersEncoderUpstream)
    print(machine(), "|", load_average())
    print(f"upstream {model.name}; demo corpus {args.utterances_per_speaker} utterances per speaker; heads "
          f"{', '.join(a + ' + ' + c for a, c in HEADS)}; 5 folds; {args.epochs} epoch(s), batch 8")

    recipes = write_recipes(work / "recipes_cached", root, model, args.epochs, precompute=True)
    cached = []
    for i in range(args.repeats):
        r = run_once(recipes, work / "cached", counter)
        cached.append(r)
        ratio = r["wall"] / (r["extraction"] + r["heads"])
        print(f"  cached run {i + 1}: wall {r['wall']:.1f} s, extraction {r['extraction']:.1f} s, heads {r['heads']:.1f} s "
              f"({r['folds']} folds), ratio {ratio:.2f}; forward passes {r['grid_forwards']} (grid.json), "
              f"{r['counted_forwards']} (counted) for {r['utterances']} utterances")
    utts = cached[0]["utterances"]
    print(f"feature cache (last run): {'; '.join(cached[-1]['caches'])}")
    print(f"cached grid, {args.repeats} runs, fresh cache each (median, min, max):")
    print(f"  wall                                {spread([r['wall'] for r in cached], '{:.1f}')} s")
    print(f"  one extraction pass (run.json)      {spread([r['extraction'] for r in cached], '{:.1f}')} s")
    print(f"  heads' training + test (metrics)    {spread([r['heads'] for r in cached], '{:.1f}')} s")
    rest = [r["wall"] - r["extraction"] - r["heads"] for r in cached]
    print(f"  rest (loading, decoding, cache I/O, plots, reports) {spread(rest, '{:.1f}')} s")
    ok = all(r["grid_forwards"] == r["counted_forwards"] == r["utterances"] for r in cached)
    print(f"  upstream forward passes per grid: {', '.join(str(r['grid_forwards']) for r in cached)} (grid.json), "
          f"{', '.join(str(r['counted_forwards']) for r in cached)} (counted), {utts} utterances: "
          f"{'one per utterance' if ok else 'NOT one per utterance'}")
    ratios = [r["wall"] / (r["extraction"] + r["heads"]) for r in cached]
    print(f"1a. wall / (one extraction pass + heads) = {spread(ratios)}  (target <= 1.2: "
          f"{'met' if median(ratios) <= 1.2 else 'MISSED'})")
    if args.skip_baseline:
        return
    recipes = write_recipes(work / "recipes_every_step", root, model, args.epochs, precompute=False)
    base = []
    for i in range(args.baseline_repeats):
        r = run_once(recipes, work / "every_step", counter)
        base.append(r)
        print(f"  every-step run {i + 1}: wall {r['wall']:.1f} s, upstream forward passes {r['counted_forwards']} (counted)")
    note = " (run once: it is the long one)" if args.baseline_repeats == 1 else ""
    print(f"same grid without precomputation{note}: wall {spread([r['wall'] for r in base], '{:.1f}')} s, "
          f"upstream forward passes {spread([r['counted_forwards'] for r in base], '{:.0f}')} "
          f"({median([r['counted_forwards'] for r in base]) / utts:.1f} per utterance)")
    speedup = median([r["wall"] for r in base]) / median([r["wall"] for r in cached])
    print(f"1b. speed-up of the cached grid = {speedup:.1f} x (median / median)  (target >= 5: "
          f"{'met' if speedup >= 5 else 'MISSED'})")


if __name__ == "__main__":
    main()
