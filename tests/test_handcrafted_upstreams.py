"""Contract tests for the hand-crafted upstreams (fbank, mfcc, spectrogram), built through the registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import ser_plugins
from ser_plugins import list_plugins
from ser_plugins.plugins.contracts import UpstreamOutput
from ser_plugins.testing import check_upstream

HANDCRAFTED = sorted(s.name for s in list_plugins("upstream") if s.value.startswith("upstreams.handcrafted:"))
SR = 16000
WIN, HOP = 400, 160  # 25 ms / 10 ms at 16 kHz
EXPECTED_DIM = {"fbank": 80, "mfcc": 40, "spectrogram": 201}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wav(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.RandomState(seed).randn(n).astype(np.float32) * 0.1)


def _features(upstream, wav: torch.Tensor) -> torch.Tensor:
    out = upstream(wav[None], torch.tensor([wav.shape[0]]))
    return out.hidden_states[0][0]


def test_all_handcrafted_upstreams_are_registered():
    assert HANDCRAFTED == ["fbank", "mfcc", "spectrogram"]


@pytest.mark.parametrize("name", HANDCRAFTED)
def test_declared_sizes_match_output(name):
    up = ser_plugins.create_upstream(name)
    lengths = torch.tensor([2000, 1000, WIN])
    out = up(torch.randn(3, 2000), lengths)
    assert isinstance(out, UpstreamOutput)
    assert up.num_layers == len(out.hidden_states) == 1
    feats = out.hidden_states[0]
    assert feats.shape == (3, int(out.lengths.max()), up.hidden_size)
    assert up.hidden_sizes == [EXPECTED_DIM[name]]
    assert (up.sample_rate, up.hop_length, up.min_samples) == (SR, HOP, WIN)
    assert list(up.parameters()) == []
    assert up.supported_finetune_modes() == ("frozen",)
    assert up.state_dict() == {}  # derived buffers are not checkpointed


@pytest.mark.parametrize("name", HANDCRAFTED)
def test_frame_lengths_are_exact_and_padding_is_zero(name):
    up = ser_plugins.create_upstream(name)
    wav_lengths = torch.tensor([3000, WIN, WIN + HOP - 1, WIN + HOP, 1999])
    expected = 1 + (wav_lengths - WIN) // HOP
    assert expected.tolist() == [17, 1, 1, 2, 10]
    assert up.frame_lengths(wav_lengths).tolist() == expected.tolist()
    out = up(torch.randn(5, 3200), wav_lengths)  # extra padding beyond the longest is trimmed
    assert out.lengths.tolist() == expected.tolist()
    feats = out.hidden_states[0]
    assert feats.shape[1] == int(expected.max())
    for i, n in enumerate(expected.tolist()):
        assert torch.all(feats[i, n:] == 0)
        assert torch.all(feats[i, :n].abs().sum(-1) > 0)


@pytest.mark.parametrize("normalize", [None, "utterance"])
@pytest.mark.parametrize("name", HANDCRAFTED)
def test_handcrafted_upstreams_keep_the_plugin_contract(name, normalize):
    """The checker third parties run: shapes, exact lengths, padding (loud noise) never reaching valid frames, ..."""
    report = check_upstream(name, normalize=normalize)
    assert {"output", "exact_frames", "padding_invariance", "deterministic", "identity"} <= set(report)


@pytest.mark.parametrize("name", HANDCRAFTED)
def test_utterance_normalisation(name):
    assert ser_plugins.create_upstream(name).utterance_normalized is False
    up = ser_plugins.create_upstream(name, normalize="utterance")
    assert up.utterance_normalized is True
    lengths = torch.tensor([3000, 1200])
    out = up(torch.randn(2, 3000), lengths)
    for i, n in enumerate(out.lengths.tolist()):
        valid = out.hidden_states[0][i, :n].double()
        assert valid.mean(0).abs().max() < 1e-5
        assert torch.allclose(valid.std(0, unbiased=False), torch.ones_like(valid[0]), atol=1e-3)


@pytest.mark.parametrize("name", HANDCRAFTED)
def test_inputs_shorter_than_a_window_are_rejected(name):
    up = ser_plugins.create_upstream(name)
    with pytest.raises(ValueError, match="at least 400 samples"):
        up(torch.randn(2, 1000), torch.tensor([1000, WIN - 1]))
    with pytest.raises(ValueError, match="at least 400 samples"):
        up.frame_lengths(torch.tensor([WIN - 1]))


@pytest.mark.parametrize("name", HANDCRAFTED)
def test_bad_inputs_are_rejected(name):
    up = ser_plugins.create_upstream(name)
    with pytest.raises(ValueError, match="exceeds"):
        up(torch.randn(1, 1000), torch.tensor([1001]))
    with pytest.raises(ValueError, match=r"non-empty \[batch, samples\]"):
        up(torch.randn(1000), torch.tensor([1000]))
    with pytest.raises(ValueError, match="wav_lengths must have shape"):
        up(torch.randn(2, 1000), torch.tensor([1000]))


@pytest.mark.parametrize("name", HANDCRAFTED)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"normalize": "global"}, "normalize must be one of"),
        ({"n_fft": 256}, "n_fft=256 is shorter than the window"),
        ({"hop_ms": 0.01}, "less than one sample"),
        ({"log_offset": 0.0}, "log_offset must be positive"),
    ],
)
def test_bad_options_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ser_plugins.create_upstream(name, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("fbank", {"f_max": 9000.0}, "Nyquist"),
        ("fbank", {"f_min": 4000.0, "f_max": 3000.0}, "f_min < f_max"),
        ("fbank", {"n_mels": 0}, "n_mels must be at least 1"),
        ("mfcc", {"n_mfcc": 81}, "n_mfcc must be between 1 and n_mels=80"),
    ],
)
def test_bad_mel_options_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ser_plugins.create_upstream(name, **kwargs)


def test_identity_records_the_effective_config():
    a = ser_plugins.create_upstream("fbank").identity()
    b = ser_plugins.create_upstream("fbank", n_mels=64).identity()
    assert a["class"] == "upstreams.handcrafted.FbankUpstream"
    assert a["config"]["n_mels"] == 80 and a["config"]["n_fft"] == 512 and a["config"]["f_max"] == 8000.0
    assert a != b


def _librosa_frames(y: np.ndarray, n_fft: int) -> np.ndarray:
    """Pad ``y`` so that librosa's centred-window frames (center=False) are our snip-edges frames.

    librosa pads a ``WIN``-sample window to ``n_fft`` with ``(n_fft - WIN) // 2`` zeros on the left,
    so frame t of the padded signal covers original samples ``[t*HOP, t*HOP + WIN)``.
    """
    left = (n_fft - WIN) // 2
    return np.pad(y, (left, n_fft - WIN - left))


# Tolerance: our features are float32 (torch STFT + float32 filters); the reference runs librosa's
# STFT in float64. A float32 FFT of 512 points has relative power errors ~1e-6, and the log turns a
# relative error into an absolute one (measured max: ~1e-6), so 1e-4 leaves a 100x margin, while
# a framing mismatch of a single sample already differs by ~0.03 (8 samples: ~0.3).
LOG_ATOL = 1e-4


def test_fbank_matches_librosa_melspectrogram():
    import librosa

    up = ser_plugins.create_upstream("fbank", n_mels=40, f_min=20.0)
    y = np.random.RandomState(7).randn(4321) * 0.1
    y[1500:2500] = 0.0  # silent frames exercise the log offset
    mel = librosa.feature.melspectrogram(
        y=_librosa_frames(y, 512), sr=SR, n_fft=512, hop_length=HOP, win_length=WIN,
        window="hann", center=False, power=2.0, n_mels=40, fmin=20.0, fmax=SR / 2,
    )
    expected = np.log(mel.T + 1e-6)
    ours = _features(up, torch.from_numpy(y).float()).numpy()
    assert ours.shape == expected.shape == (1 + (4321 - WIN) // HOP, 40)
    np.testing.assert_allclose(ours, expected, atol=LOG_ATOL, rtol=0)


def test_spectrogram_matches_librosa_stft():
    import librosa

    up = ser_plugins.create_upstream("spectrogram")
    y = np.random.RandomState(8).randn(3000) * 0.1
    power = np.abs(librosa.stft(y, n_fft=400, hop_length=HOP, window="hann", center=False)) ** 2
    ours = _features(up, torch.from_numpy(y).float()).numpy()
    np.testing.assert_allclose(ours, np.log(power.T + 1e-6), atol=LOG_ATOL, rtol=0)


def test_mfcc_is_orthonormal_dct_of_fbank():
    from scipy.fft import dct

    y = _wav(3000, 9)
    log_mel = _features(ser_plugins.create_upstream("fbank", n_mels=40), y).double().numpy()
    mfcc = _features(ser_plugins.create_upstream("mfcc", n_mels=40, n_mfcc=13), y).double().numpy()
    expected = dct(log_mel, type=2, norm="ortho", axis=-1)[:, :13]
    np.testing.assert_allclose(mfcc, expected, atol=1e-4, rtol=1e-5)


def test_double_precision_input_is_supported():
    up = ser_plugins.create_upstream("mfcc")
    y = _wav(2000, 10)
    feats64 = _features(up, y.double())
    assert feats64.dtype == torch.float64
    torch.testing.assert_close(feats64.float(), _features(up, y), atol=1e-4, rtol=0)


def test_features_ignore_autocast():
    up = ser_plugins.create_upstream("fbank")
    y = _wav(2000, 11)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        feats = _features(up, y)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, _features(up, y))
