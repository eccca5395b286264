"""Exact batching: a padded batch gives every utterance the hidden states it gets alone, per architecture.

Tiny, randomly initialised models (2 layers, 32 wide, a 3-layer CNN), four utterances of different
lengths (one shorter than the receptive field), every hidden state's valid frames compared with the
utterance run alone, within 1e-4:

* ``w2v2_base``: Wav2Vec2, group-norm CNN, post-LN, no attention mask (like wav2vec2-base)
* ``w2v2_large``: Wav2Vec2, layer-norm CNN, pre-LN, mask (wav2vec2-large-lv60)
* ``hubert_base``: HuBERT, group-norm CNN, no mask (hubert-base-ls960)
* ``wavlm_base_plus``: WavLM, group-norm CNN, gated relative position bias, mask (wavlm-base-plus)
* ``wavlm_large``: WavLM, layer-norm CNN, pre-LN, relative position bias, mask (wavlm-large)
* ``data2vec``: Data2VecAudio, layer-norm CNN, stacked positional convs, mask (data2vec-audio-base)
* emotion2vec with its ``default`` (GroupNorm) and ``layer_norm`` conv encoders

in eval mode and in fine-tuning mode (train mode, dropout off: the values and the gradients), and
the run-level consequence: extraction batches them, scoring uses the recipe's batch size.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import yaml

transformers = pytest.importorskip("transformers", reason="pip install 'ser-plugins[hf]'")

from ser_plugins.data.extract import extract_features  # noqa: E402
from ser_plugins.recipe import TrainingConfig  # noqa: E402
from ser_plugins.training.runner import eval_batch_size  # noqa: E402
from upstreams.emotion2vec import Emotion2vecUpstream  # noqa: E402
from upstreams.emotion2vec_model import (  # noqa: E402
    AUDIO_PREFIX,
    Emotion2vecConfig,
    Emotion2vecEncoder,
    rename_reference_key,
)
from upstreams.hf import TransformersEncoderUpstream, conv_per_length  # noqa: E402

ATOL = 1e-4
TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    # dropout off (and SpecAugment / LayerDrop, its cousins), so train mode is deterministic
    hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
    layerdrop=0.0, mask_time_prob=0.0,
)
WAVLM = dict(num_buckets=16, max_bucket_distance=32)
LAYER_CNN = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
#: name -> (config class, model class, config changes, normalize, use_attention_mask, CNN batching)
ARCHS: Dict[str, Tuple[str, str, Dict, bool, bool, str]] = {
    "w2v2_base": ("Wav2Vec2Config", "Wav2Vec2Model", {}, False, False, "masked_norm"),
    "w2v2_large": ("Wav2Vec2Config", "Wav2Vec2Model", LAYER_CNN, True, True, "padded"),
    "hubert_base": ("HubertConfig", "HubertModel", {}, False, False, "masked_norm"),
    "wavlm_base_plus": ("WavLMConfig", "WavLMModel", WAVLM, False, True, "masked_norm"),
    "wavlm_large": ("WavLMConfig", "WavLMModel", {**WAVLM, **LAYER_CNN}, True, True, "padded"),
    "data2vec": ("Data2VecAudioConfig", "Data2VecAudioModel", dict(num_conv_pos_embeddings=2, conv_pos_kernel_size=5),
                 True, True, "padded"),
}
GROUP_NORM = [a for a, spec in ARCHS.items() if spec[5] == "masked_norm"]
LENGTHS = (1600, 1130, 870, 30)  # 30 < the receptive field (40): zero-padded to it, alone as in the batch


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hf_upstream(arch: str) -> TransformersEncoderUpstream:
    config_cls, model_cls, extra, normalize, mask, _ = ARCHS[arch]
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**{**TINY, **extra}))
    return TransformersEncoderUpstream(model, normalize=normalize, use_attention_mask=mask)


def batch_of(lengths=LENGTHS, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Noise with an offset (a GroupNorm's mean matters) and loud garbage in the padding."""
    generator = torch.Generator().manual_seed(seed)
    batch = 5.0 * torch.randn(len(lengths), max(lengths), generator=generator)
    for i, n in enumerate(lengths):
        batch[i, :n] = 0.2 + 0.3 * torch.randn(n, generator=generator)
    return batch, torch.tensor(lengths)


