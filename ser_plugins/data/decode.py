"""The validation pass: every utterance decoded once, unusable audio skipped with a counted reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Sequence

import numpy as np
from tqdm.auto import tqdm

from ser_plugins.data.audio import AudioError, load_audio, signal_problem
from ser_plugins.errors import UserError
from ser_plugins.plugins.contracts import Utterance

log = logging.getLogger("ser_plugins")


class DataError(UserError, RuntimeError):
    """Audio problems that stop a run in strict mode (or when nothing usable is left)."""


@dataclass
class AudioSet:
    """Decoded, resampled mono audio of every usable utterance, and the skips by reason."""

    waves: Dict[str, np.ndarray] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)  # utterance id -> reason


def decode_corpus(
    utterances: Sequence[Utterance], sample_rate: int, min_samples: int = 1, strict: bool = False, progress: bool = True
) -> AudioSet:
    """Decode every utterance once (the validation pass): skip unusable audio with a counted reason.

    Reasons: those of ``load_audio`` plus ``silent`` and ``constant`` (``signal_problem``).

    With ``strict`` the first unusable file raises ``DataError`` instead.
    """
    out = AudioSet()
    for u in tqdm(utterances, desc="decode audio", unit="utt", disable=not progress, leave=False):
        try:
            wav = load_audio(u.path, sample_rate, u.start, u.end, min_samples=min_samples)
        except AudioError as exc:
            if strict:
                raise DataError(f"utterance {u.id}: {exc} (data.strict is on)") from None
            log.warning("skipping utterance %s: %s", u.id, exc)
            out.skipped[u.id] = exc.reason
            continue
        problem = signal_problem(wav)
        if problem is not None:
            reason, what = problem
            if strict:
                raise DataError(f"utterance {u.id}: {u.path} is {what} (data.strict is on)")
            log.warning("skipping utterance %s: %s is %s", u.id, u.path, what)
            out.skipped[u.id] = reason
            continue
        out.waves[u.id] = wav
    return out
