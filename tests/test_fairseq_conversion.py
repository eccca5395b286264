"""fairseq wav2vec 2.0 / HuBERT checkpoints -> transformers, checked numerically; s3prl wrapper errors.

The reference is S3PRL's fairseq-free copy of fairseq's model code (same parameter names, same
forward). Install it without its heavy dependencies (it needs only torch and numpy)::

    pip install --no-deps s3prl==0.4.18

Random tiny models in fairseq's architecture are saved in fairseq's checkpoint formats, converted
by ``upstreams.fairseq_checkpoint`` and compared hidden state by hidden state.
"""
from __future__ import annotations

import argparse
import sys
import types

import pytest
import torch

pytest.importorskip("transformers", reason="pip install 'ser-plugins[hf]'")
s3prl_w2v = pytest.importorskip(
    "s3prl.upstream.wav2vec2.wav2vec2_model",
    reason="reference fairseq model code missing: pip install --no-deps s3prl==0.4.18",
)
s3prl_hubert = pytest.importorskip(
    "s3prl.upstream.hubert.hubert_model",
    reason="reference fairseq model code missing: pip install --no-deps s3prl==0.4.18",
)

import ser_plugins  # noqa: E402
from upstreams.fairseq_checkpoint import (  # noqa: E402
    FairseqConversionError,
    FairseqUpstream,
    convert_fairseq_checkpoint,
    parse_conv_layers,
)
from upstreams.hf import HFUpstream  # noqa: E402

TINY = dict(
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=2,
    conv_feature_layers="[(16, 10, 5)] + [(16, 3, 2)] * 2",
    conv_pos=16,
    conv_pos_groups=2,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
)
VARIANTS = {
    "w2v2_base": ("wav2vec2", dict(extractor_mode="default", layer_norm_first=False)),
    "w2v2_large": ("wav2vec2", dict(extractor_mode="layer_norm", layer_norm_first=True, conv_bias=True)),
    "hubert_base": ("hubert", dict(extractor_mode="default", layer_norm_first=False)),
    "hubert_large": ("hubert", dict(extractor_mode="layer_norm", layer_norm_first=True)),
}
ATOL = 1e-4
# the reference code (a copy of fairseq's) uses the old weight_norm API
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")


