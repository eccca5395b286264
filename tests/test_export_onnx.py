"""`ser export` to ONNX: real runs (runner, tiny demo corpus) exported, then compared with `ser predict`.

Every case checks the exported model on the corpus's own utterances (several lengths), independently
of the exporter's built-in check on synthetic audio.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="pip install 'ser-plugins[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'ser-plugins[onnx]'")

import onnx  # noqa: E402

from helpers import recipe_for  # noqa: E402
from ser_plugins.cli import main  # noqa: E402
from ser_plugins.deploy.export import DEFAULT_ATOL, ExportError, export_run  # noqa: E402
from ser_plugins import export as export_module  # noqa: E402
from ser_plugins.deploy.onnx_engine import EngineError, OnnxPredictor  # noqa: E402
from ser_plugins.deploy.predict import Predictor  # noqa: E402
from ser_plugins.recipe import load_recipe  # noqa: E402
from ser_plugins.training.runner import run_recipe  # noqa: E402

FBANK_HEADS = [  # every aggregator, both classifiers
    ("mean", {"name": "linear"}),
    ("stats", {"name": "mlp", "hidden_sizes": [16]}),
    ("attentive_stats", {"name": "linear"}),
    ("self_attention", {"name": "mlp", "hidden_sizes": [16], "norm": "batch"}),
]


def train(root: Path, out: Path, **sections) -> Path:
    """One fold, one epoch of a recipe on the tiny demo corpus: a real run directory."""
    recipe = recipe_for(root, name=out.name)
    recipe.update(sections)  # whole sections replaced, not merged
    run_recipe(load_recipe(recipe), str(out), folds=["1"], progress=False)
    return out


def demo_wavs(root: Path, count: int = 4):
    """Corpus utterances of clearly different lengths."""
    import soundfile as sf

    wavs = sorted(Path(root).rglob("*.wav"), key=lambda p: sf.info(str(p)).frames)
    picks = np.linspace(0, len(wavs) - 1, count).astype(int)
    return [str(wavs[i]) for i in picks]


def assert_matches_predict(run_dir: Path, export_dir: Path, root: Path) -> None:
    files = demo_wavs(root)
    lengths = {Path(f).stat().st_size for f in files}
    assert len(lengths) == len(files)  # several lengths
    want = Predictor(run_dir).predict_files(files)
    got = OnnxPredictor(export_dir, threads=1).predict_files(files)
    for w, g in zip(want, got):
        diff = max(abs(w["probabilities"][k] - g["probabilities"][k]) for k in w["probabilities"])
        assert diff <= DEFAULT_ATOL, (w, g)
        assert w["emotion"] == g["emotion"]


def check_sidecar(export_dir: Path, run_dir: Path, normalised: Optional[str] = None) -> dict:
    meta = json.loads((export_dir / "model.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    assert meta["labels"] == run["labels"] and meta["sample_rate"] == 16000
    assert meta["recipe"]["name"] == run_dir.name and meta["fold"] == "Session1"
    assert meta["verification"]["max_abs_diff"] <= meta["verification"]["atol"] == DEFAULT_ATOL
    assert len(set(meta["verification"]["lengths_samples"])) >= 4
    assert meta["normalisation"]["kind"] == normalised
    model = onnx.load(str(export_dir / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, True]  # dynamic batch and time axes
    return meta


@pytest.mark.parametrize("aggregator,classifier", FBANK_HEADS, ids=[a for a, _ in FBANK_HEADS])
def test_fbank_heads_export_equal(tiny_demo_root, tmp_path, one_torch_thread, aggregator, classifier):
    run = train(tiny_demo_root, tmp_path / f"fb_{aggregator}", aggregator=aggregator, classifier=classifier)
    (res,) = export_run(run, tmp_path / "export", threads=1)
    assert res.exporter == "dynamo" and res.max_abs_diff <= DEFAULT_ATOL
    check_sidecar(tmp_path / "export", run, normalised="global")  # the default for frozen features
    assert_matches_predict(run, tmp_path / "export", tiny_demo_root)


@pytest.mark.parametrize("kind,statistics", [("global", "training"), ("speaker", "typical")])
def test_normalised_run_exports_its_folds_saved_statistics(tiny_demo_root, tmp_path, one_torch_thread, kind, statistics):
    from ser_plugins.data.normalize import Normalizer

    run = train(tiny_demo_root, tmp_path / f"fb_{kind}", features={"normalize": kind})
    export_run(run, tmp_path / "export", threads=1)
    meta = check_sidecar(tmp_path / "export", run, normalised=kind)
    assert meta["normalisation"]["statistics"] == statistics
    assert "folds/Session1/normalizer.safetensors" in meta["normalisation"]["applied"]
    # the graph holds exactly the fold's saved statistics (global: training frames; speaker: typical)
    saved = Normalizer.load(run / "folds" / "Session1" / "normalizer.safetensors")
    assert saved.kind == kind
    model = onnx.load(str(tmp_path / "export" / "model.onnx"))
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    mean = next(v for name, v in constants.items() if "mean_0" in name)
    assert np.allclose(mean, saved.mean_[0].numpy())
    assert_matches_predict(run, tmp_path / "export", tiny_demo_root)  # ser predict also uses them for < 10 files


@pytest.fixture(scope="module")
def tiny_ssl(tmp_path_factory):
    pytest.importorskip("transformers")
    from test_hf_upstream import save_tiny

    root = tmp_path_factory.mktemp("hf_export")
    return {arch: save_tiny(str(root / arch), arch) for arch in ("hubert_base", "w2v2_base")}


@pytest.mark.parametrize("arch,mode", [("hubert_base", "frozen"), ("w2v2_base", "finetune")])
def test_ssl_upstream_exports_equal(tiny_demo_root, tiny_ssl, tmp_path, one_torch_thread, arch, mode):
    run = train(tiny_demo_root, tmp_path / f"{arch}_{mode}", upstream={"name": "hf", "model": tiny_ssl[arch]},
                features={"layer": "weighted_sum", "projection": 16}, aggregator="attentive_stats",
                finetune={"mode": mode, "upstream_lr": 1e-3},
                training={"epochs": 1, "max_steps": 2, "batch_size": 8, "max_duration": 1.0, "patience": None})
    (res,) = export_run(run, tmp_path / "export", threads=1)
    meta = check_sidecar(tmp_path / "export", run, normalised="global" if mode == "frozen" else None)
    assert meta["upstream"]["finetune"] == mode and meta["input"]["min_samples"] == 40
    assert_matches_predict(run, tmp_path / "export", tiny_demo_root)


@pytest.fixture(scope="module")
def fbank_run(tiny_demo_root, tmp_path_factory):
    return train(tiny_demo_root, tmp_path_factory.mktemp("fbank_run") / "fbank")


def test_export_refuses_a_mismatch_and_writes_nothing(fbank_run, tmp_path, monkeypatch, one_torch_thread, capsys):
    real = export_module.export_graph

    def tampered(graph, path, exporter="auto"):  # a wrong graph: one classifier bias shifted after export
        used = real(graph, path, exporter)
        model = onnx.load(str(path))
        (bias,) = [t for t in model.graph.initializer if t.name == "head.classifier.net.3.bias"]
        values = onnx.numpy_helper.to_array(bias).copy()
        values[0] += 0.5
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(model, str(path))
        return used

    monkeypatch.setattr(export_module, "export_graph", tampered)
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="does not reproduce PyTorch"):
        export_run(fbank_run, out, threads=1)
    assert not out.exists() and not list(tmp_path.glob(".ser-export-*"))
    assert main(["export", str(fbank_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: fold Session1: onnxruntime does not reproduce PyTorch")
    assert not out.exists()


def test_unexportable_plugin_is_named_and_nothing_is_written(tiny_demo_root, tmp_path, fake_dist, one_torch_thread):
    source = """
        from ser_plugins.plugins.contracts import Aggregator

        class LoudMax(Aggregator):
            def __init__(self, input_dim):
                super().__init__()
                self.output_dim = input_dim

            def forward(self, features, lengths):  # a Python branch on a tensor value: not exportable
                if float(features.abs().max()) > 1e6:
                    features = features / 1e6
                return features.max(1).values
    """
    fake_dist("loud-pool", "loud_pool", source, {"ser_plugins.aggregators": {"loud_max": "loud_pool:LoudMax"}})
    run = train(tiny_demo_root, tmp_path / "loud_run", aggregator="loud_max")
    with pytest.raises(ExportError) as err:
        export_run(run, tmp_path / "export", threads=1)
    msg = str(err.value)
    assert "aggregator 'loud_max' (distribution 'loud-pool', loud_pool.LoudMax) cannot be exported" in msg
    assert "plugins.md" in msg
    assert "TorchScript exporter:" in msg  # the fallback was tried and failed too
    assert not (tmp_path / "export").exists()


def test_torchscript_fallback_refuses_a_trace_that_bakes_in_the_example(tmp_path):
    import torch

    class Branchy(torch.nn.Module):
        def forward(self, waveform):
            if float(waveform.abs().max()) > 0.5:  # a trace keeps only the branch the example took
                waveform = waveform * 2
            return torch.softmax(waveform[:, :4], -1)

    with pytest.raises(ExportError, match=r"the trace holds Python values computed from tensors \(test_export_onnx.py"):
        export_module._torchscript_export(Branchy(), torch.ones(2, 8), tmp_path / "m.onnx")


def test_cli_export_all_folds_and_ensemble_engine(fbank_run, tmp_path, one_torch_thread, capsys):
    out = tmp_path / "all"
    assert main(["export", str(fbank_run), "--all-folds", "--out", str(out)]) == 0
    assert "onnxruntime matches PyTorch within 0.0001" in capsys.readouterr().out
    assert (out / "Session1" / "model.onnx").is_file()
    engine = OnnxPredictor(out)  # the fold subfolders, averaged
    assert engine.labels == json.loads((fbank_run / "run.json").read_text())["labels"]
    with pytest.raises(EngineError, match="is a run directory"):
        OnnxPredictor(fbank_run)
    assert main(["export", str(fbank_run), "--fold", "Session9", "--out", str(tmp_path / "x")]) == 2
    assert "no fold 'Session9'" in capsys.readouterr().err


def test_onnx_engine_runs_without_torch_or_training_code(fbank_run, tmp_path, tiny_demo_root, one_torch_thread):
    out = tmp_path / "export"
    export_run(fbank_run, out, threads=1)
    wav = demo_wavs(tiny_demo_root, 2)[1]
    code = (
        "import sys, json\n"
        "from ser_plugins.cli import main\n"
        f"rc = main(['predict', {str(out)!r}, {wav!r}, '--engine', 'onnx', '--threads', '1'])\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m in ("
        "'ser_plugins.training.trainer', 'ser_plugins.training.runner', 'ser_plugins.model', 'ser_plugins.deploy.predict', "
        "'ser_plugins.plugins.contracts', 'ser_plugins.plugins.boundary', 'ser_plugins.deploy.export', 'transformers'))\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = res.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report == {"rc": 0, "heavy": []}
    path, emotion, probs = lines[0].split("\t")
    want = Predictor(fbank_run).predict_files([wav])[0]
    assert path == wav and emotion == want["emotion"]
    got = dict(kv.split("=") for kv in probs.split())
    assert all(abs(float(got[k]) - v) < 1e-3 for k, v in want["probabilities"].items())  # printed to 3 decimals


@pytest.mark.parametrize("upstream", [
    {"name": "mfcc", "n_mfcc": 20, "n_mels": 40},
    {"name": "spectrogram", "normalize": "utterance"},
    "w2v2_large",  # tiny wav2vec 2.0 Large-like: layer-norm CNN, pre-LN, normalised input, attention mask
], ids=["mfcc", "spectrogram", "w2v2_large"])
def test_more_upstreams_export_equal(tmp_path, tiny_demo_root, one_torch_thread, upstream):
    """Exportability of further upstreams, on an untrained model (a random head)."""
    import torch

    from ser_plugins.deploy.export import check_waves, export_graph, verify
    from ser_plugins.deploy.inference_graph import FoldGraph
    from ser_plugins.model import build_model

    if upstream == "w2v2_large":
        pytest.importorskip("transformers")
        from test_hf_upstream import save_tiny

        upstream = {"name": "hf", "model": save_tiny(str(tmp_path / "w2v2_large"), "w2v2_large")}
    recipe = recipe_for(tiny_demo_root, name="x")
    recipe.update(upstream=upstream, aggregator="attentive_stats", features={"layer": "weighted_sum"} if
                  upstream["name"] == "hf" else {})
    torch.manual_seed(0)
    graph = FoldGraph(build_model(recipe, num_classes=4), labels=["a", "b", "c", "d"]).eval()
    used, _ = export_graph(graph, tmp_path / "m.onnx")
    waves = check_waves(graph.sample_rate, graph.min_samples)
    with torch.no_grad():
        reference = np.stack([graph(torch.from_numpy(w)[None]).numpy()[0] for w in waves]).astype(np.float64)
    assert used == "dynamo" and verify(tmp_path / "m.onnx", waves, reference, DEFAULT_ATOL, threads=1) <= DEFAULT_ATOL


def test_plain_python_example_in_deploy_doc_runs(fbank_run, tmp_path, tiny_demo_root, one_torch_thread):
    import ast
    import re
    import shutil

    doc = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    (code,) = [block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "onnxruntime" in block]
    assert len(code.strip().splitlines()) <= 10
    export_run(fbank_run, tmp_path / "export", threads=1)
    wav = demo_wavs(tiny_demo_root, 3)[1]
    shutil.copy(wav, tmp_path / "utterance.wav")
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; assert 'torch' not in sys.modules\n"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    want = Predictor(fbank_run).predict_files([wav])[0]
    label, probs = out.strip().split(" ", 1)
    probs = ast.literal_eval(probs)
    assert label == want["emotion"] and list(probs) == list(want["probabilities"])
    assert all(abs(probs[k] - v) <= 5e-4 + 1e-6 for k, v in want["probabilities"].items())  # printed to 3 decimals
