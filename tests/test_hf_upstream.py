"""The ``hf`` upstream and its presets on tiny, randomly initialised local checkpoints.

Five architectures, each saved with its feature-extractor config as the real checkpoints are:

* ``w2v2_base``: Wav2Vec2, group-norm CNN, post-LN, raw input, no mask (like wav2vec2-base)
* ``w2v2_large``: Wav2Vec2, layer-norm CNN, pre-LN ("stable"), normalised, mask (wav2vec2-large-lv60)
* ``hubert_base``: HuBERT, group-norm CNN, post-LN, no mask (hubert-base-ls960)
* ``wavlm_large``: WavLM, layer-norm CNN, pre-LN, normalised, mask (wavlm-large)
* ``data2vec``: Data2VecAudio, layer-norm CNN, post-LN, normalised, mask (data2vec-audio-base)
"""
from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="pip install 'ser-plugins[hf]'")

import ser_plugins  # noqa: E402
from ser_plugins.plugins.registry import Preset, load  # noqa: E402
from ser_plugins.testing import check_upstream  # noqa: E402
from upstreams.hf import HFUpstream, WeightsNotFoundError, normalize_waveforms, receptive_field  # noqa: E402

LAYERS = 2
HIDDEN = 32
TINY = dict(
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16, 16, 16),
    conv_kernel=(10, 3, 3),
    conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
)
HOP, FIELD = 20, 40  # product of the strides, receptive field of the tiny CNN

ARCHS = {
    "w2v2_base": ("Wav2Vec2Config", "Wav2Vec2Model", {}, (True, False)),
    "w2v2_large": ("Wav2Vec2Config", "Wav2Vec2Model", dict(feat_extract_norm="layer", do_stable_layer_norm=True), (True, True)),
    "hubert_base": ("HubertConfig", "HubertModel", {}, (False, False)),
    "wavlm_large": (
        "WavLMConfig", "WavLMModel",
        dict(feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=16, max_bucket_distance=32),
        (True, True),
    ),
    "data2vec": ("Data2VecAudioConfig", "Data2VecAudioModel", dict(num_conv_pos_embeddings=2, conv_pos_kernel_size=5), (True, True)),
}
MASKED = ["w2v2_large", "wavlm_large", "data2vec"]
UNMASKED = ["w2v2_base", "hubert_base"]


def save_tiny(folder, arch: str, feature_extractor: bool = True, **overrides) -> str:
    """Save a random tiny model of ``arch`` (and its preprocessor_config.json) to ``folder``."""
    config_cls, model_cls, extra, (do_normalize, mask) = ARCHS[arch]
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**{**TINY, **extra, **overrides})
    getattr(transformers, model_cls)(config).save_pretrained(str(folder))
    if feature_extractor:
        with open(os.path.join(str(folder), "preprocessor_config.json"), "w") as handle:
            json.dump(
                {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
                 "padding_value": 0.0, "padding_side": "right", "do_normalize": do_normalize,
                 "return_attention_mask": mask},
                handle,
            )
    return str(folder)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hf")
    return {arch: save_tiny(root / arch, arch) for arch in ARCHS}


def build(folder: str, **kwargs) -> HFUpstream:
    return ser_plugins.create_upstream("hf", model=folder, **kwargs)


