"""Emotion over a long recording: sliding windows streamed from disk, a CSV timeline and a PNG.

The file is read in blocks (soundfile), mixed down to mono and resampled block by block (soxr's
streaming resampler); windows of ``window`` seconds every ``hop`` seconds are cut from a buffer
that never holds more than one window plus one block, scored in small batches of equal-length
windows by any ``ser_plugins.deploy.scoring.WindowScorer`` (``probabilities([B, S]) -> [B, C(+K)]``, ``labels``,
``sample_rate``, ``min_samples``: the ONNX engine or the PyTorch graph), and written to the CSV as they come.
Memory is bounded by the block, the window batch and one row of probabilities per window.

The last window ends at the end of the recording (it overlaps the one before it when the length
is not a whole number of hops); a recording shorter than one window is one window.

Optional energy voice-activity detection (``vad_db``): a window is scored only when at least
``min_speech`` of its 20 ms frames are louder than ``vad_db`` dBFS; the others are written with
empty probabilities and counted.

A scorer with continuous targets (a regression or multitask run: ``targets``, e.g. arousal, valence,
dominance) gives each window's target values after its class probabilities; the CSV has one column
per target (after the class columns) and the PNG a panel of the targets' curves (under the
probabilities' for multitask).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ser_plugins.data.audio import AudioError
from ser_plugins.deploy.scoring import WindowScorer, scorer_targets
from ser_plugins.errors import UserError
from ser_plugins.runtime.atomic import atomic_path

log = logging.getLogger("ser_plugins")

VAD_FRAME_SECONDS = 0.02


class TimelineError(UserError, ValueError):
    """Window settings that cannot work."""


@dataclass
class TimelineResult:
    """What ``analyse_recording`` wrote and counted."""

    csv: Path
    png: Path
    seconds: float
    windows: int
    scored: int
    skipped: Dict[str, int] = field(default_factory=dict)
    label_share: Dict[str, float] = field(default_factory=dict)
    #: each target's mean value over the scored windows (runs with continuous targets)
    target_means: Dict[str, float] = field(default_factory=dict)


def _mono_blocks(path: Path, sample_rate: int, block_seconds: float) -> Iterator[np.ndarray]:
    """Mono float32 blocks of ``path`` at ``sample_rate`` (streaming resample when the file's rate differs)."""
    import soundfile as sf

    try:
        handle = sf.SoundFile(str(path))
    except Exception as exc:  # soundfile raises several types for broken files
        raise AudioError(str(path), "unreadable", f"{type(exc).__name__}: {exc}") from None
    with handle:
        resampler = None
        if handle.samplerate != sample_rate:
            import soxr

            resampler = soxr.ResampleStream(handle.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
        frames = max(1, int(block_seconds * handle.samplerate))
        while True:
            try:
                block = handle.read(frames, dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001 - a file broken part-way
                raise AudioError(str(path), "unreadable", f"{type(exc).__name__}: {exc}") from None
            last = len(block) < frames
            mono = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
            if resampler is not None:
                mono = resampler.resample_chunk(np.ascontiguousarray(mono, dtype=np.float32), last=last)
            if len(mono):
                yield np.asarray(mono, dtype=np.float32)
            if last:
                return


def stream_windows(
    path: Path, sample_rate: int, window: int, hop: int, min_samples: int = 1, block_seconds: float = 10.0
) -> Iterator[Tuple[int, np.ndarray]]:
    """``(start sample, samples)`` of every window, read block by block (the buffer stays small)."""
    buf = np.zeros(0, dtype=np.float32)
    buf_start = 0  # absolute index of buf[0]
    next_start = 0
    emitted_end = 0
    for block in _mono_blocks(Path(path), sample_rate, block_seconds):
        buf = np.concatenate([buf, block])
        end = buf_start + len(buf)
        while next_start + window <= end:
            yield next_start, buf[next_start - buf_start : next_start - buf_start + window].copy()
            emitted_end = next_start + window
            next_start += hop
        keep_from = max(buf_start, min(next_start, end - window))
        buf = buf[keep_from - buf_start :]
        buf_start = keep_from
    total = buf_start + len(buf)
    if emitted_end == 0:
        if total < max(min_samples, 1):
            raise AudioError(str(path), "too_short", f"{total} samples < {max(min_samples, 1)} at {sample_rate} Hz")
        yield 0, buf[:total].copy()
    elif emitted_end < total:
        yield total - window, buf[len(buf) - window :].copy()


def speech_fraction(samples: np.ndarray, sample_rate: int, threshold_db: float) -> float:
    """Share of 20 ms frames whose RMS level is above ``threshold_db`` dBFS."""
    n = max(1, int(VAD_FRAME_SECONDS * sample_rate))
    count = max(1, len(samples) // n)
    frames = samples[: count * n].reshape(count, -1) if len(samples) >= n else samples.reshape(1, -1)
    rms = np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))
    level = 20.0 * np.log10(np.maximum(rms, 1e-10))
    return float(np.mean(level > threshold_db))


def _expected_windows(path: Path, sample_rate: int, window: int, hop: int) -> Optional[int]:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - the stream reports it properly
        return None
    total = int(math.ceil(info.frames * sample_rate / info.samplerate))
    if total <= window:
        return 1
    full = 1 + (total - window) // hop
    return full + (1 if (full - 1) * hop + window < total else 0)


def analyse_recording(
    path: Path,
    scorer: WindowScorer,
    window_s: float,
    hop_s: float,
    out_dir: Path,
    vad_db: Optional[float] = None,
    min_speech: float = 0.3,
    batch_size: int = 8,
    progress: bool = True,
) -> TimelineResult:
    """Score ``path`` in sliding windows; write ``<stem>.timeline.csv`` and ``.png`` to ``out_dir``."""
    from tqdm.auto import tqdm

    if not window_s > 0 or not hop_s > 0:
        raise TimelineError(f"--window and --hop must be positive seconds, got {window_s!r} and {hop_s!r}")
    if not 0.0 <= min_speech <= 1.0:
        raise TimelineError(f"--min-speech must be between 0 and 1, got {min_speech!r}")
    rate = int(scorer.sample_rate)
    window, hop = int(round(window_s * rate)), int(round(hop_s * rate))
    if window < scorer.min_samples:
        raise TimelineError(
            f"--window {window_s:g} s is {window} samples, shorter than the model's {scorer.min_samples}-sample minimum"
        )
    labels, targets = list(scorer.labels), scorer_targets(scorer)
    path, out_dir = Path(path), Path(out_dir)
    csv_path, png_path = out_dir / f"{path.stem}.timeline.csv", out_dir / f"{path.stem}.timeline.png"
    starts: List[int] = []
    ends: List[int] = []
    probs: List[Optional[np.ndarray]] = []
    skipped: Dict[str, int] = {}
    bar = tqdm(total=_expected_windows(path, rate, window, hop), desc=path.name, unit="window", disable=not progress)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["start", "end", "speech"] + [f"p_{lab}" for lab in labels] + (["label"] if labels else []) + targets
        )
        pending: List[Tuple[int, np.ndarray, Optional[float]]] = []

        def flush() -> None:
            if not pending:
                return
            scored = scorer.probabilities(np.stack([w for _, w, _ in pending]))
            for row, (start, wave, speech) in enumerate(pending):
                _write(writer, start, len(wave), speech, scored[row], labels, rate, targets)
                starts.append(start)
                ends.append(start + len(wave))
                probs.append(scored[row])
            pending.clear()
            handle.flush()

        for start, wave in stream_windows(path, rate, window, hop, scorer.min_samples):
            bar.update(1)
            speech = speech_fraction(wave, rate, vad_db) if vad_db is not None else None
            reason = None
            if not np.all(np.isfinite(wave)):
                reason = "non_finite"
            elif speech is not None and speech < min_speech:
                reason = "no_speech"
            if reason is not None:
                flush()  # keep rows in time order
                skipped[reason] = skipped.get(reason, 0) + 1
                _write(writer, start, len(wave), speech, None, labels, rate, targets)
                starts.append(start)
                ends.append(start + len(wave))
                probs.append(None)
                continue
            if pending and len(pending[0][1]) != len(wave):
                flush()
            pending.append((start, wave, speech))
            if len(pending) >= batch_size:
                flush()
        flush()
    bar.close()
    scored_probs = [p for p in probs if p is not None]
    share = {lab: 0.0 for lab in labels}
    for p in scored_probs if labels else []:
        share[labels[int(np.argmax(p[: len(labels)]))]] += 1.0 / len(scored_probs)
    c = len(labels)
    means = {
        t: float(np.mean([p[c + k] for p in scored_probs], dtype=np.float64)) if scored_probs else math.nan
        for k, t in enumerate(targets)
    }
    if skipped:
        log.info(
            "%s: %s of %d windows not scored (%s)",
            path.name,
            sum(skipped.values()),
            len(probs),
            ", ".join(f"{k}: {v}" for k, v in skipped.items()),
        )
    plot_timeline(
        starts,
        ends,
        probs,
        labels,
        rate,
        png_path,
        title=f"{path.name}: {window_s:g} s windows every {hop_s:g} s",
        targets=targets,
    )
    return TimelineResult(
        csv_path,
        png_path,
        (ends[-1] if ends else 0) / rate,
        len(probs),
        len(scored_probs),
        skipped,
        {k: round(v, 4) for k, v in share.items()},
        {k: round(v, 4) for k, v in means.items()},
    )


def _write(
    writer,
    start: int,
    length: int,
    speech: Optional[float],
    probs: Optional[np.ndarray],
    labels: List[str],
    rate: int,
    targets: Sequence[str] = (),
) -> None:
    """One CSV row: times, speech share, the class probabilities and label, then the target values."""
    cells = [f"{start / rate:.3f}", f"{(start + length) / rate:.3f}", "" if speech is None else f"{speech:.3f}"]
    c = len(labels)
    if probs is None:
        cells += [""] * c + ([""] if labels else []) + [""] * len(targets)
    else:
        if labels:
            cells += [f"{p:.5f}" for p in probs[:c]] + [labels[int(np.argmax(probs[:c]))]]
        cells += [f"{v:.5f}" for v in probs[c : c + len(targets)]]
    writer.writerow(cells)


def plot_timeline(
    starts: List[int],
    ends: List[int],
    probs: List[Optional[np.ndarray]],
    labels: List[str],
    rate: int,
    path: Path,
    title: str = "",
    targets: Sequence[str] = (),
) -> None:
    """Class probabilities at each window's centre over time; windows not scored are shaded grey around their centre.

    With ``targets`` (each row: the class probabilities, then the target values) the targets' curves
    are drawn in a panel of their own: under the probabilities' (multitask), or alone (regression).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    centres = (np.asarray(starts) + np.asarray(ends)) / 2.0 / rate
    total = (max(ends) if ends else 0) / rate
    scale, unit = (60.0, "min") if total > 600 else (1.0, "s")
    targets = list(targets)
    matrix = np.full((len(probs), len(labels) + len(targets)), np.nan)
    for i, p in enumerate(probs):
        if p is not None:
            matrix[i] = p[: matrix.shape[1]]
    panels = ([("probability", labels, 0)] if labels or not targets else []) + (
        [("value", targets, len(labels))] if targets else []
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.5 * len(panels)), sharex=True, squeeze=False)
    step = float(np.median(np.diff(centres))) if len(centres) > 1 else (ends[0] - starts[0]) / rate if ends else 0.0
    for ax, (ylabel, names, first) in zip(axes[:, 0], panels):
        for k, name in enumerate(names):
            ax.plot(centres / scale, matrix[:, first + k], label=name, linewidth=1.0)
        for i, p in enumerate(probs):  # each window's own slot around its centre, so overlapping windows don't smear
            if p is None:
                ax.axvspan(
                    (centres[i] - step / 2) / scale,
                    (centres[i] + step / 2) / scale,
                    color="0.85",
                    linewidth=0,
                    zorder=0,
                )
        if ylabel == "probability":
            ax.set_ylim(0, 1)
        ax.set_xlim(0, max(total / scale, 1e-9))
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper right", ncol=max(len(names), 1), fontsize="small")
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel(f"time ({unit})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