def worst_difference(up, batch: torch.Tensor, lengths: torch.Tensor) -> float:
    """Max |padded batch - alone| over every hidden state's valid frames of every utterance."""
    padded = up(batch, lengths)
    worst = 0.0
    for i, n in enumerate(lengths.tolist()):
        alone = up(batch[i: i + 1, :n], lengths[i: i + 1])
        frames = int(alone.lengths[0])
        assert int(padded.lengths[i]) == frames == alone.hidden_states[0].shape[1]
        assert len(padded.hidden_states) == len(alone.hidden_states)
        for h_batch, h_alone in zip(padded.hidden_states, alone.hidden_states):
            worst = max(worst, float((h_batch[i, :frames] - h_alone[0, :frames]).detach().abs().max()))
    return worst


# --- the hf upstream: every architecture ----------------------------------------------------------
@pytest.mark.parametrize("arch", list(ARCHS))
def test_padded_batch_equals_one_at_a_time_in_eval_mode(arch):
    up = hf_upstream(arch).eval()
    assert up.batch_invariant and up.cnn_batching == ARCHS[arch][5]
    for per_length in (True, False):  # on CPU a masked-norm CNN runs once per length; off: the GPU path
        up.cpu_cnn_per_length = per_length
        with torch.no_grad():
            worst = worst_difference(up, *batch_of())
        print(f"{arch} (cpu_cnn_per_length {per_length}): max |batched - alone| over every layer's valid frames: "
              f"{worst:.1e}")
        assert worst <= ATOL


@pytest.mark.parametrize("arch", GROUP_NORM)
def test_per_length_cnn_is_exact_too_and_the_naive_padding_is_not(arch):
    """The fallback for a GroupNorm CNN of unknown layout (once per distinct length) is exact; running the
    padded batch through the CNN as it is (what these models got before) is not: its GroupNorm sees the padding."""
    up = hf_upstream(arch).eval()
    batch, lengths = batch_of()
    with torch.no_grad():
        up.cnn_batching = "per_length"
        assert worst_difference(up, batch, lengths) <= ATOL
        up.cnn_batching = "padded"
        assert worst_difference(up, batch, lengths) > 1e-2


def test_conv_per_length_groups_equal_lengths():
    calls: List[int] = []

    def cnn(x):
        calls.append(x.shape[0])
        return x[:, None, ::2] * 2

    x = torch.arange(4 * 10, dtype=torch.float32).view(4, 10)
    out = conv_per_length(cnn, x, torch.tensor([10, 6, 10, 6]), frames=5)
    assert sorted(calls) == [2, 2] and out.shape == (4, 1, 5)
    torch.testing.assert_close(out[1, 0], torch.cat([x[1, :6:2] * 2, torch.zeros(2)]))
    torch.testing.assert_close(out[2, 0], x[2, ::2] * 2)


@pytest.mark.parametrize("arch,per_length", [("w2v2_base", True), ("w2v2_base", False),
                                             ("wavlm_base_plus", False), ("data2vec", True)])
