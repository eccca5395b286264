"""Upstream forward passes per grid: ``ser grid`` (measured) vs S3PRL's emotion recipe (counted from its config).

A count, not a time, so it holds on any machine. Ours: a real ``ser grid`` of three frozen heads
over the 5 leave-one-session-out folds of the demo corpus; the number comes from grid.json (the
runner counts every utterance it passes through the upstream). S3PRL: its downstream runner
re-runs a frozen upstream on every training batch; ``runner.total_steps`` counts optimiser steps
(``pbar.update(1)`` after ``gradient_accumulate_steps`` backward passes, s3prl/downstream/runner.py),
and the emotion config trains 30,000 steps of ``train_batch_size`` 4 x ``gradient_accumulate_steps`` 8
per fold, plus a dev pass every ``eval_step`` (1,000) steps and one test pass.

    python benchmarks/bench_forward_counts.py
"""
from __future__ import annotations

import shutil
from pathlib import Path

from common import WORK, demo_corpus

from ser_plugins.launch.grid import run_grid
from ser_plugins.runtime.atomic import read_json

HEADS = "mean,stats,attentive_stats"
S3PRL = {"total_steps": 30_000, "train_batch_size": 4, "gradient_accumulate_steps": 8, "eval_step": 1_000}


def s3prl_forwards(train: int, dev: int, test: int, folds: int = 5) -> int:
    """Utterances S3PRL's runner passes through the upstream for a whole grid of one head."""
    per_step = S3PRL["train_batch_size"] * S3PRL["gradient_accumulate_steps"]
    dev_passes = S3PRL["total_steps"] // S3PRL["eval_step"]
    return folds * (S3PRL["total_steps"] * per_step + dev_passes * dev + test)


def main() -> None:
    root = demo_corpus(40)
    out = WORK / "forward_counts"
    shutil.rmtree(out, ignore_errors=True)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    result = run_grid([str(recipe)], out, overrides=[f"corpus.root={root}", "features.normalize=null",
                                                      "training.max_steps=50", "output.tensorboard=false"],
                      sweeps=[f"aggregator={HEADS}"], progress=False)
    utts = sum(f["test"] for f in read_json(result.runs[0].run_dir / "run.json")["folds"])  # every usable one
    heads = len(result.runs)
    print(f"demo corpus: {utts} utterances, 5 folds, {heads} frozen heads")
    print("| grid | upstream forward passes (utterances) | per utterance |")
    print("|---|---|---|")
    print(f"| ser grid (measured, grid.json) | {result.forward_passes:,} | {result.forward_passes / utts:.2f} |")
    # S3PRL: one run per head; per fold ~4/5 of the corpus trains, a tenth of it is dev, a fifth is test
    demo_s3prl = heads * s3prl_forwards(train=utts * 16 // 25, dev=utts * 4 // 25, test=utts // 5)
    print(f"| S3PRL emotion recipe (counted) | {demo_s3prl:,} | {demo_s3prl / utts:,.0f} |")
    iemocap = 5531
    ours = iemocap
    theirs = heads * s3prl_forwards(train=3540, dev=885, test=1106)
    print(f"\nIEMOCAP ({iemocap:,} utterances), {heads} heads: ser grid {ours:,} (one per utterance, whatever the "
          f"number of heads), S3PRL {theirs:,} ({theirs / ours:,.0f} x)")


if __name__ == "__main__":
    main()
