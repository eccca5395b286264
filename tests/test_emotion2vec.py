"""The ``emotion2vec`` upstream: its native encoder proven equal to FunASR's reference model code.

Tiny random models are built by the reference itself (FunASR's ``Emotion2vec`` from a ``model_conf``
shaped like the released ``config.yaml``), saved as the released checkpoints are (a FunASR folder
with ``model.pt`` + ``config.yaml``; a fairseq ``.pt`` with its ``cfg``), loaded by the upstream and
compared layer by layer. The reference is imported alone: only the files of
``funasr/models/emotion2vec/`` (``pip install --no-deps funasr`` plus omegaconf), never ``funasr``'s
package ``__init__``, which imports every FunASR model.
"""
from __future__ import annotations

import copy
import enum
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
import yaml

import ser_plugins
from ser_plugins.errors import UnsafeCheckpointError
from ser_plugins.registry import Preset, load
from ser_plugins.testing import check_upstream
from upstreams.emotion2vec import Emotion2vecUpstream, normalize_waveforms
from upstreams.emotion2vec_model import Emotion2vecCheckpointError, Emotion2vecConfig
from upstreams.hf_hub import WeightsNotFoundError

ATOL = 1e-4
SECONDS = (0.3, 0.7, 1.1)
EXTRA = 3  # extra tokens of the tiny models (10 in the released ones)
PRENET, DEPTH = 2, 2
STATES = 1 + PRENET + DEPTH

#: the released config.yaml's model_conf (emotion2vec_plus_base), with tiny sizes: dim 32, 2 heads, 2 prenet
#: + 2 blocks, a 16-channel conv encoder with the released strides (320 samples per frame, 400 receptive field)
TINY_MODEL_CONF: Dict = {
    "loss_beta": 0.0, "loss_scale": None, "depth": DEPTH, "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0,
    "num_heads": 2, "norm_eps": 1e-05, "norm_affine": True, "encoder_dropout": 0.1, "post_mlp_drop": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "dropout_input": 0.0, "layerdrop": 0.05, "embed_dim": 32,
    "mlp_ratio": 4.0, "layer_norm_first": False, "average_top_k_layers": DEPTH, "end_of_block_targets": False,
    "clone_batch": 8, "layer_norm_target_layer": False, "batch_norm_target_layer": False,
    "instance_norm_target_layer": True, "instance_norm_targets": False, "layer_norm_targets": False,
    "ema_decay": 0.999, "ema_same_dtype": True, "log_norms": True, "ema_end_decay": 0.99999,
    "ema_anneal_end_step": 20000, "ema_encoder_only": False, "max_update": 100000, "extractor_mode": "layer_norm",
    "shared_decoder": None, "min_target_var": 0.1, "min_pred_var": 0.01, "supported_modality": "AUDIO",
    "mae_init": False, "seed": 1, "skip_ema": False, "cls_loss": 1.0, "recon_loss": 0.0, "d2v_loss": 1.0,
    "decoder_group": False, "normalize": True,
    "modalities": {"audio": {
        "type": "AUDIO", "prenet_depth": PRENET, "prenet_layerdrop": 0.05, "prenet_dropout": 0.1,
        "start_drop_path_rate": 0.0, "end_drop_path_rate": 0.0, "num_extra_tokens": EXTRA,
        "init_extra_token_zero": False, "mask_noise_std": 0.01, "mask_prob_min": None, "inverse_mask": False,
        "mask_prob": 0.5, "mask_prob_adjust": 0.05, "keep_masked_pct": 0.0, "mask_length": 5, "add_masks": False,
        "remove_masks": False, "mask_dropout": 0.0, "encoder_zero_mask": True, "mask_channel_prob": 0.0,
        "mask_channel_length": 64, "ema_local_encoder": False, "local_grad_mult": 1.0, "use_alibi_encoder": True,
        "alibi_scale": 1.0, "learned_alibi": False, "alibi_max_pos": None, "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True, "learned_alibi_scale_per_layer": False, "num_alibi_heads": 2,
        "model_depth": DEPTH,
        "decoder": {"decoder_dim": 16, "decoder_groups": 4, "decoder_kernel": 3, "decoder_layers": 2,
                    "input_dropout": 0.1, "add_positions_masked": False, "add_positions_all": False,
                    "decoder_residual": True, "projection_layers": 1, "projection_ratio": 2.0},
        "extractor_mode": "layer_norm",
        "feature_encoder_spec": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16,2,2)] + [(16,2,2)]",
        "conv_pos_width": 12, "conv_pos_groups": 4, "conv_pos_depth": 3, "conv_pos_pre_ln": False,
    }},
}
#: variations on the released architecture, all built by the reference: the released one (post-LN,
#: layer-norm CNN, per-head ALiBi scale; an even positional kernel, 12 // 3 = 4), a pre-LN one with a
#: LayerNorm before the positional convs and a per-layer ALiBi scale, and a GroupNorm CNN without extra
#: tokens, with an odd positional kernel (15 // 3 = 5) and 6 heads (ALiBi slopes for a non-power of 2, as the
#: released models' 12)
VARIANTS: Dict[str, Dict] = {
    "released": {},
    "pre_ln": {"layer_norm_first": True,
               "audio": {"conv_pos_pre_ln": True, "learned_alibi_scale_per_layer": True}},
    "group_norm": {"embed_dim": 48, "num_heads": 6,
                   "audio": {"extractor_mode": "default", "num_extra_tokens": 0, "conv_pos_width": 15,
                             "num_alibi_heads": 6, "learned_alibi_scale_per_head": False}},
}


