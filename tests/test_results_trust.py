"""Results you can trust: sklearn-exact metrics, fold spread, speaker-disjoint dev, schedule plan, training options."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ser_plugins.plugins.contracts import Utterance
from ser_plugins.data.folds import ProtocolError, check_folds, make_folds
from ser_plugins.data.sources import BatchPlan, FeatureSource, WaveSource
from ser_plugins.results.metrics import classification_metrics, mean_std

sk = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(20))
def test_metrics_equal_scikit_learn_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(1, 40)), int(rng.integers(2, 6))
    y = rng.integers(0, c, n)
    p = rng.integers(0, c, n)
    if seed % 3 == 0:  # a class predicted but absent from the targets
        y = np.where(y == c - 1, 0, y)
    m = classification_metrics(y.tolist(), p.tolist(), [str(i) for i in range(c)])
    assert m["wa"] == pytest.approx(sk.accuracy_score(y, p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about predicted classes absent from the targets
        assert m["ua"] == pytest.approx(sk.balanced_accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0))
    assert m["micro_f1"] == pytest.approx(sk.f1_score(y, p, average="micro", zero_division=0))  # EmoBox's


def test_a_predicted_but_absent_class_counts_in_macro_f1():
    # targets only {0, 1}; class 2 predicted once: scikit-learn averages F1 over {0, 1, 2}
    m = classification_metrics([0, 0, 1, 1], [0, 2, 1, 1], ["a", "b", "c"])
    assert m["macro_f1"] == pytest.approx(sk.f1_score([0, 0, 1, 1], [0, 2, 1, 1], average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0) / 3)


def test_fold_spread_is_the_sample_standard_deviation():
    folds = [{"wa": v, "ua": v, "macro_f1": v} for v in (0.5, 0.7, 0.9)]
    ms = mean_std(folds)
    assert ms["ua"]["mean"] == pytest.approx(0.7) and ms["ua"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert mean_std(folds[:1])["ua"]["std"] is None  # undefined for one fold, never a made-up 0


def _utt(i, speaker, fold, label="neu"):
    return Utterance(f"u{i}", f"/x/{i}.wav", label, speaker, fold=fold)


def test_dev_speakers_never_speak_in_the_test_fold_under_the_folds_protocol():
    # fold A and B share speaker s1 (a corpus's own folds need not be speaker-independent)
    utts = [_utt(i, spk, fold) for i, (spk, fold) in enumerate(
        [("s1", "A"), ("s2", "A"), ("s1", "B"), ("s3", "B"), ("s4", "C"), ("s5", "C"), ("s6", "C")] * 3)]
    folds = make_folds(utts, "folds", dev="speaker")
    speaker = {u.id: u.speaker for u in utts}
    for f in folds:
        assert not {speaker[i] for i in f.dev} & {speaker[i] for i in f.test}, f.name
    warnings = check_folds(folds, {u.id: u.label for u in utts}, ["neu"], speaker)
    assert any("'A'" in w and "s1" in w and "train and test" in w for w in warnings)


def test_no_possible_speaker_disjoint_dev_is_an_error_naming_the_speakers():
    utts = [_utt(i, spk, fold) for i, (spk, fold) in enumerate([("s1", "A"), ("s2", "A"), ("s1", "B"), ("s2", "B")])]
    with pytest.raises(ProtocolError, match="s1, s2"):
        make_folds(utts, "folds", dev="speaker")


def test_split_protocol_picks_a_dev_speaker_absent_from_test():
    rows = [("s1", "train"), ("s2", "train"), ("s3", "train"), ("s1", "test"), ("s2", "test")] * 2
    utts = [Utterance(f"u{i}", "/x.wav", "neu", spk, split=sp) for i, (spk, sp) in enumerate(rows)]
    (fold,) = make_folds(utts, "split", dev="speaker")
    speaker = {u.id: u.speaker for u in utts}
    assert {speaker[i] for i in fold.dev} == {"s3"}


@pytest.mark.parametrize("kind", ["features", "waves"])
def test_schedule_and_batches_come_from_one_plan_with_crops_and_budgets(kind):
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(50, 900, (60,), generator=g)]
    targets = {f"u{i}": i % 4 for i in range(60)}
    if kind == "features":
        src = FeatureSource({f"u{i}": [torch.zeros(n, 2)] for i, n in enumerate(lengths)}, targets, 100)
    else:
        src = WaveSource({f"u{i}": np.zeros(n * 10, dtype=np.float32) for i, n in enumerate(lengths)}, targets, 1000)
    plan = BatchPlan(16, max_batch_seconds=3.0, max_duration=1.5, shuffle=True, seed=4)
    ids = list(targets)
    batches = list(src.batches(ids, plan))
    assert src.count_batches(ids, plan) == len(batches)
    assert all(int(b.lengths.max()) <= 150 * (1 if kind == "features" else 10) for b in batches)  # cropped


def test_unbatchable_finetuned_upstreams_are_scored_one_utterance_at_a_time():
    from ser_plugins.recipe import TrainingConfig
    from ser_plugins.training.runner import eval_batch_size

    class Up:
        batch_invariant = False

    t = TrainingConfig(batch_size=16)
    assert eval_batch_size(t, Up(), precomputed=False) == 1
    assert eval_batch_size(t, Up(), precomputed=True) == 16  # frozen features: extracted alone already
    Up.batch_invariant = True
    assert eval_batch_size(t, Up(), precomputed=False) == 16


def test_class_weights_are_inverse_frequency_and_reach_the_loss():
    from ser_plugins.training.trainer import class_weights

    w = class_weights([0, 0, 0, 1, 2, 2], 4)
    assert w[3] == 0  # an absent class gets no weight
    assert w[1] / w[0] == pytest.approx(3.0) and w[2] / w[0] == pytest.approx(1.5)
    assert float(w[:3].mean()) == pytest.approx(1.0)


def test_balanced_sampling_draws_every_class_about_equally():
    from ser_plugins.training.trainer import balanced_ids

    targets = {f"u{i}": (0 if i < 90 else 1) for i in range(100)}  # 9:1 imbalance
    drawn = balanced_ids(list(targets), targets, seed=0)
    share = sum(targets[u] for u in drawn) / len(drawn)
    assert len(drawn) == 100 and 0.4 < share < 0.6


def _linear_trainer(tmp_path, batch_size, grad_accum):
    from ser_plugins.model import SERModel, build_head, build_upstream
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.trainer import FoldTrainer

    recipe = load_recipe({"corpus": {"name": "iemocap", "root": "x"}, "upstream": {"name": "fbank", "n_mels": 6},
                          "aggregator": "mean", "classifier": "linear",
                          "training": {"max_steps": 1, "batch_size": batch_size, "grad_accum": grad_accum,
                                       "optimizer": "sgd", "lr": 0.5, "weight_decay": 0.0, "scheduler": "none",
                                       "grad_clip": None}})
    upstream = build_upstream(recipe.upstream, recipe.finetune)
    torch.manual_seed(0)
    head, kept = build_head(recipe.features, recipe.aggregator, recipe.classifier, upstream, 4)
    g = torch.Generator().manual_seed(1)
    feats = {f"u{i}": [torch.randn(7, 6, generator=g)] for i in range(16)}  # equal lengths
    src = FeatureSource(feats, {f"u{i}": i % 4 for i in range(16)}, 100)
    return FoldTrainer(SERModel(upstream, head, kept), src, recipe.training, recipe.finetune, [str(i) for i in range(4)],
                       tmp_path / f"b{batch_size}", "cpu", save_checkpoints=False, progress=False)


def test_gradient_accumulation_equals_one_larger_batch(tmp_path):
    big = _linear_trainer(tmp_path, 16, 1)
    big.fold_dir.mkdir()
    big.fit([f"u{i}" for i in range(16)], ["u0", "u1"], seed=0)
    small = _linear_trainer(tmp_path, 8, 2)
    small.fold_dir.mkdir()
    small.fit([f"u{i}" for i in range(16)], ["u0", "u1"], seed=0)
    for (name, a), (_, b) in zip(big.model.head.named_parameters(), small.model.head.named_parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    untrained = _linear_trainer(tmp_path, 16, 1)
    assert not torch.allclose(untrained.model.head.classifier.linear.weight, big.model.head.classifier.linear.weight)


def test_report_never_ranks_a_transductive_run_best_unmarked():
    from ser_plugins.results.report import to_markdown

    def row(name, ua, comparable):
        return {"run": name, "upstream": "fbank", "finetune": "frozen", "layer": "last", "aggregator": "stats",
                "classifier": "mlp", "normalize": "none" if comparable else "speaker", "dev": "speaker",
                "transductive": not comparable, "comparable": comparable, "folds": 5,
                **{f"{k}_mean": ua for k in ("wa", "ua", "macro_f1")}, **{f"{k}_std": 0.01 for k in ("wa", "ua", "macro_f1")}}

    md = to_markdown([row("inductive", 0.70, True), row("speaker-norm", 0.85, False)])
    assert "**70.00 ± 1.00**" in md and "**85.00" not in md
    assert "speaker-norm †" in md and "transductive" in md
