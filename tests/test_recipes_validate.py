"""Every shipped recipe validates; the IEMOCAP grid is complete and matches its generator."""
from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from ser_plugins.plugins import registry
from ser_plugins.recipe import PLUGIN_KINDS, load_recipe, load_yaml, safe_load

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
GRID_DIR = ROOT / "recipes" / "iemocap"
GENERATOR = GRID_DIR / "make_grid.py"

SSL_UPSTREAMS = {"wav2vec2_base", "wav2vec2_large", "hubert_base", "hubert_large", "wavlm_base_plus",
                 "wavlm_large", "data2vec_base", "data2vec_large", "hf"}
UPSTREAMS = {"wav2vec2_base": "base", "wav2vec2_large": "large", "hubert_base": "base",
             "hubert_large": "large", "wavlm_large": "large"}
MODES = ("frozen", "finetune")
AGGREGATORS = ("mean", "stats", "attentive_stats")
CLASSIFIERS = ("linear", "mlp")
RESERVED = {"aggregator": ("input_dim",), "classifier": ("input_dim", "num_classes")}


def _ids(paths):
    return [str(p.relative_to(ROOT / "recipes")) for p in paths]


def _grid_files():
    return sorted(GRID_DIR.glob("*.yaml"))


def _loadable(kind: str, name: str) -> bool:
    try:
        registry.load_builder(kind, name)
    except registry.PluginError:
        return False
    return True


def _options(section):
    return {k: v for k, v in section.items() if k != "name"}


def test_recipes_are_found():
    assert ROOT / "recipes" / "demo.yaml" in RECIPES
    assert len(_grid_files()) == 65


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_validates_without_plugins(path):
    recipe = load_recipe(path, check_plugins=False).to_dict()
    text = path.read_text()
    # plain YAML readers see the same values (e.g. no '1e-4' read as a string elsewhere)
    assert yaml.safe_load(text) == safe_load(text)
    assert recipe["output"]["dir"]


@pytest.mark.parametrize("path", RECIPES, ids=_ids(RECIPES))
def test_recipe_plugin_options(path):
    """Plugin options are checked for every installed plugin; all four at once when all load."""
    raw = load_yaml(path)
    upstream = raw["upstream"] if isinstance(raw["upstream"], str) else raw["upstream"]["name"]
    if upstream in SSL_UPSTREAMS:
        pytest.importorskip("upstreams.presets")
        pytest.importorskip("upstreams.hf")
    recipe = load_recipe(path, check_plugins=False).to_dict()
    loadable = {s: _loadable(kind, recipe[s]["name"]) for s, kind in ((k, k) for k in PLUGIN_KINDS)}
    assert loadable["aggregator"] and loadable["classifier"], "built-in downstreams must load"
    if all(loadable.values()):
        load_recipe(path)  # check_plugins=True: names resolve and options match the constructors
        return
    for section, kind in ((k, k) for k in PLUGIN_KINDS):
        if loadable[section]:
            registry.check_kwargs(kind, recipe[section]["name"], _options(recipe[section]),
                                  RESERVED.get(section, ()))


@pytest.mark.parametrize("path", _grid_files(), ids=_ids(_grid_files()))
def test_grid_downstreams_build(path):
    """The aggregator and classifier options construct real modules (value checks, not just names)."""
    recipe = load_recipe(path, check_plugins=False).to_dict()
    dim = recipe["features"]["projection"]
    agg = registry.create("aggregator", recipe["aggregator"]["name"], dim, **_options(recipe["aggregator"]))
    registry.create("classifier", recipe["classifier"]["name"], agg.output_dim, 4, **_options(recipe["classifier"]))