def model_conf(variant: str) -> Dict:
    conf = copy.deepcopy(TINY_MODEL_CONF)
    changes = copy.deepcopy(VARIANTS[variant])
    conf["modalities"]["audio"].update(changes.pop("audio", {}))
    conf.update(changes)
    return conf


# --- the reference: FunASR's emotion2vec model files, imported alone ----------------------------------
@pytest.fixture(scope="module")
def reference():
    """FunASR's ``Emotion2vec`` class, imported from its own files only."""
    pytest.importorskip("omegaconf", reason="the FunASR reference needs omegaconf: pip install omegaconf")
    if importlib.util.find_spec("funasr") is None:
        pytest.skip("the FunASR reference is not installed: pip install --no-deps funasr==1.4.16")
    root = list(importlib.util.find_spec("funasr").submodule_search_locations)[0]
    saved = {k: v for k, v in sys.modules.items() if k == "funasr" or k.startswith("funasr.")}
    if "funasr" not in sys.modules:
        # Empty packages over FunASR's folders: importing their modules does not run funasr/__init__.py,
        # which imports every FunASR model (and torchaudio, kaldiio, ... where installed).
        for name, sub in (("funasr", ""), ("funasr.models", "models"), ("funasr.utils", "utils"),
                          ("funasr.models.emotion2vec", os.path.join("models", "emotion2vec"))):
            package = types.ModuleType(name)
            package.__path__ = [os.path.join(root, sub)]
            sys.modules[name] = package
        # Stub: model.py imports funasr.utils.load_utils (kaldiio, librosa, ffmpeg probing) only for
        # inference() on audio files, which these tests never call.
        load_utils = types.ModuleType("funasr.utils.load_utils")

        def load_audio_text_image_video(*args, **kwargs):
            raise RuntimeError("stub: reading audio files is not part of the emotion2vec reference tests")

        load_utils.load_audio_text_image_video = load_audio_text_image_video
        sys.modules["funasr.utils.load_utils"] = load_utils
    try:
        from funasr.models.emotion2vec.model import Emotion2vec
    except ImportError as exc:
        pytest.skip(f"the FunASR emotion2vec reference does not import: {exc}")
    yield Emotion2vec
    for name in [k for k in sys.modules if k == "funasr" or k.startswith("funasr.")]:
        if name not in saved:
            del sys.modules[name]


