"""The entry-point registry: lazy listing, clear errors, broken plugins alone, duplicates, presets."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ser_plugins.plugins import registry
from ser_plugins.plugins.registry import AmbiguousPluginError, PluginLoadError, UnknownPluginError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
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
        "import sys, ser_plugins.plugins.registry as r; specs = r.list_plugins();"
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


def test_a_third_party_clash_with_a_builtin_keeps_the_builtin(fake_dist, caplog):
    source = """
        from downstreams.aggregators import StatsPooling as Agg
        from upstreams.handcrafted import MfccUpstream as Up
    """
    fake_dist("other-dist", "other_mod", source, {"ser_plugins.aggregators": {"mean": "other_mod:Agg"},
                                                 "ser_plugins.upstreams": {"fbank": "other_mod:Up"}})
    registry._warned_clashes.clear()
    with caplog.at_level("WARNING", logger="ser_plugins"):
        agg = registry.create_aggregator("mean", input_dim=4)
        registry.create_aggregator("mean", input_dim=4)
    assert type(agg).__module__ == "downstreams.aggregators" and agg.output_dim == 4  # the project's own
    warnings = [r.getMessage() for r in caplog.records if "also registered" in r.getMessage()]
    assert len(warnings) == 1  # one line, once
    assert "other-dist" in warnings[0] and "'other-dist:mean'" in warnings[0]
    assert registry.create_aggregator("other-dist:mean", input_dim=4).output_dim == 8  # the other one, qualified
    assert registry.create_aggregator("other_dist:mean", input_dim=4).output_dim == 8  # any normalised spelling
    # every built-in recipe still builds (its 'fbank' is the project's own, not the third party's MFCC)
    from ser_plugins import build_model

    model = build_model(RECIPES / "demo.yaml", overrides=["aggregator=mean"])
    assert type(model.upstream).__name__ == "FbankUpstream"
    assert type(model.head.aggregator).__name__ == "MeanPooling"


def test_the_same_name_from_two_third_parties_needs_qualification(fake_dist):
    source = "from downstreams.aggregators import MeanPooling as Agg\n"
    fake_dist("dist-a", "mod_a", source, {"ser_plugins.aggregators": {"pool_x": "mod_a:Agg"}})
    fake_dist("dist-b", "mod_b", source, {"ser_plugins.aggregators": {"pool_x": "mod_b:Agg"}})
    with pytest.raises(AmbiguousPluginError) as err:
        registry.create_aggregator("pool_x", input_dim=4)
    assert "dist-a:pool_x" in str(err.value) and "dist-b:pool_x" in str(err.value)
    assert registry.create_aggregator("dist_b:pool_x", input_dim=4).plugin_dist == "dist-b"
    assert [[s.dist for s in specs] for specs in registry.clashes("aggregator")] == [["dist-a", "dist-b"]]


@pytest.mark.parametrize("name", ["ser-plugins:fbank", "ser_plugins:fbank", "Ser.Plugins:fbank", "SER_PLUGINS:fbank"])
def test_dist_name_accepts_normalised_spellings(name):
    up = registry.create_upstream(name, n_mels=24)
    assert up.hidden_sizes == [24] and up.plugin_dist == "ser-plugins"


def test_unknown_distribution_is_named():
    with pytest.raises(UnknownPluginError, match="in distribution 'no-such-dist' .*registered by: ser-plugins"):
        registry.create_upstream("no_such_dist:fbank")


def test_python_api_checks_options_like_a_recipe():
    with pytest.raises(registry.PluginError, match="upstream 'fbank' has no option 'n_mel' \\(did you mean 'n_mels'\\?\\)"):
        registry.create_upstream("fbank", n_mel=80)
    with pytest.raises(registry.PluginError, match="aggregator 'self_attention' has no option 'num_head'"):
        registry.create_aggregator("self_attention", input_dim=8, num_head=2)
    with pytest.raises(registry.PluginError, match="upstream 'hf' needs option 'model'"):
        registry.create_upstream("hf")


def test_config_records_every_option_with_its_default(fake_dist):
    source = """
        from ser_plugins import Aggregator
        class Agg(Aggregator):
            def __init__(self, input_dim, scale=2.0, mode="max"):
                super().__init__()
                self.output_dim = input_dim
    """
    fake_dist("cfg-dist", "cfg_mod", source, {"ser_plugins.aggregators": {"cfg_pool": "cfg_mod:Agg"}})
    agg = registry.create_aggregator("cfg_pool", input_dim=4, mode="mean")
    assert agg.config == {"scale": 2.0, "mode": "mean"}
    assert (agg.plugin_dist, agg.plugin_version) == ("cfg-dist", "0.1")


def test_preset_is_data_resolved_to_its_builder(fake_dist):
    source = """
        from ser_plugins.plugins.registry import Preset
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


def test_overriding_a_plugin_section_replaces_it_and_overriding_its_name_keeps_the_options():
    from ser_plugins.recipe import load_recipe

    assert load_recipe(RECIPES / "demo.yaml", ["upstream=mfcc"]).upstream.to_yaml_value() == {"name": "mfcc"}
    kept = load_recipe(RECIPES / "demo.yaml", ["upstream.name=mfcc"]).upstream
    assert (kept.name, kept.options) == ("mfcc", {"n_mels": 80})
