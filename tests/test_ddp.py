"""``torchrun --nproc_per_node 2 ser run``: DDP on CPU (gloo) gives a 1-process run's results, written once."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ser_plugins.io import read_json

# same data, same seeds, the same global batches: only the order of float reductions differs (the gradient is
# summed over two ranks' rows instead of one batch), so probabilities agree to float32 rounding
TOLERANCE = 1e-4
SER = str(Path(sys.executable).parent / "ser")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from ser_plugins import registry

    base = tmp_path_factory.mktemp("ddp")
    root = base / "IEMOCAP_full_release"
    registry.load("corpus", "demo").generate(root, seed=0, utterances_per_speaker=4)  # 40 utterances
    recipe = {"name": "ddp", "seed": 0, "corpus": {"name": "iemocap", "root": str(root)},
              "upstream": {"name": "fbank", "n_mels": 40}, "aggregator": "stats",
              "classifier": {"name": "linear", "dropout": 0.0},
              "training": {"max_steps": 12, "batch_size": 7, "lr": 0.05, "device": "cpu"},
              "data": {"num_threads": 1}, "output": {"tensorboard": False}}
    path = base / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return base, path


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SER, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def predictions(path: Path) -> dict:
    with path.open() as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def test_torchrun_two_ranks_match_one_process(small, tmp_path):
    from ser_plugins.recipe import load_recipe
    from ser_plugins.runner import run_recipe

    base, path = small
    one = tmp_path / "one"
    run_recipe(load_recipe(path, [f"data.cache_dir={tmp_path / 'cache1'}"]), str(one), folds=["1", "2"], progress=False)

    two, cache = tmp_path / "two", tmp_path / "cache2"
    first = torchrun("run", str(path), "--out", str(two), "--folds", "1", "-q", "-o", f"data.cache_dir={cache}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("run directory:") == 1  # rank 0 alone prints
    # sharded extraction: 40 utterances, each extracted once (by one of the two ranks) into the shared cache
    run = read_json(two / "run.json")
    assert run["upstream_forward_passes"] == 40 and run["feature_cache"]["misses"] == 40
    assert len(list(cache.rglob("*.safetensors"))) == 40
    stamp = (two / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns
    again = torchrun("run", str(path), "--out", str(two), "--folds", "1,2", "--resume", "-q",
                     "-o", f"data.cache_dir={cache}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (two / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns == stamp  # resumed: fold 1 kept

    # one set of outputs: the same files as the 1-process run, nothing per rank
    names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file() and not p.name.startswith(".lock"))
    assert names(two) == names(one)
    for fold in ("Session1", "Session2"):
        a, b = read_json(one / "folds" / fold / "metrics.json"), read_json(two / "folds" / fold / "metrics.json")
        assert b["test"] == a["test"] and b["confusion"] == a["confusion"]
        for key in ("wa", "ua", "macro_f1"):
            assert b[key] == pytest.approx(a[key], abs=TOLERANCE)
        for ea, eb in zip(a["history"], b["history"]):
            assert eb["train_loss"] == pytest.approx(ea["train_loss"], abs=TOLERANCE)
            assert eb["dev_loss"] == pytest.approx(ea["dev_loss"], abs=TOLERANCE)
        pa, pb = predictions(one / "folds" / fold / "predictions.csv"), predictions(two / "folds" / fold / "predictions.csv")
        rows = (two / "folds" / fold / "predictions.csv").read_text().splitlines()[1:]
        assert len(rows) == len(pb) == a["test"]  # every test utterance exactly once
        assert list(pb) == list(pa)
        probs = lambda p: np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in p.values()])
        assert np.abs(probs(pa) - probs(pb)).max() <= TOLERANCE
    sa, sb = read_json(one / "summary.json"), read_json(two / "summary.json")
    assert sb["mean_std"]["ua"]["mean"] == pytest.approx(sa["mean_std"]["ua"]["mean"], abs=TOLERANCE)


def test_sharded_rows_cover_a_batch_once_and_pad_an_empty_share():
    import torch

    from ser_plugins.data.sources import Batch, BatchPlan
    from ser_plugins.training.distributed import DistContext, ShardedSource

    class Two:
        targets = {"a": 0, "b": 1, "c": 0}

        def batches(self, ids, plan):
            yield Batch([torch.arange(3.0).view(3, 1, 1)], torch.ones(3, dtype=torch.long), torch.tensor([0, 1, 0]),
                        ["a", "b", "c"], True)
            yield Batch([torch.zeros(1, 1, 1)], torch.ones(1, dtype=torch.long), torch.tensor([1]), ["b"], True)

    shares = [list(ShardedSource(Two(), DistContext(r, 2)).batches(["a", "b", "c"], BatchPlan(3))) for r in (0, 1)]
    assert [b.ids for b in shares[0]] == [["a", "c"], ["b"]] and [b.ids for b in shares[1]] == [["b"], ["b"]]
    assert [b.weight for b in shares[1]] == [1.0, 0.0]  # rank 1 has no row of the 1-utterance batch
    assert shares[0][0].inputs[0].flatten().tolist() == [0.0, 2.0]
