"""The ``whisper`` upstream on tiny, randomly initialised Whisper checkpoints saved like hub ones.

Each checkpoint is a ``transformers`` Whisper model built from ``WhisperConfig`` (d_model 32, 2
encoder layers, 2 heads) and saved with ``save_pretrained``, with a ``WhisperFeatureExtractor``
saved beside it, then loaded through the upstream from that folder:

* ``w30``: ``WhisperForConditionalGeneration``, 80 mel bins, 1500 positions: Whisper's real 30-s
  window (weights under ``model.encoder.``, as openai/whisper-*);
* ``v3_short``: ``WhisperModel``, 128 mel bins (as large-v3), 100 positions: a 2-s window
  (``chunk_length=2``), so that inputs of several windows stay cheap (weights under ``encoder.``).

The references are transformers' own ``WhisperFeatureExtractor`` (its default torch output and its
numpy implementation) and ``WhisperEncoder`` (loaded independently, with ``WhisperModel.from_pretrained``).
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="pip install 'ser-plugins[hf]'")

import ser_plugins  # noqa: E402
from ser_plugins.registry import Preset, load  # noqa: E402
from ser_plugins.testing import check_upstream  # noqa: E402
from upstreams.whisper import WhisperUpstream, WeightsNotFoundError, log_mel_spectrogram, mel_filters  # noqa: E402

from transformers import WhisperConfig, WhisperFeatureExtractor  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

SR = 16000
D, LAYERS = 32, 2
WINDOW = 30 * SR
# what was measured on these tiny models (the figures in docs/self_supervised.md), filled by the tests below
MEASURED: dict = {}


def save_tiny_whisper(folder, n_mels: int = 80, positions: int = 1500, arch: str = "WhisperForConditionalGeneration",
                      safe: bool = True, extractor: bool = True, seed: int = 0) -> str:
    torch.manual_seed(seed)
    config = WhisperConfig(
        d_model=D, encoder_layers=LAYERS, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=n_mels,
        max_source_positions=positions, max_target_positions=16, vocab_size=64,
        pad_token_id=1, bos_token_id=2, eos_token_id=2, decoder_start_token_id=3,
    )
    getattr(transformers, arch)(config).save_pretrained(str(folder), safe_serialization=safe)
    if extractor:
        chunk_length = positions * 2 * 160 // SR
        WhisperFeatureExtractor(feature_size=n_mels, chunk_length=chunk_length).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_whisper")
    return {
        "w30": save_tiny_whisper(root / "w30"),
        "v3_short": save_tiny_whisper(root / "v3_short", n_mels=128, positions=100, arch="WhisperModel", seed=1),
    }


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def build(folder: str, **kwargs) -> WhisperUpstream:
    return ser_plugins.create_upstream("whisper", model=folder, **kwargs).eval()


def reference_encoder(folder: str) -> WhisperEncoder:
    return transformers.WhisperModel.from_pretrained(folder).encoder.eval()


def speech(n: int, seed: int = 0) -> np.ndarray:
    """Noise with a slow envelope and a tone: spectra of very different levels, as speech has."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (0.3 * rng.standard_normal(n) * np.abs(np.sin(2 * np.pi * 1.7 * t)) + 0.05 * np.sin(2 * np.pi * 440 * t)
            ).astype(np.float32)


def batch(*lengths: int, pad: float = 0.0, seed: int = 0):
    wavs = torch.full((len(lengths), max(lengths)), float(pad))
    for i, n in enumerate(lengths):
        wavs[i, :n] = torch.from_numpy(speech(n, seed + i))
    if pad:
        wavs += torch.where(torch.arange(wavs.shape[1]) < torch.tensor(lengths).unsqueeze(1), 0.0,
                            pad * torch.randn(wavs.shape))
    return wavs, torch.tensor(lengths)


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max())


# --- the log-mel spectrogram ----------------------------------------------------------------------
@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_the_extractors(n_mels):
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    assert max_diff(mel_filters(n_mels), torch.from_numpy(extractor.mel_filters.T).float()) < 1e-7


