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

from ser_plugins.runtime.atomic import read_json

# same data, same seeds, the same global batches: only the order of float reductions differs (the gradient is
# summed over two ranks' rows instead of one batch), so probabilities agree to float32 rounding
TOLERANCE = 1e-4
SER = str(Path(sys.executable).parent / "ser")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from ser_plugins.plugins import registry

    base = tmp_path_factory.mktemp("ddp")
    root = base / "IEMOCAP_full_release"
    registry.load("corpus", "demo").generate(root, seed=0, utterances_per_speaker=4)  # 40 utterances
    recipe = {"name": "ddp", "seed": 0, "corpus": {"name": "iemocap", "root": str(root)},
              "upstream": {"name": "fbank", "n_mels": 40}, "aggregator": "stats",
              "classifier": {"name": "linear", "dropout": 0.0},
              "training": {"max_steps": 40, "batch_size": 7, "lr": 0.01, "device": "cpu", "select": "dev_ua",
                           "patience": 2},  # early stopping: decided on rank 0, broadcast
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
    from ser_plugins.training.runner import run_recipe

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
    epochs = [len(read_json(d / "folds" / f / "metrics.json")["history"]) for d in (one, two) for f in ("Session1", "Session2")]
    assert epochs[:2] == epochs[2:] and max(epochs) < 10  # both stopped early (10 epochs planned), at the same epoch
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


def test_torchrun_fine_tunes_the_upstream_with_ddp(small, tmp_path):
    """A tiny wav2vec 2.0 fine-tuned under DDP (upstream inside DDP, frozen warm-up step, grad_accum with no_sync)."""
    from test_hf_upstream import save_tiny

    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    base, path = small
    model = save_tiny(tmp_path / "w2v2", "w2v2_large", mask_time_prob=0.0)  # SpecAugment off: no random masks
    extra = [f"upstream={{name: hf, model: {model}}}", "finetune.mode=finetune", "finetune.frozen_warmup_steps=1",
             "finetune.upstream_lr=0.001", "training.grad_accum=2", "training.max_steps=2", "features.layer=weighted_sum"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_recipe(load_recipe(path, extra), str(one), folds=["1"], progress=False)
    res = torchrun("run", str(path), "--out", str(two), "--folds", "1", "-q", *[a for e in extra for a in ("-o", e)])
    assert res.returncode == 0, res.stderr[-3000:]
    pa = predictions(one / "folds" / "Session1" / "predictions.csv")
    pb = predictions(two / "folds" / "Session1" / "predictions.csv")
    assert list(pa) == list(pb)
    probs = lambda p: np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in p.values()])
    assert np.abs(probs(pa) - probs(pb)).max() <= TOLERANCE
    a, b = read_json(one / "folds" / "Session1" / "metrics.json"), read_json(two / "folds" / "Session1" / "metrics.json")
    assert [e["step"] for e in b["history"]] == [e["step"] for e in a["history"]]
    assert b["history"][-1]["dev_loss"] == pytest.approx(a["history"][-1]["dev_loss"], abs=TOLERANCE)


def test_torchrun_resumes_a_fold_killed_mid_training(small, tmp_path):
    """kill -9 of every rank during a fold, then torchrun --resume: the uninterrupted torchrun run's result."""
    import signal
    import time

    base, path = small
    extra = ["training.epochs=30", "training.max_steps=400", "training.select=last", "training.patience=null",
             f"data.cache_dir={tmp_path / 'cache'}"]
    overrides = [a for e in extra for a in ("-o", e)]
    ref, two = tmp_path / "ref", tmp_path / "two"
    done = torchrun("run", str(path), "--out", str(ref), "--folds", "1", "-q", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SER, "run",
           str(path), "--out", str(two), "--folds", "1", "-q", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    state = two / "folds" / "Session1" / "last_state.pt"
    deadline = time.time() + 120
    try:
        while not state.exists():
            assert proc.poll() is None and time.time() < deadline, "the fold never checkpointed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        proc.wait()
    assert not (two / "folds" / "Session1" / "metrics.json").exists(), "the fold finished before the kill"
    res = torchrun("run", str(path), "--out", str(two), "--folds", "1", "--resume", "-q", *overrides)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = read_json(ref / "folds" / "Session1" / "metrics.json"), read_json(two / "folds" / "Session1" / "metrics.json")
    assert len(b["history"]) == len(a["history"]) == 30
    assert [e["train_loss"] for e in b["history"]] == pytest.approx([e["train_loss"] for e in a["history"]], abs=1e-6)
    assert b["confusion"] == a["confusion"]
    assert (two / "folds" / "Session1" / "predictions.csv").read_text() == \
        (ref / "folds" / "Session1" / "predictions.csv").read_text()