@pytest.mark.parametrize("mode", ["full", "finetune"])
def test_fine_tuning_batches_see_the_model_one_at_a_time_sees(arch, per_length, mode):
    """Train mode (dropout off): the same values and, summed over the utterances, the same gradients;
    through the CNN run once per length (CPU) and through the masked GroupNorm (the accelerator path)."""
    up = hf_upstream(arch)
    up.cpu_cnn_per_length = per_length
    up.set_finetune(mode)
    up.train()
    assert up.model.training
    batch, lengths = batch_of()
    probe = torch.randn(32, generator=torch.Generator().manual_seed(1))

    def loss_of(out, rows, frames):
        return sum((h[r, :f] @ probe).square().mean() for h in out.hidden_states for r, f in zip(rows, frames))

    params = [p for p in up.parameters() if p.requires_grad]
    padded = up(batch, lengths)
    frames = padded.lengths.tolist()
    batched_grads = torch.autograd.grad(loss_of(padded, range(len(frames)), frames), params, allow_unused=True)
    alone_grads = [torch.zeros_like(p) for p in params]
    worst = 0.0
    for i, n in enumerate(lengths.tolist()):
        alone = up(batch[i: i + 1, :n], lengths[i: i + 1])
        for h_batch, h_alone in zip(padded.hidden_states, alone.hidden_states):
            worst = max(worst, float((h_batch[i, :frames[i]] - h_alone[0]).detach().abs().max()))
        for total, g in zip(alone_grads, torch.autograd.grad(loss_of(alone, [0], [frames[i]]), params,
                                                             allow_unused=True)):
            if g is not None:
                total += g
    assert worst <= ATOL
    assert any(g is not None and g.abs().sum() > 0 for g in batched_grads)  # gradients flow
    cnn = {id(p) for p in up.feature_encoder.parameters()}
    assert any(id(p) in cnn for p in params) == (mode == "full")
    for p, g_batch, g_alone in zip(params, batched_grads, alone_grads):
        g_batch = torch.zeros_like(p) if g_batch is None else g_batch
        torch.testing.assert_close(g_batch, g_alone, atol=1e-4, rtol=1e-3)


# --- emotion2vec ----------------------------------------------------------------------------------
E2V_CONF = {
    "embed_dim": 32, "depth": 2, "num_heads": 2, "norm_eps": 1e-5, "layer_norm_first": False, "normalize": True,
    "encoder_dropout": 0.0, "attention_dropout": 0.0, "post_mlp_drop": 0.0, "activation_dropout": 0.0,
    "modalities": {"audio": {
        "prenet_depth": 1, "prenet_dropout": 0.0, "num_extra_tokens": 2, "use_alibi_encoder": True,
        "learned_alibi_scale": True, "learned_alibi_scale_per_head": True, "num_alibi_heads": 2,
        "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] + [(16,2,2)]",
        "conv_pos_width": 12, "conv_pos_groups": 4, "conv_pos_depth": 3,
    }},
}
_BLOCK = {"norm1.": "norm1.", "norm2.": "norm2.", "attention.qkv.": "attn.qkv.", "attention.out_proj.": "attn.proj.",
          "ffn.fc1.": "mlp.fc1.", "ffn.fc2.": "mlp.fc2."}


def reference_name(name: str, cfg: Emotion2vecConfig) -> str:
    """The fairseq / FunASR name of one of the native encoder's weights (the inverse of the loader's map)."""
    m = re.fullmatch(r"feature_encoder\.layers\.(\d+)\.(conv|norm)\.(\w+)", name)
    if m:
        part = "0" if m.group(2) == "conv" else ("2.1" if cfg.extractor_mode == "layer_norm" else "2")
        return f"{AUDIO_PREFIX}local_encoder.conv_layers.{m.group(1)}.{part}.{m.group(3)}"
    m = re.fullmatch(r"feature_projection\.(layer_norm|linear)\.(\w+)", name)
    if m:
        return f"{AUDIO_PREFIX}project_features.{1 if m.group(1) == 'layer_norm' else 2}.{m.group(2)}"
    m = re.fullmatch(r"pos_conv\.convs\.(\d+)\.(\w+)", name)
    if m:
        return f"{AUDIO_PREFIX}relative_positional_encoder.{int(m.group(1)) + 1}.0.{m.group(2)}"
    if name in ("extra_tokens", "alibi_scale"):
        return AUDIO_PREFIX + name
    if name.startswith("prenet_norm."):
        return f"{AUDIO_PREFIX}context_encoder.norm.{name.split('.', 1)[1]}"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+\.)(\w+)", name)
    if m:
        block, part = int(m.group(1)), _BLOCK[m.group(2)] + m.group(3)
        if block < cfg.prenet_depth:
            return f"{AUDIO_PREFIX}context_encoder.blocks.{block}.{part}"
        return f"blocks.{block - cfg.prenet_depth}.{part}"
    raise AssertionError(name)


