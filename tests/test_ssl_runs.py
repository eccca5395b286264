"""`ser run` with the `hf` upstream on a tiny random model saved to a local folder, every fine-tuning mode."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_hf_upstream import save_tiny  # noqa: E402

from ser_plugins.runtime.checkpoint import load_weights  # noqa: E402
from ser_plugins.model import build_from_recipe  # noqa: E402
from ser_plugins.deploy.predict import Predictor  # noqa: E402
from ser_plugins.recipe import load_recipe  # noqa: E402
from ser_plugins.training.runner import run_recipe  # noqa: E402
from ser_plugins.training.trainer import build_optimizer  # noqa: E402


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    return save_tiny(str(tmp_path_factory.mktemp("hf") / "hubert"), "hubert_base")


def ssl_recipe(fast_recipe, model_dir, mode):
    fast_recipe.update(
        upstream={"name": "hf", "model": model_dir},
        features={"layer": "weighted_sum", "projection": 16},
        aggregator="attentive_stats",
        finetune={"mode": mode, "top_n": 1 if mode == "top_n" else None, "upstream_lr": 1e-4,
                  "frozen_warmup_steps": 0 if mode == "frozen" else 1, "layer_decay": 0.8},
        # 5 optimiser steps an epoch (80 utterances, 8 x 2 a step): the second epoch stops after its first step
        training={"epochs": 2, "max_steps": 6, "batch_size": 8, "grad_accum": 2, "scheduler": "linear",
                  "warmup_steps": 1, "max_duration": 1.5, "patience": None},
    )
    return load_recipe(fast_recipe)


@pytest.mark.parametrize("mode", ["frozen", "finetune", "full", "top_n"])
def test_hf_upstream_runs_end_to_end_in_every_mode(fast_recipe, tiny_hubert, tmp_path, mode):
    recipe = ssl_recipe(fast_recipe, tiny_hubert, mode)
    out = tmp_path / mode
    summary = run_recipe(recipe, str(out), folds=["1"], progress=False)
    fold = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    assert 0 <= summary["mean_std"]["ua"]["mean"] <= 1 and fold["n"] == 20
    weights = fold["layer_weights"]["weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-5)  # CNN projection + 2 layers
    assert (out / "layer_weights.png").is_file()
    saved = load_weights(out / "folds" / "Session1" / "best.safetensors")
    has_upstream = any(k.startswith("upstream.") for k in saved)
    assert has_upstream == (mode != "frozen")  # a frozen upstream is not copied into every checkpoint
    run = json.loads((out / "run.json").read_text())
    assert run["upstream"]["config"]["model"] == tiny_hubert
    predictor = Predictor(out)
    (model,) = predictor.models
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())  # the fold's own (fine-tuned) upstream
    assert (model.upstream is predictor.upstream) == (mode == "frozen")
    wav = next(iter(sorted(Path(fast_recipe["corpus"]["root"]).rglob("*.wav"))))
    (res,) = predictor.predict_files([str(wav)])
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # ser predict batches the (batch-invariant) hf upstream exactly: the same answers as one file at a time
    wavs = [str(p) for p in sorted(Path(fast_recipe["corpus"]["root"]).rglob("*.wav"))[:6]]
    calls = []
    hidden = predictor._hidden
    predictor._hidden = lambda up, batch: calls.append(len(batch)) or hidden(up, batch)
    batched = predictor.predict_files(wavs)
    assert max(calls) > 1 and sum(calls) == len(wavs) * len(predictor.models if mode != "frozen" else [1])
    predictor.batch_size, calls[:] = 1, []
    alone = predictor.predict_files(wavs)
    assert max(calls) == 1
    for a, b in zip(batched, alone):
        assert a["path"] == b["path"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_optimiser_has_head_and_upstream_groups_with_layer_decay(fast_recipe, tiny_hubert):
    recipe = ssl_recipe(fast_recipe, tiny_hubert, "finetune")
    model = build_from_recipe(recipe, 4)
    opt = build_optimizer(model, recipe.training, recipe.finetune)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(recipe.training.lr)  # the head trains at training.lr
    ups = [lrs[k] for k in sorted(k for k in lrs if k.startswith("upstream."))]
    assert ups[-1] == pytest.approx(1e-4) and ups[-2] == pytest.approx(0.8e-4)  # top layer, one below
    cnn = model.upstream.feature_encoder
    assert not any(p.requires_grad for p in cnn.parameters())  # CNN stays frozen in finetune mode
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_groups for p in cnn.parameters())


def test_list_shows_presets_and_offline_preset_fails_clearly(fast_recipe, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    listed = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "list", "upstream"], env=env,
                            capture_output=True, text=True, check=True).stdout
    for preset in ("wav2vec2_base", "wav2vec2_large", "hubert_base", "hubert_large", "wavlm_base_plus",
                   "wavlm_large", "data2vec_base", "data2vec_large"):
        assert preset in listed
    import yaml

    fast_recipe["upstream"] = "hubert_large"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(fast_recipe))
    res = subprocess.run([sys.executable, "-m", "ser_plugins.cli", "run", str(path), "-q", "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert "facebook/hubert-large-ll60k" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "recipe.yaml").exists()  # nothing written for a run that never started
