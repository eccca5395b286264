"""The one normaliser: exact statistics from moments, global = training fold only, speaker = per speaker."""
from __future__ import annotations


import pytest
import torch

from ser_plugins.data.normalize import Moments, Normalizer
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import run_recipe


def _utts(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = {f"u{i}": [torch.randn(5 + i, 3, generator=g) * (i + 1) + i] for i in range(6)}
    speakers = {f"u{i}": "a" if i < 3 else "b" for i in range(6)}
    return feats, speakers


def test_global_statistics_equal_those_of_the_training_frames_only():
    feats, speakers = _utts()
    moments = {u: Moments.of(f) for u, f in feats.items()}
    train = ["u0", "u1", "u4"]
    norm = Normalizer("global").fit(moments, speakers, train)
    frames = torch.cat([feats[u][0].double() for u in train])
    assert torch.allclose(norm.mean_[0].double(), frames.mean(0), atol=1e-6)
    assert torch.allclose(norm.std_[0].double(), frames.std(0, unbiased=False), atol=1e-6)
    out = torch.cat([norm.transform(feats[u])[0] for u in train])
    assert torch.allclose(out.mean(0), torch.zeros(3), atol=1e-5)
    assert not norm.transductive


def test_speaker_statistics_per_speaker_and_typical_from_training_speakers():
    feats, speakers = _utts()
    moments = {u: Moments.of(f) for u, f in feats.items()}
    norm = Normalizer("speaker").fit(moments, speakers, train_ids=["u0", "u1", "u2"])  # only speaker a trains
    a = torch.cat([feats[u][0] for u in ("u0", "u1", "u2")])
    assert torch.allclose(norm.statistics("a")[0][0], a.mean(0), atol=1e-5)
    assert torch.allclose(norm.mean_[0], norm.statistics("a")[0][0])  # typical = training speakers' only
    b = torch.cat([norm.transform(feats[u], "b")[0] for u in ("u3", "u4", "u5")])
    assert torch.allclose(b.mean(0), torch.zeros(3), atol=1e-5)
    assert norm.transductive


def test_transform_of_a_mean_is_the_mean_of_the_transform():
    feats, speakers = _utts()
    norm = Normalizer("global").fit({u: Moments.of(f) for u, f in feats.items()})
    frames = feats["u3"]
    mean_first = norm.transform([frames[0].mean(0, keepdim=True)])[0]
    assert torch.allclose(mean_first, norm.transform(frames)[0].mean(0, keepdim=True), atol=1e-5)


def test_state_round_trips_through_a_file(tmp_path):
    feats, speakers = _utts()
    norm = Normalizer("speaker").fit({u: Moments.of(f) for u, f in feats.items()}, speakers)
    norm.save(tmp_path / "n.safetensors")
    back = Normalizer.load(tmp_path / "n.safetensors")
    assert back.kind == "speaker"
    x = feats["u1"]
    assert torch.allclose(back.transform(x)[0], norm.transform(x)[0])  # unknown speaker: typical statistics


def test_global_normalisation_runs_and_saves_training_statistics(fast_recipe, tmp_path, one_torch_thread):
    fast_recipe["features"] = {"normalize": "global"}
    summary = run_recipe(load_recipe(fast_recipe), str(tmp_path / "g"), folds=["1"], progress=False)
    assert 0 <= summary.mean_std["ua"]["mean"] <= 1
    saved = Normalizer.load(tmp_path / "g" / "folds" / "Session1" / "normalizer.safetensors")
    assert saved.kind == "global" and saved.mean_[0].shape == (40,)
    recipe = (tmp_path / "g" / "recipe.yaml").read_text()
    assert "normalize: global" in recipe


def test_normalisation_needs_a_frozen_upstream():
    from ser_plugins.recipe import RecipeError

    base = {"corpus": {"name": "iemocap", "root": "x"}, "upstream": "fbank", "aggregator": "stats", "classifier": "mlp"}
    with pytest.raises(RecipeError, match="'global' needs a frozen upstream"):
        load_recipe({**base, "features": {"normalize": "global"}, "finetune": {"mode": "full"}}, check_plugins=False)
