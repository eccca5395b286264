"""CREMA-D reader (``AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav``) and a generated miniature in its layout.

Release layout read -- the Crowd-sourced Emotional Multimodal Actors Dataset (Cao et al. 2014,
IEEE Trans. Affective Computing 5(4): 377-390; github.com/CheyneyComputerScience/CREMA-D), built
from the documented layout (the real audio is not available here; the tests read the miniature
``CremaDCorpus.generate`` writes, and a full-size listing of empty files)::

    <root>/AudioWAV/1001_DFA_ANG_XX.wav          7442 clips, 16 kHz mono
    <root>/VideoDemographics.csv                 optional: ActorID,Age,Sex,Race,Ethnicity
    <root>/processedResults/summaryTable.csv     optional (label_source: voted):
        "",FileName,VoiceVote,VoiceLevel,FaceVote,FaceLevel,MultiModalVote,MultiModalLevel

The other folders of the release (AudioMP3/, VideoFlash/, docs/) and its other CSV files are not read.

A clip name is ``<ActorID>_<Sentence>_<Emotion>_<Level>``: actor 1001-1091 (48 male, 43 female),
one of 12 sentences (``SENTENCES``), emotion ANG DIS FEA HAP NEU SAD, level LO MD HI (only the
sentence IEO, "It's eleven o'clock", was spoken at three levels) or XX (unspecified).

The release has 7442 clips (Cao et al. 2014; the release README). Per class: 1271 each of anger,
disgust, fear, happiness and sadness and 1087 neutral, the counts of the release's AudioWAV
listing (repository commit 1658cd34) and of EmoBox's data/cremad/cremad.jsonl. They follow from
the design, 82 clips per actor (IEO: five emotions at three levels plus neutral; the other 11
sentences: six emotions each), 1274 per emotion and 1092 neutral for 91 actors (7462), less the
20 clips the release lacks (``MISSING_CLIPS``: three per emotion, five neutral).
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from corpora.demo_synth import SAMPLE_RATE
from corpora.ravdess import _synth, expressive_params, resolve_labels
from corpora.release import (
    APPLEDOUBLE_STUB,
    BAD_CODE,
    BAD_NAME,
    DS_STORE_STUB,
    EMPTY_AUDIO,
    HIDDEN_FILE,
    ProblemTally,
    is_hidden,
    kept_label,
    name_of,
    prepare_root,
    report_dropped,
    report_empty,
    report_lines,
    sort_out,
    wav_problem,
    write_summary,
    write_wav,
)
from ser_plugins.plugins.contracts import DUPLICATE_AUDIO, Corpus, Utterance

SENTENCES: Mapping[str, str] = MappingProxyType(
    {
        "IEO": "It's eleven o'clock",
        "TIE": "That is exactly what happened",
        "IOM": "I'm on my way to the meeting",
        "IWW": "I wonder what this is about",
        "TAI": "The airplane is almost full",
        "MTI": "Maybe tomorrow it will be cold",
        "IWL": "I would like a new alarm clock",
        "ITH": "I think I have a doctor's appointment",
        "DFA": "Don't forget a jacket",
        "ITS": "I think I've seen this before",
        "TSI": "The surface is slick",
        "WSI": "We'll stop in a couple of minutes",
    }
)
#: emotion code -> short class name
EMOTIONS: Mapping[str, str] = MappingProxyType(
    {"ANG": "ang", "DIS": "dis", "FEA": "fea", "HAP": "hap", "NEU": "neu", "SAD": "sad"}
)
EMOTION_NAMES: Mapping[str, str] = MappingProxyType(
    {"ang": "anger", "dis": "disgust", "fea": "fear", "hap": "happy", "neu": "neutral", "sad": "sad"}
)
LEVELS: Mapping[str, str] = MappingProxyType({"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"})
#: level codes found in copies of the release and what they stand for (1040_ITH_SAD_X.wav, renamed
#: 1040_ITH_SAD_XX.wav in the release repository in October 2022, CREMA-D issue #6)
MISNAMED_LEVELS: Mapping[str, str] = MappingProxyType({"X": "XX"})
#: summaryTable.csv vote letter -> emotion code
VOTE_LETTERS: Mapping[str, str] = MappingProxyType(
    {"A": "ANG", "D": "DIS", "F": "FEA", "H": "HAP", "N": "NEU", "S": "SAD"}
)
VOTE_COLUMNS: Mapping[str, str] = MappingProxyType(
    {"voice": "VoiceVote", "face": "FaceVote", "multimodal": "MultiModalVote"}
)
ACTOR_RANGE: Tuple[int, int] = (1001, 1091)
DEFAULT_LABELS: Tuple[str, ...] = tuple(EMOTIONS.values())
LABEL_SOURCES: Tuple[str, ...] = ("intended", "voted")
#: clips the release README lists as not matching their names (WAV files only)
KNOWN_ODD: Mapping[str, str] = MappingProxyType(
    {"1076_MTI_SAD_XX": "no audio, very short (release README: 'does not have correct audio based on its filename')"}
)
#: clips of the design (82 per actor) that the release does not have
MISSING_CLIPS: Tuple[str, ...] = (
    "1002_TIE_NEU_XX",
    *(f"1008_WSI_{e}_XX" for e in EMOTIONS),
    *(f"1009_MTI_{e}_XX" for e in EMOTIONS),
    *(f"1019_ITH_{e}_XX" for e in EMOTIONS),
    "1076_ITS_NEU_XX",
)
RELEASE_FILES = 7442
RELEASE_COUNTS: Mapping[str, int] = MappingProxyType(
    {name: (1087 if name == "neu" else 1271) for name in DEFAULT_LABELS}
)
#: clips per majority vote in the release's processedResults/summaryTable.csv (CheyneyComputerScience/CREMA-D at
#: commit 1658cd34) and the tied clips (no class), per vote column
RELEASE_VOTED_COUNTS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "voice": MappingProxyType(
            {"ang": 986, "dis": 547, "fea": 645, "hap": 353, "neu": 3897, "sad": 370, "tie": 644}
        ),
        "face": MappingProxyType(
            {"ang": 968, "dis": 1057, "fea": 822, "hap": 1266, "neu": 2076, "sad": 783, "tie": 470}
        ),
        "multimodal": MappingProxyType(
            {"ang": 1019, "dis": 1139, "fea": 1084, "hap": 1219, "neu": 1972, "sad": 589, "tie": 420}
        ),
    }
)
AUDIO_DIR = "AudioWAV"
DEMOGRAPHICS_FILE = "VideoDemographics.csv"
SUMMARY_TABLE = "processedResults/summaryTable.csv"

# CorpusProblem kinds of this reader (besides those shared with the RAVDESS reader)
ODD_NAME = "odd_name"
KNOWN_ODD_FILE = "known_odd_file"
NO_VOTE = "no_vote"
BAD_VOTE = "bad_vote"
MISSING_AUDIO = "missing_audio"
BAD_TABLE = "bad_table"
DEMOGRAPHICS = "demographics"

_NAME_RE = re.compile(r"^(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z]{1,2})$")


def parse_name(stem: str) -> Tuple[Optional[Tuple[str, str, str, str]], str, str]:
    """``((actor, sentence, emotion, level), "", "")`` for a clip name (level normalised, ``X`` -> ``XX``),
    else ``(None, kind, why)`` with kind ``bad_name`` or ``bad_code``."""
    m = _NAME_RE.match(stem)
    if m is None:
        return None, BAD_NAME, "not <ActorID>_<Sentence>_<Emotion>_<Level>"
    actor, sentence, emotion, level = m.group(1), m.group(2).upper(), m.group(3).upper(), m.group(4).upper()
    if not ACTOR_RANGE[0] <= int(actor) <= ACTOR_RANGE[1]:
        return None, BAD_CODE, f"actor {actor} outside {ACTOR_RANGE[0]}-{ACTOR_RANGE[1]}"
    if sentence not in SENTENCES:
        return None, BAD_CODE, f"unknown sentence {sentence}"
    if emotion not in EMOTIONS:
        return None, BAD_CODE, f"unknown emotion {emotion}"
    level = MISNAMED_LEVELS.get(level, level)
    if level not in LEVELS:
        return None, BAD_CODE, f"unknown level {level}"
    return (actor, sentence, emotion, level), "", ""


def clip_id(codes: Tuple[str, str, str, str]) -> str:
    return "_".join(codes)


def fold_of(actor: str, num_folds: int) -> str:
    """``fold_k`` of an actor: actors dealt in ActorID order over ``num_folds`` folds (1001 -> fold_1, ...)."""
    return f"fold_{(int(actor) - ACTOR_RANGE[0]) % num_folds + 1}"


class CremaDCorpus(Corpus):
    """The CREMA-D release read from its folder (see the module docstring for the layout).

    Options:
      * ``labels`` -- the classes in logit order (default ``ang dis fea hap neu sad`` after ``merge``).
      * ``merge`` -- class names (or emotion codes) onto labels, e.g. ``{dis: ang}``.
      * ``label_source`` -- ``intended`` (default): the emotion the actor was asked for (the file
        name); ``voted``: the majority vote of the crowd's ratings in the release's
        ``processedResults/summaryTable.csv`` (a tie, ``A:N``, is no class: the clip is left out,
        counted in ``no_class``).
      * ``vote`` -- with ``voted``: whose ratings, ``voice`` (default: the audio-only ``VoiceVote``),
        ``multimodal`` (``MultiModalVote``) or ``face`` (``FaceVote``).
      * ``levels`` -- the emotion levels kept (default all: ``LO MD HI XX``); others counted in ``left_out``.
      * ``num_folds`` -- the speaker-independent folds of the default protocol (5; actors dealt in
        ActorID order, ``fold_of``).
      * ``skip_known_odd`` -- False (default): clips the release README lists as not matching their
        names (``KNOWN_ODD``) are read, as the published counts and EmoBox do, and reported; True:
        left out, counted in ``left_out``.
      * ``check_audio`` -- True (default): each file's first bytes are read (never decoded), so
        empty files, header-only files and git-lfs stubs (a repository downloaded as a zip) are
        problems; False lists the clips by name alone.

    speaker = session = the ActorID; ``fold`` is ``fold_1 ... fold_<num_folds>``. The default
    protocol is ``folds``: speaker-independent k-fold (EmoBox's CREMA-D partition is one random
    75/25 split over all 91 actors, not speaker-independent: use the emobox corpus for its split).
    After ``load``: ``counts`` (clips read per class of the label source, before ``labels`` and
    ``merge``; the release's figures are ``RELEASE_COUNTS``), ``label_counts``, ``speaker_counts``,
    ``dropped``, ``left_out``, ``no_class`` (tied votes) and ``speaker_info``: each actor's row of
    ``VideoDemographics.csv`` (age, sex, race, ethnicity; ``gender`` the sex in lower case) when
    the file is there.

    Problems, each counted (one problem per kind with the first names): hidden files, extra
    folders or non-wav files in AudioWAV, names that do not parse (``bad_name``), unknown codes
    (``bad_code``), the misnamed level ``X`` (``odd_name``: read as ``XX``), known odd clips
    (``known_odd_file``), files without audio (``empty_audio``, ``not_wav``), the same clip twice
    (``duplicate_audio``), classes outside ``labels`` (``dropped_label``); with ``voted``, clips
    the table lacks (``no_vote``), votes that are not vote letters (``bad_vote``), table rows
    without audio (``missing_audio``); actors missing from ``VideoDemographics.csv`` and its bad
    rows (``demographics``). No utterance at all, or ``voted`` without a readable table, is fatal.
    """

    default_protocol = "folds"

    def __init__(
        self,
        root: str,
        labels: Optional[Sequence[str]] = None,
        merge: Optional[Mapping[str, str]] = None,
        label_source: str = "intended",
        vote: str = "voice",
        levels: Sequence[str] = tuple(LEVELS),
        num_folds: int = 5,
        skip_known_odd: bool = False,
        check_audio: bool = True,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if label_source not in LABEL_SOURCES:
            raise ValueError(
                f"CremaDCorpus: label_source must be one of {', '.join(LABEL_SOURCES)}, not {label_source!r}"
            )
        if vote not in VOTE_COLUMNS:
            raise ValueError(f"CremaDCorpus: vote must be one of {', '.join(VOTE_COLUMNS)}, not {vote!r}")
        if vote != "voice" and label_source != "voted":
            raise ValueError(
                "CremaDCorpus: vote chooses the ratings of label_source: voted; it has no effect otherwise"
            )
        self.label_source = label_source
        self.vote = vote
        if isinstance(levels, str):
            levels = [levels]
        self.levels = [str(lv).upper() for lv in levels]
        unknown = [lv for lv in self.levels if lv not in LEVELS]
        if unknown or not self.levels:
            raise ValueError(f"CremaDCorpus: levels must be among {', '.join(LEVELS)}, not {list(levels)!r}")
        n_actors = ACTOR_RANGE[1] - ACTOR_RANGE[0] + 1
        if not isinstance(num_folds, int) or not 2 <= num_folds <= n_actors:
            raise ValueError(f"CremaDCorpus: num_folds must be an integer from 2 to {n_actors}, not {num_folds!r}")
        self.num_folds = num_folds
        self.skip_known_odd = bool(skip_known_odd)
        self.check_audio = bool(check_audio)
        self.merge: Dict[str, str] = {name_of(str(k), EMOTIONS): str(v) for k, v in dict(merge or {}).items()}
        self.labels: List[str] = resolve_labels("CremaDCorpus", DEFAULT_LABELS, labels, self.merge, DEFAULT_LABELS)
        self.counts: Dict[str, int] = {}
        self.label_counts: Dict[str, int] = {}
        self.speaker_counts: Dict[str, int] = {}
        self.dropped: Dict[str, int] = {}
        self.left_out: Dict[str, int] = {}
        self.no_class: Dict[str, int] = {}
        self.speaker_info: Dict[str, Dict[str, str]] = {}

    # ------------------------------------------------------------------ layout
    def audio_dir(self) -> Path:
        """``<root>/AudioWAV``; raises ``FileNotFoundError`` naming the expected layout when it is not there."""
        root = self.root
        expected = (
            f"the CREMA-D release folder, holding {AUDIO_DIR}/ (and optionally {DEMOGRAPHICS_FILE}, {SUMMARY_TABLE})"
        )
        if not root.is_dir():
            raise FileNotFoundError(
                f"CREMA-D root {str(root)!r} does not exist or is not a folder; expected {expected}"
            )
        path = root / AUDIO_DIR
        if path.is_dir():
            return path
        hint = ""
        if any(_NAME_RE.match(p.stem) for p in root.glob("*.wav")):
            hint = f" ({root} holds the clips: pass its parent, {root.parent}, as root)"
        raise FileNotFoundError(f"no {AUDIO_DIR}/ folder in {str(root)!r}{hint}; expected root to be {expected}")

    def _demographics(self) -> Dict[str, Dict[str, str]]:
        path = self.root / DEMOGRAPHICS_FILE
        if not path.is_file():
            return {}
        info: Dict[str, Dict[str, str]] = {}
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                fields = {f.strip().lower(): f for f in (reader.fieldnames or [])}
                if "actorid" not in fields:
                    self.problem(
                        str(path),
                        f"no ActorID column (header: {','.join(reader.fieldnames or [])}); not read",
                        kind=DEMOGRAPHICS,
                        key="header",
                    )
                    return {}
                bad: List[int] = []
                for row in reader:
                    actor = (row.get(fields["actorid"]) or "").strip()
                    if not re.fullmatch(r"\d{4}", actor):
                        bad.append(reader.line_num)
                        continue
                    entry = {
                        k: (row.get(fields[k]) or "").strip()
                        for k in ("age", "sex", "race", "ethnicity")
                        if k in fields
                    }
                    if entry.get("sex"):
                        entry["gender"] = entry["sex"].lower()
                    info[actor] = entry
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            self.problem(str(path), f"cannot read {DEMOGRAPHICS_FILE}: {exc}", kind=DEMOGRAPHICS, key="unreadable")
            return {}
        if bad:
            what = f"{len(bad)} row(s) without a 4-digit ActorID (lines {bad[:10]}); skipped"
            report_lines(self, str(path), what, bad, DEMOGRAPHICS, "row")
        return info

    def _votes(self) -> Optional[Dict[str, Tuple[str, int]]]:
        """``{clip id: (vote cell, line)}`` of the summary table's vote column; None (fatal problem) if unreadable."""
        path = self.root / SUMMARY_TABLE
        column = VOTE_COLUMNS[self.vote]
        if not path.is_file():
            self.problem(
                str(path),
                f"label_source: voted reads {SUMMARY_TABLE}, which is not there (it comes with the release repository)",
                fatal=True,
                kind=BAD_TABLE,
                key="missing",
            )
            return None
        votes: Dict[str, Tuple[str, int]] = {}
        dupes: List[int] = []
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                header = [h.strip() for h in next(reader, [])]
                lower = {h.lower(): i for i, h in enumerate(header)}
                missing = [c for c in ("FileName", column) if c.lower() not in lower]
                if missing:
                    self.problem(
                        str(path),
                        f"header lacks {', '.join(missing)} (has: {','.join(header)})",
                        fatal=True,
                        kind=BAD_TABLE,
                        key="header",
                    )
                    return None
                i_name, i_vote = lower["filename"], lower[column.lower()]
                for cells in reader:
                    if not any(c.strip() for c in cells):
                        continue
                    line = reader.line_num
                    name = cells[i_name].strip() if i_name < len(cells) else ""
                    vote = cells[i_vote].strip() if i_vote < len(cells) else ""
                    codes, _kind, _why = parse_name(Path(name).stem if name.lower().endswith(".wav") else name)
                    key = clip_id(codes) if codes else name
                    if key in votes:
                        dupes.append(line)
                        continue
                    votes[key] = (vote, line)
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            self.problem(str(path), f"not a readable CSV file ({exc})", fatal=True, kind=BAD_TABLE, key="unreadable")
            return None
        if dupes:
            what = f"{len(dupes)} row(s) repeat a FileName (lines {dupes[:10]}); later rows ignored"
            report_lines(self, str(path), what, dupes, BAD_TABLE, "duplicate")
        return votes

    # ------------------------------------------------------------------ reading
    def load(self) -> List[Utterance]:
        """List ``AudioWAV``; labels from the names (or the summary table's votes)."""
        self.problems = []
        self.counts, self.label_counts, self.speaker_counts = {}, {}, {}
        self.dropped, self.left_out, self.no_class = {}, {}, {}
        audio = self.audio_dir()
        tally = ProblemTally(self.root)
        votes = self._votes() if self.label_source == "voted" else None
        if self.label_source == "voted" and votes is None:
            return []
        demographics = self._demographics()
        seen: Dict[str, Path] = {}
        listed: set = set()
        bad_votes: List[Tuple[int, str]] = []
        out: List[Utterance] = []
        for path in sorted(audio.iterdir()):
            if sort_out(
                tally,
                path,
                "hidden file(s) or folder(s) (._*, .DS_Store); not read",
                f"folder(s) inside {AUDIO_DIR}/; not read",
                f"file(s) in {AUDIO_DIR}/ that are not .wav; not read",
                hidden_test=is_hidden,
            ):
                continue
            codes, kind, why = parse_name(path.stem)
            if codes is None:
                what = "do not parse" if kind == BAD_NAME else "have an unknown code"
                tally.add(kind, path, f"file name(s) that {what}: {why}; skipped", key=why if kind == BAD_CODE else "")
                continue
            uid = clip_id(codes)
            listed.add(uid)
            actor, _sentence, emotion, level = codes
            if uid != path.stem.upper():
                tally.add(ODD_NAME, path, "file(s) with the misnamed level X (read as XX, unspecified)", key="X")
            if uid in seen:
                tally.add(DUPLICATE_AUDIO, path, "clip(s) found twice (the first file is read); later ones skipped")
                continue
            seen[uid] = path
            if level not in self.levels:
                self.left_out[level] = self.left_out.get(level, 0) + 1
                continue
            if uid in KNOWN_ODD:
                if self.skip_known_odd:
                    self.left_out["known_odd"] = self.left_out.get("known_odd", 0) + 1
                    continue
                tally.add(
                    KNOWN_ODD_FILE,
                    path,
                    f"clip(s) the release lists as odd: {KNOWN_ODD[uid]}; read (skip_known_odd: true leaves them out)",
                    key=uid,
                )
            if self.check_audio:
                bad = wav_problem(path)
                if bad is not None:
                    tally.add(bad[0], path, f"file(s) without audio: {bad[1]}; skipped", key=bad[1])
                    continue
            name = EMOTIONS[emotion]
            if votes is not None:
                cell = votes.get(uid)
                if cell is None:
                    tally.add(NO_VOTE, path, f"clip(s) {SUMMARY_TABLE} has no row for; skipped")
                    continue
                vote, line = cell
                letters = vote.split(":")
                if not vote or any(v.upper() not in VOTE_LETTERS for v in letters):
                    bad_votes.append((line, vote))
                    continue
                if len(letters) > 1:
                    self.no_class["tie"] = self.no_class.get("tie", 0) + 1
                    continue
                name = EMOTIONS[VOTE_LETTERS[vote.upper()]]
            label = kept_label(self, name)
            if label is None:
                continue
            self.label_counts[label] = self.label_counts.get(label, 0) + 1
            self.speaker_counts[actor] = self.speaker_counts.get(actor, 0) + 1
            out.append(
                Utterance(
                    id=uid,
                    path=str(path),
                    label=label,
                    speaker=actor,
                    session=actor,
                    fold=fold_of(actor, self.num_folds),
                )
            )
        tally.report(self)
        self._report(out, votes, listed, bad_votes, demographics)
        return out

    def _report(
        self,
        out: List[Utterance],
        votes: Optional[Dict[str, Tuple[str, int]]],
        listed: set,
        bad_votes: List[Tuple[int, str]],
        demographics: Dict[str, Dict[str, str]],
    ) -> None:
        src = str(self.root)
        table = str(self.root / SUMMARY_TABLE)
        if bad_votes:
            lines = [n for n, _ in bad_votes]
            what = (
                f"{len(bad_votes)} {VOTE_COLUMNS[self.vote]} cell(s) that are not vote letters "
                f"{'/'.join(VOTE_LETTERS)} (first {bad_votes[0][1]!r}; lines {lines[:10]}); clips skipped"
            )
            report_lines(self, table, what, lines, BAD_VOTE)
        if votes is not None:
            absent = sorted(uid for uid in votes if uid not in listed)
            if absent:
                lines = sorted(votes[uid][1] for uid in absent)
                what = (
                    f"{len(absent)} row(s) name clips {AUDIO_DIR}/ lacks ({', '.join(absent[:5])}"
                    f"{', ...' if len(absent) > 5 else ''})"
                )
                report_lines(self, table, what, lines, MISSING_AUDIO)
        report_dropped(self, src, self.dropped, EMOTION_NAMES.__getitem__, unit="clip(s)")
        speakers = sorted({u.speaker for u in out})
        if demographics:
            self.speaker_info = {s: dict(demographics[s]) for s in speakers if s in demographics}
            lacking = [s for s in speakers if s not in demographics]
            if lacking:
                self.problem(
                    str(self.root / DEMOGRAPHICS_FILE),
                    f"{len(lacking)} actor(s) without a row: {', '.join(lacking[:10])}",
                    kind=DEMOGRAPHICS,
                    key="missing",
                    count=len(lacking),
                )
        else:
            self.speaker_info = {s: {} for s in speakers}
        report_empty(self, src, out, "no usable CREMA-D clips (check the folder, labels, levels and label_source)")

    # ------------------------------------------------------------------ the miniature
    @classmethod
    def generate(cls, root: str, seed: int = 0, utterances_per_speaker: int = 18, overwrite: bool = False) -> dict:
        """Write a synthetic miniature in the release layout under ``root``; returns its summary.

        See ``generate_miniature`` (``ser demo-corpus DIR --corpus crema_d``).
        """
        return generate_miniature(root, seed=seed, utterances_per_speaker=utterances_per_speaker, overwrite=overwrite)


# ---------------------------------------------------------------------------------- miniature
README_MARKER = "SYNTHETIC CREMA-D-LAYOUT MINIATURE"
#: the miniature's actors and their (synthetic) demographics: Age, Sex, Race, Ethnicity
MINI_ACTORS: Mapping[str, Tuple[int, str, str, str]] = MappingProxyType(
    {
        "1001": (34, "Male", "Caucasian", "Not Hispanic"),
        "1002": (27, "Female", "African American", "Not Hispanic"),
        "1003": (45, "Female", "Asian", "Not Hispanic"),
        "1004": (52, "Male", "Caucasian", "Hispanic"),
        "1005": (23, "Female", "Unknown", "Not Hispanic"),
    }
)
LEVEL_RANGES: Mapping[str, Tuple[float, float]] = MappingProxyType(
    {"LO": (0.40, 0.60), "MD": (0.65, 0.85), "HI": (0.95, 1.20), "XX": (0.55, 1.10)}
)
_LETTER = {code: letter for letter, code in VOTE_LETTERS.items()}
SUMMARY_HEADER: Tuple[str, ...] = (
    "",
    "FileName",
    "VoiceVote",
    "VoiceLevel",
    "FaceVote",
    "FaceLevel",
    "MultiModalVote",
    "MultiModalLevel",
)


def design(actor_index: int) -> List[Tuple[str, str, str]]:
    """One actor's 82 ``(sentence, emotion, level)`` clips, ordered so that the first ``n`` are balanced.

    Round robin over the emotions; within one, IEO at HI, LO and MD alternate with the other
    sentences (rotated by ``actor_index``, so actors say different ones), neutral IEO at XX first.
    """
    others = [s for s in SENTENCES if s != "IEO"]
    k = actor_index % len(others)
    others = others[k:] + others[:k]
    per: Dict[str, List[Tuple[str, str, str]]] = {}
    for e in EMOTIONS:
        if e == "NEU":
            per[e] = [("IEO", e, "XX")] + [(s, e, "XX") for s in others]
        else:
            ieo = [("IEO", e, lv) for lv in ("HI", "LO", "MD")]
            rest = [(s, e, "XX") for s in others]
            per[e] = [x for pair in zip(ieo, rest[:3]) for x in pair] + rest[3:]
    out = []
    for i in range(max(len(v) for v in per.values())):
        out.extend(per[e][i] for e in EMOTIONS if i < len(per[e]))
    return out


def _vote(name: str, strength: float, urng: np.random.Generator) -> Tuple[str, str]:
    """``(VoiceVote, VoiceLevel)`` of a clip as raters would hear it: weak expressions are heard as neutral."""
    letter = _LETTER[next(c for c, n in EMOTIONS.items() if n == name)]
    level = float(np.clip(25 + 50 * strength + urng.normal(0, 6), 5, 100))
    if letter == "N" or strength >= 0.7:
        return letter, f"{level:.2f}".rstrip("0").rstrip(".")
    neutral = float(np.clip(60 + urng.normal(0, 6), 5, 100))
    if strength < 0.55:
        return "N", f"{neutral:.2f}".rstrip("0").rstrip(".")
    a, b = sorted([(letter, level), ("N", neutral)])
    return f"{a[0]}:{b[0]}", ":".join(f"{x:.2f}".rstrip("0").rstrip(".") for x in (a[1], b[1]))


def generate_miniature(root: str, seed: int = 0, utterances_per_speaker: int = 18, overwrite: bool = False) -> dict:
    """Write a synthetic CREMA-D miniature under ``root`` in the release layout; return a summary.

    ``AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav`` (16 kHz mono PCM, 1-2 s of demo_synth
    pseudo-speech) for five actors (1001-1005, one per default fold), ``utterances_per_speaker``
    clips each (at most 82, the release design) taken from the design so the classes are balanced
    (``design``); the level sets how far the expression is blended from neutral (LO weak, HI strong).
    ``VideoDemographics.csv`` (synthetic ages and sexes; the voices follow the sex) and
    ``processedResults/summaryTable.csv``, whose votes follow what is audible: a weak expression is
    voted neutral or tied with neutral. Quirks, as copies of the release have them: a
    ``.DS_Store``, a macOS ``._`` file, a browser copy ``... (1).wav`` (a name that does not
    parse), one sad clip of actor 1002 with the old misnamed level ``X`` (as 1040_ITH_SAD_X.wav
    was) and one empty (0-byte) sad clip of actor 1004. Default size: 90 clips. Same seed ->
    byte-identical files.
    """
    if not 1 <= utterances_per_speaker <= 82:
        raise ValueError("utterances_per_speaker must be between 1 and 82 (the release design has 82 clips per actor)")
    root_p = Path(root)
    prepare_root(root_p, (AUDIO_DIR, "processedResults"), README_MARKER, overwrite, f"{AUDIO_DIR}/")
    synth = _synth()
    audio = root_p / AUDIO_DIR
    audio.mkdir(parents=True)
    (root_p / "processedResults").mkdir()
    rows: List[Tuple[str, ...]] = []
    intended: Dict[str, int] = {}
    voted: Dict[str, int] = {}
    ties = 0
    seconds = 0.0
    quirks: Dict[str, List[str]] = {}
    first: Dict[str, Path] = {}
    for a_i, (actor, (_age, sex, _race, _eth)) in enumerate(MINI_ACTORS.items()):
        arng = np.random.default_rng([seed, int(actor)])
        voice = synth._make_voice(actor, sex[0], arng)
        odd_done = False
        for u_i, (sentence, emotion, level) in enumerate(design(a_i)[:utterances_per_speaker]):
            urng = np.random.default_rng([seed, int(actor), u_i, 11])
            name = EMOTIONS[emotion]
            strength = float(urng.uniform(*LEVEL_RANGES[level]))
            params = expressive_params(name, strength, urng)
            wav = synth.synthesize_utterance(params, voice, float(urng.uniform(1.0, 2.0)), urng)
            uid = f"{actor}_{sentence}_{emotion}_{level}"
            fname = f"{uid}.wav"
            odd = not odd_done and emotion == "SAD" and level == "XX" and actor in ("1002", "1004")
            if odd and actor == "1002":  # the old misnamed level
                fname = f"{actor}_{sentence}_{emotion}_X.wav"
                quirks.setdefault(ODD_NAME, []).append(f"{AUDIO_DIR}/{fname}")
            if odd and actor == "1004":  # an empty file
                (audio / fname).write_bytes(b"")
                quirks.setdefault(EMPTY_AUDIO, []).append(f"{AUDIO_DIR}/{fname}")
            else:
                seconds += write_wav(audio / fname, wav, SAMPLE_RATE)
                intended[name] = intended.get(name, 0) + 1
            odd_done = odd_done or odd
            first.setdefault(actor, audio / fname)
            vote, vlevel = _vote(name, strength, urng)
            face, flevel = _vote(name, max(strength, 0.7), urng)
            multi, mlevel = _vote(name, max(strength, 0.7), urng)
            rows.append((uid, vote, vlevel, face, flevel, multi, mlevel))
            if not (odd and actor == "1004"):
                if ":" in vote:
                    ties += 1
                else:
                    voted[EMOTIONS[VOTE_LETTERS[vote]]] = voted.get(EMOTIONS[VOTE_LETTERS[vote]], 0) + 1
    (audio / ".DS_Store").write_bytes(DS_STORE_STUB)
    apple = first["1001"]
    (audio / f"._{apple.name}").write_bytes(APPLEDOUBLE_STUB)
    copy = first["1003"]
    shutil.copyfile(copy, audio / f"{copy.stem} (1).wav")
    quirks[HIDDEN_FILE] = [f"{AUDIO_DIR}/.DS_Store", f"{AUDIO_DIR}/._{apple.name}"]
    quirks[BAD_NAME] = [f"{AUDIO_DIR}/{copy.stem} (1).wav"]
    with open(root_p / SUMMARY_TABLE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(SUMMARY_HEADER)
        writer.writerows((str(i + 1), *row) for i, row in enumerate(rows))
    with open(root_p / DEMOGRAPHICS_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        writer.writerow(("ActorID", "Age", "Sex", "Race", "Ethnicity"))
        writer.writerows((int(a), *info) for a, info in MINI_ACTORS.items())
    summary = {
        "seed": seed,
        "utterances_per_speaker": utterances_per_speaker,
        "actors": list(MINI_ACTORS),
        "files": len(rows),
        "counts": dict(sorted(intended.items())),
        "voted": dict(sorted(voted.items())),
        "voted_ties": ties,
        "quirks": {k: quirks[k] for k in sorted(quirks)},
        "seconds": round(seconds, 3),
    }
    (root_p / "README.txt").write_text(
        f"{README_MARKER}\n\nThis folder is SYNTHETIC: generated by ser_plugins' corpora.crema_d "
        f"(seed={seed}, utterances_per_speaker={utterances_per_speaker}).\nIt mimics the layout and file names "
        f"of the CREMA-D release ({AUDIO_DIR}/, {DEMOGRAPHICS_FILE}, {SUMMARY_TABLE}) so the CREMA-D reader can be "
        f"exercised, but it holds no real speech: every wav is source-filter pseudo-speech whose emotion is set by "
        f"f0, tempo, loudness, spectral tilt and voice quality, and the actors' demographics and votes are made up."
        f"\nNumbers measured on it say nothing about real speech emotion recognition.\n",
        encoding="utf-8",
    )
    return write_summary(root_p, summary)


__all__ = [
    "DEFAULT_LABELS",
    "EMOTIONS",
    "KNOWN_ODD",
    "MISSING_CLIPS",
    "RELEASE_COUNTS",
    "RELEASE_VOTED_COUNTS",
    "CremaDCorpus",
    "design",
    "fold_of",
    "generate_miniature",
    "parse_name",
]
