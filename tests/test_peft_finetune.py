"""Parameter-efficient fine-tuning: LoRA through peft and bottleneck adapters on the layered encoders."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="pip install 'ser-plugins[hf]'")
pytest.importorskip("peft", reason="pip install 'ser-plugins[peft]'")

from test_hf_upstream import save_tiny  # noqa: E402
from test_whisper_upstream import save_tiny_whisper  # noqa: E402

from ser_plugins.data.prepare import prepare  # noqa: E402
from ser_plugins.deploy.predict import Predictor  # noqa: E402
from ser_plugins.model import CompositionError, SERModel, build_head, build_upstream  # noqa: E402
from ser_plugins.recipe import FinetuneConfig, PluginSection, RecipeError, load_recipe  # noqa: E402
from ser_plugins.runtime.checkpoint import load_weights  # noqa: E402
from ser_plugins.training.runner import run_recipe  # noqa: E402
from ser_plugins.training.trainer import FoldTrainer, trainable_state  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    return {
        "hubert": save_tiny(str(root / "hubert"), "hubert_base"),
        "wavlm": save_tiny(str(root / "wavlm"), "wavlm_large"),
        "whisper": save_tiny_whisper(root / "whisper", n_mels=80, positions=100, arch="WhisperModel"),
    }


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _upstream(model_dir, kind="hf", **finetune):
    spec = PluginSection(name=kind, options={"model": model_dir})
    return build_upstream(spec, FinetuneConfig(**finetune))


def _waves():
    torch.manual_seed(0)
    return torch.randn(2, 8000), torch.tensor([8000, 6000])


@pytest.mark.parametrize("arch, kind", [("hubert", "hf"), ("wavlm", "hf"), ("whisper", "whisper")])
@pytest.mark.parametrize("mode", ["lora", "adapter"])
def test_only_the_injected_weights_train_and_start_as_the_identity(tiny_models, arch, kind, mode):
    frozen = _upstream(tiny_models[arch], kind, mode="frozen").eval()
    tuned = _upstream(tiny_models[arch], kind, mode=mode, **({"adapter_dim": 8} if mode == "adapter" else {})).eval()
    trainable = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) or (".down." in n) or (".up." in n) for n in trainable)
    assert tuned.peft_counts["trainable"] == sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    assert tuned.peft_counts["trainable"] < 0.3 * tuned.peft_counts["total"]
    wavs, lengths = _waves()
    with torch.no_grad():
        a, b = frozen(wavs, lengths), tuned(wavs, lengths)
    for x, y in zip(a.hidden_states, b.hidden_states):  # LoRA's B and the adapters' up start at zero
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    tuned.train()
    out = tuned(wavs, lengths)
    out.hidden_states[-1].sum().backward()
    assert all(p.grad is not None for p in tuned.parameters() if p.requires_grad)


def test_default_targets_are_the_attention_projections_and_the_preset_is_peft_ser(tiny_models):
    lora = _upstream(tiny_models["hubert"], mode="lora")
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in lora.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "k_proj", "v_proj", "out_proj"}
    preset = _upstream(tiny_models["hubert"], mode="lora", peft_preset="peft_ser")
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in preset.named_parameters() if p.requires_grad}
    assert names == {"intermediate_dense", "output_dense"}  # peft-ser: the feed-forward layers
    a = next(p for n, p in preset.named_parameters() if n.endswith("lora_A.default.weight"))
    assert a.shape[0] == 16  # rank 16
    custom = _upstream(tiny_models["hubert"], mode="lora", lora_rank=2, lora_targets=["v_proj"])
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in custom.named_parameters() if p.requires_grad} == {
        "v_proj"}
    with pytest.raises(CompositionError, match="match no linear layer"):
        _upstream(tiny_models["hubert"], mode="lora", lora_targets=["nothing"])
    wavlm = _upstream(tiny_models["wavlm"], mode="lora")  # its attention reads raw weights: feed-forward instead
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in wavlm.named_parameters() if p.requires_grad} == {
        "intermediate_dense", "output_dense"}
    with pytest.raises(CompositionError, match="multi_head_attention_forward"):
        _upstream(tiny_models["wavlm"], mode="lora", lora_targets=["q_proj"])


def test_peft_keys_need_a_peft_mode(fast_recipe):
    with pytest.raises(RecipeError, match="finetune.lora_rank needs finetune.mode: lora or adapter"):
        load_recipe(fast_recipe, ["finetune.lora_rank=4"])


def _lora_recipe(fast_recipe, model_dir, **training):
    fast_recipe.update(
        upstream={"name": "hf", "model": model_dir}, features={"layer": "last"}, aggregator="mean",
        classifier={"name": "linear"},
        finetune={"mode": "lora", "lora_rank": 4, "upstream_lr": 1e-3},
        training={"epochs": 2, "max_steps": None, "batch_size": 8, "max_duration": 1.0, "patience": None,
                  **training},
        output={"tensorboard": False, "checkpoint_interval": 0},
    )
    return load_recipe(fast_recipe)


def test_lora_run_keeps_only_trained_weights_predicts_and_exports_merged(fast_recipe, tiny_models, tmp_path):
    recipe = _lora_recipe(fast_recipe, tiny_models["hubert"])
    out = tmp_path / "lora"
    run_recipe(recipe, str(out), folds=["1"], progress=False)
    saved = load_weights(out / "folds" / "Session1" / "best.safetensors")
    upstream_keys = [k for k in saved if k.startswith("upstream.")]
    assert upstream_keys and all(".lora_A." in k or ".lora_B." in k for k in upstream_keys)
    assert any(k.startswith("head.") for k in saved)
    assert any(float(saved[k].abs().sum()) > 0 for k in upstream_keys if ".lora_B." in k)  # LoRA trained
    predictor = Predictor(out)
    wav = next(iter(sorted(__import__("pathlib").Path(fast_recipe["corpus"]["root"]).rglob("Ses01F*.wav"))))
    (res,) = predictor.predict_files([str(wav)])
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    pytest.importorskip("onnxruntime")
    from ser_plugins.deploy.export import export_run
    from ser_plugins.deploy.inference_graph import merged

    model = predictor.models[0]
    plain = merged(model)
    assert not any("lora_" in n for n, _ in plain.named_parameters()) and any(
        "lora_" in n for n, _ in model.named_parameters())  # the copy is merged, ser predict's model is not
    (res,) = export_run(out, out / "export", threads=1)
    assert (out / "export" / "model.onnx").exists() and res.max_abs_diff <= 1e-4  # merged graph == unmerged model


def test_lora_resume_is_exact(fast_recipe, tiny_models, tmp_path):
    recipe = _lora_recipe(fast_recipe, tiny_models["hubert"], epochs=3)
    prep = prepare(recipe, "cpu", progress=False)
    fold = prep.folds[0]
    initial = {k: v.clone() for k, v in prep.upstream.state_dict().items()}

    def trainer(folder):
        prep.upstream.load_state_dict(initial)
        torch.manual_seed(0)
        head, kept = build_head(recipe.features, recipe.aggregator, recipe.classifier, prep.upstream,
                                len(prep.labels))
        model = SERModel(prep.upstream, head, kept)
        folder.mkdir(exist_ok=True)
        return FoldTrainer(model, prep.source, recipe.training, recipe.finetune, prep.labels, folder, "cpu",
                           progress=False, checkpoint_interval=0.0)

    whole = trainer(tmp_path / "whole")
    whole.fit(fold.train, [], seed=0)
    want = trainable_state(whole.model)
    first = trainer(tmp_path / "cut")
    per_epoch = first.planned_steps(fold.train, 0) // 3
    first.fit(fold.train, [], seed=0, stop_at_step=per_epoch)  # killed after the first epoch
    assert (tmp_path / "cut" / "last_state.pt").exists()
    resumed = trainer(tmp_path / "cut")
    resumed.fit(fold.train, [], seed=0)
    got = trainable_state(resumed.model)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    json.dumps({k: list(v.shape) for k, v in got.items()})
