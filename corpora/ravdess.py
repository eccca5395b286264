"""RAVDESS reader (``Actor_01/ ... Actor_24/`` of coded file names) and a generated miniature in its layout.

Release layout read -- the audio-only zips of the Ryerson Audio-Visual Database of Emotional
Speech and Song (Livingstone & Russo 2018, PLoS ONE 13(5): e0196391; Zenodo record 1188976),
built from the documented layout (the real data is not available here; the tests read the
miniature ``RavdessCorpus.generate`` writes, and full-size listings of empty files)::

    <root>/Actor_01/03-01-01-01-01-01-01.wav     Audio_Speech_Actors_01-24.zip (1440 files, 48 kHz)
    <root>/Actor_01/03-02-01-01-01-01-01.wav     Audio_Song_Actors_01-24.zip (1012 files; no Actor_18)

or each zip extracted into a folder of its own (EmoBox's ``downloads/ravdess/audio`` layout)::

    <root>/Audio_Speech_Actors_01-24/Actor_01/03-01-...-01.wav
    <root>/Audio_Song_Actors_01-24/Actor_01/03-02-...-01.wav

A file name is seven two-digit codes ``MM-VC-EE-II-SS-RR-AA``: modality (01 full-AV, 02 video-only,
03 audio-only), vocal channel (01 speech, 02 song), emotion (01 neutral, 02 calm, 03 happy, 04 sad,
05 angry, 06 fearful, 07 disgust, 08 surprised), intensity (01 normal, 02 strong; neutral has no
strong), statement (01 "Kids are talking by the door", 02 "Dogs are sitting by the door"),
repetition (01, 02) and actor (01-24; odd male, even female). Song has no disgust and no surprised.

Class counts (the paper's design, 24 actors x 60 speech trials, 23 actors x 44 song trials):
speech 96 neutral and 192 of each other emotion (1440); song 92 neutral and 184 each of calm,
happy, sad, angry and fearful (1012).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import signal

from corpora.demo_synth import SAMPLE_RATE
from corpora.release import (
    ACTOR_MISMATCH,
    APPLEDOUBLE_STUB,
    BAD_CODE,
    BAD_NAME,
    DS_STORE_STUB,
    EXPRESSIVE_PARAMS,
    EXTRA_FILE,
    EXTRA_FOLDER,
    HIDDEN_FILE,
    ProblemTally,
    blend,
    check_labels,
    check_merge_target,
    check_reachable,
    is_hidden,
    kept_label,
    label_list,
    prepare_root,
    report_dropped,
    report_empty,
    vary,
    wav_problem,
    write_summary,
    write_wav,
)
from corpora.release import EMPTY_AUDIO as EMPTY_AUDIO  # the names this module had before corpora.release
from corpora.release import EMPTY_LABEL as EMPTY_LABEL
from corpora.release import NO_UTTERANCES as NO_UTTERANCES
from corpora.release import NOT_WAV as NOT_WAV
from corpora.release import PARAM_FIELDS as PARAM_FIELDS
from corpora.release import name_of as _name_of
from ser_plugins.plugins.contracts import DUPLICATE_AUDIO, Corpus, Utterance

MODALITIES: Mapping[str, str] = MappingProxyType({"01": "full-AV", "02": "video-only", "03": "audio-only"})
VOCAL_CHANNELS: Mapping[str, str] = MappingProxyType({"01": "speech", "02": "song"})
#: emotion code -> short class name
EMOTIONS: Mapping[str, str] = MappingProxyType(
    {"01": "neu", "02": "cal", "03": "hap", "04": "sad", "05": "ang", "06": "fea", "07": "dis", "08": "sur"}
)
EMOTION_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "neu": "neutral",
        "cal": "calm",
        "hap": "happy",
        "sad": "sad",
        "ang": "angry",
        "fea": "fearful",
        "dis": "disgust",
        "sur": "surprised",
    }
)
INTENSITIES: Mapping[str, str] = MappingProxyType({"01": "normal", "02": "strong"})
STATEMENTS: Mapping[str, str] = MappingProxyType(
    {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
)
REPETITIONS: Tuple[str, ...] = ("01", "02")
ACTORS: Tuple[str, ...] = tuple(f"{n:02d}" for n in range(1, 25))
DEFAULT_LABELS: Tuple[str, ...] = tuple(EMOTIONS.values())
SONG_EMOTIONS: Tuple[str, ...] = ("neu", "cal", "hap", "sad", "ang", "fea")
#: actors without song recordings in the release (the song zip has 23 actors)
NO_SONG_ACTORS: Tuple[str, ...] = ("18",)
#: files per channel and class as documented (Livingstone & Russo 2018)
RELEASE_COUNTS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "speech": MappingProxyType({name: (96 if name == "neu" else 192) for name in DEFAULT_LABELS}),
        "song": MappingProxyType({name: (92 if name == "neu" else 184) for name in SONG_EMOTIONS}),
    }
)
#: EmoBox's six speaker-independent folds of four actors (emo-box/EmoBox data/ravdess/fold_k test sets)
EMOBOX_FOLDS: Mapping[str, Tuple[str, ...]] = MappingProxyType(
    {
        "fold_1": ("01", "11", "20", "21"),
        "fold_2": ("04", "10", "12", "14"),
        "fold_3": ("08", "09", "19", "23"),
        "fold_4": ("03", "05", "07", "24"),
        "fold_5": ("02", "15", "16", "18"),
        "fold_6": ("06", "13", "17", "22"),
    }
)
FOLD_OF_ACTOR: Mapping[str, str] = MappingProxyType(
    {actor: fold for fold, actors in EMOBOX_FOLDS.items() for actor in actors}
)
CHANNEL_CHOICES: Tuple[str, ...] = ("speech", "song", "both")
INTENSITY_CHOICES: Tuple[str, ...] = ("all", "normal", "strong")

# CorpusProblem kinds of this reader (besides the core's dropped_label and duplicate_audio, and corpora.release's
# hidden_file, extra_folder, extra_file, bad_name, bad_code, actor_mismatch, empty_audio, not_wav, no_utterances
# and empty_label)
NOT_AUDIO_ONLY = "not_audio_only"
MISSING_CHANNEL = "missing_channel"

_NAME_RE = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
_ACTOR_DIR_RE = re.compile(r"^Actor_(\d+)$", re.IGNORECASE)
_FIELDS = ("modality", "vocal channel", "emotion", "intensity", "statement", "repetition", "actor")
_HIDDEN = "hidden file(s) or folder(s) (._*, .DS_Store, __MACOSX); not read"


@dataclass(frozen=True)
class RavdessName:
    """The seven codes of a RAVDESS file name (two-digit strings)."""

    modality: str
    vocal_channel: str
    emotion: str
    intensity: str
    statement: str
    repetition: str
    actor: str

    @property
    def label(self) -> str:
        return EMOTIONS[self.emotion]

    @property
    def channel(self) -> str:
        return VOCAL_CHANNELS[self.vocal_channel]

    @property
    def gender(self) -> str:
        return actor_gender(self.actor)

    def stem(self) -> str:
        return "-".join(
            (
                self.modality,
                self.vocal_channel,
                self.emotion,
                self.intensity,
                self.statement,
                self.repetition,
                self.actor,
            )
        )


def actor_gender(actor: str) -> str:
    """``"male"`` for odd actor numbers, ``"female"`` for even ones (the release's rule)."""
    return "male" if int(actor) % 2 else "female"


def parse_name(stem: str) -> Tuple[Optional[RavdessName], str, str]:
    """``(codes, "", "")`` for a valid file stem, else ``(None, kind, why)`` with kind ``bad_name`` or ``bad_code``.

    Codes are checked against the documented ranges, and against the design: neutral has no
    strong intensity, song has no disgust or surprised.
    """
    m = _NAME_RE.match(stem)
    if m is None:
        return None, BAD_NAME, "not seven two-digit codes MM-VC-EE-II-SS-RR-AA"
    codes = RavdessName(*m.groups())
    ranges = (MODALITIES, VOCAL_CHANNELS, EMOTIONS, INTENSITIES, STATEMENTS, REPETITIONS, ACTORS)
    for field, value, allowed in zip(_FIELDS, m.groups(), ranges):
        if value not in allowed:
            return None, BAD_CODE, f"{field} code {value} out of range"
    if codes.emotion == "01" and codes.intensity == "02":
        return None, BAD_CODE, "neutral with strong intensity (neutral has normal intensity only)"
    if codes.vocal_channel == "02" and codes.label not in SONG_EMOTIONS:
        return None, BAD_CODE, f"song with emotion {codes.label} (song has {', '.join(SONG_EMOTIONS)})"
    return codes, "", ""


def resolve_labels(
    corpus: str,
    names: Sequence[str],
    labels: Optional[Sequence[str]],
    merge: Dict[str, str],
    available: Sequence[str],
) -> List[str]:
    """The class list: ``labels`` checked, or (None) the ``available`` classes after ``merge``, in order."""
    known = ", ".join(names)
    for src in merge:
        if src not in names:
            raise ValueError(f"{corpus}: merge source {src!r} is not a class; classes: {known}")
    if labels is None:
        out: List[str] = []
        for name in available:
            target = merge.get(name, name)
            if target not in out:
                out.append(target)
        return out
    out = label_list(labels)
    check_labels(corpus, out)
    for src, dst in merge.items():
        check_merge_target(corpus, src, dst, out)
    check_reachable(corpus, out, names, merge, f"a class ({known})", so=":")
    return out


class RavdessCorpus(Corpus):
    """The RAVDESS audio-only release read from its folder (see the module docstring for the layout).

    Options:
      * ``labels`` -- the classes in logit order; default: the emotions the chosen files can have
        (speech: ``neu cal hap sad ang fea dis sur``; song: the first six; ``intensity: strong``:
        without ``neu``), after ``merge``.
      * ``merge`` -- class names (or emotion codes) onto labels, e.g. ``{cal: neu}`` (then the
        default labels are the other seven).
      * ``vocal_channel`` -- ``speech`` (default), ``song`` or ``both``; files of the other channel
        are left out, counted in ``left_out``.
      * ``intensity`` -- ``all`` (default), ``normal`` or ``strong``; the others counted in ``left_out``.
      * ``check_audio`` -- True (default): each file's first bytes are read (never decoded), so
        empty files, header-only files and git-lfs stubs are problems instead of failing later;
        False lists the files by name alone.

    Speakers and folds. speaker = session = ``Actor_NN``, so ``protocol: session`` is
    leave-one-actor-out (24 folds) and ``protocol: {name: speaker, num_folds: k}`` gives k
    speaker-independent folds. ``fold`` is EmoBox's partition (``EMOBOX_FOLDS``: six folds of
    four actors), the default protocol (``folds``), so results sit beside EmoBox's RAVDESS
    figures.

    After ``load``: ``counts`` (files read per class, before ``labels`` and ``merge``; the release's
    figures are ``RELEASE_COUNTS``), ``label_counts`` (utterances per label), ``speaker_counts``,
    ``dropped`` (per class left out of ``labels``), ``left_out`` (per channel / intensity not
    chosen) and ``speaker_info`` (each actor's gender: odd male, even female).

    Problems, each counted (one problem per kind with the first names), never silently skipped:
    hidden files (``._*``, ``.DS_Store``), extra folders (anything but ``Actor_NN`` folders or
    folders holding them), extra files inside actor folders, names that do not parse
    (``bad_name``), codes out of range or outside the design (``bad_code``), files whose actor
    code is not their folder's (``actor_mismatch``), full-AV / video-only files (``not_audio_only``),
    files that hold no WAV audio (``empty_audio``, ``not_wav``), the same file in two places
    (``duplicate_audio``, later copies skipped), classes outside ``labels`` (``dropped_label``), a
    chosen vocal channel with no file, and a class of ``labels`` without utterances. No utterance
    at all is fatal. Files at the root other than audio (a README, the zips) are not read.
    """

    default_protocol = "folds"

    def __init__(
        self,
        root: str,
        labels: Optional[Sequence[str]] = None,
        merge: Optional[Mapping[str, str]] = None,
        vocal_channel: str = "speech",
        intensity: str = "all",
        check_audio: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if vocal_channel not in CHANNEL_CHOICES:
            raise ValueError(
                f"RavdessCorpus: vocal_channel must be one of {', '.join(CHANNEL_CHOICES)}, not {vocal_channel!r}"
            )
        if intensity not in INTENSITY_CHOICES:
            raise ValueError(
                f"RavdessCorpus: intensity must be one of {', '.join(INTENSITY_CHOICES)}, not {intensity!r}"
            )
        self.vocal_channel = vocal_channel
        self.intensity = intensity
        self.check_audio = bool(check_audio)
        self.merge: Dict[str, str] = {_name_of(str(k), EMOTIONS): str(v) for k, v in dict(merge or {}).items()}
        self.labels: List[str] = resolve_labels(
            "RavdessCorpus", DEFAULT_LABELS, labels, self.merge, self.available_classes()
        )
        self.counts: Dict[str, int] = {}
        self.label_counts: Dict[str, int] = {}
        self.speaker_counts: Dict[str, int] = {}
        self.dropped: Dict[str, int] = {}
        self.left_out: Dict[str, int] = {}
        self.speaker_info: Dict[str, Dict[str, str]] = {}

    def channels(self) -> Tuple[str, ...]:
        return ("speech", "song") if self.vocal_channel == "both" else (self.vocal_channel,)

    def available_classes(self) -> List[str]:
        """The raw classes the chosen channel(s) and intensity can hold, in code order."""
        names = [n for n in DEFAULT_LABELS if n in SONG_EMOTIONS or "speech" in self.channels()]
        return [n for n in names if not (self.intensity == "strong" and n == "neu")]

    # ------------------------------------------------------------------ layout
    def _actor_dirs(self, tally: ProblemTally) -> Tuple[List[Tuple[Path, str]], List[Path]]:
        """``([(actor folder, actor code)], [folders whose .wav files are read by name])``."""
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(
                f"RAVDESS root {str(root)!r} does not exist or is not a folder; expected the folder holding "
                f"Actor_01 ... Actor_24 (or Audio_Speech_Actors_01-24/ and Audio_Song_Actors_01-24/)"
            )
        if _ACTOR_DIR_RE.match(root.name) and not any(_ACTOR_DIR_RE.match(p.name) for p in root.iterdir()):
            raise FileNotFoundError(
                f"RAVDESS root {str(root)!r} is an actor folder: pass its parent, {root.parent}, as root "
                f"(the folder holding Actor_01 ... Actor_24)"
            )
        actor_dirs: List[Tuple[Path, str]] = []
        loose: List[Path] = [root]

        def actor_code(p: Path) -> Optional[str]:
            m = _ACTOR_DIR_RE.match(p.name)
            return f"{int(m.group(1)):02d}" if m else None

        def take_actor(p: Path) -> None:
            code = actor_code(p)
            if code in ACTORS:
                actor_dirs.append((p, code))
            else:
                tally.add(EXTRA_FOLDER, p, "actor folder(s) outside Actor_01-Actor_24; not read", key="actor_range")

        def scan(folder: Path, nested: bool) -> None:
            """The folders in ``folder``: actor folders, or (at the top) folders holding them, one per zip."""
            for entry in sorted(folder.iterdir()):
                if not entry.is_dir():
                    continue
                if is_hidden(entry.name) or entry.name == "__MACOSX":
                    tally.add(HIDDEN_FILE, entry, _HIDDEN)
                elif actor_code(entry) is not None:
                    take_actor(entry)
                elif not nested and any(p.is_dir() and actor_code(p) is not None for p in entry.iterdir()):
                    loose.append(entry)
                    scan(entry, True)
                else:
                    tally.add(EXTRA_FOLDER, entry, "extra folder(s), not actor folders; not read")

        scan(root, False)
        if not actor_dirs and not any(p.suffix.lower() == ".wav" for p in root.iterdir()):
            hint = ""
            if any(p.suffix.lower() == ".zip" for p in root.iterdir()):
                hint = " (it holds zip files: extract Audio_Speech_Actors_01-24.zip there)"
            raise FileNotFoundError(
                f"no RAVDESS actor folders (Actor_01 ... Actor_24) in {str(root)!r}{hint}; expected the folder "
                f"holding them, or one holding Audio_Speech_Actors_01-24/ and Audio_Song_Actors_01-24/"
            )
        return actor_dirs, loose

    def _files(self, tally: ProblemTally) -> Iterable[Tuple[Path, Optional[str]]]:
        """``(file, folder actor code or None for loose files)`` of every candidate file, sorted."""
        actor_dirs, loose = self._actor_dirs(tally)
        for folder in loose:  # .wav files lying next to the actor folders: their names say the actor
            for entry in sorted(folder.iterdir()):
                if entry.is_file() and is_hidden(entry.name):
                    tally.add(HIDDEN_FILE, entry, _HIDDEN)
                elif entry.is_file() and entry.suffix.lower() == ".wav":
                    yield entry, None
        for folder, actor in actor_dirs:
            for entry in sorted(folder.iterdir()):
                if is_hidden(entry.name):
                    tally.add(HIDDEN_FILE, entry, _HIDDEN)
                elif entry.is_dir():
                    tally.add(EXTRA_FOLDER, entry, "extra folder(s) inside actor folders; not read", key="nested")
                else:
                    yield entry, actor

    # ------------------------------------------------------------------ reading
    def load(self) -> List[Utterance]:
        """List the audio-only files of the chosen channel(s) and intensity; labels come from the names alone."""
        self.problems = []
        self.counts, self.label_counts, self.speaker_counts = {}, {}, {}
        self.dropped, self.left_out, self.speaker_info = {}, {}, {}
        tally = ProblemTally(self.root)
        channels = self.channels()
        seen: Dict[str, Path] = {}
        found_channel: Dict[str, int] = {}
        out: List[Utterance] = []
        for path, folder_actor in self._files(tally):
            stem, suffix = path.stem, path.suffix.lower()
            codes, kind, why = parse_name(stem)
            if codes is None:
                if suffix != ".wav" and kind == BAD_NAME:
                    tally.add(EXTRA_FILE, path, "file(s) that are not RAVDESS recordings; not read")
                else:
                    tally.add(
                        kind,
                        path,
                        f"file name(s) that {'do not parse' if kind == BAD_NAME else 'have a bad code'}: "
                        f"{why}; skipped",
                        key=why if kind == BAD_CODE else "",
                    )
                continue
            if codes.modality != "03":
                tally.add(
                    NOT_AUDIO_ONLY,
                    path,
                    f"{MODALITIES[codes.modality]} (modality {codes.modality}) file(s), not audio-only; not read",
                    key=codes.modality,
                )
                continue
            if suffix != ".wav":
                tally.add(EXTRA_FILE, path, "audio-only file(s) that are not .wav; not read", key="suffix")
                continue
            if folder_actor is not None and codes.actor != folder_actor:
                tally.add(ACTOR_MISMATCH, path, "file(s) whose actor code is not their folder's; skipped")
                continue
            found_channel[codes.channel] = found_channel.get(codes.channel, 0) + 1
            if codes.channel not in channels:
                self.left_out[codes.channel] = self.left_out.get(codes.channel, 0) + 1
                continue
            level = INTENSITIES[codes.intensity]
            if self.intensity != "all" and level != self.intensity:
                self.left_out[level] = self.left_out.get(level, 0) + 1
                continue
            if stem in seen:
                tally.add(DUPLICATE_AUDIO, path, "file(s) found twice (the first copy is read); later copies skipped")
                continue
            seen[stem] = path
            if self.check_audio:
                bad = wav_problem(path)
                if bad is not None:
                    tally.add(bad[0], path, f"file(s) without audio: {bad[1]}; skipped", key=bad[1])
                    continue
            label = kept_label(self, codes.label)
            if label is None:
                continue
            speaker = f"Actor_{codes.actor}"
            self.speaker_info.setdefault(speaker, {"gender": codes.gender})
            self.label_counts[label] = self.label_counts.get(label, 0) + 1
            self.speaker_counts[speaker] = self.speaker_counts.get(speaker, 0) + 1
            out.append(
                Utterance(
                    id=stem,
                    path=str(path),
                    label=label,
                    speaker=speaker,
                    session=speaker,
                    fold=FOLD_OF_ACTOR[codes.actor],
                )
            )
        tally.report(self)
        self._report(out, found_channel)
        return out

    def _report(self, out: List[Utterance], found_channel: Dict[str, int]) -> None:
        src = str(self.root)
        report_dropped(self, src, self.dropped, EMOTION_NAMES.__getitem__)
        for channel in self.channels():
            if not found_channel.get(channel):
                zip_name = "Audio_Speech_Actors_01-24.zip" if channel == "speech" else "Audio_Song_Actors_01-24.zip"
                self.problem(
                    src,
                    f"no {channel} files (vocal channel {'01' if channel == 'speech' else '02'}) found; "
                    f"they come in {zip_name}",
                    kind=MISSING_CHANNEL,
                    key=channel,
                )
        report_empty(
            self, src, out, "no usable RAVDESS utterances (check the folder, vocal_channel, intensity and labels)"
        )

    # ------------------------------------------------------------------ the miniature
    @classmethod
    def generate(
        cls,
        root: str,
        seed: int = 0,
        utterances_per_speaker: int = 16,
        overwrite: bool = False,
        sample_rate: int = 48000,
    ) -> dict:
        """Write a synthetic miniature in the release layout under ``root``; returns its summary.

        See ``generate_miniature`` (``ser demo-corpus DIR --corpus ravdess``).
        """
        return generate_miniature(
            root, seed=seed, utterances_per_speaker=utterances_per_speaker, overwrite=overwrite, sample_rate=sample_rate
        )


# ---------------------------------------------------------------------------------- miniature
README_MARKER = "SYNTHETIC RAVDESS-LAYOUT MINIATURE"
SPEECH_DIR = "Audio_Speech_Actors_01-24"
SONG_DIR = "Audio_Song_Actors_01-24"
#: one actor from each EmoBox fold, three male and three female; 18 has no song, as in the release
MINI_ACTORS: Tuple[str, ...] = ("01", "03", "04", "06", "09", "18")
# Expressive parameters (demo_synth's fields, see PARAM_FIELDS) at full intensity: demo_synth's own for
# the emotions it has, fear and disgust as the other miniatures have them (corpora.release's
# EXPRESSIVE_PARAMS); calm a little low, slow, soft, dark and breathy, with a narrow range (a milder sadness).
EXPRESSIVE: Mapping[str, Tuple[float, ...]] = MappingProxyType(
    {**EXPRESSIVE_PARAMS, "cal": (-1.0, 2.0, 0.86, -3.0, 0.72, 0.66, 0.45, 0.008, 0.035, 0.0, 0.12, 0.99, -2.0)}
)
#: the intensity ranges the blend from neutral is drawn from
INTENSITY_RANGES: Mapping[str, Tuple[float, float]] = MappingProxyType({"normal": (0.55, 0.8), "strong": (0.95, 1.25)})


def expressive_params(name: str, intensity: float, rng: np.random.Generator, song: bool = False) -> Dict[str, float]:
    """One utterance's demo_synth parameters: neutral blended towards ``name`` by ``intensity``, plus noise.

    As demo_synth does it (the same noise on every field); ``song`` sings it: slower, wider
    pitch range, steadier voice.
    """
    p = blend(EXPRESSIVE["neu"], EXPRESSIVE[name], intensity)
    vary(p, rng)
    if song:
        p["rate"] *= 0.7
        p["range"] *= 1.6
        p["f0"] += 2.0
        p["jitter"] *= 0.5
        p["shimmer"] *= 0.6
    return p


def _synth():
    """demo_synth's voices and synthesis, taking parameters where it takes a label (MSP-Podcast's private copy)."""
    from corpora.msp_podcast import _synth_module

    return _synth_module()


def design(channel: str) -> List[Tuple[str, str, str, str]]:
    """Every ``(emotion, intensity, statement, repetition)`` code tuple of one actor's ``channel`` recordings.

    Ordered so that the first ``n`` are as balanced as they can be: round robin over the emotions,
    and within an emotion normal then strong, statement 1 then 2, repetition 1 then 2.
    """
    emotions = [c for c, n in EMOTIONS.items() if channel == "speech" or n in SONG_EMOTIONS]
    per: Dict[str, List[Tuple[str, str, str, str]]] = {}
    for e in emotions:
        levels = ("01",) if e == "01" else ("01", "02")
        per[e] = [(e, i, s, r) for r in REPETITIONS for s in STATEMENTS for i in levels]
    out = []
    for k in range(max(len(v) for v in per.values())):
        out.extend(per[e][k] for e in emotions if k < len(per[e]))
    return out


def _prepare_root(root: Path, overwrite: bool) -> None:
    actor_dirs = [p for p in root.iterdir() if p.is_dir() and _ACTOR_DIR_RE.match(p.name)] if root.is_dir() else []
    what = "RAVDESS folders"
    prepare_root(root, (SPEECH_DIR, SONG_DIR), README_MARKER, overwrite, what, extra=actor_dirs, as_a="a")


def generate_miniature(
    root: str, seed: int = 0, utterances_per_speaker: int = 16, overwrite: bool = False, sample_rate: int = 48000
) -> dict:
    """Write a synthetic RAVDESS miniature under ``root`` in the release layout; return a summary.

    ``Audio_Speech_Actors_01-24/Actor_NN/03-01-*.wav`` and ``Audio_Song_Actors_01-24/Actor_NN/03-02-*.wav``
    (each zip extracted into its own folder) for six actors, one from each EmoBox fold (01 03 09
    male, 04 06 18 female; 18 has no song, as in the release). Each actor has
    ``utterances_per_speaker`` speech files (at most 60, the release's number) and 44/60 as many
    song files, taken from the release design so the classes are balanced (``design``): 1-2 s of
    demo_synth pseudo-speech whose emotion sets pitch, tempo, loudness and voice quality, normal
    or strong intensity blending it more or less from neutral. 16-bit PCM at ``sample_rate``
    (48 kHz as the release). Quirks, as copies of the release have them: a ``.DS_Store``, a macOS
    ``._`` AppleDouble file, and a Finder copy ``... copy.wav`` (a name that does not parse).
    Default size: 96 speech + 60 song files. Same seed -> byte-identical files. Raises
    ``FileExistsError`` when ``root`` already holds the layout and ``overwrite`` is False (or it is
    not a generated miniature).
    """
    if not 1 <= utterances_per_speaker <= 60:
        raise ValueError("utterances_per_speaker must be between 1 and 60 (the release has 60 speech files per actor)")
    root_p = Path(root)
    _prepare_root(root_p, overwrite)
    synth = _synth()
    n_song = max(1, round(utterances_per_speaker * 44 / 60))
    counts: Dict[str, Dict[str, int]] = {"speech": {}, "song": {}}
    seconds = 0.0
    files = 0
    first_wav: Dict[str, Path] = {}
    for actor in MINI_ACTORS:
        arng = np.random.default_rng([seed, int(actor)])
        voice = synth._make_voice(f"Actor_{actor}", "M" if int(actor) % 2 else "F", arng)
        for ch_i, (channel, vc, folder, n) in enumerate(
            (("speech", "01", SPEECH_DIR, utterances_per_speaker), ("song", "02", SONG_DIR, n_song))
        ):
            if channel == "song" and actor in NO_SONG_ACTORS:
                continue
            out_dir = root_p / folder / f"Actor_{actor}"
            out_dir.mkdir(parents=True, exist_ok=True)
            for u_i, (e, i, s, r) in enumerate(design(channel)[:n]):
                urng = np.random.default_rng([seed, int(actor), ch_i, u_i, 5])
                name = EMOTIONS[e]
                strength = float(urng.uniform(*INTENSITY_RANGES[INTENSITIES[i]]))
                params = expressive_params(name, strength, urng, song=channel == "song")
                wav = synth.synthesize_utterance(params, voice, float(urng.uniform(1.0, 2.0)), urng)
                if sample_rate != SAMPLE_RATE:
                    g = np.gcd(int(sample_rate), SAMPLE_RATE)
                    wav = signal.resample_poly(wav, int(sample_rate) // g, SAMPLE_RATE // g)
                wav = np.clip(wav, -1.0, 1.0)
                path = out_dir / f"03-{vc}-{e}-{i}-{s}-{r}-{actor}.wav"
                seconds += write_wav(path, wav, sample_rate)
                first_wav.setdefault(actor, path)
                files += 1
                counts[channel][name] = counts[channel].get(name, 0) + 1
    # quirks found in copies of the release: macOS metadata and a Finder duplicate
    (root_p / SPEECH_DIR / ".DS_Store").write_bytes(DS_STORE_STUB)
    apple = first_wav[MINI_ACTORS[0]]
    (apple.parent / f"._{apple.name}").write_bytes(APPLEDOUBLE_STUB)
    dup = first_wav[MINI_ACTORS[2]]
    shutil.copyfile(dup, dup.parent / f"{dup.stem} copy.wav")
    quirks = {
        "hidden_file": [f"{SPEECH_DIR}/.DS_Store", f"{SPEECH_DIR}/{apple.parent.name}/._{apple.name}"],
        "bad_name": [f"{SPEECH_DIR}/{dup.parent.name}/{dup.stem} copy.wav"],
    }
    summary = {
        "seed": seed,
        "utterances_per_speaker": utterances_per_speaker,
        "song_per_speaker": n_song,
        "actors": list(MINI_ACTORS),
        "files": files,
        "counts": {ch: dict(sorted(c.items())) for ch, c in counts.items()},
        "quirks": quirks,
        "sample_rate": int(sample_rate),
        "seconds": round(seconds, 3),
    }
    (root_p / "README.txt").write_text(
        f"{README_MARKER}\n\nThis folder is SYNTHETIC: generated by ser_plugins' corpora.ravdess "
        f"(seed={seed}, utterances_per_speaker={utterances_per_speaker}).\nIt mimics the layout and file names "
        f"of the RAVDESS audio-only zips ({SPEECH_DIR}/, {SONG_DIR}/) so the RAVDESS reader can be exercised, "
        f"but it holds no real speech: every wav is source-filter pseudo-speech whose emotion is set by f0, "
        f"tempo, loudness, spectral tilt and voice quality.\nNumbers measured on it say nothing about real "
        f"speech emotion recognition.\n",
        encoding="utf-8",
    )
    return write_summary(root_p, summary)


__all__ = [
    "DEFAULT_LABELS",
    "EMOBOX_FOLDS",
    "EMOTIONS",
    "RELEASE_COUNTS",
    "RavdessCorpus",
    "RavdessName",
    "design",
    "generate_miniature",
    "parse_name",
]
