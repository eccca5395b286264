"""Scale-out overheads on one machine: fold jobs, the local launcher and torchrun against one process.

Runs the same 2 folds of a small frozen recipe (fbank + stats + linear on the generated demo
corpus) four ways, each a fresh run directory and feature cache, and prints the median wall time
of ``--repeats`` runs of each beside the 1-process reference:

- ``ser run --folds 1,2`` (one process: the reference)
- two fold jobs ``ser run --folds 1`` and ``--folds 2`` started at once into one run directory
- ``ser grid --folds 1,2 --launcher local -L workers=2`` (extraction job, then two fold jobs)
- ``torchrun --nproc_per_node 2 ser run --folds 1,2`` (DDP, gloo)

Every process runs with one thread (OMP_NUM_THREADS=1). The figures are process start, data
preparation and coordination costs against the work saved by running in parallel; with a head
this small they say nothing about GPU-sized runs.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import WORK, demo_corpus, machine

SER = str(Path(sys.executable).parent / "ser")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_recipe(root: Path, steps: int) -> Path:
    path = WORK / "scale_out.yaml"
    path.write_text(yaml.safe_dump({
        "name": "scale", "seed": 0, "corpus": {"name": "iemocap", "root": str(root)},
        "upstream": {"name": "fbank", "n_mels": 40}, "aggregator": "stats",
        "classifier": {"name": "linear", "dropout": 0.0},
        "training": {"max_steps": steps, "batch_size": 16, "device": "cpu"},
        "data": {"num_threads": 1}, "output": {"tensorboard": False}}))
    return path


def timed(commands) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"failed: {' '.join(commands[0])}\n{err[-2000:]}")
    return time.perf_counter() - start


def modes(recipe: Path, out: Path):
    cache = ["-o", f"data.cache_dir={out / 'cache'}"]
    run = [SER, "run", str(recipe), "-q", *cache]
    return {
        "1 process, folds in sequence (reference)": [run + ["--folds", "1,2", "--out", str(out / "run")]],
        "2 fold jobs at once, one run directory": [run + ["--folds", f, "--out", str(out / "run")] for f in "12"],
        "ser grid --launcher local -L workers=2": [[SER, "grid", str(recipe), "-q", "--folds", "1,2", "--out",
                                                    str(out / "grid"), "--cache-dir", str(out / "cache"),
                                                    "--launcher", "local", "-L", "workers=2"]],
        "torchrun --nproc_per_node 2 (DDP, gloo)": [[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node", "2", *run, "--folds", "1,2", "--out",
                                                     str(out / "run")]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances-per-speaker", type=int, default=20)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    recipe = write_recipe(demo_corpus(args.utterances_per_speaker), args.steps)
    print(f"# {machine()}")
    print(f"# demo corpus, {args.utterances_per_speaker * 10} utterances, 2 folds, {args.steps} steps per fold, "
          f"median of {args.repeats}")
    times = {}
    for _ in range(args.repeats):
        for name, commands in modes(recipe, WORK / "scale_out" / "x").items():
            shutil.rmtree(WORK / "scale_out", ignore_errors=True)
            times.setdefault(name, []).append(timed(commands))
    ref = statistics.median(next(iter(times.values())))
    print("| mode | wall time (s) | vs 1 process |")
    print("|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.1f} | {m / ref:.2f}x |")


if __name__ == "__main__":
    main()
