"""A corpus described by a CSV manifest: ``path,label,speaker`` plus optional fold/split/session/start/end/id."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO, Corpus, Utterance

REQUIRED_COLUMNS = ("path", "label", "speaker")
OPTIONAL_COLUMNS = ("fold", "split", "session", "start", "end", "id")


class ManifestCorpus(Corpus):
    """Utterances listed in a CSV file (``root``) with a header of at least ``path,label,speaker``.

    Relative paths resolve against ``audio_root`` (default: the CSV's folder). ``merge`` maps raw
    labels onto classes; ``labels`` keeps only those classes (None: every label in the file, sorted)
    and ``dropped`` counts the rest per raw label after ``load()`` (also reported as one counted
    ``dropped_label`` problem per raw label, with its line numbers). The same audio (resolved path
    and segment) listed twice is a ``duplicate_audio`` problem naming both lines: fatal when the
    two rows give different folds or splits (the recording would be in train and test), a warning
    otherwise. The default protocol is ``folds`` with a fold column, else ``split`` with a split
    column, else ``speaker``.
    """

    def __init__(self, root: str, labels: Optional[Sequence[str]] = None,
                 merge: Optional[Mapping[str, str]] = None, audio_root: Optional[str] = None) -> None:
        super().__init__()
        self.root = Path(root)
        self.audio_root = Path(audio_root) if audio_root is not None else self.root.parent
        self.merge: Dict[str, str] = {str(k): str(v) for k, v in dict(merge or {}).items()}
        self.dropped: Dict[str, int] = {}
        self.columns = self._header()
        missing = [c for c in REQUIRED_COLUMNS if c not in self.columns]
        if missing:
            raise ValueError(f"manifest {self.root} lacks required column {missing[0]!r} "
                             f"(has: {', '.join(self.columns) or 'nothing'}; needs {', '.join(REQUIRED_COLUMNS)})")
        if "fold" in self.columns:
            self.default_protocol = "folds"
        elif "split" in self.columns:
            self.default_protocol = "split"
        else:
            self.default_protocol = "speaker"
        if labels is None:
            found = {self.merge.get(row["label"], row["label"]) for _, row in self._rows() if row.get("label")}
            self.labels: List[str] = sorted(found)
        else:
            self.labels = [str(lab) for lab in ([labels] if isinstance(labels, str) else labels)]
            if not self.labels:
                raise ValueError("ManifestCorpus: labels must name at least one class (or be None)")
            dupes = sorted({lab for lab in self.labels if self.labels.count(lab) > 1})
            if dupes:
                raise ValueError(f"ManifestCorpus: duplicate labels {dupes}")
            for src, dst in self.merge.items():
                if dst not in self.labels:
                    raise ValueError(f"ManifestCorpus: merge target {dst!r} (of {src!r}) "
                                     f"is not one of labels {self.labels}")

    # ------------------------------------------------------------------ CSV access
    def _open(self):
        if not self.root.is_file():
            raise FileNotFoundError(f"manifest {str(self.root)!r} does not exist; expected a CSV file with a header "
                                    f"line of at least {','.join(REQUIRED_COLUMNS)}")
        return open(self.root, newline="", encoding="utf-8-sig")

    def _header(self) -> List[str]:
        with self._open() as fh:
            header = next(csv.reader(fh), None)
        if not header:
            raise ValueError(f"manifest {self.root} is empty; expected a header line {','.join(REQUIRED_COLUMNS)}")
        return [h.strip().lower() for h in header]

    def _rows(self):
        """``(line_number, {column: stripped cell})`` of every non-blank data row."""
        with self._open() as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                row = {col: (cells[i].strip() if i < len(cells) else "") for i, col in enumerate(self.columns)}
                yield reader.line_num, row

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _time(row: Dict[str, str], col: str) -> Optional[float]:
        text = row.get(col, "")
        if not text:
            return None
        value = float(text)  # ValueError is reported by the caller
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{col} must be a finite number >= 0, not {text!r}")
        return value

    def load(self) -> List[Utterance]:
        """Read the manifest; bad rows and missing audio become problems and are skipped."""
        self.problems = []
        self.dropped = {}
        dropped_lines: Dict[str, List[int]] = {}
        seen: Dict[Tuple[str, Optional[float], Optional[float]], Tuple[int, str, Dict[str, str]]] = {}
        out: List[Utterance] = []
        ids: Set[str] = set()
        src = str(self.root)
        for line, row in self._rows():
            empty = [c for c in REQUIRED_COLUMNS if not row.get(c)]
            if empty:
                self.problem(src, f"empty {', '.join(empty)} cell; row skipped", line)
                continue
            try:
                start, end = self._time(row, "start"), self._time(row, "end")
            except ValueError as exc:
                self.problem(src, f"bad start/end: {exc}; row skipped", line)
                continue
            if start is not None and end is not None and end <= start:
                self.problem(src, f"end {end} is not after start {start}; row skipped", line)
                continue
            raw = row["label"]
            label = self.merge.get(raw, raw)
            if label not in self.labels:
                self.dropped[raw] = self.dropped.get(raw, 0) + 1
                dropped_lines.setdefault(raw, []).append(line)
                continue
            path = Path(row["path"])
            if not path.is_absolute():
                path = self.audio_root / path
            if not path.is_file():
                self.problem(str(path), f"audio file listed on line {line} of {self.root.name} is missing; "
                                        f"row skipped", line)
                continue
            utt_id = row.get("id") or ""
            if utt_id:
                if utt_id in ids:
                    self.problem(src, f"duplicate id {utt_id!r}; row skipped", line)
                    continue
            else:
                utt_id = stem = path.stem
                k = 2
                while utt_id in ids:
                    utt_id, k = f"{stem}_{k}", k + 1
            ids.add(utt_id)
            same = (str(path.resolve()), start, end)
            if same in seen:
                self._duplicate(line, utt_id, row, path, start, end, *seen[same])
            else:
                seen[same] = (line, utt_id, row)
            out.append(Utterance(id=utt_id, path=str(path), label=label, speaker=row["speaker"],
                                 session=row.get("session", ""), start=start, end=end,
                                 fold=row.get("fold") or None, split=row.get("split") or None))
        for raw, lines in dropped_lines.items():
            shown = ", ".join(str(n) for n in lines[:10]) + (", ..." if len(lines) > 10 else "")
            self.problem(src, f"{len(lines)} row(s) with label {raw!r}, outside labels {self.labels}, dropped "
                              f"(line{'s' if len(lines) > 1 else ''} {shown})", kind=DROPPED_LABEL, key=raw,
                         count=len(lines), lines=lines)
        present = {u.label for u in out}
        for lab in self.labels:
            if out and lab not in present:
                self.problem(src, f"label {lab!r} has no usable utterance")
        if not out:
            self.problem(src, "no usable utterances in the manifest", fatal=True)
        return out

    def _duplicate(self, line: int, utt_id: str, row: Dict[str, str], path: Path, start: Optional[float],
                   end: Optional[float], first_line: int, first_id: str, first_row: Dict[str, str]) -> None:
        """Report a row whose audio (file and segment) an earlier row already lists."""
        segment = "" if start is None and end is None else f" [{start if start is not None else 0}-" \
                                                            f"{end if end is not None else 'end'} s]"
        clash = [col for col in ("fold", "split") if row.get(col, "") != first_row.get(col, "")]
        what = (f"line {line} lists the same audio as line {first_line} ({path}{segment}; "
                f"ids {first_id!r} and {utt_id!r})")
        if clash:
            col = clash[0]
            self.problem(str(self.root), f"{what} in {col} {first_row.get(col)!r} and {col} {row.get(col)!r}: the "
                                         "same recording would be in training and test data; list it once",
                         line, fatal=True, kind=DUPLICATE_AUDIO, key=utt_id, lines=(first_line, line))
        else:
            self.problem(str(self.root), f"{what}; both rows are kept (it counts twice)", line,
                         kind=DUPLICATE_AUDIO, key=utt_id, lines=(first_line, line))
