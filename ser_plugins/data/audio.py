"""Reading audio: soundfile to decode, soxr to resample, channel average to downmix."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from ser_plugins.errors import UserError


class AudioError(UserError, ValueError):
    """An audio file that cannot be used; ``reason`` is a short key for skip counts."""

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def load_audio(
    path: str,
    sample_rate: int = 16000,
    start: Optional[float] = None,
    end: Optional[float] = None,
    min_samples: int = 1,
) -> np.ndarray:
    """Decode ``path`` (optionally the segment ``start``..``end`` seconds) as mono float32 at ``sample_rate``.

    Multi-channel audio is averaged to mono, any rate is resampled with soxr (high quality).
    Raises ``AudioError`` with a reason key (``unreadable``, ``empty``, ``non_finite``,
    ``too_short``) for audio that cannot be used.
    """
    import soundfile as sf

    try:
        if os.path.getsize(path) == 0:
            raise AudioError(path, "empty", "0-byte file")
    except OSError as exc:
        raise AudioError(path, "unreadable", f"{type(exc).__name__}: {exc}") from None
    try:
        info = sf.info(str(path))
        first = int(round(start * info.samplerate)) if start is not None else 0
        last = int(round(end * info.samplerate)) if end is not None else -1
        data, rate = sf.read(str(path), start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for broken files
        raise AudioError(path, "unreadable", f"{type(exc).__name__}: {exc}") from None
    if data.size == 0:
        raise AudioError(path, "empty", "no samples")
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not np.all(np.isfinite(wav)):
        raise AudioError(path, "non_finite", "NaN or inf samples")
    if rate != sample_rate:
        import soxr

        wav = soxr.resample(wav, rate, sample_rate, quality="HQ").astype(np.float32)
    if wav.shape[0] < min_samples:
        raise AudioError(path, "too_short", f"{wav.shape[0]} samples < {min_samples} at {sample_rate} Hz")
    return np.ascontiguousarray(wav, dtype=np.float32)


def signal_problem(wav: np.ndarray) -> Optional[Tuple[str, str]]:
    """``(reason, description)`` for decoded audio that holds no signal, else None.

    ``silent``: every sample is zero (digital silence). ``constant``: a DC level with no variation
    (zero variance; resampler edges, the first and last 2 %, are ignored). Both give features that
    carry nothing about the speaker's emotion; training skips them and ``ser predict`` flags them.
    """
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak == 0.0:
        return "silent", "digital silence"
    edge = wav.shape[0] // 50 if wav.shape[0] >= 100 else 0
    core = wav[edge : wav.shape[0] - edge]
    if float(np.ptp(core)) <= 1e-5 * peak:
        return "constant", f"a constant (DC) signal at {float(core.mean()):.3g}, no variation"
    return None
