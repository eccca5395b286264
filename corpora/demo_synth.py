"""A synthetic IEMOCAP look-alike: acted pseudo-speech whose emotion is audible, in IEMOCAP's layout.

``generate_demo_corpus(root)`` writes ``root/Session1..5`` exactly like ``IEMOCAP_full_release``
(``dialog/EmoEvaluation/<dialog>.txt`` + ``sentences/wav/<dialog>/<utt>.wav``), so the IEMOCAP
reader reads it unchanged. Each utterance is source-filter pseudo-speech: a Rosenberg glottal pulse
train at an f0 contour, aspiration noise, vowel formant resonators that change per syllable,
consonant noise bursts and a syllable energy envelope. The emotion sets f0 level and range, tempo,
loudness, spectral tilt, jitter/shimmer, roughness and breathiness; speakers differ in f0, formant
scale, loudness, microphone colouring and noise floor; every utterance draws its own expressive
intensity, so classes overlap as in acted speech. Same seed -> byte-identical files.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import soundfile as sf
from scipy import signal
from scipy.ndimage import gaussian_filter1d

SAMPLE_RATE = 16000
N_SESSIONS = 5
README_MARKER = "SYNTHETIC IEMOCAP-LAYOUT DEMO CORPUS"
SUMMARY_FILE = "summary.json"

#: Share of each raw label in a session (largest-remainder allocation).
LABEL_SHARES: Dict[str, float] = {
    "neu": 0.21, "hap": 0.10, "exc": 0.11, "ang": 0.21, "sad": 0.21, "fru": 0.08, "sur": 0.04, "xxx": 0.04,
}
#: Labels of the standard 4-class set after merging exc into hap.
FOUR_CLASS_MERGE: Dict[str, str] = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}

# Full-intensity expressive parameters per emotion (neutral = the reference). Fields:
# f0 shift (semitones), f0 range (semitones), syllable rate factor, gain (dB), tilt pole (0 bright ..
# 0.95 dark), open quotient, closing share of the open phase, jitter, shimmer, roughness
# (period alternation), breathiness (aspiration level), formant factor, consonant level (dB).
_PARAM_NAMES = ("f0", "range", "rate", "gain", "tilt", "oq", "close", "jitter", "shimmer", "rough",
                "breath", "formant", "cons")
EMOTION_PARAMS: Dict[str, Tuple[float, ...]] = {
    "neu": (0.0, 3.0, 1.00, 0.0, 0.60, 0.60, 0.40, 0.010, 0.04, 0.00, 0.05, 1.00, 0.0),
    "hap": (4.0, 8.0, 1.12, 3.0, 0.50, 0.55, 0.35, 0.010, 0.05, 0.00, 0.05, 1.04, 1.0),
    "exc": (5.0, 9.0, 1.20, 4.5, 0.40, 0.52, 0.32, 0.012, 0.05, 0.02, 0.05, 1.05, 2.0),
    "ang": (3.0, 4.0, 1.25, 7.0, 0.15, 0.45, 0.22, 0.025, 0.10, 0.15, 0.03, 1.06, 4.0),
    "sad": (-2.5, 1.2, 0.72, -7.0, 0.85, 0.75, 0.50, 0.020, 0.08, 0.00, 0.30, 0.97, -4.0),
    "fru": (1.0, 3.0, 1.05, 3.0, 0.45, 0.55, 0.30, 0.020, 0.08, 0.08, 0.08, 1.02, 2.0),
    "sur": (6.0, 10.0, 1.05, 2.0, 0.45, 0.55, 0.35, 0.010, 0.05, 0.00, 0.06, 1.05, 0.0),
}
# Vowel formants (Hz) of an adult male voice; female voices scale them up.
_VOWELS = np.array([
    (730, 1090, 2440, 3400), (270, 2290, 3010, 3600), (300, 870, 2240, 3300), (530, 1840, 2480, 3500),
    (570, 840, 2410, 3400), (660, 1720, 2410, 3500), (440, 1020, 2240, 3300), (390, 1990, 2550, 3600),
], dtype=float)
_BANDWIDTHS = np.array([80.0, 110.0, 160.0, 250.0])
_NAMES = {"neu": "Neutral", "hap": "Happiness", "exc": "Excited", "ang": "Anger", "sad": "Sadness",
          "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "dis": "Disgust", "oth": "Other"}
_EVALUATORS = ("C-E1", "C-E2", "C-E3", "C-E4")
_FRIC_SOS = [signal.butter(4, band, btype="bandpass", fs=SAMPLE_RATE, output="sos")
             for band in ((3800, 7600), (2000, 5000), (1000, 7000))]
_ASP_SOS = signal.butter(2, 1500, btype="highpass", fs=SAMPLE_RATE, output="sos")


@dataclass(frozen=True)
class Voice:
    """One synthetic actor: f0 base, formant scale, loudness and recording-channel traits."""

    speaker: str
    gender: str
    f0: float
    formant: float
    gain_db: float
    noise_db: float
    rate: float
    range_factor: float
    breath: float
    eq_sos: np.ndarray


def _make_voice(speaker: str, gender: str, rng: np.random.Generator) -> Voice:
    base = 205.0 if gender == "F" else 115.0
    eq = [signal.butter(1, rng.uniform(3500, 7000), btype="lowpass", fs=SAMPLE_RATE, output="sos")]
    # a random peaking/dip resonance: the speaker's "microphone and room"
    f_peak, gain = rng.uniform(300, 3000), rng.uniform(-4, 4)
    w0 = 2 * np.pi * f_peak / SAMPLE_RATE
    big_a, alpha = 10 ** (gain / 40), np.sin(w0) / (2 * 1.2)
    b = [1 + alpha * big_a, -2 * np.cos(w0), 1 - alpha * big_a]
    a = [1 + alpha / big_a, -2 * np.cos(w0), 1 - alpha / big_a]
    eq.append(signal.tf2sos(b, a))
    return Voice(
        speaker=speaker, gender=gender,
        f0=base * 2 ** (rng.normal(0, 2.0) / 12),
        formant=(1.16 if gender == "F" else 1.0) * rng.uniform(0.94, 1.06),
        gain_db=rng.normal(0, 2.5), noise_db=rng.uniform(-62, -45),
        rate=2 ** rng.normal(0, 0.12), range_factor=2 ** rng.normal(0, 0.25),
        breath=rng.uniform(0.0, 0.08), eq_sos=np.concatenate(eq, axis=0),
    )


def _expressive_params(label: str, rng: np.random.Generator) -> Dict[str, float]:
    """Per-utterance parameters: neutral blended towards the emotion by a random intensity, plus noise."""
    if label == "xxx":  # no agreement: a mild mixture of two emotions
        a, b = rng.choice(["neu", "hap", "ang", "sad", "fru"], size=2, replace=False)
        w = rng.uniform(0.3, 0.7)
        target = w * np.array(EMOTION_PARAMS[a]) + (1 - w) * np.array(EMOTION_PARAMS[b])
    else:
        target = np.array(EMOTION_PARAMS[label])
    neutral = np.array(EMOTION_PARAMS["neu"])
    intensity = rng.uniform(0.6, 1.2)
    p = dict(zip(_PARAM_NAMES, neutral + intensity * (target - neutral)))
    p["f0"] += rng.normal(0, 1.0)
    p["range"] = max(0.5, p["range"] * 2 ** rng.normal(0, 0.3))
    p["rate"] *= 2 ** rng.normal(0, 0.12)
    p["gain"] += rng.normal(0, 2.0)
    p["tilt"] = float(np.clip(p["tilt"] + rng.normal(0, 0.08), 0.05, 0.95))
    p["oq"] = float(np.clip(p["oq"] + rng.normal(0, 0.04), 0.35, 0.85))
    p["breath"] = max(0.0, p["breath"] * 2 ** rng.normal(0, 0.4))
    p["formant"] *= 2 ** rng.normal(0, 0.02)
    p["cons"] += rng.normal(0, 2.0)
    return p


#: The documented range of the generated attributes (IEMOCAP's 1-5 scale).
ATTRIBUTE_SCALE: Tuple[float, float] = (1.0, 5.0)


def _squash(z: float) -> float:
    """Smooth monotone map of a score (0 = neutral) onto the 1-5 scale: 3 + 2 tanh(z / 2), 4 decimals."""
    low, high = ATTRIBUTE_SCALE
    mid, half = (low + high) / 2, (high - low) / 2
    return round(float(np.clip(mid + half * np.tanh(z / 2), low, high)), 4)


def expressive_attributes(p: Dict[str, float]) -> Dict[str, float]:
    """Arousal, valence and dominance (1-5) carried by an utterance's expressive parameters ``p``.

    Each is a smooth monotone function of parameters that shape the audio (neutral speech scores 3):
      * arousal -- louder (gain), faster (rate), wider f0 range and a brighter voice (lower tilt);
      * valence -- higher f0 and a wider f0 range, minus voice roughness, jitter and breathiness
        (so anger, frustration and sadness sit low, happiness, excitement and surprise high);
      * dominance -- louder, rougher, brighter and with stronger consonants, minus breathiness and
        f0 range (a level, assertive pitch rather than a lively one).
    Arousal and dominance correlate (r ~ 0.8 on the generated corpus; they do in IEMOCAP too);
    valence correlates only weakly with either (|r| ~ 0.3). The speaker's own traits (base f0,
    loudness, channel) are not part of them: they are what the actor acted, not who the actor is.
    """
    log_range = np.log2(p["range"] / 3.0)
    arousal = 0.12 * p["gain"] + 2.0 * np.log2(p["rate"]) + 0.3 * log_range + 1.5 * (0.60 - p["tilt"])
    valence = (0.12 * p["f0"] + 0.35 * log_range - 12.0 * p["rough"] - 30.0 * (p["jitter"] - 0.010)
               - 2.0 * (p["breath"] - 0.05))
    dominance = (0.07 * p["gain"] + 8.0 * p["rough"] + 0.4 * (0.60 - p["tilt"]) + 0.08 * p["cons"]
                 - 2.0 * (p["breath"] - 0.05) - 0.3 * log_range)
    return {"arousal": _squash(arousal), "valence": _squash(valence), "dominance": _squash(dominance)}


def _syllables(n: int, rate: float, rng: np.random.Generator) -> List[Tuple[int, int, int]]:
    """``[(onset, nucleus_start, end)]`` sample positions of syllables (with word pauses) filling ``n``."""
    t = int(rng.uniform(0.08, 0.25) * SAMPLE_RATE)
    stop = n - int(rng.uniform(0.08, 0.25) * SAMPLE_RATE)
    out = []
    while True:
        dur = int(SAMPLE_RATE * rng.gamma(8.0, 1.0 / (8.0 * rate)))
        dur = max(dur, int(0.07 * SAMPLE_RATE))
        if t + dur > stop:
            break
        cons = int(dur * rng.uniform(0.15, 0.35)) if rng.random() < 0.7 else 0
        out.append((t, t + cons, t + dur))
        t += dur
        if rng.random() < 0.18:
            t += int(rng.uniform(0.06, 0.25) * SAMPLE_RATE)
    if not out:  # at least one syllable
        out.append((t, t, stop))
    return out


def _resonator_sos(freqs: np.ndarray, bws: np.ndarray) -> np.ndarray:
    """Cascade of two-pole resonators with unit gain at DC, one SOS row per formant."""
    freqs = np.minimum(freqs, 0.45 * SAMPLE_RATE)
    r = np.exp(-np.pi * bws / SAMPLE_RATE)
    c = 2 * r * np.cos(2 * np.pi * freqs / SAMPLE_RATE)
    sos = np.zeros((len(freqs), 6))
    sos[:, 0] = 1 - c + r * r
    sos[:, 3] = 1.0
    sos[:, 4] = -c
    sos[:, 5] = r * r
    return sos


def synthesize_utterance(label: str, voice: Voice, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Float waveform (16 kHz) of ``duration`` seconds of pseudo-speech by ``voice`` acting ``label``."""
    return _synthesize(label, voice, duration, rng)[0]