def fairseq_model(kind: str, cfg: dict) -> torch.nn.Module:
    """A fairseq-architecture model with random weights (every tensor perturbed, norms included)."""
    torch.manual_seed(0)
    if kind == "hubert":
        model = s3prl_hubert.HubertModel(
            s3prl_hubert.HubertConfig(label_rate=50, **cfg), s3prl_hubert.HubertPretrainingConfig(), [list(range(10))]
        )
    else:
        model = s3prl_w2v.Wav2Vec2Model(s3prl_w2v.Wav2Vec2Config(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_checkpoint(path, kind: str, cfg: dict, model: torch.nn.Module, fmt: str = "cfg", normalize: bool = False) -> str:
    """Save ``model`` as fairseq does: hydra ``cfg`` dict, legacy ``args`` Namespace, or fine-tuned CTC."""
    state = model.state_dict()
    model_cfg = {"_name": kind, **cfg}
    task = {"_name": "audio_pretraining" if kind == "wav2vec2" else "hubert_pretraining", "normalize": normalize}
    if fmt == "cfg":
        ckpt = {"cfg": {"model": model_cfg, "task": task, "common": {"seed": 1}}, "model": state, "args": None}
    elif fmt == "args":
        ckpt = {"args": argparse.Namespace(arch=kind, normalize=normalize, **cfg), "model": state}
    elif fmt == "finetuned":
        state = {f"w2v_encoder.w2v_model.{k}": v for k, v in state.items()}
        state["w2v_encoder.proj.weight"] = torch.zeros(5, cfg["encoder_embed_dim"])
        state["w2v_encoder.proj.bias"] = torch.zeros(5)
        outer = {"_name": f"{kind}_ctc", "w2v_path": "/somewhere/pretrained.pt",
                 "w2v_args": {"model": model_cfg, "task": task}}
        ckpt = {"cfg": {"model": outer, "task": {"_name": "audio_finetuning", "normalize": normalize}}, "model": state}
    else:
        raise ValueError(fmt)
    torch.save(ckpt, str(path))
    return str(path)


def reference_states(model: torch.nn.Module, wavs: torch.Tensor, padding_mask=None):
    """fairseq's hidden states: the transformer input, each layer's output, the final output."""
    captured = {}
    outputs = []
    layers = model.encoder.layers
    hooks = [layers[0].register_forward_pre_hook(lambda m, args: captured.setdefault("input", args[0]))]
    hooks += [layer.register_forward_hook(lambda m, a, out: outputs.append(out[0])) for layer in layers]
    with torch.no_grad():
        result = model.extract_features(wavs, padding_mask=padding_mask)
    for hook in hooks:
        hook.remove()
    final = result["x"] if isinstance(result, dict) else result[0]
    frames = final.shape[1]  # fairseq pads to an even length inside the encoder: cut it back
    states = [captured["input"]] + outputs[:-1]
    return [s.transpose(0, 1)[:, :frames] for s in states] + [final]


def assert_states_close(actual, expected, frames=None):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        if frames is not None:
            a, e = a[:, :frames], e[:, :frames]
        assert a.shape == e.shape, f"hidden state {i}: {tuple(a.shape)} vs {tuple(e.shape)}"
        torch.testing.assert_close(a, e, atol=ATOL, rtol=ATOL, msg=lambda m: f"hidden state {i}: {m}")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_model_matches_fairseq(tmp_path, variant):
    kind, extra = VARIANTS[variant]
    cfg = {**TINY, **extra}
    model = fairseq_model(kind, cfg)
    path = save_checkpoint(tmp_path / f"{variant}.pt", kind, cfg, model)
    up = ser_plugins.create_upstream("fairseq", checkpoint=path)
    assert isinstance(up, FairseqUpstream) and up.num_layers == cfg["encoder_layers"] + 1
    assert up.model.config.do_stable_layer_norm == cfg["layer_norm_first"]
    assert up.model.config.feat_extract_norm == ("layer" if cfg["extractor_mode"] == "layer_norm" else "group")
    wavs = 0.3 * torch.randn(2, 3000, generator=torch.Generator().manual_seed(1))
    out = up(wavs, torch.tensor([3000, 3000]))
    assert_states_close(out.hidden_states, reference_states(model, wavs))


@pytest.mark.parametrize("variant", ["w2v2_base", "w2v2_large"])
def test_padded_batch_matches_fairseq_padding_mask(tmp_path, variant):
    kind, extra = VARIANTS[variant]
    cfg = {**TINY, **extra}
    model = fairseq_model(kind, cfg)
    up = FairseqUpstream(save_checkpoint(tmp_path / "m.pt", kind, cfg, model), use_attention_mask=True)
    lengths = torch.tensor([3000, 2100])
    wavs = 0.3 * torch.randn(2, 3000, generator=torch.Generator().manual_seed(2))
    wavs[1, 2100:] = 0
    padding_mask = torch.arange(3000).unsqueeze(0) >= lengths.unsqueeze(1)
    out = up(wavs, lengths)
    if variant == "w2v2_base":
        # fairseq's padded batch lets the first conv layer's GroupNorm see the padding; this upstream gives a
        # padded utterance its states alone (exact batching), i.e. fairseq's on the unpadded utterance
        expected = reference_states(model, wavs[1:, :2100])
    else:
        expected = [h[1:] for h in reference_states(model, wavs, padding_mask)]
    valid = int(out.lengths[1])
    assert out.lengths.tolist() == model._get_feat_extract_output_lengths(lengths).tolist()
    assert_states_close([h[1:] for h in out.hidden_states], expected, frames=valid)


@pytest.mark.parametrize("fmt", ["args", "finetuned"])
def test_legacy_and_finetuned_formats(tmp_path, fmt):
    kind, extra = VARIANTS["w2v2_large"]
    cfg = {**TINY, **extra}
    model = fairseq_model(kind, cfg)
    up = FairseqUpstream(save_checkpoint(tmp_path / f"{fmt}.pt", kind, cfg, model, fmt=fmt, normalize=True))
    assert up.normalize is True  # the task's normalize flag
    wavs = 0.3 * torch.randn(1, 2000, generator=torch.Generator().manual_seed(3))
    expected = reference_states(model, (wavs - wavs.mean()) / torch.sqrt(wavs.var(unbiased=False) + 1e-7))
    assert_states_close(up(wavs, torch.tensor([2000])).hidden_states, expected)


def test_omegaconf_checkpoint(tmp_path):
    omegaconf = pytest.importorskip("omegaconf", reason="pip install omegaconf to test DictConfig checkpoints")
    kind, extra = VARIANTS["hubert_base"]
    cfg = {**TINY, **extra}
    model = fairseq_model(kind, cfg)
    ckpt = {
        "cfg": omegaconf.OmegaConf.create({"model": {"_name": kind, **cfg}, "task": {"_name": "hubert_pretraining", "normalize": False}}),
        "model": model.state_dict(),
    }
    torch.save(ckpt, str(tmp_path / "hubert.pt"))
    up = FairseqUpstream(str(tmp_path / "hubert.pt"))
    wavs = 0.3 * torch.randn(1, 2000, generator=torch.Generator().manual_seed(4))
    assert_states_close(up(wavs, torch.tensor([2000])).hidden_states, reference_states(model, wavs))


def test_defaults_follow_the_checkpoint(tmp_path):
    for variant, expected in [("w2v2_base", (False, False)), ("w2v2_large", (True, True))]:
        kind, extra = VARIANTS[variant]
        cfg = {**TINY, **extra}
        path = save_checkpoint(tmp_path / f"{variant}.pt", kind, cfg, fairseq_model(kind, cfg), normalize=expected[0])
        up = FairseqUpstream(path)
        assert (up.normalize, up.use_attention_mask) == expected
        assert FairseqUpstream(path, use_attention_mask=not expected[1]).use_attention_mask is (not expected[1])


def test_saved_conversion_loads_with_hf(tmp_path):
    kind, extra = VARIANTS["hubert_large"]
    cfg = {**TINY, **extra}
    model = fairseq_model(kind, cfg)
    path = save_checkpoint(tmp_path / "h.pt", kind, cfg, model, normalize=True)
    convert_fairseq_checkpoint(path, output_dir=str(tmp_path / "hf"))
    up = HFUpstream(str(tmp_path / "hf"))
    assert (up.normalize, up.use_attention_mask) == (True, True)
    wavs = 0.3 * torch.randn(1, 2000, generator=torch.Generator().manual_seed(5))
    direct = FairseqUpstream(path)(wavs, torch.tensor([2000])).hidden_states
    assert_states_close(up(wavs, torch.tensor([2000])).hidden_states, direct)


def test_fairseq_upstream_fine_tunes_and_has_an_identity(tmp_path):
    kind, extra = VARIANTS["w2v2_base"]
    cfg = {**TINY, **extra}
    path = save_checkpoint(tmp_path / "w.pt", kind, cfg, fairseq_model(kind, cfg))
    up = FairseqUpstream(path)
    ident = up.identity()
    assert ident["weights"]["path"] == path and ident["weights"]["format"] == "fairseq-wav2vec2"
    up.set_finetune("finetune")
    groups = up.layer_parameter_groups()
    assert len(groups) == cfg["encoder_layers"] + 1
    assert not {id(p) for p in up.model.feature_extractor.parameters()} & {id(p) for g in groups for p in g}


def test_parse_conv_layers_is_not_eval():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    )
    for bad in ["__import__('os').system('true')", "[(1, 2)]", "[(1, 2, x)]", "[(1, 2, 3)] * 2 ** 30 if 0 else 1"]:
        with pytest.raises(FairseqConversionError):
            parse_conv_layers(bad)


def test_unsupported_checkpoints_are_rejected(tmp_path):
    kind, extra = VARIANTS["w2v2_base"]
    cfg = {**TINY, **extra}
    model = fairseq_model(kind, cfg)
    conformer = save_checkpoint(tmp_path / "c.pt", kind, {**cfg, "layer_type": "conformer"}, model)
    with pytest.raises(FairseqConversionError, match="conformer"):
        FairseqUpstream(conformer)
    torch.save({"cfg": {"model": {"_name": "data2vec_audio", **cfg}}, "model": model.state_dict()}, str(tmp_path / "d.pt"))
    with pytest.raises(FairseqConversionError, match="not supported"):
        FairseqUpstream(str(tmp_path / "d.pt"))
    state = dict(model.state_dict(), **{"encoder.extra.weight": torch.zeros(1)})
    torch.save({"cfg": {"model": {"_name": kind, **cfg}}, "model": state}, str(tmp_path / "x.pt"))
    with pytest.raises(FairseqConversionError, match="encoder.extra.weight"):
        FairseqUpstream(str(tmp_path / "x.pt"))
    with pytest.raises(FileNotFoundError):
        FairseqUpstream(str(tmp_path / "missing.pt"))


# --- the optional s3prl wrapper --------------------------------------------------------------------
def test_s3prl_upstream_without_torchaudio_fails_clearly_at_build_time(monkeypatch):
    from upstreams.s3prl_wrapper import S3prlUnavailableError

    names = [s.name for s in ser_plugins.list_plugins("upstream")]
    assert "s3prl" in names  # listing works and imports nothing
    # as without a usable torchaudio (whatever this machine has): s3prl.nn cannot be imported
    monkeypatch.setitem(sys.modules, "torchaudio", None)
    monkeypatch.setitem(sys.modules, "s3prl.nn", None)
    with pytest.raises(S3prlUnavailableError) as info:
        ser_plugins.create_upstream("s3prl", model="hubert")
    message = str(info.value)
    assert "torchaudio" in message and "ser-plugins[s3prl]" in message and "'hf'" in message
    assert isinstance(info.value, ImportError)


def test_s3prl_upstream_wraps_s3prl_nn(monkeypatch):
    """With a stand-in ``s3prl.nn`` the wrapper exposes its layers, rates and lengths."""

    class FakeS3PRLUpstream(torch.nn.Module):
        def __init__(self, name, path_or_url=None, refresh=False, normalize=False, extra_conf=None):
            super().__init__()
            self.proj = torch.nn.Linear(1, 4)
            self.hidden_sizes, self.downsample_rates = [4, 4], [160, 160]

        def forward(self, wavs, wavs_len):
            frames = wavs[:, : (wavs.shape[1] // 160) * 160].reshape(wavs.shape[0], -1, 160).mean(-1, keepdim=True)
            h = self.proj(frames)
            lengths = torch.div(wavs_len - 1, 160, rounding_mode="floor") + 1
            return [h, 2 * h], [lengths, lengths]

    fake = types.ModuleType("s3prl.nn")
    fake.S3PRLUpstream = FakeS3PRLUpstream
    monkeypatch.setitem(sys.modules, "s3prl.nn", fake)
    up = ser_plugins.create_upstream("s3prl", model="fbank_like")
    assert (up.hop_length, up.hidden_sizes) == (160, [4, 4])
    out = up(torch.randn(2, 1600), torch.tensor([1600, 800]))
    assert len(out.hidden_states) == 2 and out.lengths.tolist() == [10, 5]
    assert up.frame_lengths(torch.tensor([1600, 800])).tolist() == [10, 5]
    assert up.supported_finetune_modes() == ("frozen", "full") and not out.hidden_states[0].requires_grad
    assert up.identity()["config"]["model"] == "fbank_like"
