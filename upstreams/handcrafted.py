"""Hand-crafted upstreams: log-mel filter bank, MFCC and log power spectrogram.

All three share one framing (``FramedUpstream``), the Kaldi ``snip-edges`` convention: frame ``t``
covers samples ``[t * hop, t * hop + win)`` and only complete frames are kept, so an utterance of
``L`` samples has exactly ``1 + (L - win) // hop`` frames and the samples after ``L`` (batch
padding) never enter a valid frame.

Short inputs: an utterance shorter than one window has no complete frame. ``forward`` and
``frame_lengths`` reject it with a ``ValueError`` rather than inventing a frame of zeros;
``min_samples`` (= the window length) announces the limit, so ``ser_plugins.data.audio.load_audio``
skips such files as ``too_short`` before they reach the model.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ser_plugins.plugins.contracts import Upstream, UpstreamOutput, lengths_to_mask

NORMALIZE_MODES: Tuple[Optional[str], ...] = (None, "utterance")
_CMVN_EPS = 1e-5


def _ms_to_samples(value_ms: float, sample_rate: int, name: str) -> int:
    samples = int(round(float(value_ms) * sample_rate / 1000.0))
    if samples < 1:
        raise ValueError(f"{name}={value_ms!r} ms is less than one sample at {sample_rate} Hz")
    return samples


def _next_power_of_two(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


def utterance_cmvn(feats: torch.Tensor, lengths: torch.Tensor, eps: float = _CMVN_EPS) -> torch.Tensor:
    """Standardise every utterance of ``[B, T, D]`` to zero mean, unit variance over its valid frames."""
    mask = lengths_to_mask(lengths, feats.shape[1]).unsqueeze(-1)
    count = lengths.clamp(min=1).to(feats.dtype).view(-1, 1, 1)
    valid = feats.masked_fill(~mask, 0.0)
    mean = valid.sum(1, keepdim=True) / count
    var = (valid - mean).masked_fill(~mask, 0.0).pow(2).sum(1, keepdim=True) / count
    return (feats - mean) / torch.sqrt(var + eps)


class FramedUpstream(Upstream):
    """Base of the hand-crafted upstreams: snip-edges framing, power spectrum, normalisation.

    Subclasses implement ``_features(power [B, T, n_fft // 2 + 1]) -> [B, T, D]`` and set
    ``hidden_sizes``. There are no trainable parameters, so only the ``frozen`` mode is supported.
    """

    def __init__(
        self,
        *,
        n_fft: Optional[int],
        win_ms: float,
        hop_ms: float,
        sample_rate: int,
        normalize: Optional[str],
        log_offset: float,
    ) -> None:
        super().__init__()
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        self.sample_rate = int(sample_rate)
        self.win_length = _ms_to_samples(win_ms, self.sample_rate, "win_ms")
        self.hop_length = _ms_to_samples(hop_ms, self.sample_rate, "hop_ms")
        self.n_fft = _next_power_of_two(self.win_length) if n_fft is None else int(n_fft)
        if self.n_fft < self.win_length:
            raise ValueError(
                f"n_fft={self.n_fft} is shorter than the window ({self.win_length} samples = "
                f"{win_ms} ms at {self.sample_rate} Hz)"
            )
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if not float(log_offset) > 0:
            raise ValueError(f"log_offset must be positive, got {log_offset!r}")
        self.normalize = normalize
        self.utterance_normalized = normalize == "utterance"
        self.log_offset = float(log_offset)
        self.min_samples = self.win_length
        # Hann window (periodic, as librosa/scipy) at the start of an n_fft buffer; the waveform is
        # right-padded by n_fft - win so that stft frame t holds exactly samples [t*hop, t*hop+win).
        window = torch.zeros(self.n_fft)
        window[: self.win_length] = torch.hann_window(self.win_length, periodic=True)
        self.register_buffer("window", window, persistent=False)
        self.config: Dict[str, Any] = {
            "win_ms": float(win_ms),
            "hop_ms": float(hop_ms),
            "n_fft": self.n_fft,
            "sample_rate": self.sample_rate,
            "normalize": normalize,
            "log_offset": self.log_offset,
        }

    @property
    def num_bins(self) -> int:
        """Number of one-sided FFT bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Exact snip-edges frame count ``1 + (L - win) // hop``; raises for ``L < win``."""
        wav_lengths = torch.as_tensor(wav_lengths).long()
        if not torch.compiler.is_exporting() and wav_lengths.numel() and int(wav_lengths.min()) < self.win_length:
            raise ValueError(
                f"{type(self).__name__} needs at least {self.win_length} samples (one "
                f"{1000.0 * self.win_length / self.sample_rate:g} ms window) per utterance; got a "
                f"length of {int(wav_lengths.min())}"
            )
        return 1 + torch.div(wav_lengths - self.win_length, self.hop_length, rounding_mode="floor")

    def power_spectrum(self, wavs: torch.Tensor) -> torch.Tensor:
        """Power spectrum ``[B, T, n_fft // 2 + 1]`` of every complete snip-edges frame of ``wavs``."""
        padded = F.pad(wavs, (0, self.n_fft - self.win_length))
        spec = torch.stft(
            padded,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.window.to(padded.dtype),
            center=False,
            return_complex=True,
        )
        return torch.view_as_real(spec).pow(2).sum(-1).transpose(1, 2)

    def _features(self, power: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_inputs(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        if wavs.dim() != 2 or wavs.shape[0] == 0:
            raise ValueError(f"wavs must be a non-empty [batch, samples], got shape {tuple(wavs.shape)}")
        wav_lengths = torch.as_tensor(wav_lengths, device=wavs.device).long()
        if wav_lengths.shape != (wavs.shape[0],):
            raise ValueError(
                f"wav_lengths must have shape ({wavs.shape[0]},), got {tuple(wav_lengths.shape)}"
            )
        if not torch.compiler.is_exporting() and int(wav_lengths.max()) > wavs.shape[1]:
            raise ValueError(
                f"wav_lengths max {int(wav_lengths.max())} exceeds the {wavs.shape[1]} samples of wavs"
            )
        return wav_lengths

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        """Features ``[B, T, D]`` (padded frames are 0) and their frame lengths ``[B]``.

        Computed in float32 (float64 for float64 input), with autocast disabled.
        """
        wav_lengths = self._check_inputs(wavs, wav_lengths)
        lengths = self.frame_lengths(wav_lengths)
        dtype = torch.promote_types(wavs.dtype, torch.float32)
        if not torch.compiler.is_exporting():  # exported graphs take unpadded rows (docs/plugins.md)
            wavs = wavs[:, : int(wav_lengths.max())]
        wavs = wavs.to(dtype)
        with torch.autocast(device_type=wavs.device.type, enabled=False):  # full precision under AMP
            feats = self._features(self.power_spectrum(wavs))
        if self.utterance_normalized:
            feats = utterance_cmvn(feats, lengths)
        mask = lengths_to_mask(lengths, feats.shape[1]).unsqueeze(-1)
        return UpstreamOutput([feats.masked_fill(~mask, 0.0)], lengths)


class SpectrogramUpstream(FramedUpstream):
    """Log power spectrum ``log(|STFT|^2 + log_offset)``: ``n_fft // 2 + 1`` features per frame."""

    def __init__(
        self,
        n_fft: int = 400,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        normalize: Optional[str] = None,
        sample_rate: int = 16000,
        log_offset: float = 1e-6,
    ) -> None:
        super().__init__(n_fft=n_fft, win_ms=win_ms, hop_ms=hop_ms, sample_rate=sample_rate,
                         normalize=normalize, log_offset=log_offset)
        self.hidden_sizes = [self.num_bins]

    def _features(self, power: torch.Tensor) -> torch.Tensor:
        return torch.log(power + self.log_offset)


class FbankUpstream(FramedUpstream):
    """Log-mel filter bank (librosa's mel filters on the power spectrum): ``n_mels`` features.

    ``n_fft`` defaults to the next power of two of the window (512 for 25 ms at 16 kHz).
    """

    def __init__(
        self,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: Optional[int] = None,
        f_min: float = 20.0,
        f_max: Optional[float] = None,
        normalize: Optional[str] = None,
        sample_rate: int = 16000,
        log_offset: float = 1e-6,
    ) -> None:
        super().__init__(n_fft=n_fft, win_ms=win_ms, hop_ms=hop_ms, sample_rate=sample_rate,
                         normalize=normalize, log_offset=log_offset)
        n_mels = int(n_mels)
        nyquist = self.sample_rate / 2.0
        f_max = nyquist if f_max is None else float(f_max)
        if n_mels < 1:
            raise ValueError(f"n_mels must be at least 1, got {n_mels}")
        if not 0.0 <= float(f_min) < f_max <= nyquist:
            raise ValueError(
                f"need 0 <= f_min < f_max <= {nyquist:g} Hz (Nyquist), got f_min={f_min!r}, f_max={f_max!r}"
            )
        import librosa

        mel = librosa.filters.mel(sr=self.sample_rate, n_fft=self.n_fft, n_mels=n_mels,
                                  fmin=float(f_min), fmax=f_max)
        self.register_buffer("mel_filters", torch.from_numpy(mel).float(), persistent=False)
        self.n_mels = n_mels
        self.hidden_sizes = [n_mels]
        self.config.update({"n_mels": n_mels, "f_min": float(f_min), "f_max": f_max})

    def log_mel(self, power: torch.Tensor) -> torch.Tensor:
        """``log(mel_filters @ power + log_offset)`` for a power spectrum ``[B, T, bins]``."""
        return torch.log(power @ self.mel_filters.to(power.dtype).T + self.log_offset)

    def _features(self, power: torch.Tensor) -> torch.Tensor:
        return self.log_mel(power)


class MfccUpstream(FbankUpstream):
    """MFCC: orthonormal DCT-II of the log-mel filter bank, first ``n_mfcc`` coefficients."""

    def __init__(
        self,
        n_mfcc: int = 40,
        n_mels: int = 80,
        win_ms: float = 25.0,
        hop_ms: float = 10.0,
        n_fft: Optional[int] = None,
        f_min: float = 20.0,
        f_max: Optional[float] = None,
        normalize: Optional[str] = None,
        sample_rate: int = 16000,
        log_offset: float = 1e-6,
    ) -> None:
        super().__init__(n_mels=n_mels, win_ms=win_ms, hop_ms=hop_ms, n_fft=n_fft, f_min=f_min,
                         f_max=f_max, normalize=normalize, sample_rate=sample_rate,
                         log_offset=log_offset)
        n_mfcc = int(n_mfcc)
        if not 1 <= n_mfcc <= self.n_mels:
            raise ValueError(f"n_mfcc must be between 1 and n_mels={self.n_mels}, got {n_mfcc}")
        import numpy as np
        from scipy.fft import dct

        # Row k of the orthonormal DCT-II matrix maps a log-mel vector to cepstral coefficient k.
        basis = dct(np.eye(self.n_mels), type=2, norm="ortho", axis=0)[:n_mfcc]
        self.register_buffer("dct_matrix", torch.from_numpy(basis).float(), persistent=False)
        self.n_mfcc = n_mfcc
        self.hidden_sizes = [n_mfcc]
        self.config["n_mfcc"] = n_mfcc

    def _features(self, power: torch.Tensor) -> torch.Tensor:
        return self.log_mel(power) @ self.dct_matrix.to(power.dtype).T
