"""Sliding-window analysis of long recordings: streamed windows, energy VAD, CSV + PNG, both engines."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_plugins.data.audio import AudioError, load_audio
from ser_plugins.deploy.timeline import TimelineError, analyse_recording, speech_fraction, stream_windows

RATE = 16000


def tone(seconds: float, rate: int = RATE, amp: float = 0.3, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class LevelScorer:
    """A stand-in model: probabilities from each window's loudness (real engines are tested below)."""

    labels = ["quiet", "loud"]
    sample_rate = RATE
    min_samples = 400

    def __init__(self) -> None:
        self.batches = []

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        self.batches.append(windows.shape)
        rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
        loud = np.clip(rms / 0.2, 0, 1)
        return np.stack([1 - loud, loud], axis=1).astype(np.float32)


def read_rows(path: Path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("block_seconds", [0.7, 10.0])
def test_windows_are_exact_slices_of_the_decoded_file(tmp_path, block_seconds):
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(10.3 * RATE))).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(str(path), wave, RATE, subtype="FLOAT")
    full = load_audio(str(path), RATE)
    got = list(stream_windows(path, RATE, 3 * RATE, RATE, block_seconds=block_seconds))
    starts = [s for s, _ in got]
    assert starts == [i * RATE for i in range(8)] + [len(full) - 3 * RATE]  # the last window ends at the end
    for start, samples in got:
        assert np.array_equal(samples, full[start:start + 3 * RATE])


def test_stereo_44k_is_mixed_down_and_resampled_in_blocks(tmp_path):
    wave = tone(6.0, 44100)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([wave, 0.5 * wave], axis=1), 44100, subtype="FLOAT")
    full = load_audio(str(path), RATE)  # the one-shot decoder: channel mean, soxr
    got = list(stream_windows(path, RATE, 2 * RATE, RATE, block_seconds=0.5))
    assert len(got) == 5 and all(len(w) == 2 * RATE for _, w in got)
    for start, samples in got:  # streaming and one-shot resampling agree to well below a quantisation step
        assert np.max(np.abs(samples - full[start:start + 2 * RATE])) < 1e-3


def test_short_recordings_give_one_window_or_a_clear_error(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(str(path), tone(1.2), RATE)
    ((start, samples),) = list(stream_windows(path, RATE, 3 * RATE, RATE, min_samples=400))
    assert start == 0 and len(samples) == int(1.2 * RATE)
    sf.write(str(path), tone(0.01), RATE)
    with pytest.raises(AudioError, match="too_short"):
        list(stream_windows(path, RATE, 3 * RATE, RATE, min_samples=400))


def test_speech_fraction_of_silence_tone_and_half_half():
    assert speech_fraction(np.zeros(RATE, np.float32), RATE, -40) == 0.0
    assert speech_fraction(tone(1.0), RATE, -40) == 1.0
    assert speech_fraction(np.concatenate([np.zeros(RATE // 2, np.float32), tone(0.5)]), RATE, -40) == 0.5


def test_timeline_csv_png_and_vad_skips(tmp_path):
    gap = np.zeros(4 * RATE, np.float32)
    wave = np.concatenate([tone(5.0, amp=0.05), gap, tone(5.0, amp=0.3)])  # 14 s: soft, silent, loud
    path = tmp_path / "talk.wav"
    sf.write(str(path), wave, RATE)
    scorer = LevelScorer()
    res = analyse_recording(path, scorer, 3.0, 1.0, tmp_path / "out", vad_db=-40, batch_size=4, progress=False)
    rows = read_rows(res.csv)
    assert list(rows[0]) == ["start", "end", "speech", "p_quiet", "p_loud", "label"]
    assert [float(r["start"]) for r in rows] == [float(i) for i in range(12)]  # 14 s, 3 s windows, 1 s hop
    silent = [r for r in rows if r["label"] == ""]
    assert [float(r["start"]) for r in silent] == [5.0, 6.0] and all(r["p_loud"] == "" for r in silent)
    assert res.skipped == {"no_speech": 2} and res.scored == 10 and res.windows == 12
    assert rows[0]["label"] == "quiet" and rows[-1]["label"] == "loud"
    assert abs(float(rows[-1]["p_loud"]) + float(rows[-1]["p_quiet"]) - 1) < 1e-4
    assert max(n for n, _ in scorer.batches) <= 4  # windows are scored in small batches
    assert res.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert abs(res.seconds - 14.0) < 1e-6


def test_bad_window_settings_are_refused(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(str(path), tone(2.0), RATE)
    with pytest.raises(TimelineError, match="positive"):
        analyse_recording(path, LevelScorer(), 0.0, 1.0, tmp_path, progress=False)
    with pytest.raises(TimelineError, match="shorter than the model's 400-sample minimum"):
        analyse_recording(path, LevelScorer(), 0.01, 0.01, tmp_path, progress=False)


@pytest.fixture(scope="module")
def exported(tiny_demo_root, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from helpers import recipe_for
    from ser_plugins.deploy.export import export_run
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    base = tmp_path_factory.mktemp("timeline_run")
    run_recipe(load_recipe(recipe_for(tiny_demo_root, name="tl")), str(base / "run"), folds=["1"], progress=False)
    export_run(base / "run", base / "export", threads=1)
    return base / "run", base / "export"


def test_cli_timeline_onnx_and_torch_engines_agree(exported, tiny_demo_root, tmp_path, one_torch_thread, capsys):
    from ser_plugins.cli import main

    run_dir, export_dir = exported
    parts = []
    for wav in sorted(Path(tiny_demo_root).rglob("*.wav"))[:6]:
        data, rate = sf.read(str(wav), dtype="float32")
        parts += [data, np.zeros(rate, np.float32)]
    path = tmp_path / "meeting.wav"
    sf.write(str(path), np.concatenate(parts), rate)
    args = [str(path), "--window", "2", "--hop", "0.5", "-q"]
    assert main(["predict", str(export_dir), *args, "--engine", "onnx", "--threads", "1", "--out", str(tmp_path / "o")]) == 0
    assert main(["predict", str(run_dir), *args, "--out", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out
    assert out.count("meeting.timeline.csv") == 2
    onnx_rows, torch_rows = read_rows(tmp_path / "o" / "meeting.timeline.csv"), read_rows(tmp_path / "t" / "meeting.timeline.csv")
    assert len(onnx_rows) == len(torch_rows) > 10
    for a, b in zip(onnx_rows, torch_rows):
        assert a["start"] == b["start"] and a["end"] == b["end"]
        for key in a:
            if key.startswith("p_"):
                assert abs(float(a[key]) - float(b[key])) <= 1e-4
    assert (tmp_path / "o" / "meeting.timeline.png").is_file()
    assert main(["predict", str(export_dir), str(path), "--hop", "1", "--engine", "onnx"]) == 2
    assert "--hop needs --window" in capsys.readouterr().err
