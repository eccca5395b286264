"""EmoDB reader (Berlin Database of Emotional Speech, ``wav/SSTTTEV.wav``) and a generated miniature in its layout.

Release layout read -- the public download of Burkhardt et al. (2005), "A database of German
emotional speech", Interspeech; the real data is not available here, so the tests read the
miniature ``EmodbCorpus.generate`` writes in the same layout::

    <root>/wav/03a01Fa.wav     535 files, 16 kHz mono, one utterance each
    <root>/lablaut/ ...        phone labels    }
    <root>/labsilb/ ...        syllable labels } part of the release, not read
    <root>/silb/ ...                           }
    <root>/erkennung.txt ...   documentation files (any loose non-wav file at the top): not read

A file name is ``SSTTTEV.wav``: ``SS`` the speaker (``SPEAKERS``, 10 actors), ``TTT`` the text
(``TEXTS``, 10 sentences), ``E`` the emotion (German initial, ``CODES``), ``V`` the take
(``a``, ``b``, ``c``, ...). ``03a01Fa.wav``: speaker 03, text a01, Freude (happiness), take a.
The labels are the speaker's *intended* emotion; the release keeps only the recordings that
listeners recognised (above 80 %) and judged natural (above 60 %).
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from corpora.demo_synth import EMOTION_PARAMS, SAMPLE_RATE
from corpora.release import APPLEDOUBLE as APPLEDOUBLE
from corpora.release import BAD_CODE as BAD_CODE
from corpora.release import BAD_NAME as BAD_NAME
from corpora.release import (
    DOT_FILES,
    EXPRESSIVE_PARAMS,
    bad_code,
    check_labels,
    check_merge_target,
    check_reachable,
    code_list,
    demo_synth_copy,
    is_dot_file,
    kept_label,
    label_list,
    report_dropped,
    report_empty,
    scan_top,
    sort_out,
    spelled_twice,
    write_summary,
    write_wav,
)
from corpora.release import DS_STORE as DS_STORE
from corpora.release import EMPTY_LABEL as EMPTY_LABEL
from corpora.release import EXTRA_FILE as EXTRA_FILE
from corpora.release import EXTRA_FOLDER as EXTRA_FOLDER
from corpora.release import HIDDEN_FILE as HIDDEN_FILE
from corpora.release import MISPLACED_AUDIO as MISPLACED_AUDIO
from corpora.release import NO_UTTERANCES as NO_UTTERANCES
from corpora.release import Quirks as Quirks
from corpora.release import prepare_root as prepare_root
from corpora.release import write_readme as write_readme
from ser_plugins.plugins.contracts import Corpus, Utterance

#: The 10 speakers (actors) and their documented gender.
SPEAKERS: Tuple[str, ...] = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
GENDER: Mapping[str, str] = MappingProxyType(
    {
        "03": "male",
        "08": "female",
        "09": "female",
        "10": "male",
        "11": "male",
        "12": "male",
        "13": "female",
        "14": "female",
        "15": "male",
        "16": "female",
    }
)
#: The 10 text codes (5 short sentences ``a..``, 5 longer ones ``b..``).
TEXTS: Tuple[str, ...] = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")
#: Emotion letter (the German word's initial) -> short class name.
CODES: Mapping[str, str] = MappingProxyType(
    {"W": "ang", "L": "bor", "E": "dis", "A": "fea", "F": "hap", "T": "sad", "N": "neu"}
)
#: Emotion letter -> the German word it abbreviates (docs, messages).
GERMAN: Mapping[str, str] = MappingProxyType(
    {
        "W": "Ärger (Wut), anger",
        "L": "Langeweile, boredom",
        "E": "Ekel, disgust",
        "A": "Angst, fear",
        "F": "Freude, happiness",
        "T": "Trauer, sadness",
        "N": "neutral",
    }
)
NAMES: Tuple[str, ...] = tuple(CODES.values())
DEFAULT_LABELS: Tuple[str, ...] = ("ang", "bor", "dis", "fea", "hap", "sad", "neu")
#: Files per class of the 535-file release, as tabulated in the literature for the public download
#: (and as EmoBox's data/emodb/emodb.jsonl lists them: 535 rows with these counts).
DOCUMENTED_COUNTS: Mapping[str, int] = MappingProxyType(
    {"ang": 127, "bor": 81, "dis": 46, "fea": 69, "hap": 71, "sad": 62, "neu": 79}
)
#: Files per speaker of the 535-file release (counted from the same listing).
DOCUMENTED_SPEAKER_COUNTS: Mapping[str, int] = MappingProxyType(
    {"03": 49, "08": 58, "09": 43, "10": 38, "11": 55, "12": 35, "13": 61, "14": 69, "15": 56, "16": 71}
)
RELEASE_FILES = 535
AUDIO_DIR = "wav"
#: The release's label folders: expected, not read, not problems.
LABEL_DIRS: Tuple[str, ...] = ("lablaut", "labsilb", "silb")
NAME_PATTERN = "SSTTTEV.wav (speaker, text, emotion letter, take; e.g. 03a01Fa.wav)"
_NAME_RE = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<emotion>[A-Z])(?P<version>[a-z])$")

# The problem kinds of the release readers (EmoDB, EMOVO; besides the core's dropped_label and duplicate_audio),
# ``Quirks`` (the counted tally of a load), the miniatures' quirk files, ``prepare_root`` and ``write_readme``
# are corpora.release's, imported above under the names this module had before corpora.release.
#: Dot-files: macOS metadata (``._*`` AppleDouble files, ``.DS_Store``) and other hidden entries.
is_hidden = is_dot_file


def resolve_labels(
    cls_name: str,
    names: Sequence[str],
    codes: Mapping[str, str],
    labels: Sequence[str],
    merge: Optional[Mapping[str, str]],
) -> Tuple[List[str], Dict[str, str]]:
    """``(labels, merge)`` checked: ``merge`` keys given as class names or release codes, onto ``labels``.

    Raises ``ValueError`` for duplicate labels, a merge source that is no class of the corpus, a
    merge target outside ``labels``, a label that is both kept and merged away, and a label that
    no utterance could have.
    """
    labels = label_list(labels)
    check_labels(cls_name, labels)
    known = code_list(codes)
    resolved: Dict[str, str] = {}
    for src, dst in dict(merge or {}).items():
        name = codes.get(str(src), str(src))
        if name not in names:
            raise ValueError(f"{cls_name}: merge source {src!r} is not a class of the corpus; known: {known}")
        check_merge_target(cls_name, src, dst, labels, name)
        resolved[name] = str(dst)
    check_reachable(cls_name, labels, names, resolved, f"a class of the corpus ({known})")
    return labels, resolved


def report_labels(corpus: Corpus, src: str, out: Sequence[Utterance], dropped: Mapping[str, int], code_of) -> None:
    """The ``dropped_label`` problems (one per class outside ``labels``), then labels without utterances."""
    report_dropped(corpus, src, dropped, code_of, sep=":")
    report_empty(corpus, src, out, "no utterance could be read")


class EmodbCorpus(Corpus):
    """The EmoDB corpus read from its release folder (see the module docstring for the layout).

    Options:
      * ``labels`` -- the classes, in logit order (default: all 7, ``ang bor dis fea hap sad neu``).
      * ``merge`` -- maps classes (names or emotion letters) onto ``labels``, e.g. ``{"bor": "neu"}``
        or ``{"L": "neu"}``.

    Speakers are the two-digit codes (``03`` ... ``16``); there are no sessions. The default
    protocol is ``speaker``: leave one speaker out, 10 folds, the common speaker-independent
    protocol for EmoDB (the release defines no split). ``protocol.num_folds: 5`` gives
    speaker-independent 5-fold (two speakers per fold). EmoBox's own 5 folds are not speaker
    independent (every speaker is in every test fold) and come from EmoBox's file lists: read them
    with the ``emobox`` corpus.

    After ``load()``: ``counts`` -- files per class (every readable file, before ``labels`` and
    ``merge``; the release's are ``DOCUMENTED_COUNTS``), ``speaker_counts`` -- files per speaker,
    ``dropped`` -- files per class left out by ``labels``, ``ignored`` -- the release's label folders
    and loose documentation files, expected and not read.

    Problems (counted, one per kind, never silently skipped): hidden files (``._*``, ``.DS_Store``;
    ``hidden_file``), folders that are not part of the layout (``extra_folder``), files in ``wav/``
    that are not ``.wav`` (``extra_file``), names that are not ``SSTTTEV.wav``
    (``bad_name``), unknown speaker, text or emotion codes (``bad_code``, key the field),
    ``.wav`` files outside ``wav/`` (``misplaced_audio``), the same file in two spellings
    (``duplicate_audio``). None of these files is read. Classes
    outside ``labels`` are ``dropped_label`` problems (one per class); a label without any
    utterance is an ``empty_label`` problem; nothing readable at all is fatal. A wrong ``root``
    raises ``FileNotFoundError`` saying what was expected.
    """

    default_protocol = "speaker"

    def __init__(
        self, root: str, labels: Sequence[str] = DEFAULT_LABELS, merge: Optional[Mapping[str, str]] = None
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.labels, self.merge = resolve_labels("EmodbCorpus", NAMES, CODES, labels, merge)
        self.counts: Dict[str, int] = {}
        self.speaker_counts: Dict[str, int] = {}
        self.dropped: Dict[str, int] = {}
        self.ignored: List[str] = []

    # ------------------------------------------------------------------ layout
    def audio_dir(self) -> Path:
        """``root/wav``; raises ``FileNotFoundError`` naming the expected layout when it is not there."""
        expected = f"the EmoDB release folder, holding {AUDIO_DIR}/ (and {', '.join(d + '/' for d in LABEL_DIRS)})"
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(f"EmoDB root {str(root)!r} does not exist or is not a folder; expected {expected}")
        wav = root / AUDIO_DIR
        if wav.is_dir():
            return wav
        hint = ""
        if any(_NAME_RE.match(p.stem) and p.suffix.lower() == ".wav" for p in root.iterdir()):
            hint = f" ({root} holds EmoDB wav files itself: pass its parent, {root.parent}, as root)"
        else:
            inner = sorted(p for p in root.iterdir() if p.is_dir() and (p / AUDIO_DIR).is_dir())
            if inner:
                hint = f" ({inner[0]} holds {AUDIO_DIR}/: pass it as root)"
        raise FileNotFoundError(f"no folder {str(wav)!r}{hint}; expected root to be {expected}")

    # ------------------------------------------------------------------ reading
    def load(self) -> List[Utterance]:
        """List ``wav/``; return one utterance per readable file, in file-name order."""
        self.problems = []
        self.counts, self.speaker_counts, self.dropped, self.ignored = {}, {}, {}, []
        wav_dir = self.audio_dir()
        quirks = Quirks(self.root)
        self.ignored = scan_top(
            self.root,
            quirks,
            lambda p: p.name == AUDIO_DIR,
            lambda p: p.name in LABEL_DIRS,
            f"folder(s) that are not part of the EmoDB layout ({AUDIO_DIR}/, {', '.join(d + '/' for d in LABEL_DIRS)})",
            f".wav file(s) outside {AUDIO_DIR}/",
        )
        out: List[Utterance] = []
        seen: Dict[str, Path] = {}
        for p in sorted(wav_dir.iterdir()):
            utt = self._utterance(p, quirks, seen)
            if utt is not None:
                out.append(utt)
        quirks.report(self)
        report_labels(self, str(wav_dir), out, self.dropped, lambda name: _CODE_OF[name])
        return out

    def _utterance(self, p: Path, quirks: Quirks, seen: Dict[str, Path]) -> Optional[Utterance]:
        if sort_out(
            quirks,
            p,
            DOT_FILES,
            f"folder(s) inside {AUDIO_DIR}/, which holds only files",
            f"file(s) in {AUDIO_DIR}/ that are not .wav",
            AUDIO_DIR,
        ):
            return None
        m = _NAME_RE.match(p.stem)
        if m is None:
            quirks.add(BAD_NAME, p, f".wav file(s) whose name is not {NAME_PATTERN}")
            return None
        speaker, text, letter = m.group("speaker"), m.group("text"), m.group("emotion")
        checks = (("speaker", speaker, SPEAKERS), ("text", text, TEXTS), ("emotion", letter, tuple(CODES)))
        if bad_code(quirks, p, checks, "a"):
            return None
        if spelled_twice(self, p, p.stem, seen, p.stem):  # 03a01Fa.wav and 03a01Fa.WAV
            return None
        self.speaker_counts[speaker] = self.speaker_counts.get(speaker, 0) + 1
        label = kept_label(self, CODES[letter])
        if label is None:
            return None
        return Utterance(id=p.stem, path=str(p), label=label, speaker=speaker)

    # ------------------------------------------------------------------ the miniature
    @classmethod
    def generate(cls, root: str, seed: int = 0, utterances_per_speaker: int = 14, overwrite: bool = False) -> dict:
        """Write a synthetic miniature in the release layout under ``root``; returns its summary.

        See ``generate_miniature`` (``ser demo-corpus DIR --corpus emodb``).
        """
        return generate_miniature(root, seed=seed, utterances_per_speaker=utterances_per_speaker, overwrite=overwrite)


_CODE_OF = {name: code for code, name in CODES.items()}

# ---------------------------------------------------------------------------------- miniature
README_MARKER = "SYNTHETIC EMODB-LAYOUT MINIATURE"
#: two male and two female speakers of the release
MINIATURE_SPEAKERS: Tuple[str, ...] = ("03", "08", "10", "13")
#: the order emotions are dealt in, per speaker
EMOTION_ORDER: Tuple[str, ...] = ("W", "L", "E", "A", "F", "T", "N")
_TAKES = "abcdefghijklmnopqrstuvwxyz"
#: demo_synth's expressive parameters (f0, range, rate, gain, tilt, oq, close, jitter, shimmer,
#: rough, breath, formant, cons) of the classes it has not: fear and disgust as every miniature sets
#: them (corpora.release's EXPRESSIVE_PARAMS, so a class sounds alike in every generated corpus); boredom
#: low, flat (the narrowest f0 range), slow, a little quiet and dark -- near neutral, unlike sadness's
#: much quieter, breathy voice.
EXTRA_PARAMS: Mapping[str, Tuple[float, ...]] = MappingProxyType(
    {
        "fea": tuple(EXPRESSIVE_PARAMS["fea"]),
        "dis": tuple(EXPRESSIVE_PARAMS["dis"]),
        "bor": (-1.5, 0.8, 0.82, -2.0, 0.70, 0.65, 0.42, 0.010, 0.04, 0.00, 0.10, 0.99, -1.5),
    }
)
_SYNTH: Optional[types.ModuleType] = None


def synth_module() -> types.ModuleType:
    """A private copy of ``corpora.demo_synth`` whose ``EMOTION_PARAMS`` also has ``EXTRA_PARAMS``.

    demo_synth draws an utterance's parameters from ``EMOTION_PARAMS[label]`` (neutral blended
    towards the emotion by a random intensity, then noise), so in this copy
    ``synthesize_utterance("bor", ...)`` works as it does for demo_synth's own labels, with its
    voices and synthesis unchanged; a demo label gives the original's waveform (tested).
    ``corpora.demo_synth`` itself is not touched.
    """
    global _SYNTH
    if _SYNTH is None:
        module = demo_synth_copy()
        if not isinstance(getattr(module, "EMOTION_PARAMS", None), dict):  # pragma: no cover
            raise RuntimeError("corpora.demo_synth no longer has EMOTION_PARAMS; update corpora/emodb.py")
        module.EMOTION_PARAMS = {**EMOTION_PARAMS, **EXTRA_PARAMS}  # type: ignore[attr-defined]
        _SYNTH = module
    return _SYNTH


def generate_miniature(root: str, seed: int = 0, utterances_per_speaker: int = 14, overwrite: bool = False) -> dict:
    """Write a synthetic EmoDB miniature under ``root`` in the release layout; return a summary.

    ``wav/SSTTTEV.wav`` (16 kHz mono PCM, 1-2 s of demo_synth pseudo-speech) for speakers 03 and
    10 (male voices) and 08 and 13 (female), ``utterances_per_speaker`` files each (default 14:
    two per emotion); emotions are dealt in turn (``EMOTION_ORDER``), each emotion's files spread
    over the 10 texts, a text repeated with the next take letter. ``lablaut/``, ``labsilb/`` and
    ``silb/`` hold a placeholder per file (not real labels). Two quirk files, as found in copies
    unpacked on macOS: ``wav/.DS_Store`` and an AppleDouble ``wav/._<first file>`` (the reader
    counts them as one ``hidden_file`` problem). Same seed -> byte-identical files. Raises
    ``FileExistsError`` when ``root`` already holds the layout and ``overwrite`` is False (or it is
    not a generated miniature).
    """
    limit = len(EMOTION_ORDER) * len(TEXTS) * len(_TAKES)
    if not 1 <= utterances_per_speaker <= limit:
        raise ValueError(f"utterances_per_speaker must be between 1 and {limit}")
    root_p = Path(root)
    prepare_root(root_p, (AUDIO_DIR, *LABEL_DIRS), README_MARKER, overwrite)
    synth = synth_module()
    wav_dir = root_p / AUDIO_DIR
    for d in (AUDIO_DIR, *LABEL_DIRS):
        (root_p / d).mkdir(parents=True)
    classes = {CODES[c]: 0 for c in EMOTION_ORDER}
    per_speaker: Dict[str, int] = {}
    files: List[str] = []
    seconds = 0.0
    for s_i, spk in enumerate(MINIATURE_SPEAKERS):
        srng = np.random.default_rng([seed, s_i])
        voice = synth._make_voice(spk, "M" if GENDER[spk] == "male" else "F", srng)
        for u_i in range(utterances_per_speaker):
            e_i, rnd = u_i % len(EMOTION_ORDER), u_i // len(EMOTION_ORDER)
            letter = EMOTION_ORDER[e_i]
            text = TEXTS[(s_i + e_i + rnd) % len(TEXTS)]
            take = _TAKES[rnd // len(TEXTS)]
            stem = f"{spk}{text}{letter}{take}"
            urng = np.random.default_rng([seed, s_i, u_i, 7])
            wav = synth.synthesize_utterance(CODES[letter], voice, float(urng.uniform(1.0, 2.0)), urng)
            seconds += write_wav(wav_dir / f"{stem}.wav", wav, SAMPLE_RATE)
            for d in LABEL_DIRS:
                (root_p / d / f"{stem}.lab").write_text(f"# synthetic placeholder for {stem}.wav\n", encoding="utf-8")
            classes[CODES[letter]] += 1
            per_speaker[spk] = per_speaker.get(spk, 0) + 1
            files.append(f"{stem}.wav")
    quirks = [f"{AUDIO_DIR}/.DS_Store", f"{AUDIO_DIR}/._{sorted(files)[0]}"]
    (root_p / quirks[0]).write_bytes(DS_STORE)
    (root_p / quirks[1]).write_bytes(APPLEDOUBLE)
    summary = {
        "seed": seed,
        "utterances_per_speaker": utterances_per_speaker,
        "utterances": len(files),
        "speakers": per_speaker,
        "classes": classes,
        "quirk_files": quirks,
        "sample_rate": SAMPLE_RATE,
        "seconds": round(seconds, 3),
    }
    write_readme(root_p, README_MARKER, "corpora.emodb", seed, utterances_per_speaker, "the EmoDB release (wav/)")
    return write_summary(root_p, summary)


__all__ = [
    "CODES",
    "DEFAULT_LABELS",
    "DOCUMENTED_COUNTS",
    "DOCUMENTED_SPEAKER_COUNTS",
    "EmodbCorpus",
    "GENDER",
    "SPEAKERS",
    "TEXTS",
    "generate_miniature",
]
