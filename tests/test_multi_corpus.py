"""Several corpora as one: the multi corpus, the cross-corpus protocol and matrix, per-corpus results."""
from __future__ import annotations

import json

import pytest

from ser_plugins.data.folds import ProtocolError
from ser_plugins.data.prepare import plan, prepare
from ser_plugins.plugins import registry
from ser_plugins.plugins.contracts import DROPPED_LABEL
from ser_plugins.recipe import RecipeError, load_recipe
from ser_plugins.results.report import collect, to_matrix, write_report
from ser_plugins.training.runner import Runner


@pytest.fixture(scope="module")
def second_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_b") / "IEMOCAP_full_release"
    registry.load("corpus", "demo").generate(root, seed=1, utterances_per_speaker=6)
    return root


def _corpora(a, b, b_labels=None):
    return {"a": {"name": "iemocap", "root": str(a)},
            "b": {"name": "iemocap", "root": str(b), **({"labels": b_labels, "merge": {}} if b_labels else {})}}


def _recipe(a, b, protocol, corpus_extra=None, **sections):
    r = {"name": "multi", "seed": 0,
         "corpus": {"name": "multi", "corpora": _corpora(a, b), "labels": ["neu", "hap", "ang", "sad"],
                    **(corpus_extra or {})},
         "protocol": protocol, "upstream": {"name": "fbank", "n_mels": 24}, "aggregator": "stats",
         "classifier": {"name": "linear"}, "training": {"max_steps": 20, "batch_size": 16},
         "output": {"tensorboard": False}}
    r.update(sections)
    return load_recipe(r)


def test_multi_corpus_keeps_each_utterance_s_corpus_and_speaker(tiny_demo_root, second_demo):
    corpus = registry.create_corpus("multi", corpora=_corpora(tiny_demo_root, second_demo),
                                    labels=["neu", "hap", "ang", "sad"])
    utts = corpus.load()
    a = registry.create_corpus("iemocap", root=str(tiny_demo_root)).load()
    assert len(utts) == len(a) + len(registry.create_corpus("iemocap", root=str(second_demo)).load())
    first = next(u for u in utts if u.corpus == "a")
    assert first.id.startswith("a/") and first.speaker.startswith("a/") and first.session.startswith("a/")
    assert {u.corpus for u in utts} == {"a", "b"} and len({u.id for u in utts}) == len(utts)
    assert first.attributes  # the bracket's targets pass through
    assert corpus.attribute_scales["arousal"] == (1.0, 5.0)


def test_unmappable_classes_are_dropped_and_counted_and_maps_join_them(tiny_demo_root, second_demo):
    corpora = _corpora(tiny_demo_root, second_demo, b_labels=["neu", "hap", "ang", "sad", "fru"])
    plain = registry.create_corpus("multi", corpora=corpora, labels=["neu", "hap", "ang", "sad"])
    utts = plain.load()
    fru = registry.create_corpus("iemocap", root=str(second_demo), labels=["fru"], merge={}).load()
    assert len(fru) > 0 and plain.dropped == {"b:fru": len(fru)}
    problem = next(p for p in plain.problems if p.kind == DROPPED_LABEL)
    assert problem.key == "b:fru" and problem.count == len(fru)
    assert all(u.label in ("neu", "hap", "ang", "sad") for u in utts)
    mapped = registry.create_corpus("multi", corpora=corpora, labels=["neu", "hap", "ang", "sad"],
                                    maps={"b": {"fru": "ang"}})
    assert len(mapped.load()) == len(utts) + len(fru) and not mapped.dropped
    with pytest.raises(ValueError, match="outside labels"):
        registry.create_corpus("multi", corpora=corpora, labels=["neu"], maps={"b": {"fru": "xyz"}})


def test_cross_corpus_trains_and_selects_on_a_and_tests_on_b(tiny_demo_root, second_demo, tmp_path):
    r = _recipe(tiny_demo_root, second_demo, {"name": "cross_corpus", "train": "a", "test": ["b"], "dev": "speaker"},
                training={"max_steps": 20, "batch_size": 16, "select": "dev_ua"})
    prep = prepare(r, "cpu", progress=False)
    (fold,) = prep.folds
    assert fold.name == "a->b"
    assert all(u.startswith("a/") for u in fold.train + fold.dev) and all(u.startswith("b/") for u in fold.test)
    assert fold.dev and not {prep.utterances[u].speaker for u in fold.dev} & {prep.utterances[u].speaker
                                                                           for u in fold.train}
    summary = Runner(r, tmp_path / "ab", progress=False).run()
    assert summary.cross_corpus == {"train": ["a"], "test": ["b"]} and list(summary.folds) == ["a->b"]


