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
import bench_regression  # noqa: E402
import common  # noqa: E402
import torch  # noqa: E402

import ser_plugins.data.extract as features_module  # noqa: E402
from ser_plugins import create_upstream  # noqa: E402
from ser_plugins.data.batching import bucket_batches  # noqa: E402
from ser_plugins.data.normalize import Moments, Normalizer  # noqa: E402
from ser_plugins.results.metrics import regression_metrics  # noqa: E402
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


# --- bench_regression: the references and the averaging its CCC columns rest on ---------------------
def test_regression_fold_ccc_is_the_runners_and_folds_average_as_the_summary_does():
    rng = np.random.default_rng(0)
    names = ["arousal", "valence", "dominance"]
    folds = []
    for _ in range(3):
        truth = rng.uniform(1, 5, (40, 3))
        pred = truth + rng.normal(0, 0.7, (40, 3))
        scores = bench_regression.fold_cccs(truth, pred, names)
        runner = regression_metrics(truth, pred, names)
        assert scores == pytest.approx({k: runner[k] for k in ["ccc"] + [f"ccc_{n}" for n in names]}, abs=1e-12)
        folds.append(scores)
    mean = bench_regression.average_folds(folds)
    assert mean["ccc"] == pytest.approx(np.mean([f["ccc"] for f in folds]))  # mean of per-fold means
    assert mean["ccc"] == pytest.approx(np.mean([mean[f"ccc_{n}"] for n in names]))


def test_regression_references_recover_a_linear_map_and_converge():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (240, 6))
    x = z * np.array([1, 10, 100, 0.1, 1, 1]) + 50  # feature scales the standardisation must undo
    y = 3 + z @ rng.normal(0, 1, (6, 2)) + rng.normal(0, 0.1, (240, 2))
    fit = bench_regression.fit_references(x[:200], y[:200], x[200:])
    assert fit["ridgecv"].shape == fit["svr"].shape == (40, 2)
    for name in ("ridgecv", "svr"):
        assert bench_regression.fold_cccs(y[200:], fit[name], ["a", "b"])["ccc"] > 0.98
    assert len(fit["alphas"]) == 2 and set(fit["alphas"]) <= set(bench_regression.ALPHAS)
    assert fit["svr_unconverged"] == 0


def test_regression_pooled_features_are_frame_means_after_the_folds_normalisation():
    rng = np.random.default_rng(2)
    feats = {f"u{i}": [torch.tensor(rng.normal(i, 1 + i, (5 + i, 3)), dtype=torch.float32)] for i in range(4)}
    speakers = {"u0": "a", "u1": "a", "u2": "b", "u3": "b"}
    moments = {u: Moments.of(layers) for u, layers in feats.items()}
    prep = type("Prep", (), {"source": type("Src", (), {"features": feats})(), "speakers": speakers,
                             "moments": moments})()
    ids, train = ["u0", "u3"], ["u0", "u1", "u2"]
    raw = bench_regression.pooled(prep, "none", ids, train)
    assert raw == pytest.approx(np.stack([feats[u][0].mean(0).numpy() for u in ids]), abs=1e-6)
    for norm in ("global", "speaker"):
        normalizer = Normalizer(norm).fit(moments, speakers, train)
        expect = np.stack([normalizer.transform(feats[u], speakers[u])[0].mean(0).numpy() for u in ids])
        assert bench_regression.pooled(prep, norm, ids, train) == pytest.approx(expect, abs=1e-5)


def test_regression_overrides_bars_and_best_heads():
    assert bench_regression.norm_override("none") == "features.normalize=null"
    assert bench_regression.norm_override("speaker") == "features.normalize=speaker"
    assert bench_regression.variant_overrides("task.loss=mse, training.lr=0.001,") == ["task.loss=mse",
                                                                                      "training.lr=0.001"]
    assert bench_regression.corpus_overrides(None, None, []) == [f"corpus.root={bench_regression.DEMO_ROOT}"]
    assert bench_regression.corpus_overrides("r.yaml", None, []) == []
    manifest = bench_regression.corpus_overrides(None, "m.csv", ["arousal=EmoAct", "valence"])
    assert manifest == ["corpus=manifest", "corpus.root=m.csv", 'corpus.attributes={"arousal": "EmoAct", '
                        '"valence": "valence"}', 'task.targets=["arousal", "valence"]']
    with pytest.raises(SystemExit):
        bench_regression.corpus_overrides(None, "m.csv", [])
    assert bench_regression.row_bar("mean", "linear", -0.01)[1] and not bench_regression.row_bar("mean", "linear",
                                                                                                  -0.0101)[1]
    rows = [("global", "v", "mean", "linear", 0.70, 0.02), ("global", "v", "stats", "mlp", 0.72, 0.04),
            ("speaker", "v", "mean", "linear", 0.80, -0.01)]
    assert bench_regression.best_heads(rows) == {("global", "v"): ("stats + mlp", 0.04),
                                                 ("speaker", "v"): ("mean + linear", -0.01)}
