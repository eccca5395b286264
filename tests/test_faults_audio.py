"""Audio faults, created for real on disk: every unusable file is skipped with a counted reason, the
usable odd formats are resampled / downmixed, and all of it happens in the validation pass before
training starts. ``data.strict`` turns the first skip into an error. See docs/reliability.md.
"""
from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from ser_plugins import cli, registry
from ser_plugins.data.audio import AudioError, load_audio
from ser_plugins.plugins.contracts import Utterance
from ser_plugins.data.decode import DataError, decode_corpus
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import Runner, RunError, run_recipe
from helpers import LogCollector, recipe_for

SR = 16000




def kept_utterances(root: Path) -> List[Utterance]:
    """The utterances the iemocap reader keeps (4 classes), in file order."""
    return registry.create("corpus", "iemocap", root=str(root)).load()


def sine(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


# --- writers of faulty files: (path, original 16 kHz mono float audio) -> None ---------------------
def _garbage(p: Path, x) -> None:
    p.write_bytes(bytes(range(256)) * 16)  # not a sound file at all


def _zero_bytes(p: Path, x) -> None:
    p.write_bytes(b"")


def _header_only(p: Path, x) -> None:
    sf.write(p, np.zeros(0, dtype=np.int16), SR, subtype="PCM_16")
    assert p.stat().st_size == 44  # a valid RIFF header announcing no samples


def _too_short(p: Path, x) -> None:
    sf.write(p, x[:200], SR, subtype="PCM_16")  # 200 samples < one fbank window (400)


def _too_short_after_resampling(p: Path, x) -> None:
    sf.write(p, soxr.resample(x, SR, 8000)[:150], 8000, subtype="PCM_16")  # 300 samples at 16 kHz


def _nan(p: Path, x) -> None:
    y = x.astype(np.float32)
    y[len(y) // 2] = np.nan
    sf.write(p, y, SR, subtype="FLOAT")


def _inf(p: Path, x) -> None:
    y = x.astype(np.float32)
    y[10] = np.inf
    sf.write(p, y, SR, subtype="FLOAT")


def _silence(p: Path, x) -> None:
    sf.write(p, np.zeros_like(x), SR, subtype="PCM_16")  # digital silence


UNUSABLE = [  # (case, writer, reason counted in the run's report)
    ("garbage_bytes", _garbage, "unreadable"),
    ("zero_length_file", _zero_bytes, "empty"),
    ("header_only_wav", _header_only, "empty"),
    ("shorter_than_fbank_window", _too_short, "too_short"),
    ("too_short_after_8k_resampling", _too_short_after_resampling, "too_short"),
    ("nan_sample", _nan, "non_finite"),
    ("inf_sample", _inf, "non_finite"),
    ("digital_silence", _silence, "silent"),
]

USABLE = [  # (case, writer): must be decoded to 16 kHz mono and used
    ("stereo_16k", lambda p, x: sf.write(p, np.stack([x, 0.5 * x], 1), SR, subtype="PCM_16")),
    ("mono_8k_int16", lambda p, x: sf.write(p, soxr.resample(x, SR, 8000), 8000, subtype="PCM_16")),
    ("mono_22050_int24", lambda p, x: sf.write(p, soxr.resample(x, SR, 22050), 22050, subtype="PCM_24")),
    ("mono_44100_float", lambda p, x: sf.write(p, soxr.resample(x, SR, 44100).astype(np.float32), 44100,
                                               subtype="FLOAT")),
    ("stereo_48k_int16", lambda p, x: sf.write(p, np.stack([soxr.resample(x, SR, 48000)] * 2, 1), 48000,
                                               subtype="PCM_16")),
    ("mono_16k_int24", lambda p, x: sf.write(p, x, SR, subtype="PCM_24")),
    ("mono_16k_float", lambda p, x: sf.write(p, x.astype(np.float32), SR, subtype="FLOAT")),
    ("clipped", lambda p, x: sf.write(p, np.clip(8 * x / max(1e-9, np.abs(x).max()), -1, 1), SR,
                                      subtype="PCM_16")),
]


@pytest.fixture(scope="module")
def bad_audio(tmp_path_factory, tiny_demo_root):
    """A copy of the tiny corpus with Session1 files rewritten in every faulty and odd format, and one
    unreadable file in Session5 (a fold that is never run), then one run of fold 1 over it."""
    base = tmp_path_factory.mktemp("bad_audio")
    root = base / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    utts = kept_utterances(root)
    s1 = [u for u in utts if u.session == "Session1"]
    assert len(s1) >= len(UNUSABLE) + len(USABLE)
    cases: Dict[str, Dict] = {}
    for u, (case, writer, reason) in zip(s1, UNUSABLE):
        x, rate = sf.read(u.path)
        assert rate == SR
        writer(Path(u.path), x)
        cases[case] = {"id": u.id, "reason": reason}
    for u, (case, writer) in zip(s1[len(UNUSABLE):], USABLE):
        x, _ = sf.read(u.path)
        writer(Path(u.path), x)
        cases[case] = {"id": u.id, "reason": None}
    later = [u for u in utts if u.session == "Session5"][0]
    _garbage(Path(later.path), None)
    cases["garbage_in_a_later_fold"] = {"id": later.id, "reason": "unreadable"}

    # spy: every decode must happen before the first fold starts training
    import ser_plugins.data.decode as data_mod
    import ser_plugins.training.runner as runner_mod

    order: List[str] = []
    real_load, real_trainer = data_mod.load_audio, runner_mod.FoldTrainer

    def spy_load(path, *a, **k):
        order.append("decode")
        return real_load(path, *a, **k)

    class SpyTrainer(real_trainer):
        def fit(self, *a, **k):
            order.append("train")
            return super().fit(*a, **k)

    handler = LogCollector()
    logger = logging.getLogger("ser_plugins")
    logger.addHandler(handler)
    out = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_mod, "load_audio", spy_load)
        mp.setattr(runner_mod, "FoldTrainer", SpyTrainer)
        summary = run_recipe(load_recipe(recipe_for(root)), str(out), folds=["1"], progress=False)
    logger.removeHandler(handler)
    return {"root": root, "out": out, "summary": summary, "cases": cases, "order": order, "log": handler.events}


def test_every_unusable_file_is_skipped_and_counted_by_reason(bad_audio):
    expected: Dict[str, int] = {}
    for c in bad_audio["cases"].values():
        if c["reason"]:
            expected[c["reason"]] = expected.get(c["reason"], 0) + 1
    assert bad_audio["summary"]["skipped_utterances"] == expected
    run_json = json.loads((bad_audio["out"] / "run.json").read_text())
    assert run_json["skipped"] == expected
    md = (bad_audio["out"] / "results.md").read_text()
    assert "Skipped utterances by reason" in md and all(f"{k}: {v}" in md for k, v in expected.items())


def test_every_skip_is_warned_with_the_utterance_and_reason(bad_audio):
    warnings = [e for e in bad_audio["log"] if e.startswith("WARNING")]
    for case, c in bad_audio["cases"].items():
        if c["reason"] is None:
            assert not any(c["id"] in w for w in warnings), f"{case} was warned about but is usable"
            continue
        reason = "digital silence" if c["reason"] == "silent" else c["reason"]
        assert any(c["id"] in w and reason in w for w in warnings), f"no warning for {case} ({c['id']})"


def test_odd_but_usable_formats_are_resampled_downmixed_and_used(bad_audio):
    rows = list(csv.DictReader((bad_audio["out"] / "folds" / "Session1" / "predictions.csv").open()))
    tested = {r["id"] for r in rows}
    for case, c in bad_audio["cases"].items():
        if case == "garbage_in_a_later_fold":
            continue
        if c["reason"] is None:
            assert c["id"] in tested, f"usable {case} file was not used"
        else:
            assert c["id"] not in tested, f"unusable {case} file reached the results"
    metrics = json.loads((bad_audio["out"] / "folds" / "Session1" / "metrics.json").read_text())
    assert metrics["n"] == len(rows) == 20 - len(UNUSABLE)
    assert all(np.isfinite(float(r[k])) for r in rows for k in r if k.startswith("p_"))


def test_validation_pass_covers_every_fold_before_training(bad_audio):
    order = bad_audio["order"]
    assert "train" in order and "decode" in order
    assert "decode" not in order[order.index("train"):], "audio was decoded after training had started"
    # the bad file of Session5 was found although only fold 1 ran
    assert bad_audio["cases"]["garbage_in_a_later_fold"]["id"] in " ".join(bad_audio["log"])
    assert [p.name for p in (bad_audio["out"] / "folds").iterdir()] == ["Session1"]


def test_strict_turns_the_first_skip_into_an_error_before_training(bad_audio, tmp_path):
    out = tmp_path / "strict"
    recipe = load_recipe(recipe_for(bad_audio["root"], data={"strict": True}))
    with pytest.raises(DataError, match=r"data\.strict is on") as info:
        run_recipe(recipe, str(out), progress=False)
    first = bad_audio["cases"]["garbage_bytes"]["id"]
    assert first in str(info.value)
    assert not (out / "folds").exists() and not (out / "summary.json").exists()


def test_strict_error_through_the_cli_is_one_line_and_exit_2(bad_audio, tmp_path, capsys):
    recipe = tmp_path / "strict.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(recipe_for(bad_audio["root"], data={"strict": True})))
    rc = cli.main(["run", str(recipe), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and "data.strict" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "folds").exists()


# --- the decoder itself, format by format -----------------------------------------------------------
@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_rate_depth_and_channel_count_decodes_to_16k_mono(tmp_path, rate, subtype, channels):
    x = sine(1.0, rate)
    data = np.stack([x, 0.5 * x], 1) if channels == 2 else x
    path = tmp_path / f"a_{rate}_{subtype}_{channels}.wav"
    sf.write(path, data, rate, subtype=subtype)
    wav = load_audio(str(path), SR, min_samples=400)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - SR) <= 1
    ref = sine(1.0, SR) * (0.75 if channels == 2 else 1.0)  # downmix = channel mean
    n = min(len(wav), len(ref))
    core = slice(200, n - 200)  # resampler edges
    assert np.max(np.abs(wav[core] - ref[core])) < 2e-3


@pytest.mark.parametrize("case,writer,reason", UNUSABLE, ids=[c[0] for c in UNUSABLE])
def test_each_unusable_file_has_its_reason(tmp_path, case, writer, reason):
    path = tmp_path / f"{case}.wav"
    writer(path, sine(1.0, SR))
    if reason == "silent":  # decodes, but the validation pass refuses it
        assert np.all(load_audio(str(path), SR) == 0)
        audio = decode_corpus([Utterance("u", str(path), "neu", "s"), _ok_utt(tmp_path)], SR, 400, progress=False)
        assert audio.skipped == {"u": "silent"}
        return
    with pytest.raises(AudioError) as info:
        load_audio(str(path), SR, min_samples=400)
    assert info.value.reason == reason and str(path) in str(info.value)


def _ok_utt(tmp_path: Path) -> Utterance:
    path = tmp_path / "ok.wav"
    sf.write(path, sine(1.0, SR), SR, subtype="PCM_16")
    return Utterance("ok", str(path), "neu", "s")


def test_shorter_than_one_hubert_frame_is_skipped(tmp_path):
    from upstreams.hf import receptive_field

    # HuBERT / wav2vec 2.0 CNN: kernels (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2) -> one frame = 400 samples
    frame = receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))
    assert frame == 400
    short, exact = tmp_path / "short.wav", tmp_path / "exact.wav"
    sf.write(short, sine(1.0, SR)[: frame - 1], SR, subtype="PCM_16")
    sf.write(exact, sine(1.0, SR)[:frame], SR, subtype="PCM_16")
    utts = [Utterance("short", str(short), "neu", "s"), Utterance("exact", str(exact), "neu", "s")]
    audio = decode_corpus(utts, SR, frame, progress=False)
    assert audio.skipped == {"short": "too_short"} and list(audio.waves) == ["exact"]
    with pytest.raises(DataError, match="short"):
        decode_corpus(utts, SR, frame, strict=True, progress=False)
    assert registry.create("upstream", "fbank").min_samples == 400  # one 25 ms window


def test_a_corpus_with_no_usable_audio_is_a_clear_error(tmp_path, tiny_demo_root):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    for wav in root.rglob("*.wav"):
        wav.write_bytes(b"")
    with pytest.raises((DataError, RunError), match=r"no usable audio.*empty"):
        run_recipe(load_recipe(recipe_for(root)), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "folds").exists()


def test_audio_giving_non_finite_features_is_skipped_in_the_validation_pass(tmp_path, tiny_demo_root):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    victim = [u for u in kept_utterances(root) if u.session == "Session1"][0]
    x, _ = sf.read(victim.path)
    sf.write(victim.path, (x * 1e30).astype(np.float32), SR, subtype="FLOAT")
    assert np.all(np.isfinite(load_audio(victim.path, SR)))  # the samples themselves are finite
    prep = Runner(load_recipe(recipe_for(root)), tmp_path / "run", progress=False).prepare()
    assert victim.id not in prep.utterances
    assert prep.skipped.get(victim.id, "").startswith("non_finite")
    for layers in prep.source.features.values():
        assert all(torch.isfinite(f.float()).all() for f in layers)
