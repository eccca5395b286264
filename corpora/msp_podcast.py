"""MSP-Podcast reader (``Labels/labels_consensus.csv`` + ``Audios/*.wav``) and a generated miniature in its layout.

Release layout read -- MSP-Podcast v1.10, v1.11 and v1.12, built from the documented layout (the
real data is not available here; the tests read the miniature ``MspPodcastCorpus.generate``
writes in the same layout)::

    <root>/Audios/MSP-PODCAST_0001_0008.wav     one 16 kHz mono segment per file
    <root>/Labels/labels_consensus.csv          one row per segment, header:
        FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set

* ``EmoClass`` -- the consensus class, one letter: ``A`` anger, ``H`` happiness, ``S`` sadness,
  ``U`` surprise, ``F`` fear, ``D`` disgust, ``C`` contempt, ``N`` neutral, ``O`` other, ``X`` no
  agreement (read as the short names of ``CODES``: ang hap sad sur fea dis con neu oth xxx).
* ``EmoAct`` / ``EmoVal`` / ``EmoDom`` -- arousal, valence and dominance, averages of 7-point
  self-assessment-manikin ratings (scale 1-7).
* ``SpkrID`` -- an integer, or ``Unknown`` for a segment whose speaker was not identified;
  ``Gender`` -- ``Male``, ``Female`` or ``Unknown`` (not used: an ``Utterance`` has no gender).
* ``Split_Set`` -- ``Train``, ``Development``, ``Test1``, ``Test2`` and, in the releases made for
  the Odyssey 2024 challenge, ``Test3``, whose labels are withheld (its rows may carry no class
  and no attributes).

Some releases also ship ``Labels/labels_detailed.csv`` (every annotator's ratings) and
``Partitions.txt`` (the partition of every file); the consensus CSV alone carries the labels and
the partitions, so neither is read.
"""

from __future__ import annotations

import csv
import math
import types
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np

from corpora.demo_synth import SAMPLE_RATE
from corpora.release import EXPRESSIVE_PARAMS, blend, demo_synth_copy, prepare_root, vary, write_summary, write_wav
from corpora.release import lines_text as _lines_text
from ser_plugins.errors import UserError
from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO, NO_LABEL, Corpus, Utterance

#: ``EmoClass`` letter -> short class name.
CODES: Mapping[str, str] = MappingProxyType(
    {
        "A": "ang",
        "H": "hap",
        "S": "sad",
        "U": "sur",
        "F": "fea",
        "D": "dis",
        "C": "con",
        "N": "neu",
        "O": "oth",
        "X": "xxx",
    }
)
NAMES: Tuple[str, ...] = tuple(CODES.values())
#: ``O`` (other) and ``X`` (no agreement): no class, by the release's own definition.
NO_CLASS_NAMES: Tuple[str, ...] = ("oth", "xxx")
#: The Odyssey 2024 categorical track's 8 classes.
DEFAULT_LABELS: Tuple[str, ...] = ("ang", "hap", "sad", "fea", "sur", "con", "dis", "neu")
PARTITIONS: Tuple[str, ...] = ("Train", "Development", "Test1", "Test2", "Test3")
TEST_SETS: Tuple[str, ...] = ("Test1", "Test2", "Test3")
#: Utterance attribute name -> its column.
ATTRIBUTE_COLUMNS: Mapping[str, str] = MappingProxyType(
    {"arousal": "EmoAct", "valence": "EmoVal", "dominance": "EmoDom"}
)
SCALE: Tuple[float, float] = (1.0, 7.0)
REQUIRED_COLUMNS: Tuple[str, ...] = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Split_Set")
HEADER: Tuple[str, ...] = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
LABELS_FILE = "Labels/labels_consensus.csv"
AUDIO_DIR = "Audios"
UNKNOWN = "Unknown"
UNKNOWN_SPEAKERS: Tuple[str, ...] = ("group", "each")

MISSING_AUDIO = "missing_audio"  # problem kinds of this reader (besides the core's dropped_label, duplicate_audio)
OUT_OF_SCALE = "out_of_scale"
MALFORMED_ROW = "malformed_row"
UNKNOWN_PARTITION = "unknown_partition"
WITHHELD = "withheld_labels"


