"""Scale in corpus size: frozen features served from the on-disk cache and audio streamed by DataLoader
workers give the same batches and results as the in-RAM paths."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ser_plugins.data.feature_stream import LazyFeatures, prefetch
from ser_plugins.data.memory import resolve_workers
from ser_plugins.recipe import RecipeError, load_recipe
from ser_plugins.runner import run_recipe

TINY_BUDGET = 1e-6  # GiB: forces streaming on any corpus


def _files(run: Path) -> dict:
    """What a user reads from a fold: metrics (minus wall time), predictions, checkpoint tensors."""
    from safetensors.torch import load_file

    fold = run / "folds" / "Session1"
    metrics = json.loads((fold / "metrics.json").read_text())
    metrics.pop("seconds")
    return {"metrics": metrics, "predictions": (fold / "predictions.csv").read_text(),
            "best": load_file(str(fold / "best.safetensors"))}


def _same(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["predictions"] == b["predictions"]
    assert a["best"].keys() == b["best"].keys()
    assert all(torch.equal(a["best"][k], b["best"][k]) for k in a["best"])


@pytest.mark.parametrize("aggregator,normalize", [("stats", None), ("mean", "speaker")])
def test_frozen_features_streamed_from_the_cache_give_identical_results(fast_recipe, tmp_path, caplog,
                                                                          aggregator, normalize):
    fast_recipe.update(aggregator=aggregator, features={"normalize": normalize},
                       training={"epochs": 2, "max_duration": 1.0 if aggregator == "stats" else None})
    in_ram = run_recipe(load_recipe(fast_recipe), str(tmp_path / "ram"), folds=["1"], progress=False)
    assert "streamed" not in json.loads((tmp_path / "ram" / "run.json").read_text())
    fast_recipe["data"] = {"max_ram_gb": TINY_BUDGET, "cache_dir": str(tmp_path / "cache")}
    with caplog.at_level(logging.INFO, logger="ser_plugins"):
        streamed = run_recipe(load_recipe(fast_recipe), str(tmp_path / "stream"), folds=["1"], progress=False)
    assert any("served from the on-disk cache" in r.getMessage() for r in caplog.records)
    run = json.loads((tmp_path / "stream" / "run.json").read_text())
    assert run["streamed"]["frames_on_disk"] == (aggregator == "stats")
    assert run["feature_cache"]["misses"] == 100
    assert streamed["folds"] == in_ram["folds"]
    _same(_files(tmp_path / "ram"), _files(tmp_path / "stream"))
    again = run_recipe(load_recipe(fast_recipe), str(tmp_path / "hits"), folds=["1"], progress=False)
    assert json.loads((tmp_path / "hits" / "run.json").read_text())["feature_cache"]["hits"] == 100
    assert again["folds"] == in_ram["folds"]
    _same(_files(tmp_path / "ram"), _files(tmp_path / "hits"))


def test_streamed_features_without_a_cache_dir_use_a_temporary_one_removed_afterwards(fast_recipe, tmp_path):
    from ser_plugins.runner import Runner

    fast_recipe["data"] = {"max_ram_gb": TINY_BUDGET}
    runner = Runner(load_recipe(fast_recipe), tmp_path / "r", progress=False)
    prep = runner.prepare()
    features = prep.source.features
    assert isinstance(features, LazyFeatures) and len(features) == 100
    tmp = Path(features.tmp_dir)
    entries = list(tmp.rglob("*.safetensors"))
    assert len(entries) == 100  # one entry per utterance, written as extracted
    uid = next(iter(features))
    assert features[uid][0].shape[0] == features.frame_counts[uid]
    del prep, features, runner
    import gc

    gc.collect()
    assert not tmp.exists()


def test_prefetch_keeps_order_passes_errors_and_stops_early():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("entry unreadable")

    got = []
    with pytest.raises(ValueError, match="entry unreadable"):
        for x in prefetch(broken()):
            got.append(x)
    assert got == [1]
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    gen = prefetch(counting(), depth=2)
    assert next(gen) == 0
    gen.close()  # a consumer that stops early (max_steps): the producer stops too
    assert len(produced) < 10


def test_recipe_keys_have_ranges():
    base = {"name": "x", "corpus": "demo", "upstream": "fbank", "aggregator": "mean", "classifier": "linear"}
    r = load_recipe({**base, "data": {"max_ram_gb": 0.5, "num_workers": 2}}, check_plugins=False)
    assert r.data.max_ram_gb == 0.5 and r.data.num_workers == 2
    assert load_recipe(base, check_plugins=False).data.max_ram_gb is None
    for bad in ({"max_ram_gb": 0}, {"max_ram_gb": -1.0}, {"num_workers": -1}, {"num_workers": 1.5}):
        with pytest.raises(RecipeError, match="data."):
            load_recipe({**base, "data": bad}, check_plugins=False)
    assert resolve_workers(3, 10) == 3 and resolve_workers(None, 10) == 0 and resolve_workers(None, 10_000) >= 1
