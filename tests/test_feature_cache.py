"""Frozen-feature cache: hits and misses, invalidation, atomic entries, and the exact mean shortcut."""
from __future__ import annotations

import json

import pytest
import torch

from ser_plugins.plugins.contracts import Utterance
from ser_plugins.data.feature_cache import FeatureCache
from ser_plugins.model import build_head, build_upstream, head_sees_only_means
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import run_recipe


def make_wav(path, seconds=0.5, seed=0):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype("float32"), 16000, subtype="PCM_16")
    return Utterance(path.stem, str(path), "neu", "s1")


def test_hit_miss_and_invalidation_when_audio_or_upstream_changes(tmp_path):
    utt = make_wav(tmp_path / "a.wav")
    ident = {"class": "X", "config": {"n_mels": 40}}
    cache = FeatureCache(tmp_path / "cache", ident, [0], torch.float16)
    assert cache.get(utt) is None
    feats = [torch.randn(7, 4)]
    cache.put(utt, feats, frames=7)
    got, frames = cache.get(utt)
    assert frames == 7 and got[0].dtype == torch.float16
    assert torch.allclose(got[0].float(), feats[0], atol=1e-2)
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1
    other = FeatureCache(tmp_path / "cache", {"class": "X", "config": {"n_mels": 80}}, [0], torch.float16)
    assert other.get(utt) is None  # different upstream kwargs: different entry
    assert FeatureCache(tmp_path / "cache", ident, [0, 1], torch.float16).get(utt) is None  # other layers
    make_wav(tmp_path / "a.wav", seconds=0.6, seed=1)  # the audio changed
    assert cache.get(utt) is None