class MspPodcastError(UserError, ValueError):
    """A labels file this reader cannot read at all (its header, its encoding)."""


class MspPodcastCorpus(Corpus):
    """The MSP-Podcast corpus read from its release folder (see the module docstring for the layout).

    Options:
      * ``labels`` -- the classes, in logit order (default: the Odyssey 2024 categorical track's 8,
        ``ang hap sad fea sur con dis neu``); names are those of ``CODES``.
      * ``merge`` -- maps class names (or ``EmoClass`` letters) onto ``labels``, e.g. ``{"con": "ang"}``.
      * ``test_set`` -- the test partition: ``Test1`` (default), ``Test2`` or ``Test3``. ``Train`` is
        the training set and ``Development`` the dev set (the ``split`` protocol's dev set under every
        ``protocol.dev`` but ``none``); rows of the other test partitions are left out, counted
        in ``left_out``.
      * ``unknown_speakers`` -- ``group`` (default): every segment with ``SpkrID`` ``Unknown`` has
        the one speaker ``Unknown``; ``each``: each such segment is its own speaker
        (``Unknown:<file>``).
      * ``keep_unlabelled`` -- True (default): utterances without a class (``O``, ``X``, an empty
        ``EmoClass``, a class outside ``labels``) are returned with label ``NO_LABEL`` and their
        attributes (regression uses them, classification skips them); False: left out.
      * ``labels_file`` -- the consensus CSV relative to ``root`` (default ``Labels/labels_consensus.csv``).

    Classes. ``O`` and ``X`` carry no class: counted in ``no_class`` (not problems: the release
    defines them so). A real class outside ``labels`` (after ``merge``) is the recipe's choice:
    the utterance keeps its attributes without a class and the row is counted in ``dropped`` and
    as one ``dropped_label`` problem per class (as the other corpora count dropped labels).

    Unknown speakers. The release marks segments whose speaker was not identified with ``SpkrID``
    ``Unknown``; that is not an identity, and such segments may come from any speaker, those of
    the test partitions included. Grouping them as the one speaker ``Unknown`` keeps speaker-based
    hold-outs honest: a speaker-disjoint dev set (``protocol.dev: speaker``) takes them all or none
    and never picks ``Unknown`` while it also speaks in the test set, and the fold check reports
    ``Unknown`` when it is in train and test. One speaker per segment would make every unknown
    segment look like a distinct, unseen speaker, so a "speaker-disjoint" dev or test set could
    hold the training speakers' own voices. Under the default ``split`` protocol the release's
    ``Development`` partition is the dev set, so the grouping changes no fold.

    Attributes. ``EmoAct`` -> ``arousal``, ``EmoVal`` -> ``valence``, ``EmoDom`` -> ``dominance``
    (``attribute_scales``: 1-7). An empty cell leaves the attribute out; a value outside 1-7 is
    left out and counted (one ``out_of_scale`` problem per attribute, with the lines). Rows with
    no class and no attributes (``Test3`` in the challenge releases: labels withheld) are not
    utterances: counted in ``withheld`` per partition, a problem when the partition is in use (an
    empty test set is fatal). Missing audio (one counted ``missing_audio`` problem), malformed
    rows (a wrong number of cells, no file name, an unknown ``EmoClass`` letter, an attribute that
    is not a number; ``malformed_row``, one per line) and unknown ``Split_Set`` values (one problem per
    value) are problems, their rows skipped. A file listed twice is a ``duplicate_audio`` problem
    (later row skipped; fatal when the two rows put it in two partitions in use). A wrong ``root``
    raises ``FileNotFoundError`` saying what was expected.
    """

    default_protocol = "split"
    attributes: Sequence[str] = tuple(ATTRIBUTE_COLUMNS)
    attribute_scales: Mapping[str, Tuple[float, float]] = MappingProxyType({k: SCALE for k in ATTRIBUTE_COLUMNS})

    def __init__(
        self,
        root: str,
        labels: Sequence[str] = DEFAULT_LABELS,
        merge: Optional[Mapping[str, str]] = None,
        test_set: str = "Test1",
        unknown_speakers: str = "group",
        keep_unlabelled: bool = True,
        labels_file: str = LABELS_FILE,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if isinstance(labels, str):
            labels = [labels]
        self.labels: List[str] = [str(lab) for lab in labels]
        self.merge: Dict[str, str] = {self._name(str(k)): str(v) for k, v in dict(merge or {}).items()}
        self.test_set = self._partition(str(test_set))
        self.unknown_speakers = unknown_speakers
        self.keep_unlabelled = bool(keep_unlabelled)
        self.labels_file = labels_file
        self.dropped: Dict[str, int] = {}
        self.no_class: Dict[str, int] = {}
        self.left_out: Dict[str, int] = {}
        self.withheld: Dict[str, int] = {}
        self.partitions: Dict[str, int] = {}
        self._validate()

    # ------------------------------------------------------------------ options
    @staticmethod
    def _name(key: str) -> str:
        """A class name, given as a name or an ``EmoClass`` letter."""
        return CODES.get(key.upper(), key) if len(key) == 1 else key

    @staticmethod
    def _partition(value: str) -> str:
        if value.lower() not in {t.lower() for t in TEST_SETS}:
            raise ValueError(f"MspPodcastCorpus: test_set must be one of {', '.join(TEST_SETS)}, not {value!r}")
        return next(t for t in TEST_SETS if t.lower() == value.lower())

    def _validate(self) -> None:
        if not self.labels:
            raise ValueError("MspPodcastCorpus: labels must name at least one class")
        dupes = sorted({lab for lab in self.labels if self.labels.count(lab) > 1})
        if dupes:
            raise ValueError(f"MspPodcastCorpus: duplicate labels {dupes}")
        known = ", ".join(f"{code}={name}" for code, name in CODES.items())
        for src, dst in self.merge.items():
            if src not in NAMES:
                raise ValueError(f"MspPodcastCorpus: merge source {src!r} is not an MSP-Podcast class; known: {known}")
            if dst not in self.labels:
                raise ValueError(
                    f"MspPodcastCorpus: merge target {dst!r} (of {src!r}) is not one of labels {self.labels}"
                )
            if src in self.labels and src != dst:
                raise ValueError(f"MspPodcastCorpus: {src!r} is both a label and merged into {dst!r}")
        targets = set(self.merge.values())
        for lab in self.labels:
            if lab not in NAMES and lab not in targets:
                raise ValueError(
                    f"MspPodcastCorpus: label {lab!r} is neither an MSP-Podcast class ({known}) nor a "
                    f"merge target, so no utterance could have it"
                )
        if self.unknown_speakers not in UNKNOWN_SPEAKERS:
            raise ValueError(
                f"MspPodcastCorpus: unknown_speakers must be one of {', '.join(UNKNOWN_SPEAKERS)}, "
                f"not {self.unknown_speakers!r}"
            )

    # ------------------------------------------------------------------ layout
    def labels_path(self) -> Path:
        """The consensus CSV; raises ``FileNotFoundError`` naming the expected layout when it is not there."""
        expected = f"the MSP-Podcast release folder, holding {AUDIO_DIR}/ and {LABELS_FILE}"
        root = self.root
        if not root.is_dir():
            hint = ""
            if root.is_file() and root.suffix.lower() == ".csv":
                hint = f" (it is a CSV file: pass the release folder, {root.parent.parent}, as root)"
            raise FileNotFoundError(
                f"MSP-Podcast root {str(root)!r} does not exist or is not a folder{hint}; expected {expected}"
            )
        path = Path(self.labels_file)
        path = path if path.is_absolute() else root / path
        if path.is_file():
            return path
        hint = ""
        looks_like_labels = root.name == "Labels" and (root.parent / AUDIO_DIR).is_dir()
        if (root / Path(self.labels_file).name).is_file() or looks_like_labels:
            hint = f" ({root} looks like the Labels folder: pass its parent, {root.parent}, as root)"
        elif (root / "Labels").is_dir():
            found = sorted(p.name for p in (root / "Labels").glob("*.csv"))
            hint = (
                f" (Labels/ holds {', '.join(found)}: pass labels_file= to read another)"
                if found
                else " (Labels/ holds no CSV file)"
            )
        raise FileNotFoundError(f"no labels file {str(path)!r}{hint}; expected root to be {expected}")

    def _rows(self, path: Path):
        """``(header, iterator of (line, cells))``; raises ``MspPodcastError`` for a file that cannot be read."""
        try:
            fh = open(path, newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise MspPodcastError(f"cannot read {path}: {exc}") from None
        with fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader, [])]
                missing = [c for c in REQUIRED_COLUMNS if c not in header]
                if missing:
                    raise MspPodcastError(
                        f"{path}: header lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                        f"(has: {','.join(header) or 'nothing'}; an MSP-Podcast labels_consensus.csv has "
                        f"{','.join(HEADER)})"
                    )
                rows = [(reader.line_num, cells) for cells in reader if any(c.strip() for c in cells)]
            except (csv.Error, UnicodeDecodeError) as exc:
                raise MspPodcastError(f"{path}: not a readable CSV file ({exc})") from None
        return header, rows

    # ------------------------------------------------------------------ reading
    def load(self) -> List[Utterance]:
        """Read the consensus CSV; return the utterances of Train, Development and ``test_set`` in file order."""
        self.problems = []
        self.dropped, self.no_class, self.left_out, self.withheld, self.partitions = {}, {}, {}, {}, {}
        path = self.labels_path()
        header, rows = self._rows(path)
        src = str(path)
        audio_dir = self.root / AUDIO_DIR
        present: Optional[Set[str]] = {p.name for p in audio_dir.iterdir()} if audio_dir.is_dir() else None
        if present is None:
            self.problem(
                str(audio_dir),
                f"audio folder {AUDIO_DIR}/ is missing: no utterance has audio",
                fatal=True,
                kind=MISSING_AUDIO,
                count=len(rows),
            )
        roles = {"Train": "train", "Development": "dev", self.test_set: "test"}
        by_lower = {p.lower(): p for p in PARTITIONS}
        col = {name: i for i, name in enumerate(header)}
        dropped_lines: Dict[str, List[int]] = {}
        missing_audio: List[Tuple[int, str]] = []
        out_of_scale: Dict[str, List[Tuple[int, float]]] = {}
        unknown_parts: Dict[str, List[int]] = {}
        withheld_lines: Dict[str, List[int]] = {}
        seen: Dict[str, Tuple[int, str]] = {}
        out: List[Utterance] = []
        for line, cells in rows:
            if len(cells) != len(header):
                self.problem(
                    src, f"{len(cells)} cells where the header has {len(header)}; row skipped", line, kind=MALFORMED_ROW
                )
                continue
            row = {name: cells[i].strip() for name, i in col.items()}
            fname = row["FileName"]
            if not fname:
                self.problem(src, "empty FileName; row skipped", line, kind=MALFORMED_ROW)
                continue
            part = by_lower.get(row["Split_Set"].lower())
            if part is None:
                unknown_parts.setdefault(row["Split_Set"], []).append(line)
                continue
            self.partitions[part] = self.partitions.get(part, 0) + 1
            if fname in seen:
                self._duplicate(src, line, fname, part, *seen[fname], roles)
                continue
            seen[fname] = (line, part)
            role = roles.get(part)
            if role is None:
                self.left_out[part] = self.left_out.get(part, 0) + 1
                continue
            code = row["EmoClass"].upper()
            if code and code not in CODES:
                self.problem(
                    src,
                    f"unknown EmoClass {row['EmoClass']!r} for {fname} (known: {', '.join(CODES)}); row skipped",
                    line,
                    kind=MALFORMED_ROW,
                )
                continue
            attributes, bad = self._attributes(row, line, out_of_scale)
            if bad:
                self.problem(src, f"{bad} is not a number for {fname}; row skipped", line, kind=MALFORMED_ROW)
                continue
            if not code and not any(row[c] for c in ATTRIBUTE_COLUMNS.values()):
                withheld_lines.setdefault(part, []).append(line)
                continue
            label = self._label(code, line, dropped_lines)
            if label == NO_LABEL and (not self.keep_unlabelled or not attributes):
                continue
            wav = fname if fname.lower().endswith(".wav") else f"{fname}.wav"
            if present is None:
                continue
            if wav not in present:
                missing_audio.append((line, wav))
                continue
            out.append(
                Utterance(
                    id=Path(wav).stem,
                    path=str(audio_dir / wav),
                    label=label,
                    speaker=self._speaker(row["SpkrID"], Path(wav).stem),
                    split=role,
                    attributes=attributes,
                )
            )
        self._report(src, audio_dir, out, dropped_lines, missing_audio, out_of_scale, unknown_parts, withheld_lines)
        return out

    def _attributes(
        self, row: Dict[str, str], line: int, out_of_scale: Dict[str, List[Tuple[int, float]]]
    ) -> Tuple[Dict[str, float], str]:
        """``({attribute: value}, "")``, or ``({}, "<column> '<text>'")`` for a cell that is not a finite number."""
        values: Dict[str, float] = {}
        low, high = SCALE
        for name, column in ATTRIBUTE_COLUMNS.items():
            text = row[column]
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                return {}, f"{column} {text!r}"
            if not low <= value <= high:
                out_of_scale.setdefault(name, []).append((line, value))
                continue
            values[name] = value
        return values, ""

    def _label(self, code: str, line: int, dropped_lines: Dict[str, List[int]]) -> str:
        if not code:
            self.no_class["none"] = self.no_class.get("none", 0) + 1
            return NO_LABEL
        name = CODES[code]
        label = self.merge.get(name, name)
        if label in self.labels:
            return label
        if name in NO_CLASS_NAMES:
            self.no_class[name] = self.no_class.get(name, 0) + 1
        else:
            self.dropped[name] = self.dropped.get(name, 0) + 1
            dropped_lines.setdefault(name, []).append(line)
        return NO_LABEL

    def _speaker(self, spkr: str, stem: str) -> str:
        if spkr and spkr.lower() != UNKNOWN.lower():
            return spkr
        return UNKNOWN if self.unknown_speakers == "group" else f"{UNKNOWN}:{stem}"

    def _duplicate(
        self, src: str, line: int, fname: str, part: str, first_line: int, first_part: str, roles: Dict[str, str]
    ) -> None:
        both_used = part in roles and first_part in roles
        if part != first_part and both_used:
            self.problem(
                src,
                f"line {line} lists {fname} again, in {part} (line {first_line}: {first_part}): the "
                f"same recording would be in {roles[first_part]} and {roles[part]} data; list it once",
                line,
                fatal=True,
                kind=DUPLICATE_AUDIO,
                key=Path(fname).stem,
                lines=(first_line, line),
            )
        else:
            self.problem(
                src,
                f"line {line} lists {fname} again (line {first_line}); later row skipped",
                line,
                kind=DUPLICATE_AUDIO,
                key=Path(fname).stem,
                lines=(first_line, line),
            )

    def _report(
        self,
        src: str,
        audio_dir: Path,
        out: List[Utterance],
        dropped_lines: Dict[str, List[int]],
        missing_audio: List[Tuple[int, str]],
        out_of_scale: Dict[str, List[Tuple[int, float]]],
        unknown_parts: Dict[str, List[int]],
        withheld_lines: Dict[str, List[int]],
    ) -> None:
        """The counted problems of one ``load()``, then the fatal ones (an empty partition in use)."""
        if missing_audio:
            lines = [n for n, _ in missing_audio]
            names = ", ".join(w for _, w in missing_audio[:5]) + (", ..." if len(missing_audio) > 5 else "")
            self.problem(
                str(audio_dir),
                f"{len(missing_audio)} audio file(s) listed in {Path(src).name} are missing "
                f"({names}; {_lines_text(lines)}); utterances skipped",
                lines[0],
                kind=MISSING_AUDIO,
                count=len(lines),
                lines=lines,
            )
        low, high = SCALE
        for name, hits in out_of_scale.items():
            lines = [n for n, _ in hits]
            self.problem(
                src,
                f"{len(hits)} {ATTRIBUTE_COLUMNS[name]} value(s) outside the {low:g}-{high:g} scale "
                f"(first {hits[0][1]:g}; {_lines_text(lines)}); {name} left out of those utterances",
                lines[0],
                kind=OUT_OF_SCALE,
                key=name,
                count=len(lines),
                lines=lines,
            )
        for value, lines in unknown_parts.items():
            self.problem(
                src,
                f"{len(lines)} row(s) with Split_Set {value!r}, not one of {', '.join(PARTITIONS)} "
                f"({_lines_text(lines)}); rows skipped",
                lines[0],
                kind=UNKNOWN_PARTITION,
                key=value,
                count=len(lines),
                lines=lines,
            )
        for part, lines in withheld_lines.items():
            self.withheld[part] = len(lines)
            self.problem(
                src,
                f"{len(lines)} {part} row(s) carry no class and no attributes (labels withheld?); "
                f"left out ({_lines_text(lines)})",
                lines[0],
                kind=WITHHELD,
                key=part,
                count=len(lines),
                lines=lines,
            )
        for name, lines in dropped_lines.items():
            code = next(c for c, n in CODES.items() if n == name)
            self.problem(
                src,
                f"{len(lines)} row(s) with EmoClass {code} ({name}), outside labels {self.labels}: "
                f"kept without a class (regression only) ({_lines_text(lines)})",
                kind=DROPPED_LABEL,
                key=name,
                count=len(lines),
                lines=lines,
            )
        present = {u.label for u in out}
        for lab in self.labels:
            if out and lab not in present:
                self.problem(src, f"label {lab!r} has no usable utterance")
        roles = {u.split for u in out}
        for part, role in (("Train", "train"), ("Development", "dev"), (self.test_set, "test")):
            if role in roles:
                continue
            why = ""
            if self.withheld.get(part):
                why = ": its labels are withheld in this release (test_set Test1 or Test2 has them)"
            elif not self.partitions.get(part):
                why = f": {Path(src).name} has no {part} rows"
            self.problem(src, f"no usable {part} utterances (the {role} set){why}", fatal=True)

    # ------------------------------------------------------------------ the miniature
    @classmethod
    def generate(cls, root: str, seed: int = 0, utterances_per_speaker: int = 8, overwrite: bool = False) -> dict:
        """Write a synthetic miniature in the release layout under ``root``; returns its summary.

        See ``generate_miniature`` (``ser demo-corpus DIR --corpus msp_podcast``).
        """
        return generate_miniature(root, seed=seed, utterances_per_speaker=utterances_per_speaker, overwrite=overwrite)


# ---------------------------------------------------------------------------------- miniature
README_MARKER = "SYNTHETIC MSP-PODCAST-LAYOUT MINIATURE"
#: identified speakers per partition (disjoint), and unknown-speaker segments per partition (× utterances_per_speaker)
SPLIT_SPEAKERS: Tuple[Tuple[str, int, float], ...] = (
    ("Train", 5, 1.0),
    ("Development", 2, 0.5),
    ("Test1", 2, 0.0),
    ("Test2", 2, 0.0),
    ("Test3", 2, 0.0),
)
WITHHELD_PARTITIONS: Tuple[str, ...] = ("Test3",)
#: the order classes are dealt in (8 classes, then other and no agreement)
_DEAL = ("ang", "hap", "sad", "fea", "sur", "con", "dis", "neu", "oth", "xxx")
# Expressive parameters (demo_synth's fields, corpora.release's PARAM_FIELDS) of the classes:
# demo_synth's own and fear and disgust as every miniature has them (corpora.release's EXPRESSIVE_PARAMS),
# and contempt, low, flat and quiet.
_PARAMS: Dict[str, Tuple[float, ...]] = {
    **EXPRESSIVE_PARAMS,
    "con": (-1.0, 1.8, 0.90, -1.0, 0.50, 0.55, 0.35, 0.012, 0.05, 0.05, 0.12, 0.99, 1.5),
}
#: (arousal, valence, dominance) of each class at full intensity, 1-7 (neutral: the middle)
_AVD: Dict[str, Tuple[float, float, float]] = {
    "neu": (4.0, 4.0, 4.0),
    "hap": (5.0, 5.8, 4.8),
    "sur": (5.5, 4.8, 4.2),
    "ang": (6.0, 2.2, 5.8),
    "sad": (2.4, 2.4, 3.0),
    "fea": (5.3, 2.4, 2.8),
    "dis": (4.4, 2.6, 4.8),
    "con": (3.6, 3.0, 5.0),
}
_CODE_OF = {name: code for code, name in CODES.items()}


def _synth_module() -> types.ModuleType:
    """A private copy of ``corpora.demo_synth`` whose ``synthesize_utterance`` takes expressive parameters
    (a dict, see ``expressive_params``) where it takes a label.

    demo_synth draws an utterance's parameters from its label with ``_expressive_params(label, rng)``;
    in this copy that function returns the dict it is given, so the miniature's eight classes (three
    of which demo_synth has not) use demo_synth's voices and synthesis unchanged. ``corpora.demo_synth``
    itself is not touched; a demo label's parameters give the original's waveform (tested).
    """
    global _SYNTH
    if _SYNTH is None:
        module = demo_synth_copy()
        if not callable(getattr(module, "_expressive_params", None)):
            raise RuntimeError(
                "corpora.demo_synth no longer draws its parameters with _expressive_params(label, rng); "
                "update corpora/msp_podcast.py's _synth_module"
            )
        module._expressive_params = lambda params, _rng: dict(params)  # type: ignore[attr-defined]
        _SYNTH = module
    return _SYNTH


_SYNTH: Optional[types.ModuleType] = None


def expressive_params(name: str, rng: np.random.Generator) -> Tuple[Dict[str, float], Tuple[float, float, float]]:
    """``(parameters, (arousal, valence, dominance))`` of one utterance of class ``name`` (or ``oth``/``xxx``).

    As in demo_synth, neutral is blended towards the class by a random intensity, then every
    parameter gets its own noise. The attributes follow what is audible: the class's prototype
    scaled by the same intensity (a mixture of two classes for ``oth``/``xxx``), plus the loudness,
    tempo and pitch noise for arousal and dominance and the pitch-range noise for valence, plus a
    little rater noise.
    """
    if name in NO_CLASS_NAMES:  # other / no agreement: a mixture of two classes
        a, b = rng.choice(DEFAULT_LABELS, size=2, replace=False)
        w = float(rng.uniform(0.3, 0.7))
        target = w * np.array(_PARAMS[a]) + (1 - w) * np.array(_PARAMS[b])
        proto = w * np.array(_AVD[a]) + (1 - w) * np.array(_AVD[b])
    else:
        target, proto = np.array(_PARAMS[name]), np.array(_AVD[name])
    intensity = float(rng.uniform(0.6, 1.2))
    p = blend(_PARAMS["neu"], target, intensity)
    f0_n, range_n, rate_n, gain_n = vary(p, rng)
    avd = 4.0 + intensity * (proto - 4.0)
    avd += (0.10 * gain_n + 1.2 * rate_n + 0.08 * f0_n, 0.8 * range_n, 0.10 * gain_n)
    avd += rng.normal(0, 0.15, 3)
    a, v, d = (float(round(np.clip(x, *SCALE), 4)) for x in avd)
    return p, (a, v, d)


def _prepare_root(root: Path, overwrite: bool) -> None:
    prepare_root(root, (AUDIO_DIR, "Labels"), README_MARKER, overwrite, f"{AUDIO_DIR}/ or Labels/")


def generate_miniature(root: str, seed: int = 0, utterances_per_speaker: int = 8, overwrite: bool = False) -> dict:
    """Write a synthetic MSP-Podcast miniature under ``root`` in the release layout; return a summary.

    ``Audios/MSP-PODCAST_<podcast>_<segment>.wav`` (16 kHz mono PCM, 1-2 s of demo_synth
    pseudo-speech) and ``Labels/labels_consensus.csv``. Partitions: Train (5 speakers), Development
    (2), Test1, Test2 and Test3 (2 each), speaker-disjoint, ``utterances_per_speaker`` segments per
    speaker, plus unknown-speaker segments (``SpkrID`` and ``Gender`` ``Unknown``, a new voice each)
    in Train (``utterances_per_speaker``) and Development (half as many). Classes are dealt in turn
    over the 8 classes, ``O`` and ``X``; arousal, valence and dominance follow the audible
    expressive parameters (``expressive_params``). Test3's rows carry no class and no attributes (its
    labels withheld, as in the challenge releases) and ``Unknown`` speaker and gender. Default size:
    116 segments, about 3 minutes of audio. Same seed -> byte-identical files. Raises
    ``FileExistsError`` when ``root`` already holds the layout and ``overwrite`` is False (or it is
    not a generated miniature).
    """
    if utterances_per_speaker < 1:
        raise ValueError("utterances_per_speaker must be at least 1")
    root_p = Path(root)
    _prepare_root(root_p, overwrite)
    synth = _synth_module()
    audio = root_p / AUDIO_DIR
    audio.mkdir(parents=True)
    (root_p / "Labels").mkdir(parents=True)
    rows: List[Tuple[str, ...]] = []
    per_split: Dict[str, int] = {}
    classes = {code: 0 for code in CODES}
    seconds = 0.0
    speaker_no = unknown = 0
    for s_i, (part, n_speakers, unknown_share) in enumerate(SPLIT_SPEAKERS):
        srng = np.random.default_rng([seed, s_i])
        n_known = n_speakers * utterances_per_speaker
        n_unknown = int(round(unknown_share * utterances_per_speaker))
        pool = [_DEAL[(i + s_i) % len(_DEAL)] for i in range(n_known + n_unknown)]
        srng.shuffle(pool)
        speakers = []
        for k in range(n_speakers):
            gender = "Female" if (speaker_no + k) % 2 == 0 else "Male"
            voice = synth._make_voice(f"{101 + speaker_no + k}", gender[0], srng)
            speakers.append((str(101 + speaker_no + k), gender, voice, speaker_no + k + 1))
        speaker_no += n_speakers
        segments: Dict[int, int] = {}
        for u_i, name in enumerate(pool):
            urng = np.random.default_rng([seed, s_i, u_i, 3])
            if u_i < n_known:
                spkr, gender, voice, podcast = speakers[u_i % n_speakers]
            else:  # an unidentified speaker: a voice of its own, from a podcast of unidentified speakers
                gender = "Female" if urng.random() < 0.5 else "Male"
                voice = synth._make_voice(UNKNOWN, gender[0], urng)
                spkr, gender, podcast = UNKNOWN, UNKNOWN, 900 + s_i
                unknown += 1
            segments[podcast] = segments.get(podcast, 0) + 1
            fname = f"MSP-PODCAST_{podcast:04d}_{segments[podcast]:04d}.wav"
            params, (a, v, d) = expressive_params(name, urng)
            wav = synth.synthesize_utterance(params, voice, float(urng.uniform(1.0, 2.0)), urng)
            seconds += write_wav(audio / fname, wav, SAMPLE_RATE)
            if part in WITHHELD_PARTITIONS:
                rows.append((fname, "", "", "", "", UNKNOWN, UNKNOWN, part))
            else:
                rows.append((fname, _CODE_OF[name], f"{a:.4f}", f"{v:.4f}", f"{d:.4f}", spkr, gender, part))
                classes[_CODE_OF[name]] += 1
            per_split[part] = per_split.get(part, 0) + 1
    rows.sort()
    with open(root_p / LABELS_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    summary = {
        "seed": seed,
        "utterances_per_speaker": utterances_per_speaker,
        "utterances": len(rows),
        "per_split": per_split,
        "classes": classes,
        "speakers": speaker_no,
        "unknown_speaker_utterances": unknown,
        "withheld": list(WITHHELD_PARTITIONS),
        "seconds": round(seconds, 3),
    }
    (root_p / "README.txt").write_text(
        f"{README_MARKER}\n\nThis folder is SYNTHETIC: generated by ser_plugins' corpora.msp_podcast "
        f"(seed={seed}, utterances_per_speaker={utterances_per_speaker}).\nIt mimics the layout of an "
        f"MSP-Podcast release (Audios/, Labels/labels_consensus.csv) so the MSP-Podcast reader can be exercised, "
        f"but it holds no real speech: every wav is source-filter pseudo-speech whose class and arousal/valence/"
        f"dominance are set by f0, tempo, loudness, spectral tilt and voice quality.\nNumbers measured on it say "
        f"nothing about real speech emotion recognition.\n",
        encoding="utf-8",
    )
    return write_summary(root_p, summary)


__all__ = ["CODES", "DEFAULT_LABELS", "MspPodcastCorpus", "MspPodcastError", "expressive_params", "generate_miniature"]
