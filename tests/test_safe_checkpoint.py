"""Safe checkpoint loading: data loads, code in a pickle is refused and never runs."""
from __future__ import annotations

import argparse
import enum
import os
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from upstreams.safe_checkpoint import (
    InertObject,
    UnsafeCheckpointError,
    inert_class,
    load_checkpoint,
    to_plain,
)

MARKER_ENV = "SER_SAFE_CKPT_MARKER"


class RunsShell:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsExec:
    """Unpickling this would exec Python that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


class RunsSubprocess:
    """Unpickling this would start a process that creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


@pytest.fixture(params=[True, False], ids=["zip", "legacy"])
def zip_format(request):
    return request.param


def _save(obj, path, zip_format: bool) -> str:
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    return str(path)


@pytest.mark.parametrize("payload", [RunsShell, RunsExec, RunsSubprocess])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, zip_format, payload):
    marker = tmp_path / "marker"
    path = _save({"model": {"w": torch.ones(2)}, "cfg": payload(str(marker))}, tmp_path / "evil.pt", zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    assert "refusing to load" in str(info.value)
    assert not marker.exists(), "code from the checkpoint ran"


def test_refusal_names_the_offending_global(tmp_path):
    path = _save({"x": RunsExec(str(tmp_path / "m"))}, tmp_path / "evil.pt", True)
    with pytest.raises(UnsafeCheckpointError, match=r"builtins\.exec"):
        load_checkpoint(path)


def test_plain_state_dict_and_namespace_load(tmp_path, zip_format):
    state = {"encoder.w": torch.randn(3, 4), "n": 3, "names": ["a", "b"], "t": (1, 2.5)}
    args = argparse.Namespace(arch="wav2vec2", encoder_layers=2, normalize=True)
    path = _save({"model": state, "args": args, "cfg": None}, tmp_path / "ok.pt", zip_format)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["encoder.w"], state["encoder.w"])
    assert isinstance(loaded["args"], argparse.Namespace)  # a real Namespace: pure data
    assert to_plain(loaded["args"]) == {"arch": "wav2vec2", "encoder_layers": 2, "normalize": True}


def test_missing_file_is_a_file_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.fixture
def fake_fairseq(monkeypatch):
    """Classes that pickle under ``fairseq.*`` names, as fairseq's own config/dictionary objects do.

    The fake modules exist only while saving; loading must not need (or import) them.
    """
    package = types.ModuleType("fairseq")
    module = types.ModuleType("fairseq.fake_objects")

    class Mode(enum.Enum):
        DEFAULT = "default"
        LAYER_NORM = "layer_norm"

    @dataclass
    class ModelConfig:
        _name: str = "wav2vec2"
        extractor_mode: Mode = Mode.LAYER_NORM
        encoder_layers: int = 2
        dropout: float = 0.1

    class Dictionary:
        def __init__(self) -> None:
            self.symbols = ["<s>", "<pad>", "a", "b"]

    for cls in (Mode, ModelConfig, Dictionary):
        cls.__module__ = "fairseq.fake_objects"
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "fairseq", package)
    monkeypatch.setitem(sys.modules, "fairseq.fake_objects", module)
    return module


def test_fairseq_objects_load_as_inert_stand_ins(tmp_path, zip_format, fake_fairseq, monkeypatch):
    obj = {
        "model": {"w": torch.zeros(1)},
        "task_state": {"dictionaries": [fake_fairseq.Dictionary()]},
        "mode": fake_fairseq.Mode.DEFAULT,
    }
    path = _save(obj, tmp_path / "hubert_like.pt", zip_format)
    monkeypatch.delitem(sys.modules, "fairseq.fake_objects")
    monkeypatch.delitem(sys.modules, "fairseq")
    loaded = load_checkpoint(path)
    dictionary = loaded["task_state"]["dictionaries"][0]
    assert isinstance(dictionary, InertObject)
    assert dictionary.qualified_name == "fairseq.fake_objects.Dictionary"
    assert to_plain(dictionary) == {"symbols": ["<s>", "<pad>", "a", "b"]}
    assert to_plain(loaded["mode"]) == "default"
    assert "fairseq" not in sys.modules  # nothing was imported to load it


def test_omegaconf_config_becomes_plain_dict(tmp_path, zip_format, fake_fairseq, monkeypatch):
    omegaconf = pytest.importorskip("omegaconf", reason="pip install omegaconf to test DictConfig checkpoints")
    cfg = omegaconf.OmegaConf.create(
        {"model": omegaconf.OmegaConf.structured(fake_fairseq.ModelConfig), "task": {"normalize": True, "labels": ["km"]}}
    )
    path = _save({"cfg": cfg, "model": {}}, tmp_path / "dictconfig.pt", zip_format)
    monkeypatch.delitem(sys.modules, "fairseq.fake_objects")
    loaded = load_checkpoint(path)
    assert not isinstance(loaded["cfg"], omegaconf.DictConfig)  # stand-ins, omegaconf code never ran
    assert to_plain(loaded["cfg"]) == {
        "model": {"_name": "wav2vec2", "extractor_mode": "layer_norm", "encoder_layers": 2, "dropout": 0.1},
        "task": {"normalize": True, "labels": ["km"]},
    }


def test_inert_object_does_nothing():
    stub = inert_class("fairseq.anything.Evil")
    assert stub is inert_class("fairseq.anything.Evil")
    instance = stub("rm -rf /", flag=True)
    instance.__setstate__({"x": 1})
    assert instance._args == ("rm -rf /",) and instance._state == {"x": 1}
    assert to_plain(stub) == "fairseq.anything.Evil"
