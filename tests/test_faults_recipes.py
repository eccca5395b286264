"""Recipe faults: unknown keys, wrong types, unknown or broken plugins, incompatible combinations.
Each is reported before any work starts, as one ``error:`` line, exit status 2, no traceback.
See docs/reliability.md.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict

import pytest
import yaml

from ser_plugins import cli
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import run_recipe
from helpers import recipe_for



def base(root) -> Dict:
    return recipe_for(root)


def with_changes(recipe: Dict, changes: Dict) -> Dict:
    r = dict(recipe)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(r.get(key), dict) and key not in ("upstream", "corpus", "classifier"):
            r[key] = {**r[key], **value}
        else:
            r[key] = value
    return r


def run_cli(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.err


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("INFO", "WARNING"))]
    assert lines and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)


RECIPE_FAULTS = [  # (case, changes to the base recipe, words the error must contain)
    ("unknown_top_level_key", {"trainig": {"epochs": 2}}, ["'trainig'", "did you mean 'training'"]),
    ("unknown_section_key", {"training": {"epoch": 2}}, ["training.epoch", "did you mean 'epochs'"]),
    ("unknown_key_no_close_match", {"data": {"zzz": 1}}, ["data.zzz", "data keys: strict"]),
    ("wrong_type_int", {"training": {"epochs": "ten"}}, ["training.epochs: expected int, got str"]),
    ("bool_is_not_an_int", {"training": {"batch_size": True}}, ["training.batch_size", "boolean"]),
    ("wrong_type_float", {"training": {"lr": "fast"}}, ["training.lr: expected int or float"]),
    ("section_not_a_mapping", {"training": 5}, ["training: expected a mapping"]),
    ("value_not_allowed", {"training": {"nan_policy": "ignore"}}, ["training.nan_policy", "skip, stop"]),
    ("out_of_range_value", {"training": {"epochs": 0}}, ["training.epochs must be >= 1"]),
    ("unknown_upstream", {"upstream": "hubrt"}, ["unknown upstream 'hubrt'", "Did you mean: hubert_base",
                                                  "Available upstreams:", "fbank", "wavlm_large"]),
    ("unknown_aggregator", {"aggregator": "meen"}, ["unknown aggregator 'meen'", "Available aggregators:",
                                                     "attentive_stats"]),
    ("unknown_corpus", {"corpus": {"name": "iemocapp", "root": "x"}}, ["unknown corpus 'iemocapp'", "iemocap"]),
    ("unknown_plugin_option", {"upstream": {"name": "fbank", "n_mel": 40}}, ["has no option 'n_mel'",
                                                                             "did you mean 'n_mels'"]),
    ("missing_section", {"classifier": None}, ["classifier"]),
    ("speaker_norm_needs_frozen", {"features": {"normalize": "speaker"}, "finetune": {"mode": "finetune"}},
     ["'speaker' needs a frozen upstream"]),
]


@pytest.mark.parametrize("case,changes,words", RECIPE_FAULTS, ids=[c[0] for c in RECIPE_FAULTS])
def test_recipe_fault_is_one_error_line_before_any_work(tmp_path, capsys, tiny_demo_root, case, changes, words):
    recipe = with_changes(base(tiny_demo_root), changes)
    if case == "missing_section":
        recipe.pop("classifier")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    rc, err = run_cli(["run", str(path), "--out", str(out), "-q"], capsys)
    assert_one_line_error(rc, err, *words)
    assert not out.exists(), "a run directory was created for a recipe that cannot run"
    rc, err = run_cli(["validate", str(path)], capsys)
    assert_one_line_error(rc, err, *words)


def test_bad_yaml_missing_file_and_bad_override(tmp_path, capsys, tiny_demo_root):
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus: {name: iemocap\nupstream: [\n")
    assert_one_line_error(*run_cli(["run", str(bad)], capsys), "not valid YAML")
    assert_one_line_error(*run_cli(["run", str(tmp_path / "nope.yaml")], capsys), "recipe file not found")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base(tiny_demo_root)))
    assert_one_line_error(*run_cli(["run", str(good), "-o", "training.epochs=abc", "--out", str(tmp_path / "o")],
                                   capsys), "training.epochs: expected int")
    assert_one_line_error(*run_cli(["run", str(good), "-o", "training", "--out", str(tmp_path / "o")], capsys),
                          "must look like section.key=value")
    assert not (tmp_path / "o").exists()


COMPOSITION_FAULTS = [  # incompatible combinations, found when the model is composed (no data read)
    ("layer_index_out_of_range", {"features": {"layer": 7}}, ["features.layer 7 is out of range", "1 layers"]),
    ("keep_layers_out_of_range", {"features": {"layer": "weighted_sum", "keep_layers": [0, 5]}},
     ["keep_layers entry 5 is out of range"]),
    ("utterance_norm_then_mean_pooling", {"upstream": {"name": "fbank", "normalize": "utterance"},
                                          "aggregator": "mean"}, ["cannot learn"]),
]


@pytest.mark.parametrize("case,changes,words", COMPOSITION_FAULTS, ids=[c[0] for c in COMPOSITION_FAULTS])
def test_incompatible_combination_is_refused_before_audio_is_read(tmp_path, capsys, monkeypatch, tiny_demo_root,
                                                                   case, changes, words):
    import ser_plugins.data.decode as data_mod

    decoded = []
    monkeypatch.setattr(data_mod, "load_audio", lambda *a, **k: decoded.append(a) or pytest.fail("audio was read"))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(with_changes(base(tiny_demo_root), changes)))
    assert_one_line_error(*run_cli(["validate", str(path)], capsys), *words)
    out = tmp_path / "out"
    assert_one_line_error(*run_cli(["run", str(path), "--out", str(out), "-q"], capsys), *words)
    assert not decoded and not (out / "folds").exists()


@pytest.mark.parametrize("mode", ["full", "finetune"])
def test_unsupported_finetune_mode_is_a_clear_error(tmp_path, capsys, tiny_demo_root, mode):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(with_changes(base(tiny_demo_root), {"finetune": {"mode": mode}})))
    assert_one_line_error(*run_cli(["validate", str(path)], capsys), "does not support finetune mode", mode)
    out = tmp_path / "out"
    assert_one_line_error(*run_cli(["run", str(path), "--out", str(out), "-q"], capsys), mode)
    assert not (out / "folds").exists()


def test_a_negative_projection_size_is_a_recipe_error(tmp_path, capsys, tiny_demo_root):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(with_changes(base(tiny_demo_root), {"features": {"projection": -5}})))
    assert_one_line_error(*run_cli(["validate", str(path)], capsys), "features.projection")


def test_a_refused_recipe_leaves_no_run_behind(tmp_path, tiny_demo_root):
    out = tmp_path / "out"
    bad = load_recipe(with_changes(base(tiny_demo_root), {"features": {"layer": 7}}))
    with pytest.raises(Exception, match="out of range"):
        run_recipe(bad, str(out), progress=False)
    # The user fixes the recipe and runs the same command again. (The corrected recipe points at a
    # missing corpus so that the test stops at the corpus, as soon as the run directory is accepted.)
    fixed = load_recipe(with_changes(base(tiny_demo_root / "moved"), {"features": {"layer": 0}}))
    with pytest.raises(FileNotFoundError, match="IEMOCAP root"):
        run_recipe(fixed, str(out), progress=False)


BROKEN_PLUGIN = """
import fancy_dependency_that_is_not_installed  # noqa: F401

class Upstream:  # never reached
    pass
"""


def test_a_plugin_whose_import_fails_names_its_distribution_and_error(tmp_path, capsys, fake_dist, tiny_demo_root):
    site = fake_dist("ser-broken-upstream", "broken_upstream_mod", BROKEN_PLUGIN,
                     {"ser_plugins.upstreams": {"broken_up": "broken_upstream_mod:Upstream"}})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(with_changes(base(tiny_demo_root), {"upstream": "broken_up"})))
    out = tmp_path / "out"
    words = ["upstream plugin 'broken_up'", "distribution 'ser-broken-upstream'",
             "ModuleNotFoundError", "fancy_dependency_that_is_not_installed"]
    assert_one_line_error(*run_cli(["run", str(path), "--out", str(out), "-q"], capsys), *words)
    assert not out.exists()
    # the same in a fresh process, through the installed entry point of the fake distribution
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "run", str(path), "--out", str(out), "-q"],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert_one_line_error(res.returncode, res.stderr, *words)
    assert not out.exists()