def test_the_diagonal_is_within_corpus_speaker_independent(tiny_demo_root, second_demo):
    r = _recipe(tiny_demo_root, second_demo, {"name": "cross_corpus", "train": "b", "test": "b", "num_folds": 2})
    folds = plan(r).folds
    assert [f.name for f in folds] == ["b->b:speakers1", "b->b:speakers2"]
    for f in folds:
        assert not set(f.train) & set(f.test) and all(u.startswith("b/") for u in f.train + f.test)


@pytest.mark.parametrize("protocol, message", [
    ({"name": "cross_corpus", "train": ["a"]}, "needs protocol.train and protocol.test"),
    ({"name": "cross_corpus", "train": ["a", "b"], "test": ["b"]}, "in both protocol.train and protocol.test"),
    ({"name": "speaker", "train": ["a"]}, "need protocol.name: cross_corpus"),
])
def test_bad_cross_corpus_settings_are_one_error(tiny_demo_root, second_demo, protocol, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(tiny_demo_root, second_demo, protocol)


def test_a_corpus_the_run_does_not_read_is_named(tiny_demo_root, second_demo):
    with pytest.raises(ProtocolError, match="no utterances of corpus 'c'; the run's corpora: a, b"):
        plan(_recipe(tiny_demo_root, second_demo, {"name": "cross_corpus", "train": "a", "test": "c"}))


def test_multi_corpus_training_reports_each_corpus_and_the_grid_matrix(tiny_demo_root, second_demo, tmp_path):
    r = _recipe(tiny_demo_root, second_demo, {"name": "speaker", "num_folds": 2})
    summary = Runner(r, tmp_path / "union", progress=False).run()
    assert set(summary.per_corpus) == {"a", "b"}
    fold = json.loads(sorted((tmp_path / "union" / "folds").glob("*/metrics.json"))[0].read_text())
    parts = fold["per_corpus"]
    assert parts["a"]["n"] + parts["b"]["n"] == fold["n"] and {"wa", "ua", "macro_f1"} <= set(parts["a"])
    md = (tmp_path / "union" / "results.md").read_text()
    assert "Per corpus" in md and "| a |" in md and "| b |" in md
    runs = []
    for train, test in (("a", "b"), ("b", "a")):
        out = tmp_path / f"{train}{test}"
        Runner(_recipe(tiny_demo_root, second_demo, {"name": "cross_corpus", "train": train, "test": test}),
               out, progress=False).run()
        runs.append(out)
    matrix = to_matrix(collect(runs))
    lines = matrix.splitlines()
    assert lines[2] == "| train ↓ test → | b | a |"
    assert lines[4].startswith("| a | ") and lines[4].split(" | ")[2].strip(" |") == "–"  # a->a not run
    assert "## Cross-corpus" in write_report(runs) and "## Cross-corpus" not in write_report([tmp_path / "union"])


def test_corpus_normalisation_uses_training_utterances_of_seen_corpora_only():
    import torch

    from ser_plugins.data.normalize import Moments, Normalizer

    def frames(value):
        return Moments.of([torch.full((4, 2), float(value))] if value != "spread" else [torch.tensor([[0.0], [2.0]])])

    moments = {"a1": frames(1), "a2": frames(3), "a_test": frames(100), "b1": frames(10), "b2": frames(20)}
    groups = {"a1": "a", "a2": "a", "a_test": "a", "b1": "b", "b2": "b"}
    norm = Normalizer("corpus").fit(moments, groups, ["a1", "a2"])
    mean_a, _ = norm.statistics("a")
    mean_b, _ = norm.statistics("b")
    assert float(mean_a[0][0]) == pytest.approx(2.0)  # a's test utterance never shapes a's statistics
    assert float(mean_b[0][0]) == pytest.approx(15.0)  # b has no training utterance: its own (transductive)
    assert norm.transductive


def test_corpus_normalisation_runs_cross_corpus(tiny_demo_root, second_demo, tmp_path):
    r = _recipe(tiny_demo_root, second_demo, {"name": "cross_corpus", "train": "a", "test": "b"},
                features={"normalize": "corpus"})
    summary = Runner(r, tmp_path / "norm", progress=False).run()
    assert summary.normalize == "corpus" and summary.transductive
    assert (tmp_path / "norm" / "folds" / "a->b" / "normalizer.safetensors").exists()