LENGTHS = [400, 1234, 16000, 33333, 8 * SR + 77, WINDOW]


@pytest.mark.parametrize("name", ["w30"])
def test_padded_log_mel_equals_whisper_feature_extractor(dirs, name):
    """The batched torch log-mel of every utterance equals the extractor's, its torch and its numpy code."""
    up = build(dirs[name])
    extractor = WhisperFeatureExtractor.from_pretrained(dirs[name])
    wavs, lengths = batch(*LENGTHS, pad=5.0)  # loud noise in the padding: never read
    mel, mel_frames = up.input_features(wavs, lengths)
    assert mel.shape == (len(LENGTHS), 80, 3000) and mel.dtype == torch.float32
    assert mel_frames.tolist() == [n // 160 for n in LENGTHS]
    worst = {"torch": 0.0, "numpy": 0.0}
    for i, n in enumerate(LENGTHS):
        x = wavs[i, :n].numpy()
        ref = extractor(x, sampling_rate=SR, return_tensors="np").input_features[0]
        ref_np = extractor._np_extract_fbank_features(np.pad(x, (0, WINDOW - n))[None], "cpu")[0]
        worst["torch"] = max(worst["torch"], max_diff(mel[i], ref))
        worst["numpy"] = max(worst["numpy"], max_diff(mel[i], ref_np))
    MEASURED["log_mel_padded"] = worst
    print(f"\npadded log-mel vs WhisperFeatureExtractor, max abs difference: {worst}")
    assert worst["torch"] <= 1e-4 and worst["numpy"] <= 1e-4


def test_cut_log_mel_equals_extractor_on_the_utterance_alone(dirs):
    """``cut``: each utterance's own frames, as the extractor with ``padding="longest"`` makes them alone."""
    up = build(dirs["w30"], input_mode="cut")
    extractor = WhisperFeatureExtractor.from_pretrained(dirs["w30"])
    lengths = LENGTHS[:-1]
    wavs, lens = batch(*lengths, pad=5.0)
    mel, mel_frames = up.input_features(wavs, lens)
    assert mel.shape == (len(lengths), 80, max(lengths) // 160)
    worst = {"torch": 0.0, "numpy": 0.0}
    for i, n in enumerate(lengths):
        x = wavs[i, :n].numpy()
        ref = extractor(x, sampling_rate=SR, return_tensors="np", padding="longest").input_features[0]
        ref_np = extractor._np_extract_fbank_features(x[None], "cpu")[0]
        assert ref.shape == (80, n // 160) == (80, int(mel_frames[i]))
        worst["torch"] = max(worst["torch"], max_diff(mel[i, :, : n // 160], ref))
        worst["numpy"] = max(worst["numpy"], max_diff(mel[i, :, : n // 160], ref_np))
    MEASURED["log_mel_cut"] = worst
    print(f"\ncut log-mel vs WhisperFeatureExtractor(padding='longest'), max abs difference: {worst}")
    assert worst["torch"] <= 1e-4 and worst["numpy"] <= 1e-4


def test_log_mel_stays_float32_under_mixed_precision(dirs):
    up = build(dirs["w30"])
    wavs, lengths = batch(16000, 7000)
    reference, _ = up.input_features(wavs, lengths)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed, _ = up.input_features(wavs, lengths)
    assert mixed.dtype == torch.float32 and max_diff(mixed, reference) == 0.0


def test_log_mel_exports_to_onnx(tmp_path):
    """The log-mel is plain torch (gather, unfold, rfft, matmul): it exports, with dynamic batch and length."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    window, filters = torch.hann_window(400), mel_filters(80)

    class LogMel(torch.nn.Module):
        def forward(self, audio, lengths):
            return log_mel_spectrogram(audio, lengths, lengths // 160, window, filters)

    wavs, lengths = batch(16000, 9000)
    path = tmp_path / "log_mel.onnx"
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("samples", min=401, max=10**7)},
            {0: torch.export.Dim("batch", max=64)})
    torch.onnx.export(LogMel().eval(), (wavs, lengths), str(path), dynamo=True, dynamic_shapes=dims, verbose=False)
    session = ort.InferenceSession(str(path))
    wavs, lengths = batch(12345, 20000, 4000, seed=3)
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {names[0]: wavs.numpy(), names[1]: lengths.numpy()})[0]
    ref = LogMel()(wavs, lengths)
    for i, n in enumerate(lengths.tolist()):
        assert max_diff(got[i, :, : n // 160], ref[i, :, : n // 160]) < 1e-4


def test_padded_upstream_exports_to_onnx_for_any_number_of_windows(dirs, tmp_path):
    """log-mel + encoder in one graph, traced on one window, run by onnxruntime on one and on three windows."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    up = build(dirs["v3_short"])

    class Part(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = up

        def forward(self, wavs, lengths):
            out = self.up(wavs, lengths)
            return tuple(out.hidden_states) + (out.lengths,)

    path = tmp_path / "whisper.onnx"
    dims = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("samples", min=401, max=10**7)},
            {0: torch.export.Dim("batch", max=64)})
    torch.onnx.export(Part().eval(), batch(20000, 9000), str(path), dynamo=True, dynamic_shapes=dims, verbose=False)
    session = ort.InferenceSession(str(path))
    names = [i.name for i in session.get_inputs()]
    for lengths in [(25000, 1000), (5 * SR + 7, 30000, 401)]:  # one 2-s window; three
        wavs, lens = batch(*lengths, seed=2)
        got = session.run(None, {names[0]: wavs.numpy(), names[1]: lens.numpy()})
        with torch.no_grad():
            ref = Part()(wavs, lens)
        assert got[-1].tolist() == ref[-1].tolist()
        for g, r in zip(got[:-1], ref[:-1]):
            assert g.shape == tuple(r.shape) and max_diff(torch.from_numpy(g), r) < 1e-4


# --- frames ---------------------------------------------------------------------------------------
def test_declared_rate_and_frame_lengths(dirs):
    up = build(dirs["w30"])
    assert (up.sample_rate, up.hop_length, up.min_samples, up.chunk_samples) == (SR, 320, 400, WINDOW)
    assert up.hidden_sizes == [D] * (LAYERS + 1) and up.batch_invariant
    samples = [400, 16000, 16159, 16160, 16480, WINDOW, WINDOW + 1, WINDOW + 20000]
    # per 30-s window of r samples: r // 160 mel frames (100/s), the stride-2 conv: ceil(that / 2) (50/s)
    assert up.frame_lengths(torch.tensor(samples)).tolist() == [1, 50, 50, 51, 52, 1500, 1500, 1563]
    emobox = [n // 320 for n in samples[:6]]  # EmoBox keeps wav_len // 320 frames: at most one fewer
    assert all(0 <= a - b <= 1 for a, b in zip(up.frame_lengths(torch.tensor(samples[:6])).tolist(), emobox))


@pytest.mark.parametrize("mode", ["padded", "cut"])
def test_an_utterance_alone_fills_its_frames(dirs, mode):
    up = build(dirs["w30"], input_mode=mode)
    for n in (400, 1000, 16160, 3 * SR + 5):
        wavs, lengths = batch(n)
        out = up(wavs, lengths)
        assert len(out.hidden_states) == LAYERS + 1
        assert all(h.shape == (1, int(out.lengths[0]), D) and h.dtype == torch.float32 for h in out.hidden_states)
        assert out.lengths.tolist() == up.frame_lengths(lengths).tolist()


# --- the padded (30-s) mode equals transformers ---------------------------------------------------
def test_padded_mode_equals_whisper_encoder_on_the_same_features(dirs):
    """Every hidden state of ``encode`` equals ``WhisperEncoder``'s on the extractor's input features."""
    up = build(dirs["w30"])
    ref = reference_encoder(dirs["w30"])
    extractor = WhisperFeatureExtractor.from_pretrained(dirs["w30"])
    features = extractor([speech(n, i) for i, n in enumerate((WINDOW, 7 * SR + 3, 8000))], sampling_rate=SR,
                         return_tensors="pt").input_features
    with torch.no_grad():
        expected = ref(features, output_hidden_states=True).hidden_states
        got = up.encode(features)
    assert len(got) == len(expected) == LAYERS + 1
    worst = [max_diff(a, b) for a, b in zip(got, expected)]
    MEASURED["padded_vs_whisper_encoder_same_features"] = worst
    print(f"\npadded mode vs WhisperEncoder (same input features), max abs difference per layer: {worst}")
    assert max(worst) <= 1e-4


def test_padded_mode_from_waveforms_equals_extractor_plus_encoder(dirs):
    """The whole upstream on a padded batch == extractor + WhisperEncoder on each utterance alone (valid frames)."""
    up = build(dirs["w30"])
    ref = reference_encoder(dirs["w30"])
    extractor = WhisperFeatureExtractor.from_pretrained(dirs["w30"])
    wavs, lengths = batch(12 * SR, 5 * SR + 123, 2000, pad=3.0)
    with torch.no_grad():
        out = up(wavs, lengths)
    assert out.hidden_states[0].shape[1] == 600 and out.lengths.tolist() == [600, 250, 6]
    worst = [0.0] * (LAYERS + 1)
    for i, n in enumerate(lengths.tolist()):
        features = extractor(wavs[i, :n].numpy(), sampling_rate=SR, return_tensors="pt").input_features
        with torch.no_grad():
            expected = ref(features, output_hidden_states=True).hidden_states
        k = int(out.lengths[i])
        for j, (a, b) in enumerate(zip(out.hidden_states, expected)):
            worst[j] = max(worst[j], max_diff(a[i, :k], b[0, :k]))
    MEASURED["padded_vs_extractor_plus_encoder"] = worst
    print(f"\npadded mode (waveforms, batched) vs extractor + WhisperEncoder, max abs difference per layer: {worst}")
    assert max(worst) <= 1e-4


# --- the cut mode ---------------------------------------------------------------------------------
def sliced_reference(folder: str, positions: int) -> WhisperEncoder:
    """transformers' WhisperEncoder with ``positions`` positions: the checkpoint's embeddings sliced to them."""
    full = reference_encoder(folder)
    config = WhisperConfig(**{**full.config.to_dict(), "max_source_positions": positions})
    encoder = WhisperEncoder(config).eval()
    state = dict(full.state_dict(), **{"embed_positions.weight": full.embed_positions.weight[:positions]})
    encoder.load_state_dict(state)
    return encoder


@pytest.mark.parametrize("samples", [16000, 8000 + 100, 3 * SR + 320])  # an even number of mel frames
def test_cut_mode_equals_whisper_encoder_with_sliced_positions(dirs, samples):
    up = build(dirs["w30"], input_mode="cut")
    extractor = WhisperFeatureExtractor.from_pretrained(dirs["w30"])
    x = speech(samples, 4)
    features = extractor(x, sampling_rate=SR, return_tensors="pt", padding="longest").input_features
    frames = features.shape[-1] // 2
    with torch.no_grad():
        expected = sliced_reference(dirs["w30"], frames)(features, output_hidden_states=True).hidden_states
        out = up(torch.from_numpy(x)[None], torch.tensor([samples]))
    assert out.lengths.tolist() == [frames] and out.hidden_states[0].shape[1] == frames
    worst = [max_diff(a[0], b[0]) for a, b in zip(out.hidden_states, expected)]
    assert max(worst) <= 1e-4, worst


def test_cut_mode_differs_from_the_padded_mode(dirs):
    """Measured on the tiny model: the figure docs/self_supervised.md quotes."""
    padded, cut = build(dirs["w30"]), build(dirs["w30"], input_mode="cut")
    wavs, lengths = batch(1 * SR, 3 * SR, 7 * SR, seed=5)
    with torch.no_grad():
        a, b = padded(wavs, lengths), cut(wavs, lengths)
    assert a.lengths.tolist() == b.lengths.tolist() == [50, 150, 350]
    per_layer = []
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        diffs, scale = [], []
        for i, n in enumerate(a.lengths.tolist()):
            diffs.append(max_diff(ha[i, :n], hb[i, :n]))
            scale.append(float(ha[i, :n].pow(2).mean().sqrt()))
        per_layer.append((max(diffs), max(diffs) / min(scale)))
    mel_a, _ = padded.input_features(wavs, lengths)
    mel_b, frames = cut.input_features(wavs, lengths)
    mel_diff = max(max_diff(mel_a[i, :, :n], mel_b[i, :, :n]) for i, n in enumerate(frames.tolist()))
    MEASURED["cut_vs_padded"] = {"per_layer_max_abs_and_relative_to_rms": per_layer, "log_mel_max_abs": mel_diff}
    print(f"\ncut vs padded mode (1, 3, 7 s): per layer (max abs, max abs / RMS): {per_layer}; log-mel max abs {mel_diff}")
    assert all(d > 1e-3 for d, _ in per_layer[1:])  # a different input: the attention sees 30 s in one, n s in the other


# --- batches --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["padded", "cut"])
def test_padded_batch_equals_each_utterance_alone(dirs, mode):
    up = build(dirs["w30"], input_mode=mode)
    lengths = (4 * SR, 37123, 400)
    wavs, lens = batch(*lengths, pad=10.0)  # loud noise in the padding
    with torch.no_grad():
        together = up(wavs, lens)
        for i, n in enumerate(lengths):
            alone = up(wavs[i:i + 1, :n], lens[i:i + 1])
            k = int(alone.lengths[0])
            assert int(together.lengths[i]) == k
            for h_batch, h_alone in zip(together.hidden_states, alone.hidden_states):
                assert max_diff(h_batch[i, :k], h_alone[0, :k]) <= 1e-5


def test_cut_mode_without_the_mask_would_depend_on_the_batch(dirs):
    """Why ``cut`` masks: WhisperEncoder has no attention mask, and the padded frames change the valid ones."""
    up = build(dirs["w30"], input_mode="cut")
    wavs, lengths = batch(4 * SR, SR)
    features, mel_frames = up.input_features(wavs, lengths)
    with torch.no_grad():
        masked = up.encode(features, mel_frames)[-1][1, :50]
        unmasked = up.encode(features)[-1][1, :50]
        alone = up(wavs[1:, :SR], lengths[1:]).hidden_states[-1][0]
    assert max_diff(masked, alone) <= 1e-5 and max_diff(unmasked, alone) > 1e-3


@pytest.mark.parametrize("mode", ["padded", "cut"])
def test_whisper_keeps_the_plugin_contract(dirs, mode):
    report = check_upstream("whisper", model=dirs["w30"], input_mode=mode)
    assert {"output", "exact_frames", "padding_invariance", "deterministic", "identity", "finetune"} <= set(report)


@pytest.mark.parametrize("mode", ["padded", "cut"])
def test_long_inputs_run_window_by_window(dirs, mode):
    """Beyond the encoder's window (2 s for this model, 30 s for Whisper): consecutive windows, frames concatenated."""
    up = build(dirs["v3_short"], input_mode=mode)
    window = up.chunk_samples
    assert window == 2 * SR and up.n_mels == 128
    n = 2 * window + 24000
    wavs, lengths = batch(n, 3000, pad=2.0)
    with torch.no_grad():
        out = up(wavs, lengths)
        assert out.lengths.tolist() == [100 + 100 + 75, 9] and out.hidden_states[0].shape[1] == 275
        offset = 0
        for start in range(0, n, window):
            piece = wavs[:1, start:min(start + window, n)]
            alone = up(piece, torch.tensor([piece.shape[1]]))
            k = int(alone.lengths[0])
            for h, h_alone in zip(out.hidden_states, alone.hidden_states):
                assert max_diff(h[0, offset:offset + k], h_alone[0]) <= 1e-5
            offset += k
        assert offset == 275


# --- fine-tuning ----------------------------------------------------------------------------------
def _snapshot(up):
    return {name: p.detach().clone() for name, p in up.encoder.named_parameters()}


def _changed(up, before):
    return {name for name, p in up.encoder.named_parameters() if not torch.equal(p.detach(), before[name])}


def _step(up, lr: float = 1e-2):
    up.train()
    params = [p for group in up.layer_parameter_groups() for p in group]
    out = up(*batch(SR, 12000))
    if params:
        optimizer = torch.optim.AdamW(params, lr=lr)
        sum(h.pow(2).mean() for h in out.hidden_states).backward()
        optimizer.step()
    return out


def test_frozen_then_finetune_trains_one_step_with_the_conv_front_frozen(dirs):
    up = build(dirs["v3_short"])
    assert up.finetune_mode == "frozen"
    before = _snapshot(up)
    out = _step(up)
    assert not any(h.requires_grad for h in out.hidden_states) and not up.encoder.training
    assert _changed(up, before) == set()

    up.set_finetune("finetune")
    assert not any(p.requires_grad for conv in up.conv_front for p in conv.parameters())
    before = _snapshot(up)
    _step(up)
    changed = _changed(up, before)
    assert not any(n.startswith(("conv1.", "conv2.")) for n in changed), "the conv front must stay frozen"
    assert "embed_positions.weight" not in changed
    for i in range(LAYERS):
        assert any(n.startswith(f"layers.{i}.") for n in changed)
    assert any(n.startswith("layer_norm.") for n in changed)

    up.set_finetune("full")
    before = _snapshot(up)
    _step(up)
    changed = _changed(up, before)
    assert {"conv1.weight", "conv2.weight"} <= changed and "embed_positions.weight" not in changed


def test_top_n_and_layer_groups(dirs):
    up = build(dirs["v3_short"])
    assert up.supported_finetune_modes() == ("frozen", "finetune", "full", "top_n", "lora", "adapter")
    assert [len(g) for g in up.layer_parameter_groups()] == [0] * (LAYERS + 1)
    up.set_finetune("full")
    groups = up.layer_parameter_groups()
    flat = [id(p) for g in groups for p in g]
    trainable = [p for p in up.parameters() if p.requires_grad]
    assert len(groups) == LAYERS + 1 and len(flat) == len(set(flat)) == len(trainable)
    assert {id(p) for c in up.conv_front for p in c.parameters()} <= {id(p) for p in groups[0]}
    for i, layer in enumerate(up.encoder.layers):
        assert {id(p) for p in layer.parameters()} <= {id(p) for p in groups[i + 1]}
    assert {id(p) for p in up.encoder.layer_norm.parameters()} <= {id(p) for p in groups[-1]}
    up.set_finetune("finetune")
    assert groups and not up.layer_parameter_groups()[0]
    up.set_finetune("top_n", top_n=1)
    assert [bool(g) for g in up.layer_parameter_groups()] == [False] * LAYERS + [True]
    before = _snapshot(up)
    _step(up)
    changed = _changed(up, before)
    assert changed and all(n.startswith((f"layers.{LAYERS - 1}.", "layer_norm.")) for n in changed)
    for bad in [dict(mode="top_n"), dict(mode="top_n", top_n=LAYERS + 1), dict(mode="partial")]:
        with pytest.raises(ValueError):
            up.set_finetune(**bad)


def test_gradient_checkpointing_gives_the_same_gradients(dirs):
    grads = []
    for checkpointing in (False, True):
        up = build(dirs["v3_short"], input_mode="cut")
        up.set_finetune("finetune")
        if checkpointing:
            up.enable_gradient_checkpointing()
        up.train()
        out = up(*batch(SR, 9000))
        sum(h.pow(2).mean() for h in out.hidden_states).backward()
        grads.append({n: p.grad.clone() for n, p in up.encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


# --- options, loading, identity -------------------------------------------------------------------
def test_layer_selection_drops_the_layers_above(dirs):
    wavs, lengths = batch(SR, 7000)
    with torch.no_grad():
        reference = build(dirs["w30"])(wavs, lengths).hidden_states
        ends = build(dirs["w30"], layers=[0, -1])
        assert ends.hidden_sizes == [D, D]
        out = ends(wavs, lengths).hidden_states
        lower = build(dirs["w30"], layers=[1])
        assert len(lower.encoder.layers) == 1 and isinstance(lower.encoder.layer_norm, torch.nn.Identity)
        first = lower(wavs, lengths).hidden_states[0]
    torch.testing.assert_close(out[0], reference[0])
    torch.testing.assert_close(out[1], reference[-1])
    torch.testing.assert_close(first, reference[1])
    with pytest.raises(ValueError, match="out of range"):
        build(dirs["w30"], layers=[LAYERS + 1])


def test_reduced_precision_returns_float32(dirs):
    up = build(dirs["v3_short"], dtype="bfloat16")
    assert up.encoder.conv1.weight.dtype == torch.bfloat16
    out = up(*batch(SR))
    assert all(h.dtype == torch.float32 and torch.isfinite(h).all() for h in out.hidden_states)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_implementations_agree(dirs, attn):
    wavs, lengths = batch(2 * SR, 5000)
    with torch.no_grad():
        a = build(dirs["w30"], input_mode="cut", attn_implementation=attn)(wavs, lengths)
        b = build(dirs["w30"], input_mode="cut")(wavs, lengths)
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        for i, n in enumerate(a.lengths.tolist()):
            assert max_diff(ha[i, :n], hb[i, :n]) <= 1e-5


@pytest.mark.parametrize("arch, safe", [("WhisperModel", True), ("WhisperForConditionalGeneration", False),
                                        ("WhisperForAudioClassification", True)])
def test_every_checkpoint_layout_loads_the_same_encoder(dirs, tmp_path, arch, safe):
    """Weights under ``model.encoder.`` or ``encoder.``, safetensors or a torch .bin: the same encoder."""
    folder = save_tiny_whisper(tmp_path / arch, arch=arch, safe=safe)
    ref = reference_encoder(dirs["w30"]) if arch != "WhisperForAudioClassification" else None
    up = build(folder)
    expected = ref.state_dict() if ref is not None else transformers.WhisperForAudioClassification.from_pretrained(
        folder).encoder.state_dict()
    got = up.encoder.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_sharded_checkpoint(tmp_path):
    folder = str(tmp_path / "sharded")
    torch.manual_seed(0)
    save_tiny_whisper(folder)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder)
    model.save_pretrained(folder + "_s", max_shard_size="20KB")
    WhisperFeatureExtractor().save_pretrained(folder + "_s")
    assert "model.safetensors.index.json" in os.listdir(folder + "_s")
    up = build(folder + "_s")
    assert all(torch.equal(v, model.model.encoder.state_dict()[k]) for k, v in up.encoder.state_dict().items())


def test_not_a_whisper_checkpoint_and_mismatched_extractor(tmp_path):
    config = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=16, conv_dim=(8,), conv_kernel=(10,), conv_stride=(5,))
    transformers.Wav2Vec2Model(config).save_pretrained(str(tmp_path / "w2v2"))
    with pytest.raises(ValueError, match="not a Whisper checkpoint"):
        build(str(tmp_path / "w2v2"))
    folder = save_tiny_whisper(tmp_path / "mismatch", extractor=False)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(folder)
    with pytest.raises(ValueError, match="128 mel bins"):
        build(folder)
    with pytest.raises(ValueError, match="input_mode"):
        build(folder, input_mode="trimmed")


def test_without_preprocessor_config_the_defaults_are_whispers(tmp_path):
    up = build(save_tiny_whisper(tmp_path / "bare", extractor=False))
    assert (up.sample_rate, up.n_fft, up.mel_hop, up.chunk_samples, up.n_mels) == (SR, 400, 160, WINDOW, 80)


def test_identity_names_weights_and_input_mode(dirs, tmp_path):
    folder = save_tiny_whisper(tmp_path / "copy", n_mels=128, positions=100, arch="WhisperModel")
    ident = build(folder).identity()
    json.dumps(ident)
    assert ident["weights"]["path"] == os.path.abspath(folder) and ident["input_mode"] == "padded"
    assert ident["log_mel"] == {"n_mels": 128, "n_fft": 400, "hop": 160, "window_samples": 2 * SR}
    assert build(folder).identity() == ident
    assert build(folder, input_mode="cut").identity() != ident
    os.utime(os.path.join(folder, "model.safetensors"), ns=(1, 1))
    assert build(folder).identity()["weights"]["fingerprint"] != ident["weights"]["fingerprint"]


# --- presets, offline ------------------------------------------------------------------------------
PRESETS = {
    "whisper_tiny": "openai/whisper-tiny",
    "whisper_base": "openai/whisper-base",
    "whisper_small": "openai/whisper-small",
    "whisper_medium": "openai/whisper-medium",
    "whisper_large_v3": "openai/whisper-large-v3",
    "whisper_large_v3_turbo": "openai/whisper-large-v3-turbo",
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_data(name):
    preset = load("upstream", name)
    assert isinstance(preset, Preset) and preset.builder == "whisper"
    assert preset.kwargs == {"model": PRESETS[name]} and preset.weights == PRESETS[name] and preset.description


def test_preset_resolves_to_a_local_copy(dirs):
    up = ser_plugins.create_upstream("whisper_large_v3", model=dirs["v3_short"], input_mode="cut")
    assert isinstance(up, WhisperUpstream) and up.plugin_name == "whisper_large_v3" and up.input_mode == "cut"
    assert len(up(*batch(SR)).hidden_states) == LAYERS + 1


def test_offline_preset_without_a_local_copy_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        ser_plugins.create_upstream("whisper_large_v3", cache_dir=str(tmp_path / "empty_cache"))
    message = str(info.value)
    for needle in ("openai/whisper-large-v3", "model=/path/to/whisper-large-v3",
                   "huggingface-cli download openai/whisper-large-v3", "HF_HUB_OFFLINE"):
        assert needle in message


def test_without_transformers_it_imports_and_says_which_extra(tmp_path):
    """transformers is optional (the ``hf`` extra): the module imports without it, building names the extra."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import upstreams.whisper as w\n"
        "try:\n    w.WhisperUpstream(model='openai/whisper-tiny')\n"
        "except ImportError as exc:\n    print('ERR', exc)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ERR" in res.stdout and "ser-plugins[hf]" in res.stdout


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        build(str(tmp_path))


# --- a frozen run end to end -------------------------------------------------------------------------
def test_frozen_whisper_runs_end_to_end_on_the_demo_corpus(tiny_demo_root, dirs, tmp_path):
    """``ser run``: 30-s padded Whisper encoder, frozen, last layer, mean pooling, 2-layer head (EmoBox)."""
    from helpers import recipe_for
    import yaml

    from ser_plugins import cli

    recipe = recipe_for(tiny_demo_root, name="whisper_frozen", aggregator="mean",
                        classifier={"hidden_sizes": [16]}, training={"epochs": 2, "lr": 1e-3})
    recipe["upstream"] = {"name": "whisper", "model": dirs["w30"]}
    recipe["features"] = {"layer": "last"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out), "--folds", "1", "-q"]) == 0
    fold = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    assert fold["n"] > 0 and 0.0 <= fold["ua"] <= 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["upstream"]["config"]["model"] == dirs["w30"]
    assert run["upstream"]["config"]["input_mode"] == "padded"
    if all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")):
        # log-mel + encoder + head in one ONNX graph, written only when onnxruntime reproduces PyTorch
        assert cli.main(["export", str(out), "--out", str(tmp_path / "onnx")]) == 0
        assert (tmp_path / "onnx" / "model.onnx").is_file()
