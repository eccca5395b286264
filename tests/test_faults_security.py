"""Security: a downloaded checkpoint, run directory or recipe never runs code. Real malicious
pickles (``os.system`` / ``builtins.exec`` payloads that would create a marker file) are refused
by every loader; YAML is read safely; plugins come only from installed entry points, never from a
module path written in a recipe. See docs/reliability.md.
"""
from __future__ import annotations

import os
import pickle
import re
import sys
from pathlib import Path
from typing import Dict

import pytest

from ser_plugins.errors import UserError
import torch

from ser_plugins import cli, registry
from ser_plugins.runtime.checkpoint import load_state, load_weights
from ser_plugins.recipe import RecipeError, dump_recipe, load_recipe
from ser_plugins.training.runner import run_recipe


class RunsShell:
    """Unpickling this runs ``touch MARKER`` through ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsExec:
    """Unpickling this runs Python through ``builtins.exec``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


PAYLOADS = [RunsShell, RunsExec]


def evil_checkpoint(tmp_path: Path, payload, zip_format: bool = True) -> tuple:
    marker = tmp_path / f"PWNED_{payload.__name__}"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {}, "cfg": payload(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    # the file really is malicious: a plain unpickler would run the payload
    assert not marker.exists()
    return path, marker


def test_the_payloads_are_real(tmp_path):
    for payload in PAYLOADS:
        marker = tmp_path / f"proof_{payload.__name__}"
        pickle.loads(pickle.dumps(payload(marker)))  # noqa: S301 - demonstrating the danger on purpose
        assert marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_own_training_state_loader_refuses_a_malicious_pickle(tmp_path, payload, zip_format):
    path, marker = evil_checkpoint(tmp_path, payload, zip_format)
    with pytest.raises(pickle.UnpicklingError, match="refused to load") as info:
        load_state(path)
    assert "weights_only=False" not in str(info.value)  # never the advice that would run the payload
    assert not marker.exists(), "code from the checkpoint ran"


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", PAYLOADS)
def test_third_party_checkpoint_loader_refuses_a_malicious_pickle(tmp_path, payload, zip_format):
    safe = pytest.importorskip("upstreams.safe_checkpoint")
    path, marker = evil_checkpoint(tmp_path, payload, zip_format)
    with pytest.raises(safe.UnsafeCheckpointError, match="refusing to load"):
        safe.load_checkpoint(str(path))
    assert not marker.exists(), "code from the checkpoint ran"


def test_a_malicious_fairseq_checkpoint_named_in_a_recipe_is_refused(tmp_path):
    safe = pytest.importorskip("upstreams.safe_checkpoint")
    path, marker = evil_checkpoint(tmp_path, RunsShell)
    with pytest.raises(safe.UnsafeCheckpointError, match=r"posix\.system|os\.system"):
        registry.create("upstream", "fairseq", checkpoint=str(path))
    assert not marker.exists()


def test_resuming_a_run_directory_with_a_malicious_training_state_runs_no_code(tiny_demo_root, tmp_path):
    """A run directory copied from elsewhere, whose unfinished fold holds a poisoned last_state.pt."""
    recipe = load_recipe({
        "name": "evil", "seed": 0, "corpus": {"name": "iemocap", "root": str(tiny_demo_root)},
        "upstream": {"name": "fbank", "n_mels": 40}, "aggregator": "mean", "classifier": "linear",
        "training": {"epochs": 2, "batch_size": 16}, "output": {"tensorboard": False},
    })
    out = tmp_path / "downloaded_run"
    fold = out / "folds" / "Session1"
    fold.mkdir(parents=True)
    (out / "recipe.yaml").write_text(dump_recipe(recipe))
    marker = tmp_path / "PWNED"
    torch.save({"optimizer": RunsShell(marker), "scheduler": {}, "progress": {"epoch": 1}}, fold / "last_state.pt")
    with pytest.raises(pickle.UnpicklingError):
        run_recipe(recipe, str(out), folds=["1"], resume=True, progress=False)
    assert not marker.exists(), "code from the run directory ran"
    assert not (fold / "metrics.json").exists()


def test_checkpoints_of_a_finished_run_are_safetensors_only(tiny_demo_root, tmp_path):
    from safetensors import safe_open

    recipe = load_recipe({
        "name": "safe", "seed": 0, "corpus": {"name": "iemocap", "root": str(tiny_demo_root)},
        "upstream": {"name": "fbank", "n_mels": 40}, "aggregator": "stats",
        "classifier": {"name": "mlp", "hidden_sizes": [16]},
        "training": {"epochs": 2, "batch_size": 16, "patience": None}, "output": {"tensorboard": False},
    })
    out = tmp_path / "run"
    run_recipe(recipe, str(out), folds=["1"], progress=False)
    files = [p for p in out.rglob("*") if p.is_file()]
    pickles = [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")]
    assert not pickles, f"pickle files left in a finished run: {pickles}"
    best = out / "folds" / "Session1" / "best.safetensors"
    with safe_open(str(best), framework="pt") as fh:  # a plain safetensors header: no code, only tensors
        assert any(k.startswith("head.") for k in fh.keys())
    assert load_weights(best)
    head = best.read_bytes()[:9]
    assert head[8:9] == b"{"  # an 8-byte length, then the JSON header: neither a pickle nor a zip


def test_training_state_is_loaded_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    torch.save({"progress": {"epoch": 1}, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "s.pt")
    assert load_state(tmp_path / "s.pt")["progress"] == {"epoch": 1}
    assert calls == [True]


# --- YAML -------------------------------------------------------------------------------------------
YAML_ATTACKS = {
    "object_apply": "corpus: !!python/object/apply:os.system ['touch {m}']\nupstream: fbank\n"
                    "aggregator: stats\nclassifier: mlp\n",
    "name": "corpus: demo\nupstream: !!python/name:os.system\naggregator: stats\nclassifier: mlp\n",
    "object_new": "corpus: !!python/object/new:subprocess.Popen [['touch', '{m}']]\nupstream: fbank\n"
                  "aggregator: stats\nclassifier: mlp\n",
}


@pytest.mark.parametrize("attack", list(YAML_ATTACKS))
def test_a_recipe_with_python_tags_is_refused(tmp_path, capsys, attack):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.yaml"
    path.write_text(YAML_ATTACKS[attack].format(m=marker))
    rc = cli.main(["run", str(path), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "not valid YAML" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_override_with_a_python_tag_is_not_constructed(tmp_path, tiny_demo_root):
    marker = tmp_path / "PWNED"
    data: Dict = {"corpus": {"name": "iemocap", "root": str(tiny_demo_root)}, "upstream": "fbank",
                  "aggregator": "stats", "classifier": "mlp"}
    with pytest.raises(RecipeError):
        load_recipe(data, [f"training.epochs=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_a_downloaded_run_with_a_malicious_recipe_yaml_runs_no_code_on_predict(tmp_path, tiny_demo_root):
    from ser_plugins.deploy.predict import Predictor

    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(YAML_ATTACKS["object_apply"].format(m=marker))
    with pytest.raises(UserError, match="recipe.yaml: not a readable recipe"):
        Predictor(run)
    assert not marker.exists()


# --- plugins come from installed entry points only -------------------------------------------------------
EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")

class Evil:
    def __init__(self, *a, **k):
        Path({marker!r}).write_text("built")
"""


@pytest.mark.parametrize("section", ["upstream", "aggregator", "classifier", "corpus"])
@pytest.mark.parametrize("name", ["os:system", "evil_plugin_mod:Evil", "evil_plugin_mod.Evil", "evil_plugin_mod"])
def test_a_module_path_in_a_recipe_is_an_unknown_plugin_and_is_never_imported(tmp_path, monkeypatch,
                                                                              tiny_demo_root, section, name):
    marker = tmp_path / "IMPORTED"
    (tmp_path / "evil_plugin_mod.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, but not an installed entry point
    sys.modules.pop("evil_plugin_mod", None)
    recipe = {"corpus": {"name": "iemocap", "root": str(tiny_demo_root)}, "upstream": "fbank",
              "aggregator": "stats", "classifier": "mlp"}
    recipe[section] = {"name": name, "root": "x"} if section == "corpus" else name
    with pytest.raises(RecipeError, match=rf"unknown {section} '{re.escape(name)}'.*Available {section}"):
        load_recipe(recipe)
    with pytest.raises(registry.UnknownPluginError):
        registry.create(section, name)
    assert "evil_plugin_mod" not in sys.modules and not marker.exists()


def test_an_installed_entry_point_is_what_gets_loaded(tmp_path, fake_dist):
    """The contrast: the same module, registered by an installed distribution, is a plugin."""
    marker = tmp_path / "IMPORTED"
    fake_dist("ser-evil-but-installed", "evil_installed_mod", EVIL_MODULE.format(marker=str(marker)),
              {"ser_plugins.classifiers": {"installed_evil": "evil_installed_mod:Evil"}})
    assert [s.dist for s in registry.list_plugins("classifier", "installed_evil")] == ["ser-evil-but-installed"]
    assert not marker.exists()  # listing imports nothing
    registry.create("classifier", "installed_evil", 4, 2)
    assert marker.read_text() == "built"
    sys.modules.pop("evil_installed_mod", None)
