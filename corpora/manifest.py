"""A corpus described by a CSV manifest: ``path,label,speaker`` plus optional fold/split/session/start/end/id.

Columns named in the ``attributes`` option give continuous targets (arousal, valence, ...).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO, NO_LABEL, Corpus, Utterance

REQUIRED_COLUMNS = ("path", "label", "speaker")
OPTIONAL_COLUMNS = ("fold", "split", "session", "start", "end", "id")
#: ``CorpusProblem.kind`` of empty attribute cells and of cells that are not a finite number
#: (one counted problem per attribute, ``key`` the attribute, ``lines`` the rows).
MISSING_ATTRIBUTE = "missing_attribute"
BAD_ATTRIBUTE = "bad_attribute"


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

    Continuous targets: ``attributes`` names the columns that carry them, either as a mapping
    ``{arousal: EmoAct, valence: EmoVal}`` (attribute name -> column) or as a list of columns
    (``[arousal, valence]``: each column's name is the attribute's). Column names match the
    header case-insensitively, like every column; a named column the header lacks is an error.
    Cells are parsed as floats: an empty cell, or one that is not a finite number, leaves that
    attribute out of the row's ``Utterance.attributes`` (the row is kept) and is counted, one
    ``missing_attribute`` / ``bad_attribute`` problem per attribute with its line numbers.
    ``attribute_scales`` (``{arousal: [1, 7]}``) declares each attribute's documented range
    (values outside it are warned about by the run, not here).

    With ``attributes``, a manifest may serve regression only: the ``label`` column may be left
    out (every row is then ``NO_LABEL``, and ``labels`` is empty), and a row whose label cell is
    empty is kept as ``NO_LABEL`` rather than skipped. ``keep_unlabelled`` also keeps the rows
    whose label is outside ``labels`` as ``NO_LABEL`` (counted in ``unlabelled`` instead of
    ``dropped``). A row with neither a label nor any attribute value carries nothing and is
    skipped (one counted problem). Without ``attributes``, everything reads as before: ``label``
    is required and an empty label cell skips its row.
    """

    def __init__(self, root: str, labels: Optional[Sequence[str]] = None,
                 merge: Optional[Mapping[str, str]] = None, audio_root: Optional[str] = None,
                 attributes: Optional[Union[Mapping[str, str], Sequence[str]]] = None,
                 attribute_scales: Optional[Mapping[str, Sequence[float]]] = None,
                 keep_unlabelled: bool = False) -> None:
        super().__init__()
        self.root = Path(root)
        self.audio_root = Path(audio_root) if audio_root is not None else self.root.parent
        self.merge: Dict[str, str] = {str(k): str(v) for k, v in dict(merge or {}).items()}
        self.dropped: Dict[str, int] = {}
        self.unlabelled: Dict[str, int] = {}
        self.keep_unlabelled = bool(keep_unlabelled)
        self.columns = self._header()
        self.attribute_columns: Dict[str, str] = self._attribute_columns(attributes)
        self.attributes: Tuple[str, ...] = tuple(self.attribute_columns)
        self.attribute_scales = MappingProxyType(self._scales(attribute_scales))
        self.has_label_column = "label" in self.columns
        needed = [c for c in REQUIRED_COLUMNS if not (c == "label" and self.attribute_columns)]
        missing = [c for c in needed if c not in self.columns]
        if missing:
            raise ValueError(f"manifest {self.root} lacks required column {missing[0]!r} "
                             f"(has: {', '.join(self.columns) or 'nothing'}; needs {', '.join(needed)}"
                             + ("" if self.attribute_columns else "; label may be left out when attributes "
                                                                  "name the columns of continuous targets") + ")")
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

    # ------------------------------------------------------------------ options
    def _attribute_columns(self, spec: Optional[Union[Mapping[str, str], Sequence[str]]]) -> Dict[str, str]:
        """``{attribute name: header column}`` from the ``attributes`` option, checked against the header."""
        if spec is None:
            return {}
        if isinstance(spec, str):
            spec = [spec]
        pairs = list(spec.items()) if isinstance(spec, Mapping) else [(col, col) for col in spec]
        out: Dict[str, str] = {}
        for name, col in pairs:
            name, col = str(name).strip(), str(col).strip()
            if not name or not col:
                raise ValueError("ManifestCorpus: attributes must name non-empty attributes and columns")
            if name in out:
                raise ValueError(f"ManifestCorpus: attribute {name!r} named twice")
            low = col.lower()
            if low in REQUIRED_COLUMNS or low in OPTIONAL_COLUMNS:
                raise ValueError(f"ManifestCorpus: attribute {name!r} cannot read the {low!r} column "
                                 f"(it has its own meaning)")
            if low not in self.columns:
                raise ValueError(f"manifest {self.root} has no column {col!r} for attribute {name!r} "
                                 f"(has: {', '.join(self.columns)})")
            out[name] = low
        return out

    def _scales(self, spec: Optional[Mapping[str, Sequence[float]]]) -> Dict[str, Tuple[float, float]]:
        """``{attribute: (low, high)}`` from the ``attribute_scales`` option, checked."""
        out: Dict[str, Tuple[float, float]] = {}
        for name, pair in dict(spec or {}).items():
            name = str(name)
            if name not in self.attribute_columns:
                raise ValueError(f"ManifestCorpus: attribute_scales names {name!r}, which is not one of "
                                 f"attributes {list(self.attribute_columns) or '(none)'}")
            values: Any = pair
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 2:
                raise ValueError(f"ManifestCorpus: attribute_scales[{name!r}] must be [low, high], not {pair!r}")
            try:
                low, high = float(values[0]), float(values[1])
            except (TypeError, ValueError):
                raise ValueError(f"ManifestCorpus: attribute_scales[{name!r}] must be two numbers, "
                                 f"not {pair!r}") from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"ManifestCorpus: attribute_scales[{name!r}] must be finite with low < high, "
                                 f"not {pair!r}")
            out[name] = (low, high)
        return out

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

    def _row_attributes(self, row: Dict[str, str]) -> Tuple[Dict[str, float], List[Tuple[str, str]]]:
        """``(values, [(problem kind, attribute)])``: empty and non-numeric cells are left out of the values."""
        out: Dict[str, float] = {}
        misses: List[Tuple[str, str]] = []
        for name, col in self.attribute_columns.items():
            text = row.get(col, "")
            if not text:
                misses.append((MISSING_ATTRIBUTE, name))
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                misses.append((BAD_ATTRIBUTE, name))
                continue
            out[name] = value
        return out, misses

    def load(self) -> List[Utterance]:
        """Read the manifest; bad rows and missing audio become problems and are skipped."""
        self.problems = []
        self.dropped = {}
        self.unlabelled = {}
        dropped_lines: Dict[str, List[int]] = {}
        attribute_lines: Dict[Tuple[str, str], List[int]] = {}
        empty_rows: List[int] = []
        seen: Dict[Tuple[str, Optional[float], Optional[float]], Tuple[int, str, Dict[str, str]]] = {}
        out: List[Utterance] = []
        ids: Set[str] = set()
        src = str(self.root)
        regression = bool(self.attribute_columns)
        for line, row in self._rows():
            empty = [c for c in REQUIRED_COLUMNS if not row.get(c) and not (c == "label" and regression)]
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
            raw = row.get("label", "")
            label = self.merge.get(raw, raw) if raw else NO_LABEL
            if raw and label not in self.labels:
                if not self.keep_unlabelled:
                    self.dropped[raw] = self.dropped.get(raw, 0) + 1
                    dropped_lines.setdefault(raw, []).append(line)
                    continue
                label = NO_LABEL
            attributes, misses = self._row_attributes(row) if regression else ({}, [])
            if label == NO_LABEL and not attributes:
                empty_rows.append(line)
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
            if label == NO_LABEL and raw:
                self.unlabelled[raw] = self.unlabelled.get(raw, 0) + 1
            for miss in misses:  # counted for the rows kept only
                attribute_lines.setdefault(miss, []).append(line)
            out.append(Utterance(id=utt_id, path=str(path), label=label, speaker=row["speaker"],
                                 session=row.get("session", ""), start=start, end=end,
                                 fold=row.get("fold") or None, split=row.get("split") or None,
                                 attributes=attributes))
        for raw, lines in dropped_lines.items():
            self.problem(src, f"{len(lines)} row(s) with label {raw!r}, outside labels {self.labels}, dropped "
                              f"({_lines_text(lines)})", kind=DROPPED_LABEL, key=raw,
                         count=len(lines), lines=lines)
        for (kind, name), lines in attribute_lines.items():
            what = "empty" if kind == MISSING_ATTRIBUTE else "not a finite number"
            self.problem(src, f"{len(lines)} row(s) with attribute {name!r} (column "
                              f"{self.attribute_columns[name]!r}) {what}: left out of those rows "
                              f"({_lines_text(lines)})", kind=kind, key=name, count=len(lines), lines=lines)
        if empty_rows:
            self.problem(src, f"{len(empty_rows)} row(s) with neither a label nor any attribute value skipped "
                              f"({_lines_text(empty_rows)})", count=len(empty_rows), lines=empty_rows)
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


def _lines_text(lines: Sequence[int]) -> str:
    """``line 3`` / ``lines 3, 5, ...`` (the first ten)."""
    shown = ", ".join(str(n) for n in lines[:10]) + (", ..." if len(lines) > 10 else "")
    return f"line{'s' if len(lines) > 1 else ''} {shown}"
