"""The registry as an object (``PluginManager``): entry points read once, refresh, errors that name the plugin.

The look-up messages themselves are in test_registry.py; these tests count how often the installed
metadata is read, and check that what a test (or a user) installs at run time is still found.
"""
from __future__ import annotations

import ast
import pickle
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest

from ser_plugins.plugins import registry
from ser_plugins.plugins.registry import (AmbiguousPluginError, PluginError, PluginLoadError, PluginManager,
                                          UnknownPluginError)

PACKAGE = Path(__file__).resolve().parents[1] / "ser_plugins"


@pytest.fixture
def metadata_reads(monkeypatch):
    """A list that grows by one per ``importlib.metadata.entry_points()`` call of the registry (its only read).

    Other readers (torch reads its own group ``torch.backends`` when first imported) are not counted.
    """
    calls = []
    real = metadata.entry_points

    def counting(*args, **kwargs):
        if not str(kwargs.get("group", "ser_plugins")).startswith("torch"):
            calls.append(args or kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry.metadata, "entry_points", counting)
    return calls


def write_dist(site: Path, dist: str, module: str, source: str, group: str, entries: dict) -> None:
    """A ``*.dist-info`` with entry points (and its module) in ``site``, a directory maybe already on sys.path."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))


def test_entry_points_are_read_once_per_process(metadata_reads):
    manager = PluginManager()
    assert metadata_reads == []  # nothing is read before it is needed
    for kind in registry.KINDS:
        assert manager.list_plugins(kind)
    manager.create("upstream", "fbank", n_mels=8)
    manager.create("aggregator", "mean", 8)
    manager.check_kwargs("classifier", "mlp", {"hidden_sizes": [4]}, ("input_dim", "num_classes"))
    manager.load_builder("upstream", "fbank")
    manager.clashes()
    assert len(metadata_reads) == 1 and manager.reads == 1


def test_the_module_functions_share_one_manager(metadata_reads):
    registry.refresh()
    registry.list_plugins()
    for _ in range(3):
        registry.create_upstream("fbank", n_mels=8)
        registry.create_aggregator("stats", input_dim=4)
        registry.create_classifier("linear", input_dim=4, num_classes=2)
        registry.load("corpus", "demo")
    assert len(metadata_reads) == 1
    assert registry.default_manager() is registry.default_manager()


def test_create_resolves_the_name_once(monkeypatch):
    manager = PluginManager()
    seen = []
    real = PluginManager.resolve_entry
    monkeypatch.setattr(PluginManager, "resolve_entry", lambda self, kind, name: seen.append(name) or real(self, kind, name))
    up = manager.create("upstream", "fbank", n_mels=8)
    assert seen == ["fbank"] and up.plugin_dist == "ser-plugins"


def test_a_changed_sys_path_reads_again(fake_dist, metadata_reads):
    manager = PluginManager()
    assert "late_pool" not in {s.name for s in manager.list_plugins("aggregator")}
    fake_dist("late-dist", "late_mod", "from downstreams.aggregators import MeanPooling as Agg\n",
              {"ser_plugins.aggregators": {"late_pool": "late_mod:Agg"}})  # prepends to sys.path
    assert "late_pool" in {s.name for s in manager.list_plugins("aggregator")}
    manager.list_plugins("aggregator")
    assert len(metadata_reads) == 2


def test_refresh_finds_a_distribution_installed_into_a_directory_on_the_path(tmp_path, monkeypatch, metadata_reads):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    manager = PluginManager()
    assert "fresh_pool" not in {s.name for s in manager.list_plugins("aggregator")}
    write_dist(site, "fresh-dist", "fresh_mod", "from downstreams.aggregators import MeanPooling as Agg\n",
               "ser_plugins.aggregators", {"fresh_pool": "fresh_mod:Agg"})
    assert "fresh_pool" not in {s.name for s in manager.list_plugins("aggregator")}  # kept: no new read
    assert len(metadata_reads) == 1
    manager.refresh()
    assert "fresh_pool" in {s.name for s in manager.list_plugins("aggregator")}
    assert len(metadata_reads) == 2


def test_an_unknown_name_is_looked_up_once_more_before_failing(tmp_path, monkeypatch, metadata_reads):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    manager = PluginManager()
    manager.list_plugins()
    write_dist(site, "later-dist", "later_mod", "from downstreams.aggregators import MeanPooling as Agg\n",
               "ser_plugins.aggregators", {"later_pool": "later_mod:Agg"})
    assert manager.create("aggregator", "later_pool", 4).plugin_dist == "later-dist"  # found without refresh()
    assert len(metadata_reads) == 2
    with pytest.raises(UnknownPluginError):
        manager.create("aggregator", "never_installed_pool", 4)
    assert len(metadata_reads) == 3  # one more read, then the error


def test_threads_asking_at_once_read_once(monkeypatch):
    calls = []
    real = metadata.entry_points

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry.metadata, "entry_points", slow)
    manager = PluginManager()
    found = []
    threads = [threading.Thread(target=lambda: found.append(len(manager.specs("upstream")))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(found)) == 1 and found[0] > 0


def test_a_broken_plugin_is_reported_alone_with_its_distribution(fake_dist):
    fake_dist("broken-dist", "broken_mgr_mod", "import not_a_real_dependency_xyz\n",
              {"ser_plugins.upstreams": {"broken_up": "broken_mgr_mod:Up"}})
    assert "broken_up" in {s.name for s in registry.list_plugins("upstream")}  # listed, not imported
    with pytest.raises(PluginLoadError) as err:
        registry.create_upstream("broken_up")
    assert (err.value.kind, err.value.name, err.value.dist) == ("upstream", "broken_up", "broken-dist")
    assert str(err.value) == ("upstream plugin 'broken_up' from distribution 'broken-dist' (broken_mgr_mod:Up) "
                              "failed to load: ModuleNotFoundError: No module named 'not_a_real_dependency_xyz'")
    assert isinstance(err.value.__cause__, ModuleNotFoundError)
    assert registry.create_upstream("fbank", n_mels=8).num_layers >= 1  # the others keep working
    from ser_plugins.testing import ContractCheckError, check_upstream

    with pytest.raises(ContractCheckError) as failed:
        check_upstream("broken_up")
    assert (failed.value.check, failed.value.dist) == ("import", "broken-dist")


def test_errors_carry_the_plugin_as_attributes(fake_dist):
    with pytest.raises(UnknownPluginError) as unknown:
        registry.create_upstream("fbnak")
    assert (unknown.value.kind, unknown.value.name, unknown.value.dist) == ("upstream", "fbnak", None)
    assert str(unknown.value).startswith("unknown upstream 'fbnak'. Did you mean: fbank?")  # not quoted by KeyError
    with pytest.raises(UnknownPluginError) as qualified:
        registry.create_upstream("No_Such.Dist:fbank")
    assert (qualified.value.name, qualified.value.dist) == ("fbank", "no-such-dist")
    with pytest.raises(PluginError) as option:
        registry.create_upstream("fbank", n_mel=8)
    assert (option.value.kind, option.value.name, option.value.dist) == ("upstream", "fbank", "ser-plugins")
    assert str(option.value).startswith("upstream 'fbank' has no option 'n_mel' (did you mean 'n_mels'?)")
    with pytest.raises(PluginError) as kwargs:
        registry.check_kwargs("aggregator", "self_attention", {"num_head": 2}, ("input_dim",))
    assert (kwargs.value.kind, kwargs.value.name, kwargs.value.dist) == ("aggregator", "self_attention", "ser-plugins")
    source = "from downstreams.aggregators import MeanPooling as Agg\n"
    fake_dist("dist-x", "mod_x", source, {"ser_plugins.aggregators": {"pool_y": "mod_x:Agg"}})
    fake_dist("dist-z", "mod_z", source, {"ser_plugins.aggregators": {"pool_y": "mod_z:Agg"}})
    with pytest.raises(AmbiguousPluginError) as ambiguous:
        registry.create_aggregator("pool_y", input_dim=4)
    assert (ambiguous.value.kind, ambiguous.value.name, ambiguous.value.dists) == ("aggregator", "pool_y",
                                                                                   ("dist-x", "dist-z"))
    with pytest.raises(PluginError) as kind:
        registry.list_plugins("widget")
    assert kind.value.kind == "widget"


def test_errors_keep_their_attributes_through_pickle():
    err = PluginLoadError("upstream plugin 'x' failed", kind="upstream", name="x", dist="x-dist")
    back = pickle.loads(pickle.dumps(err))
    assert (type(back), str(back), back.kind, back.name, back.dist) == (PluginLoadError, str(err), "upstream", "x", "x-dist")
    unknown = pickle.loads(pickle.dumps(UnknownPluginError("unknown upstream 'y'", kind="upstream", name="y")))
    assert str(unknown) == "unknown upstream 'y'" and unknown.name == "y" and isinstance(unknown, KeyError)


def test_one_name_for_each_thing():
    from ser_plugins import recipe

    assert registry.resolve is registry.resolve_entry  # the old name of the registry's look-up
    assert registry.resolve_entry("upstream", "fbank").qualified_name == "ser-plugins:fbank"
    assert recipe.PluginSpec is recipe.PluginSection  # the recipe's old name, for existing imports
    assert recipe.load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml",
                              check_plugins=False).upstream.__class__ is recipe.PluginSection
    from ser_plugins import testing

    assert testing.PROTOCOLS is recipe.PROTOCOLS


def test_the_onnx_export_constants_are_defined_once():
    onnx_engine = (PACKAGE / "deploy" / "onnx_engine.py").read_text()
    export = (PACKAGE / "deploy" / "export.py").read_text()
    for name in ("SIDECAR", "ONNX_FILE", "FORMAT", "FORMAT_VERSION"):
        assert f"\n{name} = " in onnx_engine and f"\n{name} = " not in export, name
    assert "import torch" not in onnx_engine  # the engine stays torch-free


def test_the_core_builds_plugins_through_the_typed_functions():
    """``registry.create("upstream", ...)`` with a literal kind is ``create_upstream(...)``: the core uses those."""
    typed = {"upstream", "aggregator", "classifier", "corpus"}
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "create"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "registry" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in typed):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, found