def waves(*lengths: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    batch = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        batch[i, :n] = 0.3 * torch.randn(n, generator=generator)
    return batch, torch.tensor(lengths)


# --- shapes, frames, padding ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_hidden_states_and_frame_lengths(tiny_dirs, arch):
    up = build(tiny_dirs[arch])
    assert isinstance(up, HFUpstream)
    assert (up.hop_length, up.min_samples, up.sample_rate) == (HOP, FIELD, 16000)
    assert up.hidden_sizes == [HIDDEN] * (LAYERS + 1) and up.num_layers == LAYERS + 1
    wavs, lengths = waves(1600, 1000, 45, 12)
    out = up(wavs, lengths)
    expected = up.model._get_feat_extract_output_lengths(lengths.clamp(min=FIELD))
    assert len(out.hidden_states) == LAYERS + 1
    for state in out.hidden_states:
        assert state.shape == (4, int(expected.max()), HIDDEN)
        assert torch.isfinite(state).all()
    assert out.lengths.tolist() == expected.tolist() == [79, 49, 1, 1]
    assert up.frame_lengths(lengths).tolist() == expected.tolist()


@pytest.mark.parametrize("arch", list(ARCHS))
def test_hf_upstream_keeps_the_plugin_contract(tiny_dirs, arch):
    """The checker third parties run: exact lengths, padding, two instances agree, gradients in 'full', ..."""
    report = check_upstream("hf", model=tiny_dirs[arch])
    assert {"output", "exact_frames", "deterministic", "identity", "finetune"} <= set(report)
    # every architecture ignores the (noisy) padding: padded frames masked, a group-norm CNN per utterance
    assert "padding_invariance" in report


def test_real_sized_cnn_has_hop_320_and_receptive_field_400(tmp_path):
    folder = save_tiny(
        tmp_path / "w2v2", "w2v2_base", conv_dim=(8,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2)
    )
    up = build(folder)
    assert (up.hop_length, up.min_samples) == (320, 400)
    assert receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == 400
    out = up(*waves(16000, 400, 100))
    assert out.lengths.tolist() == [49, 1, 1]


@pytest.mark.parametrize("arch", MASKED)
def test_padded_utterance_matches_alone_with_mask(tiny_dirs, arch):
    up = build(tiny_dirs[arch]).eval()
    assert up.use_attention_mask and up.normalize
    batch, lengths = waves(1600, 1000)
    alone = up(batch[1:, :1000], lengths[1:])
    padded = up(batch, lengths)
    n = int(alone.lengths[0])
    assert int(padded.lengths[1]) == n
    for a, b in zip(alone.hidden_states, padded.hidden_states):
        torch.testing.assert_close(b[1, :n], a[0, :n], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", UNMASKED)
def test_unmasked_models_ignore_the_padding_too(tiny_dirs, arch):
    """Checkpoints trained without masks get none on an unpadded utterance (transformers' advice for
    wav2vec2-base / hubert-base). In a padded batch the padded frames are masked all the same and the
    first conv layer's GroupNorm takes each utterance's statistics over its own frames, so a padded
    utterance's features equal its features alone (tests/test_exact_batching.py, per architecture)."""
    up = build(tiny_dirs[arch]).eval()
    assert not up.use_attention_mask and up.batch_invariant and up.cnn_batching == "masked_norm"
    batch, lengths = waves(1600, 1000)
    alone = up(batch[1:, :1000], lengths[1:])
    padded = up(batch, lengths)
    n = int(alone.lengths[0])
    assert int(padded.lengths[1]) == n
    for a, b in zip(alone.hidden_states, padded.hidden_states):
        torch.testing.assert_close(b[1, :n], a[0, :n], atol=1e-4, rtol=1e-4)


# --- normalisation -------------------------------------------------------------------------------
def test_normalize_waveforms_uses_valid_samples_only():
    batch, lengths = waves(800, 500)
    batch[1, 500:] = 7.0  # garbage in the padding must not matter
    out = normalize_waveforms(batch, lengths)
    valid = out[1, :500]
    torch.testing.assert_close(valid.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(valid.var(unbiased=False), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert (out[1, 500:] == 0).all()
    torch.testing.assert_close(out[1:, :500], normalize_waveforms(batch[1:, :500], lengths[1:]))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_normalisation_and_mask_read_from_saved_config(tiny_dirs, arch):
    expected = ARCHS[arch][3]
    up = build(tiny_dirs[arch])
    assert (up.normalize, up.use_attention_mask) == expected
    flipped = build(tiny_dirs[arch], normalize=not expected[0], use_attention_mask=not expected[1])
    assert (flipped.normalize, flipped.use_attention_mask) == (not expected[0], not expected[1])


def test_normalised_model_ignores_gain_and_offset(tiny_dirs):
    wavs, lengths = waves(1200)
    up = build(tiny_dirs["data2vec"]).eval()
    a, b = up(wavs, lengths), up(4.0 * wavs + 0.5, lengths)
    torch.testing.assert_close(a.hidden_states[-1], b.hidden_states[-1], atol=1e-4, rtol=1e-4)
    raw = build(tiny_dirs["data2vec"], normalize=False).eval()
    a, b = raw(wavs, lengths), raw(4.0 * wavs + 0.5, lengths)
    assert (a.hidden_states[-1] - b.hidden_states[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("arch, expected", [("w2v2_large", (True, True)), ("hubert_base", (False, False))])
def test_without_preprocessor_config_follow_the_cnn_norm(tmp_path, arch, expected):
    up = build(save_tiny(tmp_path / arch, arch, feature_extractor=False))
    assert (up.normalize, up.use_attention_mask) == expected


# --- fine-tuning ---------------------------------------------------------------------------------
def _snapshot(up):
    return {name: p.detach().clone() for name, p in up.model.named_parameters()}


def _changed(up, before):
    return {name for name, p in up.model.named_parameters() if not torch.equal(p.detach(), before[name])}


def _step(up):
    up.train()
    params = [p for group in up.layer_parameter_groups() for p in group]
    out = up(*waves(1600, 1200))
    if params:
        optimizer = torch.optim.AdamW(params, lr=1e-2)
        sum(h.pow(2).mean() for h in out.hidden_states).backward()
        optimizer.step()
    return out


@pytest.mark.parametrize("arch", ["w2v2_large", "hubert_base"])
def test_frozen_weights_do_not_change_finetuned_ones_do(tiny_dirs, arch):
    up = build(tiny_dirs[arch])
    assert up.finetune_mode == "frozen"  # the default
    before = _snapshot(up)
    out = _step(up)
    assert not any(h.requires_grad for h in out.hidden_states)
    assert not up.model.training  # a frozen encoder stays in eval mode (no dropout / masking)
    assert _changed(up, before) == set()

    up.set_finetune("finetune")
    before = _snapshot(up)
    _step(up)
    changed = _changed(up, before)
    assert not any(n.startswith("feature_extractor.") for n in changed), "the CNN must stay frozen"
    assert any(n.startswith("feature_projection.") for n in changed)
    for i in range(LAYERS):
        assert any(n.startswith(f"encoder.layers.{i}.") for n in changed)

    up.set_finetune("full")
    before = _snapshot(up)
    _step(up)
    assert any(n.startswith("feature_extractor.") for n in _changed(up, before))


@pytest.mark.parametrize("arch", ["w2v2_large", "data2vec"])
def test_top_n_trains_only_the_top_layers(tiny_dirs, arch):
    up = build(tiny_dirs[arch])
    up.set_finetune("top_n", top_n=1)
    before = _snapshot(up)
    _step(up)
    changed = _changed(up, before)
    top_layer = f"encoder.layers.{LAYERS - 1}."
    assert changed and all(n.startswith((top_layer, "encoder.layer_norm.")) for n in changed)
    final_norm_trained = any(n.startswith("encoder.layer_norm.") for n in changed)
    # pre-LN: the final norm sits above the top layer and trains; post-LN: it is below layer 1
    assert final_norm_trained == bool(getattr(up.model.config, "do_stable_layer_norm", False))


def test_finetune_mode_validation(tiny_dirs):
    up = build(tiny_dirs["w2v2_base"])
    assert up.supported_finetune_modes() == ("frozen", "finetune", "full", "top_n", "lora", "adapter")
    for bad in [dict(mode="top_n"), dict(mode="top_n", top_n=0), dict(mode="top_n", top_n=LAYERS + 1), dict(mode="partial")]:
        with pytest.raises(ValueError):
            up.set_finetune(**bad)


@pytest.mark.parametrize("arch", ["w2v2_base", "wavlm_large"])
def test_layer_parameter_groups(tiny_dirs, arch):
    up = build(tiny_dirs[arch])
    assert [len(g) for g in up.layer_parameter_groups()] == [0] * (LAYERS + 1)  # frozen: nothing trains
    up.set_finetune("full")
    groups = up.layer_parameter_groups()
    assert len(groups) == LAYERS + 1
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat)) == len(list(up.parameters()))
    cnn = {id(p) for p in up.model.feature_extractor.parameters()}
    assert cnn <= {id(p) for p in groups[0]}
    for i, layer in enumerate(up.model.encoder.layers):
        assert {id(p) for p in layer.parameters()} <= {id(p) for p in groups[i + 1]}
    up.set_finetune("finetune")
    assert not cnn & {id(p) for p in up.layer_parameter_groups()[0]}
    up.set_finetune("top_n", top_n=1)
    assert [bool(g) for g in up.layer_parameter_groups()] == [False] * LAYERS + [True]


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dirs):
    grads = []
    for checkpointing in (False, True):
        up = build(tiny_dirs["w2v2_large"], config_overrides={"mask_time_prob": 0.0})
        up.set_finetune("finetune")
        if checkpointing:
            up.enable_gradient_checkpointing()
            assert getattr(up.model, "is_activation_checkpointing", None) or up.model.is_gradient_checkpointing
        up.train()
        out = up(*waves(1600, 1000))
        sum(h.pow(2).mean() for h in out.hidden_states).backward()
        grads.append({n: p.grad.clone() for n, p in up.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


# --- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["w2v2_base", "w2v2_large"])
def test_layer_selection_drops_unused_layers(tiny_dirs, arch):
    full = build(tiny_dirs[arch]).eval()
    wavs, lengths = waves(1600, 1000)
    reference = full(wavs, lengths).hidden_states
    ends = build(tiny_dirs[arch], layers=[0, -1]).eval()
    assert ends.hidden_sizes == [HIDDEN, HIDDEN]
    out = ends(wavs, lengths).hidden_states
    torch.testing.assert_close(out[0], reference[0])
    torch.testing.assert_close(out[1], reference[-1])
    lower = build(tiny_dirs[arch], layers=[1]).eval()
    assert len(lower.model.encoder.layers) == 1  # layer 2 is never computed
    torch.testing.assert_close(lower(wavs, lengths).hidden_states[0], reference[1])
    with pytest.raises(ValueError):
        build(tiny_dirs[arch], layers=[LAYERS + 1])


def test_reduced_precision_returns_float32(tiny_dirs):
    up = build(tiny_dirs["hubert_base"], dtype="bfloat16")
    assert next(up.model.parameters()).dtype == torch.bfloat16
    out = up(*waves(800))
    assert all(h.dtype == torch.float32 for h in out.hidden_states)


def test_identity_names_the_weights(tiny_dirs, tmp_path):
    folder = save_tiny(tmp_path / "copy", "w2v2_base")
    ident = build(folder).identity()
    json.dumps(ident)  # usable as a cache key / run record
    assert ident["weights"]["path"] == os.path.abspath(folder)
    assert ident["architecture"] == "Wav2Vec2Model" and ident["normalize"] is True
    assert build(folder).identity() == ident
    assert build(folder, normalize=False).identity() != ident
    weights = next(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    os.utime(os.path.join(folder, weights), ns=(1, 1))  # a re-saved weights file
    assert build(folder).identity()["weights"]["fingerprint"] != ident["weights"]["fingerprint"]


def test_not_an_audio_encoder_is_rejected(tmp_path):
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=50)
    transformers.BertModel(config).save_pretrained(str(tmp_path / "bert"))
    with pytest.raises(ValueError, match="not a raw-waveform audio encoder"):
        build(str(tmp_path / "bert"))


# --- presets, registry, offline --------------------------------------------------------------------
PRESETS = {
    "wav2vec2_base": "facebook/wav2vec2-base",
    "wav2vec2_large": "facebook/wav2vec2-large-lv60",
    "hubert_base": "facebook/hubert-base-ls960",
    "hubert_large": "facebook/hubert-large-ll60k",
    "wavlm_base_plus": "microsoft/wavlm-base-plus",
    "wavlm_large": "microsoft/wavlm-large",
    "data2vec_base": "facebook/data2vec-audio-base",
    "data2vec_large": "facebook/data2vec-audio-large",
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_data(name):
    preset = load("upstream", name)
    assert isinstance(preset, Preset)
    assert preset.builder == "hf" and preset.kwargs == {"model": PRESETS[name]} and preset.weights == PRESETS[name]
    assert preset.description


def test_preset_resolves_to_a_local_copy(tiny_dirs):
    up = ser_plugins.create_upstream("hubert_base", model=tiny_dirs["hubert_base"])
    assert isinstance(up, HFUpstream)
    assert up.plugin_name == "hubert_base"
    assert up.identity()["weights"]["path"] == os.path.abspath(tiny_dirs["hubert_base"])
    assert len(up(*waves(800)).hidden_states) == LAYERS + 1


def test_offline_preset_without_local_copy_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        ser_plugins.create_upstream("wav2vec2_base", cache_dir=str(tmp_path / "empty_cache"))
    message = str(info.value)
    for needle in ("facebook/wav2vec2-base", "model=/path/to/wav2vec2-base",
                   "huggingface-cli download facebook/wav2vec2-base", "HF_HUB_OFFLINE", str(tmp_path / "empty_cache")):
        assert needle in message
    assert info.value.__suppress_context__  # raised `from None`: no library traceback chained
    assert isinstance(info.value, OSError)


def test_local_files_only_without_env(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(WeightsNotFoundError, match="local_files_only"):
        build("facebook/wav2vec2-base", local_files_only=True, cache_dir=str(tmp_path))


@pytest.mark.parametrize("bad", ["/definitely/not/here", "./not/here/either"])
def test_missing_local_folder(bad):
    with pytest.raises(WeightsNotFoundError, match="no such local folder"):
        build(bad)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        build(str(tmp_path))