def emotion2vec_upstream(folder: Path, extractor_mode: str) -> Emotion2vecUpstream:
    """A random tiny emotion2vec saved in the FunASR layout (model.pt + config.yaml), loaded as a run loads it."""
    conf = {**E2V_CONF, "modalities": {"audio": {**E2V_CONF["modalities"]["audio"], "extractor_mode": extractor_mode}}}
    cfg = Emotion2vecConfig.from_model_conf(conf)
    torch.manual_seed(0)
    encoder = Emotion2vecEncoder(cfg)
    with torch.no_grad():
        encoder.extra_tokens.normal_()
        encoder.alibi_scale.uniform_(0.5, 1.5)
    state = {}
    for name, tensor in encoder.state_dict().items():
        ref = reference_name(name, cfg)
        assert rename_reference_key(ref, cfg) == name
        state[ref] = tensor
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "model.pt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": conf}))
    up = Emotion2vecUpstream(str(folder))
    torch.testing.assert_close(up.encoder.state_dict()["extra_tokens"], encoder.extra_tokens.detach())
    return up


@pytest.mark.parametrize("extractor_mode", ["default", "layer_norm"])
def test_emotion2vec_padded_batch_equals_one_at_a_time(tmp_path, extractor_mode):
    up = emotion2vec_upstream(tmp_path / extractor_mode, extractor_mode)
    assert up.batch_invariant and up.encoder.feature_encoder.time_wide == (extractor_mode == "default")
    lengths = (8000, 5600, 3300, 300)  # 300 < the receptive field (400)
    batch, lengths_t = batch_of(lengths)
    up.eval()
    with torch.no_grad():
        worst = worst_difference(up, batch, lengths_t)
    print(f"emotion2vec {extractor_mode}: max |batched - alone| over every layer's valid frames: {worst:.1e}")
    assert worst <= ATOL
    up.set_finetune("full")
    up.train()  # dropout is 0 in this config: the fine-tuning path, with gradients
    padded = up(batch, lengths_t)
    assert padded.hidden_states[-1].requires_grad
    assert worst_difference(up, batch, lengths_t) <= ATOL
    probe = torch.randn(32, generator=torch.Generator().manual_seed(1))  # a LayerNorm output's plain sum is constant
    (padded.hidden_states[-1][:, 0] @ probe).square().sum().backward()
    conv0 = up.encoder.feature_encoder.layers[0].conv.weight
    assert conv0.grad is not None and conv0.grad.abs().sum() > 0


# --- the run level: extraction batches them, scoring uses the recipe's batch size -----------------
def test_extraction_batches_a_group_norm_model_and_keeps_its_features():
    up = hf_upstream("hubert_base")
    rng = np.random.default_rng(0)
    waves = {f"u{i}": (0.3 * rng.standard_normal(int(n))).astype(np.float32)
             for i, n in enumerate(rng.integers(400, 1800, size=10))}
    batched: Dict[str, float] = {}
    single: Dict[str, float] = {}
    kwargs = dict(layers=[0, 1, 2], dtype=torch.float32, progress=False)
    got = extract_features(up, waves, batch_size=4, stats=batched, **kwargs)
    want = extract_features(up, waves, batch_size=1, stats=single, **kwargs)
    assert batched["batches"] == 3 and single["batches"] == 10  # not one by one any more
    assert 0 < batched["padding_fraction"] < 0.5
    for key in waves:
        for a, b in zip(got[key], want[key]):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["w2v2_base", "hubert_base", "wavlm_base_plus"])
def test_scoring_uses_the_recipes_batch_size(arch):
    up = hf_upstream(arch)
    assert eval_batch_size(TrainingConfig(batch_size=8), up, precomputed=False) == 8
    assert eval_batch_size(TrainingConfig(batch_size=8, eval_batch_size=24), up, precomputed=False) == 24
