"""The entry-point registry: lazy listing, clear errors, broken plugins alone, duplicates, presets."""
from __future__ import annotations

import subprocess
import sys

import pytest

from ser_plugins import registry
from ser_plugins.registry import AmbiguousPluginError, PluginLoadError, UnknownPluginError

BUILTINS = {
    "upstream": {"fbank", "mfcc", "spectrogram"},
    "aggregator": {"mean", "stats", "attentive_stats", "self_attention"},
    "classifier": {"linear", "mlp"},
    "corpus": {"iemocap", "demo", "manifest"},
}


def test_builtins_are_found_through_entry_points():
    for kind, names in BUILTINS.items():
        found = {s.name for s in registry.list_plugins(kind)}
        assert names <= found, kind
        assert all(s.dist == "ser-plugins" for s in registry.list_plugins(kind) if s.name in names)


def test_listing_imports_no_plugin_module_nor_torch():
    code = (
        "import sys, ser_plugins.registry as r; specs = r.list_plugins();"
        "assert len(specs) >= 12, specs;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('upstreams', 'downstreams', 'corpora', 'transformers')];"
        "print(bad); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_glob_pattern_filters_names():
    names = {s.name for s in registry.list_plugins("aggregator", "*stats*")}
    assert names >= {"stats", "attentive_stats"} and "mean" not in names


def test_unknown_name_lists_close_matches_and_all_names():
    with pytest.raises(UnknownPluginError) as err:
        registry.create_upstream("fbnak")
    msg = str(err.value)
    assert "Did you mean: fbank" in msg and "mfcc" in msg and "spectrogram" in msg


def test_broken_plugin_is_reported_alone(fake_dist):
    fake_dist("broken-plugin", "broken_mod", "import not_a_real_dependency_xyz\n",
              {"ser_plugins.upstreams": {"broken": "broken_mod:Upstream"}})
    names = {s.name for s in registry.list_plugins("upstream")}
    assert "broken" in names  # listing still works and does not import it
    with pytest.raises(PluginLoadError) as err:
        registry.create_upstream("broken")
    msg = str(err.value)
    assert "broken-plugin" in msg and "not_a_real_dependency_xyz" in msg and "broken" in msg
    up = registry.create_upstream("fbank")  # the others keep working
    assert up.num_layers >= 1


def test_same_name_from_two_distributions_needs_qualification(fake_dist):
    source = """
        from downstreams.aggregators import MeanPooling as Agg
    """
    fake_dist("other-dist", "other_mod", source, {"ser_plugins.aggregators": {"mean": "other_mod:Agg"}})
    with pytest.raises(AmbiguousPluginError) as err:
        registry.create_aggregator("mean", input_dim=4)
    assert "other-dist:mean" in str(err.value) and "ser-plugins:mean" in str(err.value)
    agg = registry.create_aggregator("other-dist:mean", input_dim=4)
    assert agg.output_dim == 4
    agg = registry.create_aggregator("ser-plugins:mean", input_dim=4)
    assert agg.output_dim == 4


def test_preset_is_data_resolved_to_its_builder(fake_dist):
    source = """
        from ser_plugins.registry import Preset
        SMALL_FBANK = Preset(builder="fbank", kwargs={"n_mels": 24}, weights=None, description="24 mel bins")
    """
    fake_dist("preset-dist", "preset_mod", source, {"ser_plugins.upstreams": {"small_fbank": "preset_mod:SMALL_FBANK"}})
    up = registry.create_upstream("small_fbank")
    assert up.hidden_sizes == [24]
    assert up.config["n_mels"] == 24 and up.plugin_name == "small_fbank"
    up = registry.create_upstream("small_fbank", n_mels=32)  # user kwargs override the preset's
    assert up.hidden_sizes == [32]


def test_check_kwargs_names_the_bad_option():
    with pytest.raises(registry.PluginError) as err:
        registry.check_kwargs("upstream", "fbank", {"n_mel": 40})
    assert "n_mel" in str(err.value) and "did you mean 'n_mels'" in str(err.value)


def test_ser_list_cli_shows_kind_name_and_distribution():
    out = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "list"], capture_output=True, text=True, check=True).stdout
    assert "upstream" in out and "fbank" in out and "ser-plugins" in out and "classifier" in out