def test_a_write_killed_midway_leaves_no_entry(tmp_path, monkeypatch):
    import safetensors.torch as st

    utt = make_wav(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "cache", {"class": "X"}, [0], torch.float16)

    def dying_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(st, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        cache.put(utt, [torch.zeros(3, 2)], 3)
    monkeypatch.undo()
    assert cache.get(utt) is None
    assert not [p for p in cache.dir.rglob("*") if p.is_file() and p.name != "spec.json"]


def test_a_corrupt_entry_is_recomputed_not_trusted(tmp_path):
    utt = make_wav(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "cache", {"class": "X"}, [0], torch.float16)
    cache.put(utt, [torch.zeros(3, 2)], 3)
    (entry,) = [p for p in cache.dir.rglob("*.safetensors")]
    entry.write_bytes(b"garbage")
    assert cache.get(utt) is None


def test_runs_sharing_a_cache_extract_once_and_agree(fast_recipe, tmp_path):
    fast_recipe["data"] = {"cache_dir": str(tmp_path / "cache")}
    recipe = load_recipe(fast_recipe)
    first = run_recipe(recipe, str(tmp_path / "r1"), folds=["1"], progress=False)
    run1 = json.loads((tmp_path / "r1" / "run.json").read_text())
    assert run1["feature_cache"]["hits"] == 0 and run1["feature_cache"]["misses"] == 100
    second = run_recipe(recipe, str(tmp_path / "r2"), folds=["1"], progress=False)
    run2 = json.loads((tmp_path / "r2" / "run.json").read_text())
    assert run2["feature_cache"]["hits"] == 100 and run2["feature_cache"]["misses"] == 0
    assert first["folds"] == second["folds"]
    fast_recipe["data"] = {}
    uncached = run_recipe(load_recipe(fast_recipe), str(tmp_path / "r3"), folds=["1"], progress=False)
    assert uncached["folds"] == first["folds"]  # float16 storage either way: same features


def test_mean_shortcut_is_exact(fast_recipe, tmp_path):
    fast_recipe.update(aggregator="mean", features={"projection": 8})
    recipe = load_recipe(fast_recipe)
    upstream = build_upstream(recipe.upstream, recipe.finetune)
    torch.manual_seed(0)
    head, _ = build_head(recipe.features, recipe.aggregator, recipe.classifier, upstream, 4)
    assert head_sees_only_means(head)
    head.eval()  # no dropout
    frames = [torch.randn(2, 9, 40)]
    lengths = torch.tensor([9, 5])
    means = [torch.stack([frames[0][0, :9].mean(0), frames[0][1, :5].mean(0)]).unsqueeze(1)]
    assert torch.allclose(head(frames, lengths), head(means, torch.tensor([1, 1])), atol=1e-5)

    shortcut = run_recipe(recipe, str(tmp_path / "short"), folds=["1"], progress=False)
    assert json.loads((tmp_path / "short" / "run.json").read_text())["mean_shortcut"] is True
    fast_recipe["training"]["max_duration"] = 60.0  # no utterance is cropped, but the shortcut is off
    full = run_recipe(load_recipe(fast_recipe), str(tmp_path / "full"), folds=["1"], progress=False)
    assert "mean_shortcut" not in json.loads((tmp_path / "full" / "run.json").read_text())
    a, b = shortcut["folds"]["Session1"], full["folds"]["Session1"]
    assert a["wa"] == pytest.approx(b["wa"]) and a["ua"] == pytest.approx(b["ua"])
    import csv

    rows = lambda d: list(csv.DictReader((tmp_path / d / "folds" / "Session1" / "predictions.csv").open()))  # noqa: E731
    for x, y in zip(rows("short"), rows("full")):
        assert x["id"] == y["id"] and x["prediction"] == y["prediction"]
        assert all(abs(float(x[k]) - float(y[k])) < 1e-3 for k in x if k.startswith("p_"))


def test_a_replaced_file_with_the_same_size_and_mtime_is_not_served_stale(tmp_path):
    import os

    utt = make_wav(tmp_path / "a.wav", seed=0)
    cache = FeatureCache(tmp_path / "cache", {"class": "X"}, [0], torch.float16)
    cache.put(utt, [torch.zeros(3, 2)], 3)
    st = os.stat(utt.path)
    make_wav(tmp_path / "b.wav", seed=5)  # same length, other samples
    os.replace(tmp_path / "b.wav", utt.path)
    os.utime(utt.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # what cp -p does
    assert os.stat(utt.path).st_size == st.st_size and os.stat(utt.path).st_mtime_ns == st.st_mtime_ns
    assert cache.get(utt) is None


def test_means_entries_are_keyed_by_the_dtype_their_frames_were_rounded_to(tmp_path):
    ident = {"class": "X"}
    half = FeatureCache(tmp_path / "cache", ident, [0], torch.float16, variant="means")
    full = FeatureCache(tmp_path / "cache", ident, [0], torch.float32, variant="means")
    assert half.dir != full.dir and half.dtype == full.dtype == torch.float32
ENERGY_PLUGIN = """
    import torch
    from ser_plugins import Upstream, UpstreamOutput

    SCALE = 1.0


    class EnergyUpstream(Upstream):
        '''Log energy and mean magnitude of 25 ms frames; no config of its own (the registry records it).'''

        def __init__(self, win: int = 400, hop: int = 160, offset: float = 1e-6):
            super().__init__()
            self.win, self.offset = win, offset
            self.hop_length, self.min_samples, self.hidden_sizes = hop, win, [2]

        def frame_lengths(self, wav_lengths):
            return (wav_lengths - self.win) // self.hop_length + 1

        def forward(self, wavs, wav_lengths):
            frames = wavs.unfold(1, self.win, self.hop_length)
            feats = torch.stack([torch.log(frames.pow(2).mean(-1) + self.offset) * SCALE, frames.abs().mean(-1)], -1)
            return UpstreamOutput([feats], self.frame_lengths(wav_lengths))
"""


@pytest.fixture
def energy_plugin(fake_dist):
    import sys

    site = fake_dist("energy-dist", "energy_mod", ENERGY_PLUGIN, {"ser_plugins.upstreams": {"energy": "energy_mod:EnergyUpstream"}})

    def edit(old: str, new: str) -> None:
        path = site / "energy_mod.py"
        path.write_text(path.read_text().replace(old, new))
        sys.modules.pop("energy_mod", None)  # what a new process (the next `ser run`) sees

    yield edit
    sys.modules.pop("energy_mod", None)


def test_identity_names_distribution_full_config_and_source(energy_plugin):
    from ser_plugins import create_upstream

    ident = create_upstream("energy").identity()
    assert ident["class"] == "energy_mod.EnergyUpstream"
    assert ident["distribution"] == {"name": "energy-dist", "version": "0.1"}
    assert ident["config"] == {"win": 400, "hop": 160, "offset": 1e-6}  # defaults included
    assert create_upstream("energy", hop=160).identity() == ident  # a default passed explicitly: same features
    assert create_upstream("energy", hop=320).identity()["config"]["hop"] == 320
    energy_plugin("SCALE = 1.0", "SCALE = 2.0")
    edited = create_upstream("energy").identity()
    assert edited["source"] != ident["source"]
    assert {k: v for k, v in edited.items() if k != "source"} == {k: v for k, v in ident.items() if k != "source"}


def test_a_plugin_may_pin_its_source_fingerprint(energy_plugin):
    from ser_plugins import create_upstream

    energy_plugin("    def frame_lengths", "    def source_fingerprint(self):\n        return 'release-1'\n\n    def frame_lengths")
    assert create_upstream("energy").identity()["source"] == "release-1"


def test_editing_an_installed_plugin_invalidates_its_cache_entries(energy_plugin, fast_recipe, tmp_path):
    fast_recipe.update(upstream="energy", data={"cache_dir": str(tmp_path / "cache")})
    fast_recipe["training"]["epochs"] = 1

    def run(name):
        run_recipe(load_recipe(fast_recipe), str(tmp_path / name), folds=["1"], progress=False)
        return json.loads((tmp_path / name / "run.json").read_text())["feature_cache"]

    assert (run("r1")["hits"], run("r2")["hits"]) == (0, 100)  # the second run is served from the cache
    energy_plugin("SCALE = 1.0", "SCALE = 2.0")  # the plugin's code changes, its version does not
    third = run("r3")
    assert (third["hits"], third["misses"]) == (0, 100)
