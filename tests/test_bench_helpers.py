"""The timing benchmarks' own machinery: the random batch plan, the plan swap and the forward counter.

The benchmarks (benchmarks/bench_*.py) are run by hand; these checks keep the parts their figures
rest on honest: random batches obey the pipeline's limits, the swapped plan is the one
``extract_features`` runs and is restored, and the counter counts what passes through the model.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers", reason="pip install 'ser-plugins[hf]'")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_batching  # noqa: E402
import common  # noqa: E402
import torch  # noqa: E402

import ser_plugins.data.extract as features_module  # noqa: E402
from ser_plugins import create_upstream  # noqa: E402
from ser_plugins.data.batching import bucket_batches  # noqa: E402
from upstreams.hf import TransformersEncoderUpstream  # noqa: E402


def test_random_plan_covers_every_utterance_once_within_the_limits():
    lengths = list(np.random.default_rng(0).integers(16000, 64000, 57))
    budget = 200_000
    plan = bench_batching.random_plan(seed=3)
    batches = plan(lengths, 6, budget)
    assert sorted(i for b in batches for i in b) == list(range(57))
    for b in batches:
        assert len(b) <= 6
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    assert plan(lengths, 6, budget) == batches  # one seed, one plan
    assert bench_batching.random_plan(seed=4)(lengths, 6, budget) != batches


@pytest.fixture(scope="module")
def tiny_batch_invariant(tmp_path_factory):
    saved, common.WORK = common.WORK, tmp_path_factory.mktemp("bench")
    try:
        yield create_upstream("hf", model=str(common.layernorm_wav2vec2_folder(tiny=True))).eval()
    finally:
        common.WORK = saved


def test_one_pass_counts_forwards_and_runs_the_plan_it_is_given(tiny_batch_invariant):
    up = tiny_batch_invariant
    assert up.batch_invariant
    rng = np.random.default_rng(1)
    waves = {f"u{i}": (0.1 * rng.standard_normal(int(n))).astype("float32")
             for i, n in enumerate(rng.integers(8000, 40000, 9))}
    counter = common.ForwardCounter(TransformersEncoderUpstream)
    bucketed = bench_batching.one_pass(up, waves, 10**7, 4, bucket_batches, counter)
    randomised = bench_batching.one_pass(up, waves, 10**7, 4, bench_batching.random_plan(seed=0), counter)
    assert features_module.bucket_batches is bucket_batches  # restored after the pass
    for r in (bucketed, randomised):
        assert r["forwards"] == 9 and r["batches"] == 3  # 9 utterances, batches of at most 4
        assert set(r["features"]) == set(waves)
    assert bucketed["padding"] < randomised["padding"]
    for uid in waves:  # batch-invariant: the plan changes the cost, not the stored features
        for a, b in zip(bucketed["features"][uid], randomised["features"][uid]):
            assert torch.allclose(a.float(), b.float(), atol=1e-2)


def test_forward_counter_restores_the_class_even_after_an_error(tiny_batch_invariant):
    original = TransformersEncoderUpstream.forward
    counter = common.ForwardCounter(TransformersEncoderUpstream)
    with pytest.raises(RuntimeError):
        with counter.counting():
            tiny_batch_invariant(torch.zeros(2, 8000), torch.tensor([8000, 6000]))
            raise RuntimeError("boom")
    assert TransformersEncoderUpstream.forward is original
    assert counter.take() == {"utterances": 2, "calls": 1}
    assert counter.take() == {"utterances": 0, "calls": 0}
