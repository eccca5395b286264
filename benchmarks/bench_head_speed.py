"""Speed: one fold of a pooled head on frozen features in the runner, beside a bare torch loop.

The runner side is ``Runner._run_fold`` on a prepared run (the fold's normaliser, the trainer's
whole fit with its checkpoints and per-epoch dev evaluation, the test evaluation, predictions,
plots and metrics.json): everything a fold costs once its features exist. The bare side is a plain
loop doing the same work on the same pooled, normalised training vectors: the same number of
optimiser steps, AdamW with the same learning rate and weight decay, the same cosine schedule,
gradient clipping, batch size and one dev evaluation per epoch, then one test evaluation. Both
sides run in this process, one after the other, ``--repeats`` times each, on the same thread count
(``--threads``); medians are printed with min and max, beside the work done (steps, epochs, dev and
test evaluations).

Also printed: the wall time of the whole 5-fold ``ser run`` of the same recipe in a fresh process
(``--cli-runs`` times; imports, corpus scan, feature extraction and every fold included).

    python benchmarks/bench_head_speed.py [--head mean:linear] [--norm global] [--threads 1] [--repeats 5]

Target (the results issue): runner / bare <= 1.5; the 5-fold CLI run <= 15 s on 2 cores.
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch import nn

from common import machine, spread

from ser_plugins.recipe import load_recipe
from ser_plugins.results.run_dir import FoldDir
from ser_plugins.training.runner import Runner
from ser_plugins.training.trainer import build_scheduler, planned_epochs

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"


def runner_fold(runner: Runner, prep, fold_index: int) -> Tuple[float, Dict[str, int]]:
    """Seconds of one ``_run_fold`` into a fresh fold directory, and the work it did."""
    fold = prep.folds[fold_index]
    shutil.rmtree(runner.run_dir / "folds", ignore_errors=True)
    t0 = time.perf_counter()
    metrics = runner._run_fold(prep, fold, fold_index)
    seconds = time.perf_counter() - t0
    history = metrics["history"]
    return seconds, {"steps": history[-1]["step"] if history else 0, "epochs": len(history),
                     "dev_evaluations": sum(1 for h in history if "dev_ua" in h), "test_evaluations": 1,
                     "train": len(fold.train), "dev": len(fold.dev), "test": len(fold.test)}


def pooled(prep, runner: Runner, fold) -> Dict[str, torch.Tensor]:
    """The fold's normalised pooled vectors and targets (train, dev, test), as the runner's head sees them."""
    source = runner._fold_source(prep, fold, FoldDir(tempfile.mkdtemp()))
    out = {}
    for part in ("train", "dev", "test"):
        ids = getattr(fold, part)
        if not ids:
            continue
        vectors = []
        from ser_plugins.data.sources import BatchPlan

        for batch in source.batches(ids, BatchPlan(len(ids))):
            states = batch.inputs[-1]
            mask = (torch.arange(states.shape[1])[None, :] < batch.lengths[:, None]).unsqueeze(-1)
            vectors.append((states * mask).sum(1) / batch.lengths[:, None])
            out[part + "_y"] = batch.targets
        out[part] = torch.cat(vectors)
    return out


def bare_loop(data: Dict[str, torch.Tensor], classes: int, recipe, steps: int, epochs: int, seed: int) -> float:
    """A plain torch loop: linear head, AdamW, cosine schedule, clipping, one dev evaluation per epoch, one test."""
    t = recipe.training
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x, y = data["train"], data["train_y"]
    model = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = build_scheduler(optimizer, t.scheduler, t.warmup_steps, steps)
    loss_fn = nn.CrossEntropyLoss()
    done = 0
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(t.batch_size):
            if done >= steps:
                break
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            optimizer.step()
            scheduler.step()
            done += 1
        if "dev" in data:
            with torch.no_grad():
                model.eval()
                model(data["dev"]).argmax(-1)
    with torch.no_grad():
        model(data["test"]).argmax(-1)
    return time.perf_counter() - t0


def cli_run(overrides: List[str]) -> float:
    """Wall seconds of a whole 5-fold ``ser run`` in a fresh process (into a fresh directory)."""
    out = Path(tempfile.mkdtemp()) / "run"
    args = [sys.executable, "-m", "ser_plugins.cli", "run", str(DEMO), "--out", str(out), "-q"]
    for o in overrides:
        args += ["-o", o]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, cwd=str(ROOT), stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    shutil.rmtree(out.parent, ignore_errors=True)
    return seconds


def main() -> None:
    """Print the runner / bare-loop ratio for one fold, and the whole CLI run's wall time."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head", default="mean:linear")
    ap.add_argument("--norm", default="global")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cli-runs", type=int, default=3)
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--dev", default="speaker", help="protocol.dev of the timed fold (the bare loop evaluates the same dev set)")
    ap.add_argument("--compare-threads", action="store_true",
                    help="also time both sides at 1 and 2 intra-op threads (training.threads), interleaved")
    args = ap.parse_args()
    aggregator, classifier = args.head.split(":")
    overrides = [f"aggregator={aggregator}", f"classifier={classifier}", f"features.normalize={args.norm}",
                 "output.tensorboard=false"]
    torch.set_num_threads(args.threads)
    print(machine())
    recipe = load_recipe(DEMO, overrides + [f"protocol.dev={args.dev}"])
    run_dir = Path(tempfile.mkdtemp()) / "run"
    run_dir.mkdir(parents=True)
    runner = Runner(recipe, run_dir, progress=False)
    prep = runner.prepare()
    fold = prep.folds[args.fold]
    data = pooled(prep, runner, fold)
    runner_seconds, bare_seconds, work = [], [], {}
    for _ in range(args.repeats):
        seconds, work = runner_fold(runner, prep, args.fold)
        runner_seconds.append(seconds)
        steps_per_epoch = math.ceil(len(fold.train) / recipe.training.batch_size)
        epochs = planned_epochs(recipe.training.max_steps, recipe.training.epochs, steps_per_epoch)
        bare_seconds.append(bare_loop(data, len(prep.labels), recipe, work["steps"], epochs, recipe.seed))
    ratio = [r / b for r, b in zip(runner_seconds, bare_seconds)]
    print(f"head {args.head}, normalize {args.norm}, fold {fold.name}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"work per side: {work['steps']} optimiser steps in {work['epochs']} epochs, {work['dev_evaluations']} dev "
          f"evaluations of {work['dev']} utterances, 1 test evaluation of {work['test']}; {work['train']} training "
          "utterances, batch " + str(recipe.training.batch_size))
    print(f"runner fold  {spread(runner_seconds)} s")
    print(f"bare loop    {spread(bare_seconds)} s")
    print(f"ratio        {spread(ratio, '{:.2f}')}  (target <= 1.5)")
    if args.compare_threads:
        for threads in (1, 2, 1, 2):  # interleaved twice, so a change of the machine's load hits both counts
            torch.set_num_threads(threads)
            runner.recipe = recipe.model_copy(update={"training": recipe.training.model_copy(
                update={"threads": threads})})
            seconds, work = runner_fold(runner, prep, args.fold)
            bare = bare_loop(data, len(prep.labels), recipe, work["steps"], epochs, recipe.seed)
            print(f"threads {threads}: runner fold {seconds:.2f} s, bare loop {bare:.2f} s")
        torch.set_num_threads(args.threads)
    if args.cli_runs:
        walls = [cli_run(overrides) for _ in range(args.cli_runs)]
        print(f"ser run, 5 folds, {len(prep.folds[0].train) + len(prep.folds[0].dev) + len(prep.folds[0].test)} "
              f"utterances, fresh process: {spread(walls)} s  (target <= 15 s)")


if __name__ == "__main__":
    main()