def build_reference(Emotion2vec, variant: str, seed: int = 0) -> torch.nn.Module:
    """A reference model with random weights everywhere (norms, biases, ALiBi scales, extra tokens too)."""
    torch.manual_seed(seed)
    model = Emotion2vec(model_conf=model_conf(variant), vocab_size=4).eval()  # with emotion2vec+'s class head
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alibi_scale" in name:
                p.copy_(torch.rand_like(p) * 2.0 - 0.3)  # some negative: the model clamps them at 0
            elif p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


def reference_states(model: torch.nn.Module, wav: torch.Tensor, padding_mask=None) -> List[torch.Tensor]:
    """The reference's first-block input and every block's output, extra tokens stripped."""
    audio = model.modality_encoders["AUDIO"]
    blocks = list(audio.context_encoder.blocks) + list(model.blocks)
    extra = audio.modality_cfg.num_extra_tokens
    captured: List[torch.Tensor] = []
    hooks = [blocks[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))]
    hooks += [b.register_forward_hook(lambda m, args, out: captured.append(out[0])) for b in blocks]
    try:
        with torch.no_grad():
            out = model.extract_features(wav, padding_mask=padding_mask)
    finally:
        for h in hooks:
            h.remove()
    states = [c[:, extra:] for c in captured]
    states[-1] = out["x"]  # the final LayerNorm of pre-LN models
    return states


