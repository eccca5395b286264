"""PyTorch vs onnxruntime inference time per second of audio, on CPU, for exported runs.

Two runs are trained briefly on the synthetic demo corpus (one fold, one epoch: the weights do not
change the cost) and exported with ``ser export``: log-mel fbank + stats + MLP, and a full-size,
randomly initialised HuBERT-base (frozen) + weighted sum + attentive stats + MLP. For each, one
utterance of each length is scored by the fold's PyTorch graph (``FoldGraph`` under
``torch.inference_mode``, the computation ``ser predict`` runs) and by the exported ONNX file in
onnxruntime (``OnnxPredictor``); each timing is the median of ``--repeats`` runs after one warm-up
(the two engines alternate), both with the same number of threads.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def train_and_export(name: str, recipe_extra: dict, root: Path, work: Path) -> tuple:
    """A one-fold, one-epoch run of the recipe and its ONNX export (reused when present)."""
    from ser_plugins.deploy.export import export_run
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    run_dir, export_dir = work / f"run_{name}", work / f"export_{name}"
    if not (run_dir / "summary.json").exists():
        recipe = {"name": name, "seed": 0, "corpus": {"name": "iemocap", "root": str(root)},
                  "aggregator": "stats", "classifier": {"name": "mlp", "hidden_sizes": [64]},
                  "training": {"epochs": 1, "batch_size": 16, "patience": None}, "output": {"tensorboard": False}}
        recipe.update(recipe_extra)
        run_recipe(load_recipe(recipe), str(run_dir), folds=["1"], progress=False)
    if not (export_dir / "model.json").exists():
        t = time.perf_counter()
        (res,) = export_run(run_dir, export_dir)
        print(f"  {name}: exported in {time.perf_counter() - t:.1f} s ({res.exporter}; max |diff| {res.max_abs_diff:.1e})")
    return run_dir, export_dir


def median_times(fns, repeats: int) -> list:
    """Median wall time of each ``fn()`` over ``repeats`` rounds after one warm-up; the functions
    alternate within each round, so a change in machine load hits them alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, nargs="+", default=[3.0, 10.0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-hubert", action="store_true")
    args = p.parse_args()
    import torch

    from common import WORK, demo_corpus, hubert_base_folder, machine
    from ser_plugins.deploy.inference_graph import load_fold_graphs
    from ser_plugins.deploy.onnx_engine import OnnxPredictor

    torch.set_num_threads(args.threads)
    root = demo_corpus(4)
    cases = [("fbank", {"upstream": {"name": "fbank", "n_mels": 80}})]
    if not args.skip_hubert:
        cases.append(("hubert_base", {"upstream": {"name": "hf", "model": str(hubert_base_folder())},
                                      "features": {"layer": "weighted_sum"}, "aggregator": "attentive_stats"}))
    print(machine(), f"| onnxruntime threads {args.threads}")
    rows = []
    for name, extra in cases:
        run_dir, export_dir = train_and_export(name, extra, root, WORK / "onnx")
        (graph,), _ = load_fold_graphs(run_dir)
        engine = OnnxPredictor(export_dir, threads=args.threads)
        rng = np.random.default_rng(0)
        for seconds in args.seconds:
            wave = (0.1 * rng.standard_normal((1, int(seconds * 16000)))).astype(np.float32)
            x = torch.from_numpy(wave)

            def torch_run() -> None:
                with torch.inference_mode():
                    graph(x)

            t_torch, t_ort = median_times([torch_run, lambda: engine.probabilities(wave)], args.repeats)
            with torch.inference_mode():
                diff = float(np.max(np.abs(graph(x).numpy() - engine.probabilities(wave))))
            rows.append((name, seconds, t_torch / seconds, t_ort / seconds, t_torch / t_ort, diff))
    print(f"| model | audio | PyTorch s per s of audio | onnxruntime s per s of audio | speed-up | max abs prob diff |")
    print("|---|---|---|---|---|---|")
    for name, seconds, a, b, ratio, diff in rows:
        print(f"| {name} | {seconds:g} s | {a:.4f} | {b:.4f} | {ratio:.2f} x | {diff:.1e} |")
    print(f"(median of {args.repeats} alternating runs after one warm-up, batch of 1 utterance)")


if __name__ == "__main__":
    main()