def test_grid_is_complete_and_consistent():
    combos, superb, names = Counter(), {}, set()
    for path in _grid_files():
        r = load_recipe(path, check_plugins=False).to_dict()
        name = r["name"]
        assert name == path.stem and name not in names
        names.add(name)
        assert r["seed"] == 0
        assert r["corpus"] == {"name": "iemocap", "root": "data/IEMOCAP_full_release"}
        assert r["output"]["dir"] == f"runs/iemocap/{name}"
        assert r["protocol"]["name"] == "session"
        assert r["features"]["layer"] == "weighted_sum" and r["features"]["projection"] == 256
        t, ft = r["training"], r["finetune"]
        # the default: frozen features are standardised with training-fold statistics; fine-tuning reads raw
        assert r["features"]["normalize"] == ("global" if ft["mode"] == "frozen" else None), name
        assert t["batch_size"] * t["grad_accum"] == 32, name
        up = r["upstream"]["name"]
        assert set(r["upstream"]) == {"name"}  # weights come from the preset (override with -o upstream.model=...)
        if name.startswith("superb_"):
            superb[up] = r
            continue
        assert r["protocol"]["dev"] == "speaker"
        mode = ft["mode"]
        combos[(up, mode, r["aggregator"]["name"], r["classifier"]["name"])] += 1
        size = UPSTREAMS[up]
        if mode == "finetune":
            assert ft["gradient_checkpointing"] is (size == "large"), name
            assert ft["upstream_lr"] == {"base": 5e-5, "large": 2e-5}[size]
            assert ft["upstream_lr"] < t["lr"] and ft["frozen_warmup_steps"] > 0
            assert t["precision"] == "bf16" and t["max_duration"] == 15.0 and t["grad_clip"] == 1.0
            assert t["scheduler"] in ("linear", "cosine") and t["warmup_steps"] > 0
        else:
            assert ft["gradient_checkpointing"] is False and t["lr"] == 1e-3
            assert t["max_duration"] is None
    expected = set(itertools.product(UPSTREAMS, MODES, AGGREGATORS, CLASSIFIERS))
    assert set(combos) == expected and all(n == 1 for n in combos.values())
    assert len(combos) == 60
    assert set(superb) == set(UPSTREAMS)
    for up, r in superb.items():
        t = r["training"]
        p = r["protocol"]
        assert (p["name"], p["dev"], p["dev_fraction"]) == ("session", "random", 0.2)
        assert r["finetune"]["mode"] == "frozen"
        assert r["aggregator"] == {"name": "mean"} and r["classifier"] == {"name": "linear"}
        assert (t["optimizer"], t["lr"], t["weight_decay"], t["scheduler"]) == ("adam", 1e-4, 0.0, "none")
        assert t["max_steps"] == 30000 and t["grad_clip"] == 1.0 and t["patience"] is None
        smallest_train = (5531 - 1241) * (1 - r["protocol"]["dev_fraction"])  # Session5 held out
        steps_per_epoch = smallest_train // (t["batch_size"] * t["grad_accum"])
        assert t["epochs"] * steps_per_epoch >= t["max_steps"], "epochs must not stop before max_steps"


def _generate(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=ROOT)


def test_generator_is_deterministic_and_matches_committed_files(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        proc = _generate(out)
        assert proc.returncode == 0, proc.stderr
        assert "65 recipes" in proc.stdout
    generated = sorted(p.name for p in first.glob("*.yaml"))
    assert generated == sorted(p.name for p in second.glob("*.yaml"))
    assert generated == sorted(p.name for p in _grid_files()), "committed grid differs from make_grid.py's"
    for name in generated:
        text = (first / name).read_text()
        assert text == (second / name).read_text(), name
        assert text == (GRID_DIR / name).read_text(), f"{name}: re-run recipes/iemocap/make_grid.py"
    assert _generate(GRID_DIR, "--check").returncode == 0


def test_generator_check_reports_drift(tmp_path):
    assert _generate(tmp_path).returncode == 0
    victim = next(iter(sorted(tmp_path.glob("*.yaml"))))
    victim.write_text(victim.read_text() + "# edited by hand\n")
    (tmp_path / "extra.yaml").write_text("name: extra\n")
    proc = _generate(tmp_path, "--check")
    assert proc.returncode == 1
    assert victim.name in proc.stdout and "extra.yaml" in proc.stdout