def save_funasr_folder(model: torch.nn.Module, variant: str, folder: Path, wrap: bool = False) -> str:
    """``model.pt`` (FunASR's state dict) + ``config.yaml``, as on ModelScope / Hugging Face."""
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save({"state_dict": state} if wrap else state, folder / "model.pt")
    config = {"model": "Emotion2vec", "model_conf": model_conf(variant), "tokenizer": "CharTokenizer",
              "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "tokens.txt").write_text("angry\nhappy\nneutral\nsad\n")
    return str(folder)


def fairseq_checkpoint(model: torch.nn.Module, variant: str, cfg_wrapper=None, extra_state=None) -> Dict:
    """A dict shaped like fairseq's saved checkpoints: plain-dict cfg (to_container), weights + EMA copy."""
    conf = model_conf(variant)
    conf.pop("normalize")
    cfg = {"_name": None, "common": {"fp16": True, "log_interval": 200, "seed": 1},
           "task": {"_name": "audio_pretraining", "data": "/data/emotion", "normalize": True, "sample_rate": 16000,
                    "enable_padding": False, "max_sample_size": 320000},
           "model": {"_name": "data2vec_multi", **conf}}
    state = dict(model.state_dict())
    state.pop("proj.weight"), state.pop("proj.bias")
    state["_ema"] = {k: v.clone() for k, v in list(state.items())[:3]}  # data2vec_multi's teacher copy
    return {"args": None, "cfg": cfg_wrapper(cfg) if cfg_wrapper else cfg, "model": state, "criterion": None,
            "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 100000}],
            "task_state": {}, "extra_state": extra_state or {"epoch": 80, "previous_training_time": 12.5},
            "last_optimizer_state": None}


@pytest.fixture(scope="module")
def tiny(reference, tmp_path_factory):
    """Per variant: the reference model and its FunASR folder."""
    root = tmp_path_factory.mktemp("emotion2vec")
    out = {}
    for variant in VARIANTS:
        model = build_reference(reference, variant)
        out[variant] = (model, save_funasr_folder(model, variant, root / variant))
    return out


def wave(seconds: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    return (0.3 * torch.sin(2 * torch.pi * 180 * t) + 0.1 * torch.randn(n, generator=generator)).unsqueeze(0)


def max_diffs(got: List[torch.Tensor], want: List[torch.Tensor]) -> List[float]:
    assert len(got) == len(want)
    return [float((g - w).abs().max()) for g, w in zip(got, want)]


# --- proven equal to the reference ----------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_layer_equals_the_funasr_reference(tiny, variant, one_torch_thread):
    model, folder = tiny[variant]
    up = ser_plugins.create_upstream("emotion2vec", model=folder)
    assert isinstance(up, Emotion2vecUpstream) and up.format == "funasr"
    assert (up.hop_length, up.min_samples, up.sample_rate) == (320, 400, 16000)
    dim = model_conf(variant)["embed_dim"]
    assert up.hidden_sizes == [dim] * STATES and up.batch_invariant  # the GroupNorm CNN too (per utterance)
    worst = [0.0] * STATES
    for seconds in SECONDS:
        wav = wave(seconds)
        # FunASR's inference: F.layer_norm over the whole utterance when model_conf.normalize
        want = reference_states(model, F.layer_norm(wav, wav.shape))
        out = up(wav, torch.tensor([wav.shape[1]]))
        assert out.lengths.tolist() == [want[-1].shape[1]] == up.frame_lengths(torch.tensor([wav.shape[1]])).tolist()
        diffs = max_diffs(out.hidden_states, want)
        worst = [max(a, b) for a, b in zip(worst, diffs)]
    print(f"{variant}: max |diff| per layer over {SECONDS} s: {['%.1e' % d for d in worst]}")
    assert max(worst) <= ATOL, worst


def test_batch_invariant_where_the_reference_is_not(tiny, one_torch_thread):
    model, folder = tiny["released"]
    up = ser_plugins.create_upstream("emotion2vec", model=folder)
    waves = [wave(s, seed=i) for i, s in enumerate((1.1, 0.7, 0.3))]
    lengths = torch.tensor([w.shape[1] for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : w.shape[1]] = w[0]
    padded = up(batch, lengths)
    alone = [up(w, torch.tensor([w.shape[1]])) for w in waves]
    assert padded.lengths.tolist() == [a.lengths.item() for a in alone] == [54, 34, 14]
    worst = 0.0
    for i, a in enumerate(alone):
        n = int(a.lengths)
        worst = max(worst, *max_diffs([h[i: i + 1, :n] for h in padded.hidden_states], a.hidden_states))
    print(f"batch invariance: max |diff| padded batch vs one at a time, every layer: {worst:.1e}")
    assert worst <= ATOL
    # the reference, given FunASR's padding mask, lets padding leak into the valid frames (its positional
    # convolutions see the padded frames): emotion2vec#37, #63
    normed = torch.stack([F.pad(F.layer_norm(w[0], w[0].shape), (0, batch.shape[1] - w.shape[1])) for w in waves])
    mask = torch.arange(batch.shape[1]).unsqueeze(0) >= lengths.unsqueeze(1)
    ref_batch = reference_states(model, normed, padding_mask=mask)[-1]
    ref_alone = reference_states(model, F.layer_norm(waves[2], waves[2].shape))[-1]
    assert float((ref_batch[2:3, :14] - ref_alone).abs().max()) > 1e-3


def test_keeps_the_upstream_contract(tiny, one_torch_thread):
    report = check_upstream("emotion2vec", model=tiny["released"][1])
    assert {"output", "exact_frames", "padding_invariance", "deterministic", "identity", "finetune"} <= set(report)


def test_layers_dtype_and_normalize(tiny, one_torch_thread):
    model, folder = tiny["pre_ln"]
    full = ser_plugins.create_upstream("emotion2vec", model=folder)
    wav = wave(0.7)
    lengths = torch.tensor([wav.shape[1]])
    states = full(wav, lengths).hidden_states
    top2 = ser_plugins.create_upstream("emotion2vec", model=folder, layers=[0, 2])
    assert len(top2.encoder.blocks) == 2 and top2.hidden_sizes == [32, 32]
    got = top2(wav, lengths).hidden_states
    assert max_diffs(got, [states[0], states[2]]) == [0.0, 0.0]  # dropped blocks, no final norm: same states
    last = ser_plugins.create_upstream("emotion2vec", model=folder, layers=[-1])(wav, lengths).hidden_states
    assert max_diffs(last, [states[-1]]) == [0.0]
    bf16 = ser_plugins.create_upstream("emotion2vec", model=folder, dtype="bfloat16")(wav, lengths).hidden_states
    assert all(s.dtype == torch.float32 for s in bf16)
    assert max(max_diffs(bf16, states)) < 0.5  # bfloat16 rounding only
    raw = ser_plugins.create_upstream("emotion2vec", model=folder, normalize=False)
    offset = raw(wav + 0.5, lengths).hidden_states[-1]  # a DC offset: removed only by the normalisation
    assert float((offset - raw(wav, lengths).hidden_states[-1]).abs().max()) > 1e-2
    assert max_diffs(full(wav + 0.5, lengths).hidden_states[-1:], states[-1:])[0] < 1e-4
    # normalisation over the valid samples only equals FunASR's whole-utterance layer norm
    padded = F.pad(wav, (0, 999), value=5.0)
    assert torch.allclose(normalize_waveforms(padded, lengths)[:, : wav.shape[1]], F.layer_norm(wav, wav.shape),
                          atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        ser_plugins.create_upstream("emotion2vec", model=folder, layers=[STATES])


def test_finetune_modes_and_layer_groups(tiny, one_torch_thread):
    up = ser_plugins.create_upstream("emotion2vec", model=tiny["released"][1])
    assert up.supported_finetune_modes() == ("frozen", "finetune", "full", "top_n", "lora", "adapter")
    assert not any(p.requires_grad for p in up.parameters())
    up.train()
    assert not up.encoder.training  # frozen: always eval (no dropout)
    up.set_finetune("finetune")
    assert not any(p.requires_grad for p in up.feature_encoder.parameters())
    assert all(p.requires_grad for p in up.encoder.blocks.parameters()) and up.encoder.training
    groups = up.layer_parameter_groups()
    assert len(groups) == 1 + PRENET + DEPTH and all(groups)
    up.set_finetune("top_n", top_n=1)
    trainable = {n for n, p in up.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(f"blocks.{PRENET + DEPTH - 1}.") for n in trainable)
    up.set_finetune("full")
    up.enable_gradient_checkpointing()
    wav = wave(0.7)
    out = up(wav, torch.tensor([wav.shape[1]]))
    sum(h.sum() for h in out.hidden_states).backward()
    grads = [p.grad for p in up.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert up.encoder.extra_tokens.grad.abs().sum() > 0 and up.encoder.alibi_scale.grad.abs().sum() > 0


# --- checkpoints: FunASR folder, fairseq .pt, hub layout, safe loading -------------------------------
@pytest.fixture
def record_torch_load(monkeypatch):
    """Every torch.load call's weights_only flag."""
    calls = []
    real = torch.load

    def recording(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording)
    return calls


def _reference_output(up, seconds=0.7):
    wav = wave(seconds, seed=3)
    return up(wav, torch.tensor([wav.shape[1]])).hidden_states


def test_fairseq_checkpoint_loads_safely_and_equal(tiny, tmp_path, record_torch_load, one_torch_thread):
    model, folder = tiny["released"]
    want = _reference_output(ser_plugins.create_upstream("emotion2vec", model=folder))
    path = tmp_path / "emotion2vec_base.pt"
    torch.save(fairseq_checkpoint(model, "released"), path)
    record_torch_load.clear()
    up = ser_plugins.create_upstream("emotion2vec", model=str(path))
    assert record_torch_load == [True]  # weights-only unpickling, never a full unpickle
    assert up.format == "fairseq" and up.normalize is True  # task.normalize
    assert max_diffs(_reference_output(up), want) == [0.0] * STATES
    # a folder holding just the fairseq file (the original release's layout)
    only = tmp_path / "release"
    only.mkdir()
    os.replace(path, only / "emotion2vec_base.pt")
    assert ser_plugins.create_upstream("emotion2vec", model=str(only)).weights_identity()["format"] == "emotion2vec-fairseq"


def test_fairseq_checkpoint_with_omegaconf_and_fairseq_objects(tiny, tmp_path, monkeypatch, one_torch_thread):
    """A DictConfig cfg, fairseq meter objects and data2vec's Modality enum: inert stand-ins, nothing imported."""
    omegaconf = pytest.importorskip("omegaconf")
    model, folder = tiny["released"]
    want = _reference_output(ser_plugins.create_upstream("emotion2vec", model=folder))
    meters = types.ModuleType("fairseq.logging.meters")
    modality = types.ModuleType("examples.data2vec.data.modality")

    class AverageMeter:
        def __init__(self):
            self.val, self.sum, self.count = 1.5, 3.0, 2

    Modality = enum.Enum("Modality", "AUDIO IMAGE TEXT")
    for cls, module in ((AverageMeter, meters), (Modality, modality)):
        cls.__module__, cls.__qualname__ = module.__name__, cls.__name__
        setattr(module, cls.__name__, cls)
    with monkeypatch.context() as patch:  # the fake classes exist while saving only
        for module in (meters, modality):
            parts = module.__name__.split(".")
            for i in range(1, len(parts)):  # the parent packages, empty
                patch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
            patch.setitem(sys.modules, module.__name__, module)
        ckpt = fairseq_checkpoint(model, "released", cfg_wrapper=omegaconf.OmegaConf.create,
                                  extra_state={"metrics": {"train": [("loss", AverageMeter())]},
                                               "modality": Modality.AUDIO})
        torch.save(ckpt, tmp_path / "checkpoint_best.pt")
    assert not any(m.startswith(("fairseq", "examples")) for m in sys.modules)
    up = ser_plugins.create_upstream("emotion2vec", model=str(tmp_path / "checkpoint_best.pt"))
    assert max_diffs(_reference_output(up), want) == [0.0] * STATES


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"cfg": {"model": {}}, "model": {"blocks.0.norm1.weight": torch.ones(2)}, "x": Evil()},
               tmp_path / "model.pt")
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        ser_plugins.create_upstream("emotion2vec", model=str(tmp_path / "model.pt"))
    assert not marker.exists()


def test_funasr_folder_variants_and_errors(tiny, tmp_path, one_torch_thread):
    model, folder = tiny["released"]
    want = _reference_output(ser_plugins.create_upstream("emotion2vec", model=folder))
    wrapped = save_funasr_folder(model, "released", tmp_path / "wrapped", wrap=True)  # {"state_dict": ...}
    assert max_diffs(_reference_output(ser_plugins.create_upstream("emotion2vec", model=wrapped)), want) == [0.0] * STATES
    # config.yaml as written by hand / OmegaConf: floats like 1e-05 that PyYAML reads as strings
    text = (Path(wrapped) / "config.yaml").read_text().replace("1.0e-05", "1e-05")
    assert "norm_eps: 1e-05" in text
    (Path(wrapped) / "config.yaml").write_text(text)
    assert max_diffs(_reference_output(ser_plugins.create_upstream("emotion2vec", model=wrapped)), want) == [0.0] * STATES
    # model.pt alone: its architecture is missing
    bare = tmp_path / "bare"
    bare.mkdir()
    torch.save(model.state_dict(), bare / "model.pt")
    with pytest.raises(Emotion2vecCheckpointError, match="config.yaml"):
        ser_plugins.create_upstream("emotion2vec", model=str(bare))
    # a config that does not belong to the weights
    (bare / "config.yaml").write_text(yaml.safe_dump({"model": "Emotion2vec", "model_conf": {
        **model_conf("released"), "embed_dim": 48}}))
    with pytest.raises(Emotion2vecCheckpointError, match="shape mismatch"):
        ser_plugins.create_upstream("emotion2vec", model=str(bare))
    with pytest.raises(WeightsNotFoundError, match="no such local file or folder"):
        ser_plugins.create_upstream("emotion2vec", model=str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="no model.pt or .pt checkpoint"):
        ser_plugins.create_upstream("emotion2vec", model=str(empty))


def _fake_hub_cache(cache: Path, repo: str, files: Dict[str, Path]) -> str:
    """The Hugging Face cache layout (refs/main -> snapshots/<commit>/...) of a downloaded repository."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, src in files.items():
        (snapshot / name).write_bytes(src.read_bytes())
    return commit


def test_hub_ids_from_the_cache_offline(tiny, tmp_path, monkeypatch, one_torch_thread):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, folder = tiny["released"]
    want = _reference_output(ser_plugins.create_upstream("emotion2vec", model=folder))
    cache = tmp_path / "hub"
    commit = _fake_hub_cache(cache, "emotion2vec/emotion2vec_plus_base",
                             {n: Path(folder) / n for n in ("model.pt", "config.yaml", "tokens.txt")})
    # the preset, with the ModelScope id too (read from its Hugging Face mirror)
    for name, kwargs in (("emotion2vec_plus_base", {}), ("emotion2vec", {"model": "iic/emotion2vec_plus_base"})):
        up = ser_plugins.create_upstream(name, cache_dir=str(cache), **kwargs)
        assert up.weights_identity() == {"hub_id": "emotion2vec/emotion2vec_plus_base", "revision": None,
                                         "commit": commit, "format": "emotion2vec-funasr"}
        assert max_diffs(_reference_output(up), want) == [0.0] * STATES
    # emotion2vec_base's repository: a fairseq emotion2vec_base.pt beside config.yaml, no model.pt
    fairseq_pt = tmp_path / "emotion2vec_base.pt"
    torch.save(fairseq_checkpoint(model, "released"), fairseq_pt)
    _fake_hub_cache(cache, "emotion2vec/emotion2vec_base",
                    {"emotion2vec_base.pt": fairseq_pt, "config.yaml": Path(folder) / "config.yaml"})
    up = ser_plugins.create_upstream("emotion2vec_base", cache_dir=str(cache))
    assert up.format == "fairseq" and max_diffs(_reference_output(up), want) == [0.0] * STATES


def test_offline_hub_id_without_local_copy_explains_how_to_get_it(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        ser_plugins.create_upstream("emotion2vec_plus_large", cache_dir=str(tmp_path / "empty_cache"))
    msg = str(err.value)
    for part in ("emotion2vec/emotion2vec_plus_large", "model=/path/to/emotion2vec_plus_large",
                 "huggingface-cli download emotion2vec/emotion2vec_plus_large",
                 "modelscope download --model iic/emotion2vec_plus_large", "HF_HUB_OFFLINE",
                 f"Looked in the Hugging Face cache at {tmp_path / 'empty_cache'}"):
        assert part in msg, (part, msg)
    assert isinstance(err.value, OSError)  # as the hf upstream's


def test_presets_are_data():
    for name, hub in (("emotion2vec_base", "emotion2vec/emotion2vec_base"),
                      ("emotion2vec_plus_seed", "emotion2vec/emotion2vec_plus_seed"),
                      ("emotion2vec_plus_base", "emotion2vec/emotion2vec_plus_base"),
                      ("emotion2vec_plus_large", "emotion2vec/emotion2vec_plus_large")):
        preset = load("upstream", name)
        assert isinstance(preset, Preset) and preset.builder == "emotion2vec"
        assert preset.kwargs == {"model": hub} and preset.weights == hub and preset.description


def test_local_checkpoints_need_nothing_beyond_torch(tiny):
    """Neither transformers, huggingface_hub, FunASR, fairseq nor omegaconf (blocked here) for a local folder;
    hub ids need huggingface_hub, an optional extra."""
    from importlib import metadata

    code = (
        "import sys\n"
        "for name in ('transformers', 'huggingface_hub', 'funasr', 'fairseq', 'omegaconf', 'torchaudio'):\n"
        "    sys.modules[name] = None  # import fails\n"
        "import torch, ser_plugins\n"
        f"up = ser_plugins.create_upstream('emotion2vec', model={tiny['released'][1]!r})\n"
        "print(len(up(torch.zeros(1, 8000), torch.tensor([8000])).hidden_states))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == str(STATES)
    requires = [r.replace(" ", "") for r in metadata.requires("ser-plugins") or []]
    assert 'huggingface_hub>=0.20;extra=="emotion2vec"' in requires
    assert not any(r.startswith(("huggingface_hub", "funasr")) and "extra==" not in r for r in requires)


def test_config_parsing():
    cfg = Emotion2vecConfig.from_model_conf({**model_conf("released"), "norm_eps": "1e-05"})
    assert cfg.norm_eps == 1e-5 and cfg.num_blocks == 4 and cfg.pos_kernel == 4
    assert cfg.conv_layers == [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2
    with pytest.raises(Emotion2vecCheckpointError, match="modalities.audio"):
        Emotion2vecConfig.from_model_conf({"depth": 2})
    learned = model_conf("released")
    learned["modalities"]["audio"]["learned_alibi"] = True
    with pytest.raises(Emotion2vecCheckpointError, match="learned ALiBi"):
        Emotion2vecConfig.from_model_conf(learned)
    evil = model_conf("released")
    evil["modalities"]["audio"]["feature_encoder_spec"] = "__import__('os').system('true')"
    with pytest.raises(Emotion2vecCheckpointError, match="unsupported feature_encoder_spec"):
        Emotion2vecConfig.from_model_conf(evil)  # parsed, never evaluated


# --- a frozen run on the demo corpus, exported to ONNX ------------------------------------------------
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_frozen_recipe_runs_end_to_end_and_exports_to_onnx(tiny, tiny_demo_root, tmp_path, one_torch_thread):
    from ser_plugins.predict import Predictor
    from ser_plugins.recipe import load_recipe, load_yaml
    from ser_plugins.runner import run_recipe

    raw = load_yaml(RECIPES / "emotion2vec_frozen_linear.yaml")
    assert raw["upstream"]["name"] == "emotion2vec_base" and raw["finetune"]["mode"] == "frozen"
    raw.update(corpus={"name": "iemocap", "root": str(tiny_demo_root)}, name="e2v_demo",
               output={"dir": str(tmp_path / "run"), "tensorboard": False})
    raw["upstream"] = {"name": "emotion2vec_base", "model": tiny["released"][1]}  # the preset, a local copy
    raw["training"].update(epochs=2, batch_size=16)
    raw.pop("data", None)
    out = tmp_path / "run"
    summary = run_recipe(load_recipe(raw), str(out), folds=["1"], progress=False)
    fold = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    assert 0 <= summary["mean_std"]["ua"]["mean"] <= 1 and fold["n"] > 0
    run = json.loads((out / "run.json").read_text())
    assert run["upstream"]["config"]["model"] == tiny["released"][1]
    wavs = sorted(Path(tiny_demo_root).rglob("*.wav"))[:3]
    (res, *_), = [Predictor(out).predict_files([str(w) for w in wavs])]
    assert sum(res["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)

    pytest.importorskip("onnxruntime", reason="pip install 'ser-plugins[onnx]'")
    pytest.importorskip("onnxscript", reason="pip install 'ser-plugins[onnx]'")
    from ser_plugins.export import DEFAULT_ATOL, export_run
    from ser_plugins.onnx_engine import OnnxPredictor

    (exported,) = export_run(out, tmp_path / "export", threads=1)
    print(f"ONNX export: {exported.exporter}, max |probability diff| {exported.max_abs_diff:.1e}")
    assert exported.exporter == "dynamo" and exported.max_abs_diff <= DEFAULT_ATOL
    want = Predictor(out).predict_files([str(w) for w in wavs])
    got = OnnxPredictor(tmp_path / "export", threads=1).predict_files([str(w) for w in wavs])
    for w, g in zip(want, got):
        assert max(abs(w["probabilities"][k] - g["probabilities"][k]) for k in w["probabilities"]) <= DEFAULT_ATOL

