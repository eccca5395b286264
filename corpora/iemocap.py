"""IEMOCAP reader: ``IEMOCAP_full_release/SessionN/dialog/EmoEvaluation/*.txt`` to utterances.

The consensus line of every annotation block (``[start - end]<TAB>utt_id<TAB>label<TAB>[v, a, d]``)
gives one utterance whose audio is ``SessionN/sentences/wav/<dialog>/<utt_id>.wav``. Labels are
mapped through ``merge`` (``exc`` -> ``hap`` by default) and kept when in ``labels``; the others are
counted in ``dropped`` (or, with ``keep_unlabelled``, kept without a class). The bracket's
valence, activation and dominance (1-5) become the utterance's ``attributes`` ``valence``,
``arousal`` (IEMOCAP's *activation*) and ``dominance``. Anything odd becomes a ``CorpusProblem``
rather than a silent skip.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ser_plugins.plugins.contracts import NO_LABEL, Corpus, Utterance

#: Every label an IEMOCAP consensus line may carry (``xxx`` = no majority agreement).
IEMOCAP_LABELS: Tuple[str, ...] = ("neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx")
#: The standard 4-class set and its merge map.
DEFAULT_LABELS: Tuple[str, ...] = ("neu", "hap", "ang", "sad")
DEFAULT_MERGE: Mapping[str, str] = MappingProxyType({"exc": "hap"})
SUBSETS: Tuple[str, ...] = ("all", "improvised", "scripted")
#: The consensus bracket ``[V, A, D]``, in its order, as attribute names (A is IEMOCAP's *activation*).
BRACKET_ATTRIBUTES: Tuple[str, ...] = ("valence", "arousal", "dominance")
#: IEMOCAP's annotation scale for every attribute.
ATTRIBUTE_SCALE: Tuple[float, float] = (1.0, 5.0)
#: ``CorpusProblem.kind`` of a consensus line whose ``[V, A, D]`` bracket cannot be read.
BAD_ATTRIBUTES = "bad_attributes"

_SESSION_RE = re.compile(r"^Session(\d+)$")
# [6.2901 - 8.2357] <ws> Ses01F_impro01_F000 <ws> neu <ws> [2.5, 2.5, 2.5]  (VAD optional)
_LABEL_LINE_RE = re.compile(
    r"^\[\s*(?P<start>[^\]\s-][^\]\s]*)\s*-\s*(?P<end>[^\]\s]+)\s*\]"
    r"\s+(?P<utt>\S+)\s+(?P<label>\S+)(?:\s+(?P<rest>.*))?$"
)
_SPEAKER_RE = re.compile(r"([A-Za-z])(\d+)$")
_SES_PREFIX_RE = re.compile(r"^Ses(\d+)", re.IGNORECASE)
_DIALOG_GENDER_RE = re.compile(r"^Ses\d+([FM])", re.IGNORECASE)


def dialog_kind(dialog: str) -> Optional[str]:
    """``"improvised"``, ``"scripted"`` or None (unrecognised) for a dialog name such as ``Ses01F_impro01``."""
    low = dialog.lower()
    if "_impro" in low:
        return "improvised"
    if "_script" in low:
        return "scripted"
    return None


def parse_label_line(line: str) -> Optional[Tuple[float, float, str, str]]:
    """``(start, end, utt_id, label)`` of a consensus line, or None when it is malformed."""
    m = _LABEL_LINE_RE.match(line.strip())
    if m is None:
        return None
    try:
        start, end = float(m.group("start")), float(m.group("end"))
    except ValueError:
        return None
    rest = m.group("rest")
    if rest is not None and rest.strip() and not rest.strip().startswith("["):
        return None  # trailing text that is not the [v, a, d] bracket
    return start, end, m.group("utt"), m.group("label")


def parse_attributes(line: str) -> Optional[Dict[str, float]]:
    """The ``[V, A, D]`` bracket of a consensus line as ``{"valence", "arousal", "dominance"}``.

    ``{}`` when the line has no bracket; None when the line is not a consensus line or its bracket
    is malformed (not three finite numbers separated by commas).
    """
    m = _LABEL_LINE_RE.match(line.strip())
    if m is None:
        return None
    rest = (m.group("rest") or "").strip()
    if not rest:
        return {}
    if not (rest.startswith("[") and rest.endswith("]")):
        return None
    cells = rest[1:-1].split(",")
    if len(cells) != len(BRACKET_ATTRIBUTES):
        return None
    try:
        values = [float(c) for c in cells]
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in values):
        return None
    return dict(zip(BRACKET_ATTRIBUTES, values))


class IemocapCorpus(Corpus):
    """The IEMOCAP corpus read from its release folder (``IEMOCAP_full_release``).

    ``labels`` is the class order; ``merge`` maps raw labels onto them (default ``{"exc": "hap"}``,
    ignored when ``hap`` is not a class; an explicit merge target must be one of ``labels``);
    ``subset`` keeps ``all`` dialogs, only ``improvised`` or only ``scripted`` ones. After
    ``load()``, ``dropped`` counts the utterances left out per raw label.

    Every utterance carries the consensus bracket ``[V, A, D]`` as ``attributes`` ``valence``,
    ``arousal`` (IEMOCAP calls it *activation*) and ``dominance``, on IEMOCAP's 1-5 scale. A line
    without a bracket gives no attributes; a malformed bracket gives none either and is a
    ``bad_attributes`` problem. ``keep_unlabelled`` (default False: classification sees exactly the
    utterances it always did) keeps the utterances whose class is outside ``labels`` (after
    ``merge``; ``xxx``, ``fru``, ...) with ``label=NO_LABEL`` and their attributes, for regression
    on every annotated utterance; they are then counted per raw label in ``unlabelled`` instead of
    ``dropped``. Unknown labels, duplicates and missing audio are skipped either way.

    Other label sets are a matter of ``labels`` and ``merge``: the 6-class set is
    ``labels: [neu, hap, ang, sad, exc, fru]`` with ``merge: {}``.
    """

    default_protocol = "session"
    attributes = ("arousal", "valence", "dominance")
    attribute_scales = MappingProxyType({name: ATTRIBUTE_SCALE for name in ("arousal", "valence", "dominance")})

    def __init__(
        self,
        root: str,
        labels: Sequence[str] = DEFAULT_LABELS,
        merge: Optional[Mapping[str, str]] = DEFAULT_MERGE,
        subset: str = "all",
        keep_unlabelled: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if isinstance(labels, str):
            labels = [labels]
        self.labels: List[str] = [str(lab) for lab in labels]
        self.merge: Dict[str, str] = {str(k): str(v) for k, v in dict(merge or {}).items()}
        if merge is DEFAULT_MERGE:  # the default exc -> hap applies only when hap is a class
            self.merge = {k: v for k, v in self.merge.items() if v in self.labels}
        self.subset = subset
        self.keep_unlabelled = bool(keep_unlabelled)
        self.dropped: Dict[str, int] = {}
        self.unlabelled: Dict[str, int] = {}
        self._validate()

    # ------------------------------------------------------------------ options
    def _validate(self) -> None:
        if not self.labels:
            raise ValueError("IemocapCorpus: labels must name at least one class")
        dupes = sorted({lab for lab in self.labels if self.labels.count(lab) > 1})
        if dupes:
            raise ValueError(f"IemocapCorpus: duplicate labels {dupes}")
        vocab = set(IEMOCAP_LABELS)
        for src, dst in self.merge.items():
            if src not in vocab:
                raise ValueError(
                    f"IemocapCorpus: merge source {src!r} is not an IEMOCAP label; known: {', '.join(IEMOCAP_LABELS)}"
                )
            if dst not in self.labels:
                raise ValueError(
                    f"IemocapCorpus: merge target {dst!r} (of {src!r}) is not one of labels {self.labels}"
                )
            if src in self.labels and src != dst:
                raise ValueError(f"IemocapCorpus: {src!r} is both a label and merged into {dst!r} "
                                 f"(to keep {src!r} as its own class, pass merge: {{}} or a merge without it)")
        targets = set(self.merge.values())
        for lab in self.labels:
            if lab not in vocab and lab not in targets:
                raise ValueError(
                    f"IemocapCorpus: label {lab!r} is neither an IEMOCAP label ({', '.join(IEMOCAP_LABELS)}) "
                    f"nor a merge target, so no utterance could have it"
                )
        if self.subset not in SUBSETS:
            raise ValueError(f"IemocapCorpus: subset must be one of {', '.join(SUBSETS)}, not {self.subset!r}")

    # ------------------------------------------------------------------ reading
    def sessions(self) -> List[Tuple[int, Path]]:
        """``[(number, folder)]`` of the ``SessionN`` folders under ``root``; raises if there are none."""
        expected = "the IEMOCAP_full_release folder, containing Session1 ... Session5"
        if not self.root.is_dir():
            raise FileNotFoundError(f"IEMOCAP root {str(self.root)!r} does not exist or is not a folder; "
                                    f"expected {expected}")
        found = []
        for child in self.root.iterdir():
            m = _SESSION_RE.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
        if not found:
            raise FileNotFoundError(f"no SessionN folders in IEMOCAP root {str(self.root)!r}; expected {expected}")
        return sorted(found)

    def load(self) -> List[Utterance]:
        """Parse every session's EmoEvaluation files; return the kept utterances in file order."""
        self.problems = []
        self.dropped = {}
        self.unlabelled = {}
        utterances: List[Utterance] = []
        seen: Set[str] = set()
        for number, folder in self.sessions():
            emo_dir = folder / "dialog" / "EmoEvaluation"
            if not emo_dir.is_dir():
                self.problem(str(emo_dir), f"missing annotation folder dialog/EmoEvaluation of {folder.name}")
                continue
            for txt in sorted(emo_dir.iterdir()):
                if txt.name.startswith("._") or txt.suffix.lower() != ".txt" or not txt.is_file():
                    continue
                kind = dialog_kind(txt.stem)
                if self.subset != "all":
                    if kind is None:
                        self.problem(str(txt), f"cannot tell whether dialog {txt.stem!r} is improvised or scripted; "
                                               f"left out of subset {self.subset!r}")
                        continue
                    if kind != self.subset:
                        continue
                utterances.extend(self._read_dialog(txt, number, folder, seen))
        if not utterances:
            self.problem(str(self.root), "no labelled utterances found (check labels, merge, subset and the folder)",
                         fatal=True)
        return utterances

    def _read_dialog(self, txt: Path, number: int, session_dir: Path, seen: Set[str]) -> List[Utterance]:
        dialog = txt.stem
        wav_dir = session_dir / "sentences" / "wav" / dialog
        present: Optional[Set[str]] = (
            {p.name for p in wav_dir.iterdir()} if wav_dir.is_dir() else None
        )
        try:
            lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            self.problem(str(txt), f"cannot read annotation file: {exc}")
            return []
        out: List[Utterance] = []
        missing_dir_count = 0
        vocab = set(IEMOCAP_LABELS)
        for line_no, line in enumerate(lines, 1):
            if not line.lstrip().startswith("["):
                continue
            parsed = parse_label_line(line)
            if parsed is None:
                self.problem(str(txt), f"malformed label line {line.strip()[:80]!r}", line_no)
                continue
            _, _, utt, raw = parsed
            raw = raw.lower()
            if raw not in vocab:
                self.problem(str(txt), f"unknown label {raw!r} for {utt} (known: {', '.join(IEMOCAP_LABELS)})", line_no)
                continue
            label = self.merge.get(raw, raw)
            if label not in self.labels:
                if not self.keep_unlabelled:
                    self.dropped[raw] = self.dropped.get(raw, 0) + 1
                    continue
                label = NO_LABEL
            if utt in seen:
                self.problem(str(txt), f"duplicate utterance id {utt}; later line ignored", line_no)
                continue
            if present is None:
                missing_dir_count += 1
                continue
            if f"{utt}.wav" not in present:
                self.problem(str(wav_dir / f"{utt}.wav"), f"wav listed in {txt.name} is missing; utterance skipped",
                             line_no)
                continue
            seen.add(utt)
            if label == NO_LABEL:
                self.unlabelled[raw] = self.unlabelled.get(raw, 0) + 1
            speaker = self._speaker(utt, dialog, number, txt, line_no)
            attributes = parse_attributes(line)
            if attributes is None:
                self.problem(str(txt), f"malformed [V, A, D] bracket on the line of {utt} "
                                       f"({line.strip()[:80]!r}); utterance kept without attributes", line_no,
                             kind=BAD_ATTRIBUTES, key=utt)
                attributes = {}
            out.append(Utterance(id=utt, path=str(wav_dir / f"{utt}.wav"), label=label, speaker=speaker,
                                 session=f"Session{number}", attributes=attributes))
        if missing_dir_count:
            self.problem(str(wav_dir), f"wav folder of dialog {dialog} is missing; "
                                       f"{missing_dir_count} labelled utterances skipped")
        return out

    def _speaker(self, utt: str, dialog: str, number: int, txt: Path, line_no: int) -> str:
        """``SesNN`` + gender letter; irregular ids get a problem and a speaker derived from the dialog."""
        ses = f"Ses{number:02d}"
        m_ses = _SES_PREFIX_RE.match(utt)
        if m_ses and int(m_ses.group(1)) != number:
            self.problem(str(txt), f"utterance {utt} names session {m_ses.group(1)} but lies in Session{number}; "
                                   f"speaker taken from the folder", line_no)
        if not utt.startswith(dialog):
            self.problem(str(txt), f"utterance id {utt} does not start with its dialog name {dialog}", line_no)
        m = _SPEAKER_RE.search(utt)
        if m and m.group(1).upper() in ("F", "M"):
            return ses + m.group(1).upper()
        m_dialog = _DIALOG_GENDER_RE.match(dialog)
        fallback = ses + (m_dialog.group(1).upper() if m_dialog else "X")
        self.problem(str(txt), f"irregular utterance id {utt!r}: no F/M letter before trailing digits; "
                               f"speaker set to {fallback}", line_no)
        return fallback