def _synthesize(label: str, voice: Voice, duration: float,
                rng: np.random.Generator) -> Tuple[np.ndarray, Dict[str, float]]:
    """``(waveform, expressive parameters)``: ``synthesize_utterance`` plus the parameters that shaped it."""
    p = _expressive_params(label, rng)
    n = int(round(duration * SAMPLE_RATE))
    syl = _syllables(n, 4.2 * voice.rate * p["rate"], rng)

    # --- f0 contour (semitones around the speaker's base): declination + syllable accents + drift
    # built on a 10 ms grid, smoothed there and interpolated to samples (fast)
    rng_st = p["range"] * voice.range_factor
    hop = SAMPLE_RATE // 100
    n_frames = n // hop + 2
    targets = np.zeros(n_frames)
    for onset, _, end in syl:
        targets[onset // hop:end // hop + 1] = rng.uniform(-0.5, 0.5) * rng_st
    grid = np.arange(n_frames) / n_frames
    contour = gaussian_filter1d(targets, 4.0) + rng_st * 0.4 * (0.5 - grid)
    contour += gaussian_filter1d(rng.normal(0, 1, n_frames), 10.0) * 5 * (0.3 + 0.05 * rng_st)
    st = np.interp(np.arange(n) / hop, np.arange(n_frames), contour)
    f0 = voice.f0 * 2 ** ((st + p["f0"]) / 12)

    # --- glottal source: Rosenberg pulses with per-period jitter, shimmer and roughness
    phase = np.cumsum(f0) / SAMPLE_RATE
    cycles = phase.astype(np.int64)
    n_cyc = int(cycles[-1]) + 2
    f0 = f0 * (1 + p["jitter"] * rng.standard_normal(n_cyc))[cycles]
    phase = np.cumsum(f0) / SAMPLE_RATE
    cycles = phase.astype(np.int64)
    frac = phase - cycles
    tp, tn = p["oq"] * (1 - p["close"]), p["oq"] * p["close"]
    flow = np.where(frac < tp, 0.5 * (1 - np.cos(np.pi * frac / tp)),
                    np.where(frac < tp + tn, np.cos(np.pi * (frac - tp) / (2 * tn)), 0.0))
    amp = 1 + p["shimmer"] * rng.standard_normal(n_cyc + 2)
    amp *= 1 + p["rough"] * np.where(np.arange(n_cyc + 2) % 2 == 0, 1.0, -1.0)
    source = np.diff(flow * amp[cycles], prepend=0.0)
    source /= np.sqrt(np.mean(source ** 2)) + 1e-9
    breath = p["breath"] + voice.breath
    aspiration = signal.sosfilt(_ASP_SOS, rng.standard_normal(n)) * (0.4 + flow)
    source = source + breath * 1.5 * aspiration
    a = p["tilt"]
    source = signal.lfilter([1 - a], [1, -a], source)

    # --- vocal tract: one vowel (formant set) per syllable, syllable envelope, consonants
    out = np.zeros(n + 400)
    scale = voice.formant * p["formant"]
    for onset, nucleus, end in syl:
        vowel = _VOWELS[rng.integers(len(_VOWELS))] * scale * 2 ** rng.normal(0, 0.03, 4)
        seg_len = end - nucleus
        env = np.sin(np.pi * np.linspace(0, 1, seg_len)) ** rng.uniform(0.5, 1.0)
        seg = source[nucleus:end] * env
        bws = _BANDWIDTHS * (1 + 1.5 * breath)
        voiced = signal.sosfilt(_resonator_sos(vowel, bws), np.concatenate([seg, np.zeros(400)]))
        out[nucleus:end + 400] += voiced
        if nucleus > onset:  # consonant: band-passed noise burst before the vowel
            c_len = nucleus - onset
            burst = signal.sosfilt(_FRIC_SOS[rng.integers(len(_FRIC_SOS))], rng.standard_normal(c_len))
            c_env = np.hanning(c_len) if rng.random() < 0.6 else np.exp(-np.linspace(0, 6, c_len))
            level = 0.25 * 10 ** ((p["cons"] + rng.normal(0, 2)) / 20)
            out[onset:nucleus] += burst * c_env * level / (np.std(burst) + 1e-9)
    wav = signal.sosfilt(voice.eq_sos, out[:n])

    # --- loudness, then the recording channel's noise floor
    active = np.abs(wav) > 0.05 * np.max(np.abs(wav))
    rms = np.sqrt(np.mean(wav[active] ** 2)) if active.any() else 1.0
    wav *= 0.045 * 10 ** ((p["gain"] + voice.gain_db) / 20) / (rms + 1e-12)
    wav += 10 ** (voice.noise_db / 20) * rng.standard_normal(n)
    peak = np.abs(wav)  # soft limiter: linear up to 0.9, then smoothly saturating below 0.99
    return np.where(peak > 0.9, np.sign(wav) * (0.9 + 0.09 * np.tanh((peak - 0.9) / 0.09)), wav), p


def _allocate(shares: Dict[str, float], total: int) -> Dict[str, int]:
    """Largest-remainder allocation of ``total`` items to ``shares``; ties broken by order."""
    raw = {k: v * total for k, v in shares.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    left = total - sum(counts.values())
    order = sorted(shares, key=lambda k: -(raw[k] - counts[k]))
    for k in order[:left]:
        counts[k] += 1
    return counts


def _block(utt: str, start: float, end: float, label: str, attributes: Dict[str, float],
           rng: np.random.Generator) -> str:
    """One EmoEvaluation block: consensus line plus categorical and attribute annotator lines.

    The ``[V, A, D]`` bracket and the attribute annotators' lines carry ``attributes`` (those of
    the audio, ``expressive_attributes``). Three draws that once jittered a per-label table are still
    made and discarded, so ``rng`` (which later sets the dialog clock) stays where it was.
    """
    for _ in range(3):
        rng.integers(-1, 2)
    v, a, d = attributes["valence"], attributes["arousal"], attributes["dominance"]
    lines = [f"[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{v:.4f}, {a:.4f}, {d:.4f}]"]
    if label == "xxx":
        votes = list(rng.choice(["neu", "fru", "ang", "hap", "sad"], size=3, replace=False))
    else:
        votes = [label, label, label if rng.random() < 0.5 else str(rng.choice(["neu", "fru", "oth"]))]
    evaluators = sorted(rng.choice(_EVALUATORS, size=3, replace=False))
    for ev, vote in zip(evaluators, votes):
        lines.append(f"{ev}:\t{_NAMES[vote]};\t()")
    lines.append(f"C-F1:\t{_NAMES[votes[0]]};\t()")
    for ev in evaluators[:2]:
        lines.append(f"A-{ev[2:]}:\tval {int(round(v))}; act {int(round(a))}; dom  {int(round(d))};\t()")
    return "\n".join(lines)


_DIALOG_ORDER = (0, 2, 1, 3)


def _dialogs(ses: str) -> List[str]:
    return [f"{ses}F_impro01", f"{ses}M_impro02", f"{ses}F_script01_1", f"{ses}M_script02_1"]


def _prepare_root(root: Path, overwrite: bool) -> None:
    existing = [p for p in root.glob("Session*") if p.is_dir()] if root.is_dir() else []
    if not existing:
        root.mkdir(parents=True, exist_ok=True)
        return
    if not overwrite:
        raise FileExistsError(f"{root} already holds Session folders; pass overwrite=True "
                              f"(ser demo-corpus --overwrite) to regenerate it")
    readme = root / "README.txt"
    if not (readme.is_file() and README_MARKER in readme.read_text(errors="replace")):
        raise FileExistsError(f"refusing to overwrite {root}: it has Session folders but no README.txt "
                              f"marking it as a generated demo corpus")
    for p in existing:
        shutil.rmtree(p)


def generate_demo_corpus(root: str, seed: int = 0, utterances_per_speaker: int = 40,
                         overwrite: bool = False) -> dict:
    """Write the synthetic corpus under ``root`` (the ``IEMOCAP_full_release`` role); return a summary.

    Five sessions of one female and one male actor, four dialogs each (two improvised, two
    scripted) with turns of both actors; labels neu/hap/exc/ang/sad plus some fru/sur/xxx. The
    summary holds raw label counts, the 4-class counts after merging exc into hap, counts per
    session and the total audio duration. Raises ``FileExistsError`` when ``root`` already holds
    Session folders and ``overwrite`` is False (or the folder is not a generated demo corpus).
    """
    if utterances_per_speaker < 1:
        raise ValueError("utterances_per_speaker must be at least 1")
    root_p = Path(root)
    _prepare_root(root_p, overwrite)
    raw_counts = {k: 0 for k in LABEL_SHARES}
    per_session: Dict[str, Dict[str, int]] = {}
    total_seconds = 0.0
    n_files = n_dialogs = 0
    for s in range(1, N_SESSIONS + 1):
        ses = f"Ses{s:02d}"
        srng = np.random.default_rng([seed, s])
        voices = {g: _make_voice(ses + g, g, srng) for g in ("F", "M")}
        counts = _allocate(LABEL_SHARES, 2 * utterances_per_speaker)
        pool = [lab for lab in LABEL_SHARES for _ in range(counts[lab])]
        # deal the sorted pool alternately so each speaker gets about half of every label
        start_with = int(srng.integers(2))
        per_gender = {"F": pool[start_with::2], "M": pool[1 - start_with::2]}
        for g in ("F", "M"):
            srng.shuffle(per_gender[g])
        dialogs = _dialogs(ses)
        # utterance i of a speaker goes to dialog _DIALOG_ORDER[i % 4]: small corpora still get
        # improvised and scripted dialogs, each with both actors
        split = {g: [[lab for i, lab in enumerate(per_gender[g]) if _DIALOG_ORDER[i % len(dialogs)] == d]
                     for d in range(len(dialogs))] for g in ("F", "M")}
        emo_dir = root_p / f"Session{s}" / "dialog" / "EmoEvaluation"
        emo_dir.mkdir(parents=True, exist_ok=True)
        session_counts = {k: 0 for k in ("neu", "hap", "ang", "sad")}
        for d_i, dialog in enumerate(dialogs):
            turns = [("F", lab) for lab in split["F"][d_i]] + [("M", lab) for lab in split["M"][d_i]]
            if not turns:
                continue
            order = srng.permutation(len(turns))
            wav_dir = root_p / f"Session{s}" / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True, exist_ok=True)
            numbers = {"F": 0, "M": 0}
            blocks, clock = [], srng.uniform(1.0, 5.0)
            for t_i in order:
                g, label = turns[t_i]
                utt = f"{dialog}_{g}{numbers[g]:03d}"
                numbers[g] += 1
                urng = np.random.default_rng([seed, s, d_i, int(t_i), 7])
                duration = float(urng.uniform(1.05, 3.95))
                wav, params = _synthesize(label, voices[g], duration, urng)
                sf.write(str(wav_dir / f"{utt}.wav"), wav, SAMPLE_RATE, subtype="PCM_16")
                start, end = clock, clock + len(wav) / SAMPLE_RATE
                blocks.append(_block(utt, start, end, label, expressive_attributes(params), urng))
                clock = end + float(urng.uniform(0.2, 2.0))
                raw_counts[label] += 1
                total_seconds += len(wav) / SAMPLE_RATE
                n_files += 1
                if label in FOUR_CLASS_MERGE:
                    session_counts[FOUR_CLASS_MERGE[label]] += 1
            n_dialogs += 1
            header = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            (emo_dir / f"{dialog}.txt").write_text(header + "\n\n".join(blocks) + "\n\n", encoding="utf-8")
        per_session[f"Session{s}"] = session_counts
    # a hidden macOS AppleDouble file, as found in some copies, which readers must skip
    junk = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 16
    junk += b"\n[0.0000 - 1.0000]\tSes01F_impro01_F999\tneu\t[2.5, 2.5, 2.5]\n"
    (root_p / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt").write_bytes(junk)
    four = {k: sum(c[k] for c in per_session.values()) for k in ("neu", "hap", "ang", "sad")}
    summary = {
        "seed": seed, "utterances_per_speaker": utterances_per_speaker, "sessions": N_SESSIONS,
        "speakers": 2 * N_SESSIONS, "dialogs": n_dialogs, "utterances": n_files,
        "raw_counts": raw_counts, "counts": four,
        "dropped": {k: n for k, n in raw_counts.items() if k not in FOUR_CLASS_MERGE and n},
        "per_session": per_session, "seconds": round(total_seconds, 3),
    }
    (root_p / "README.txt").write_text(
        f"{README_MARKER}\n\nThis folder is SYNTHETIC: generated by ser_plugins' corpora.demo_synth "
        f"(seed={seed}, utterances_per_speaker={utterances_per_speaker}).\nIt mimics the layout and "
        f"annotation format of IEMOCAP_full_release so the IEMOCAP reader can be exercised, but it holds "
        f"no real speech: every wav is source-filter pseudo-speech whose acted emotion is set by f0, "
        f"tempo, loudness, spectral tilt and voice quality.\nNumbers measured on it say nothing about "
        f"real speech emotion recognition.\n", encoding="utf-8")
    (root_p / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary
