"""EmoBox's prepared data sets (emo-box/EmoBox ``data/``), read unchanged, and a generated miniature in its layout.

EmoBox (Ma et al., Interspeech 2024) ships the metadata of 32 emotion data sets; the audio is the
user's (``downloads/<dataset>/...``, relative to EmoBox's checkout). Layout read::

    <root>/<dataset>/<dataset>.jsonl            every utterance, one JSON object a line:
                                                key, dataset, wav, type, sample_rate, num_frame,
                                                task, length, emo, channel [, start_time, end_time]
    <root>/<dataset>/label_map.json             raw ``emo`` -> class (``label_dict.json`` for emovo)
    <root>/<dataset>/data.seg.wrd.stm           EmoBox's segment list: the ``spk=`` of its tags are the speakers
    <root>/<dataset>/fold_<k>/<dataset>_train_fold_<k>.jsonl
    <root>/<dataset>/fold_<k>/<dataset>_test_fold_<k>.jsonl
    <root>/<dataset>/fold_<k>/<dataset>_valid_fold_<k>.jsonl   (meld, m3ed, msppodcast only)

``root`` is EmoBox's ``data/`` folder; ``wav`` paths resolve against ``data_root`` (default: the
parent of ``root``, EmoBox's checkout, where its README puts ``downloads/``). The fold lists are the
ones ``EmoBox/EmoDataset.py`` ``prepare_data_from_jsonl`` opens (``{dataset}_train_fold_{k}.jsonl``);
the copies some data sets also carry without the underscore (``emodb_train_fold1.jsonl``) are not read.

Protocol (checked on the metadata of EmoBox commit 08280f2: 28 of its 32 data sets; docs/corpora.md):
  * a data set with several folds (cafe, casia, emodb, emovo, esd, iemocap, jlcorpus, polish,
    ravdess, savee, subesco): the test lists partition the data and each fold's train list is the
    complement of its test list, so ``fold`` = the number of the fold whose test list holds the
    utterance, protocol ``folds``, gives exactly EmoBox's folds;
  * a data set with one fold (the other 21: a fixed train/test split, three with a valid list):
    ``split`` = train / dev / test, protocol ``split``;
  * ``fold=k`` reads fold ``k`` of any data set as a ``split`` (train / dev / test of that fold's
    lists): a grid over ``corpus.fold`` reproduces EmoBox's folds and its dev sets exactly.

Dev set of a fold (``split`` views: written into ``split``; ``folds`` view: ``fold_lists``, for the
core to use, while the run's own ``protocol.dev`` applies):
  1. the fold's official valid list;
  2. else, where speakers are known, whole training speakers who do not speak in the fold's test
     list (``dev_rule: auto``): speakers in a seed-``dev_seed`` shuffle, taken until they hold 20 % of
     the training utterances (at least one training speaker stays in train);
  3. else EmoBox's own rule: 80/20 of the train list at random, ``random.seed(12)``, exactly as
     ``EmoDataset.split_sets`` was meant to work (``dev_rule: emobox`` uses it wherever there is no
     valid list). EmoBox's code has two bugs here, not reproduced: ``split_ratio=[80, 20]`` makes the
     valid set empty, and ``split_sets`` returns the whole train list as train.
The rule of every fold is stated in ``notes`` (for run.json) and logged.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import soundfile as sf

from ser_plugins.errors import UserError
from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO, Corpus, Utterance

log = logging.getLogger(__name__)

#: EmoBox's 32 data sets in the order of its README's tables.
DATASETS: Tuple[str, ...] = (
    "aesdd", "ased", "asvpesd", "cafe", "casia", "cremad", "emns", "emodb", "emovdb", "emovo",
    "emozionalmente", "enterface", "esd", "iemocap", "jlcorpus", "m3ed", "mead", "meld", "mer2023",
    "mesd", "msppodcast", "oreau", "pavoque", "polish", "ravdess", "resd", "savee", "shemo",
    "subesco", "tess", "turevdb", "urdu",
)  # fmt: skip
LABEL_MAP_FILES: Tuple[str, ...] = ("label_map.json", "label_dict.json")  # label_dict.json: emovo
STM_FILE = "data.seg.wrd.stm"
#: EmoBox's train/valid split where no valid list exists (``prepare_data_from_jsonl``'s defaults).
EMOBOX_SEED = 12
DEV_SHARE = 0.2
UNKNOWN_SPEAKER = "unknown"
DEV_RULES: Tuple[str, ...] = ("auto", "emobox")
DUPLICATES: Tuple[str, ...] = ("keep", "first")

# problem kinds of this reader (besides the core's dropped_label and duplicate_audio)
BAD_LINE = "bad_line"  # a line that is not a JSON object with key, wav and emo
DUPLICATE_KEY = "duplicate_key"
UNMAPPED_LABEL = "unmapped_label"  # an emo value label_map.json does not map
MISSING_AUDIO = "missing_audio"
NO_SPEAKER = "no_speaker"  # a key the STM file does not list (speaker unknown)
FOLD_LIST = "fold_list"  # a fold list naming a key the data set's jsonl lacks, or a key twice
FOLD_MISMATCH = "fold_mismatch"  # the folds cannot be read as a fold column (fatal)

_FOLD_DIR = re.compile(r"^fold_(\d+)$")
_STM_TAG = re.compile(r"<id=(?P<id>.*?),lang=[^,]*,spk=(?P<spk>.*?),emotion=[^>]*>")


class EmoboxError(UserError, ValueError):
    """EmoBox metadata this reader cannot read at all (a missing data set, label map or fold list)."""


def _lines_text(lines: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:10]) + (", ..." if len(lines) > 10 else "")
    return f"line{'s' if len(lines) > 1 else ''} {shown}"


def emobox_dev_split(keys: Sequence[str], seed: int = EMOBOX_SEED) -> Tuple[List[str], List[str]]:
    """EmoBox's train/valid split of a train list (``split_sets`` as meant): ``(train, dev)``.

    ``random.seed(seed)``, ``random.shuffle(np.arange(n))``, the first ``int(n * 0.8)`` positions
    train, the rest valid; ``keys`` in the train list's order after missing audio is left out
    (``check_exists``). The same permutation as ``random.Random(seed).shuffle(list(range(n)))``.
    """
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    cut = int(len(keys) * (1 - DEV_SHARE))
    return [keys[i] for i in order[:cut]], [keys[i] for i in order[cut:]]


def _speaker_of(spk: str) -> str:
    """An STM ``spk=`` value as a speaker id: its last path component (jlcorpus's are folder paths)."""
    spk = spk.strip()
    return spk.rsplit("/", 1)[-1] if "/" in spk else spk


class EmoboxCorpus(Corpus):
    """One EmoBox data set, read from EmoBox's ``data/`` folder (see the module docstring).

    Options:
      * ``dataset`` -- the data set's folder name (``iemocap``, ``emodb``, ...; ``DATASETS``);
      * ``data_root`` -- the folder the ``wav`` paths are relative to (default: ``root``'s parent);
      * ``labels`` -- the classes kept, in logit order (default: every class of label_map.json,
        after ``merge``, sorted); rows of other classes are dropped and counted (``dropped_label``);
      * ``merge`` -- ``{raw emo or class: class}``, applied before label_map.json for a raw ``emo``
        key and after it for a class (``{neutral: Neutral}`` mends emodb, whose label_map.json has
        ``Neutral`` for the jsonl's ``neutral``);
      * ``fold`` -- None: the whole data set (``folds`` with several folds, else ``split``); ``k``:
        fold ``k`` alone as a ``split`` (train / dev / test of its lists);
      * ``dev_rule`` -- ``auto`` (official valid, else speaker-disjoint, else EmoBox's 80/20) or
        ``emobox`` (official valid, else EmoBox's 80/20 everywhere); ``dev_seed`` its seed (12,
        EmoDataset's default; EmoBox's speechbrain recipes pass their own ``seed``, 1993);
      * ``check_audio`` -- False lists the metadata without looking for the audio files (dry runs,
        tests); True (default) counts each missing file as a problem and skips its row;
      * ``duplicates`` -- ``keep`` (default) or ``first``: the same audio segment listed twice
        (pavoque) is a ``duplicate_audio`` problem; ``first`` also drops every later listing.

    Counted problems (rows skipped): lines that do not parse (``bad_line``), keys listed twice
    (``duplicate_key``), ``emo`` values label_map.json does not map (``unmapped_label``), missing
    audio (``missing_audio``), fold lists naming unknown keys or a key twice (``fold_list``), keys
    the STM file does not list (``no_speaker``: kept, speaker ``unknown``). Utterances in no list of
    the view read are left out and counted in ``notes`` (mer2023's jsonl lists 1246 of them).
    After ``load()``: ``notes`` (for run.json: the view, each fold's dev rule and sizes, speakers),
    ``fold_lists`` (``{fold: {train, dev, test}}`` ids as EmoBox makes them) and ``dropped``.
    """

    def __init__(
        self,
        root: str,
        dataset: str,
        data_root: Optional[str] = None,
        labels: Optional[Sequence[str]] = None,
        merge: Optional[Mapping[str, str]] = None,
        fold: Optional[Union[int, str]] = None,
        dev_rule: str = "auto",
        dev_seed: int = EMOBOX_SEED,
        check_audio: bool = True,
        duplicates: str = "keep",
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.dataset = str(dataset)
        self.data_root = Path(data_root) if data_root is not None else self.root.parent
        self.merge: Dict[str, str] = {str(k): str(v) for k, v in dict(merge or {}).items()}
        if dev_rule not in DEV_RULES:
            raise EmoboxError(f"EmoboxCorpus: dev_rule must be one of {', '.join(DEV_RULES)}, not {dev_rule!r}")
        if duplicates not in DUPLICATES:
            raise EmoboxError(f"EmoboxCorpus: duplicates must be one of {', '.join(DUPLICATES)}, not {duplicates!r}")
        if isinstance(dev_seed, bool) or not isinstance(dev_seed, int):
            raise EmoboxError(f"EmoboxCorpus: dev_seed must be an integer, not {dev_seed!r}")
        self.dev_rule, self.dev_seed, self.duplicates = dev_rule, dev_seed, duplicates
        self.check_audio = bool(check_audio)
        self.dir = self.root / self.dataset
        if not (self.dir / f"{self.dataset}.jsonl").is_file():
            found = sorted(p.name for p in self.root.iterdir() if (p / f"{p.name}.jsonl").is_file()) if (
                self.root.is_dir()) else []
            raise EmoboxError(
                f"EmoboxCorpus: no {self.dataset}/{self.dataset}.jsonl under {self.root} (root is EmoBox's data/ "
                f"folder; data sets found there: {', '.join(found) or 'none'})"
            )
        self.label_map_file, self.label_map = self._read_label_map()
        self.folds = self._fold_numbers()
        if fold is None:
            self.fold: Optional[int] = None
        else:
            text = str(fold).strip()
            if isinstance(fold, bool) or not text.isdigit() or int(text) not in self.folds:
                raise EmoboxError(
                    f"EmoboxCorpus: {self.dataset} has no fold {fold!r} (its folds: {', '.join(map(str, self.folds))})"
                )
            self.fold = int(text)
        self.view = "folds" if self.fold is None and len(self.folds) > 1 else "split"
        self.default_protocol = self.view
        self.labels: List[str] = self._labels(labels)
        self.dropped: Dict[str, int] = {}
        self.notes: Dict[str, Any] = {}
        self.fold_lists: Dict[str, Dict[str, List[str]]] = {}

    # ------------------------------------------------------------------ metadata files
    def _read_label_map(self) -> Tuple[str, Dict[str, str]]:
        for name in LABEL_MAP_FILES:
            path = self.dir / name
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise EmoboxError(f"EmoboxCorpus: {path} is not JSON: {exc}") from None
                if not isinstance(data, dict) or not data or not all(
                    isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
                ):
                    raise EmoboxError(f"EmoboxCorpus: {path} must map raw emo values to class names")
                return name, dict(data)
        raise EmoboxError(f"EmoboxCorpus: {self.dir} has no {' or '.join(LABEL_MAP_FILES)}")

    def _fold_numbers(self) -> List[int]:
        found = sorted(
            int(m.group(1)) for p in self.dir.iterdir() for m in [_FOLD_DIR.match(p.name)] if m and p.is_dir()
        )
        if not found:
            raise EmoboxError(f"EmoboxCorpus: {self.dir} has no fold_<k> folders")
        return found

    def fold_file(self, k: int, part: str) -> Path:
        """``fold_<k>/<dataset>_<part>_fold_<k>.jsonl``: the name EmoDataset opens."""
        return self.dir / f"fold_{k}" / f"{self.dataset}_{part}_fold_{k}.jsonl"

    def _labels(self, labels: Optional[Sequence[str]]) -> List[str]:
        classes = {self._class_of(raw) for raw in self.label_map} | {
            v for k, v in self.merge.items() if k not in self.label_map and k not in self.label_map.values()
        }
        classes.discard(None)
        if labels is None:
            return sorted(c for c in classes if c is not None)
        chosen = [str(lab) for lab in ([labels] if isinstance(labels, str) else labels)]
        if not chosen:
            raise EmoboxError("EmoboxCorpus: labels must name at least one class (or be None)")
        dupes = sorted({lab for lab in chosen if chosen.count(lab) > 1})
        if dupes:
            raise EmoboxError(f"EmoboxCorpus: duplicate labels {dupes}")
        for src, dst in self.merge.items():
            if dst not in chosen:
                raise EmoboxError(f"EmoboxCorpus: merge target {dst!r} (of {src!r}) is not one of labels {chosen}")
        unknown = [lab for lab in chosen if lab not in classes]
        if unknown:
            raise EmoboxError(
                f"EmoboxCorpus: labels {unknown} are not classes of {self.dataset} "
                f"({self.label_map_file}: {', '.join(sorted(c for c in classes if c))})"
            )
        return chosen

    def _class_of(self, raw: str) -> Optional[str]:
        """The class of a raw ``emo`` value (None: label_map.json and merge do not map it)."""
        if raw in self.merge:
            return self.merge[raw]
        if raw not in self.label_map:
            return None
        cls = self.label_map[raw]
        return self.merge.get(cls, cls)

    def _read_jsonl(self, path: Path, bad: Dict[str, List[int]]) -> List[Tuple[int, Dict[str, Any]]]:
        """``(line number, record)`` of every line that is a JSON object with string key, wav and emo."""
        out: List[Tuple[int, Dict[str, Any]]] = []
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, text in enumerate(fh, 1):
                if not text.strip():
                    continue
                try:
                    rec = json.loads(text)
                except ValueError:
                    rec = None
                if not (
                    isinstance(rec, dict)
                    and all(isinstance(rec.get(f), str) and rec.get(f) for f in ("key", "wav", "emo"))
                    and _segment_ok(rec)
                ):
                    bad.setdefault(str(path), []).append(n)
                    continue
                out.append((n, rec))
        return out

    def _speakers(self) -> Tuple[Dict[str, str], str]:
        """``({key: speaker}, how)`` from the STM file's ``<id=...,spk=...>`` tags (EmoBox's collect_metadata)."""
        path = self.dir / STM_FILE
        if not path.is_file():
            return {}, f"unknown: no {STM_FILE}"
        found: Dict[str, str] = {}
        with open(path, encoding="utf-8", errors="replace") as fh:
            for text in fh:
                m = _STM_TAG.search(text)
                if m and m.group("spk").strip():
                    found[m.group("id")] = _speaker_of(m.group("spk"))
        distinct = len(set(found.values()))
        if len(found) > 1 and distinct == len(found):
            return {}, f"unknown: {STM_FILE} gives every utterance a speaker of its own (its file name)"
        return found, f"{STM_FILE} ({distinct} speakers)"

    # ------------------------------------------------------------------ reading
    def load(self) -> List[Utterance]:
        """Read the data set (see the class docstring); problems are counted in ``problems``."""
        self.problems, self.dropped, self.notes, self.fold_lists = [], {}, {}, {}
        main = self.dir / f"{self.dataset}.jsonl"
        bad: Dict[str, List[int]] = {}
        rows: Dict[str, Tuple[int, Dict[str, Any]]] = {}
        dup_keys: List[int] = []
        for n, rec in self._read_jsonl(main, bad):
            if rec["key"] in rows:
                dup_keys.append(n)
                continue
            rows[rec["key"]] = (n, rec)
        if dup_keys:
            self.problem(str(main), f"{len(dup_keys)} line(s) repeat an earlier key; skipped ({_lines_text(dup_keys)})",
                         kind=DUPLICATE_KEY, count=len(dup_keys), lines=dup_keys)
        lists = self._fold_lists(rows, bad)
        for path, lines in bad.items():
            self.problem(path, f"{len(lines)} line(s) are not a JSON object with key, wav and emo (and a valid "
                               f"start_time/end_time); skipped ({_lines_text(lines)})",
                         kind=BAD_LINE, count=len(lines), lines=lines)
        roles = self._roles(lists)  # key -> fold value or split
        speakers, how = self._speakers()
        present, utts = self._utterances(main, rows, roles, speakers, how)
        self._dev_sets(lists, present, utts)
        if self.view == "split":
            dev_ids = set(self.fold_lists["split"]["dev"])
            utts = [_with(u, split="dev") if u.id in dev_ids else u for u in utts]
        unlisted = sum(1 for k in rows if k not in roles)
        self.notes.update(
            dataset=self.dataset,
            view=self.view,
            fold=self.fold,
            folds=len(self.folds),
            label_map=f"{self.dataset}/{self.label_map_file}",
            speakers=how,
            unlisted=unlisted,
        )
        if unlisted:
            log.info("emobox %s: %d utterance(s) of %s.jsonl are in no list of this view (left out, as EmoBox does)",
                     self.dataset, unlisted, self.dataset)
        for name, rule in self.notes.get("dev", {}).items():
            log.info("emobox %s fold %s: dev = %s", self.dataset, name, rule)
        return utts

    def _fold_lists(self, rows: Mapping[str, Any], bad: Dict[str, List[int]]) -> Dict[int, Dict[str, List[str]]]:
        """``{k: {train, test[, valid]}: keys}`` of the folds this view reads (in the lists' order)."""
        out: Dict[int, Dict[str, List[str]]] = {}
        for k in self.folds if self.view == "folds" else [self.fold or self.folds[0]]:
            parts: Dict[str, List[str]] = {}
            for part in ("train", "test", "valid"):
                path = self.fold_file(k, part)
                if not path.is_file():
                    if part != "valid":
                        raise EmoboxError(f"EmoboxCorpus: {path} is missing (EmoDataset reads it for fold {k})")
                    continue
                keys: List[str] = []
                unknown: List[int] = []
                for n, rec in self._read_jsonl(path, bad):
                    if rec["key"] not in rows:
                        unknown.append(n)
                    else:
                        keys.append(rec["key"])
                if unknown:
                    self.problem(str(path), f"{len(unknown)} line(s) name keys {self.dataset}.jsonl does not list; "
                                            f"skipped ({_lines_text(unknown)})",
                                 kind=FOLD_LIST, count=len(unknown), lines=unknown)
                parts[part] = keys
            out[k] = parts
        return out

    def _roles(self, lists: Dict[int, Dict[str, List[str]]]) -> Dict[str, str]:
        """Each listed key's ``fold`` (folds view) or ``split`` (split view); overlaps are problems."""
        roles: Dict[str, str] = {}
        if self.view == "split":
            (k, parts), = lists.items()
            for part in ("train", "valid", "test"):
                twice = [key for key in parts.get(part, []) if key in roles]
                for key in parts.get(part, []):
                    roles.setdefault(key, "dev" if part == "valid" else part)
                if twice:
                    self.problem(str(self.fold_file(k, part)),
                                 f"{len(twice)} key(s) already listed in another list of fold {k} (e.g. {twice[0]}); "
                                 f"kept in the first", kind=FOLD_LIST, count=len(twice), fatal=part == "test")
            return roles
        for k, parts in lists.items():
            twice = [key for key in parts["test"] if key in roles]
            for key in parts["test"]:
                roles.setdefault(key, str(k))
            if twice:
                self.problem(str(self.fold_file(k, "test")),
                             f"{len(twice)} key(s) are in an earlier fold's test list too (e.g. {twice[0]}): the test "
                             "lists do not partition the data, so they cannot be read as a fold column; "
                             "use corpus.fold: k (one split per fold)",
                             kind=FOLD_MISMATCH, count=len(twice), fatal=True)
        listed = set(roles)
        for k, parts in lists.items():
            if "valid" in parts:
                self.problem(str(self.fold_file(k, "valid")),
                             f"fold {k} has a valid list, which protocol folds cannot keep out of training; "
                             "use corpus.fold: k (one split per fold: a grid over corpus.fold)",
                             kind=FOLD_MISMATCH, fatal=True)
            test = set(parts["test"])
            train = set(parts["train"])
            if train != listed - test:
                self.problem(str(self.fold_file(k, "train")),
                             f"fold {k}'s train list is not the complement of its test list ({len(train - listed)} "
                             f"extra, {len(listed - test - train)} missing, {len(train & test)} also in test): "
                             "protocol folds cannot reproduce it; use corpus.fold: k (one split per fold)",
                             kind=FOLD_MISMATCH, fatal=True)
        return roles

    def _utterances(
        self, main: Path, rows: Mapping[str, Tuple[int, Dict[str, Any]]], roles: Mapping[str, str],
        speakers: Mapping[str, str], how: str,
    ) -> Tuple[Set[str], List[Utterance]]:
        """``(keys whose row and audio are present, the utterances)`` of the listed rows, in the jsonl's order."""
        src = str(main)
        unmapped: Dict[str, List[int]] = {}
        dropped: Dict[str, List[int]] = {}
        missing: List[Tuple[int, str]] = []
        no_speaker: List[int] = []
        seen: Dict[Tuple[str, Optional[float], Optional[float]], Tuple[int, str]] = {}
        present: Set[str] = set()
        out: List[Utterance] = []
        known = not how.startswith("unknown")
        for key, (line, rec) in rows.items():
            if key not in roles:
                continue
            path = Path(rec["wav"])
            if not path.is_absolute():
                path = self.data_root / path
            if self.check_audio and not path.is_file():
                missing.append((line, str(path)))
                continue
            present.add(key)
            raw = rec["emo"]
            label = self._class_of(raw)
            if label is None:
                unmapped.setdefault(raw, []).append(line)
                continue
            if label not in self.labels:
                dropped.setdefault(label, []).append(line)
                continue
            start, end = _seconds(rec.get("start_time")), _seconds(rec.get("end_time"))
            same = (str(path.resolve()), start, end)
            if same in seen:
                first_line, first_key = seen[same]
                drop = self.duplicates == "first"
                self.problem(src, f"{key!r} (line {line}) is the same audio as {first_key!r} (line {first_line}): "
                                  f"{rec['wav']}" + (f" {start}-{end} s" if start is not None else "")
                             + ("; the later listing is dropped (duplicates: first)" if drop else ""),
                             line, kind=DUPLICATE_AUDIO, key=key, lines=(first_line, line))
                if drop:
                    continue
            else:
                seen[same] = (line, key)
            speaker = speakers.get(key) if known else None
            if known and speaker is None:
                no_speaker.append(line)
            role = roles[key]
            out.append(Utterance(
                id=key, path=str(path), label=label, speaker=speaker or UNKNOWN_SPEAKER, start=start, end=end,
                fold=role if self.view == "folds" else None, split=None if self.view == "folds" else role,
            ))
        if missing:
            shown = "; ".join(p for _, p in missing[:3]) + ("; ..." if len(missing) > 3 else "")
            self.problem(src, f"{len(missing)} listed audio file(s) are missing under data_root {self.data_root} "
                              f"({shown}); rows skipped", kind=MISSING_AUDIO, count=len(missing),
                         lines=[n for n, _ in missing])
        for raw, lines in unmapped.items():
            near = [k for k in self.label_map if k.lower() == raw.lower()]
            hint = f" (label_map has {near[0]!r}: merge: {{{raw}: {self.label_map[near[0]]}}} maps it)" if near else ""
            self.problem(src, f"{len(lines)} row(s) with emo {raw!r}, which {self.label_map_file} does not map, "
                              f"skipped{hint} ({_lines_text(lines)})",
                         kind=UNMAPPED_LABEL, key=raw, count=len(lines), lines=lines)
        for label, lines in dropped.items():
            self.dropped[label] = len(lines)
            self.problem(src, f"{len(lines)} row(s) of class {label!r}, outside labels {self.labels}, dropped "
                              f"({_lines_text(lines)})", kind=DROPPED_LABEL, key=label, count=len(lines), lines=lines)
        if no_speaker:
            self.problem(str(self.dir / STM_FILE), f"{len(no_speaker)} key(s) of {self.dataset}.jsonl are not in "
                                                   f"{STM_FILE}: speaker {UNKNOWN_SPEAKER!r} "
                                                   f"({_lines_text(no_speaker)} of {main.name})",
                         kind=NO_SPEAKER, count=len(no_speaker), lines=no_speaker)
        return present, out

    # ------------------------------------------------------------------ dev sets
    def _dev_sets(self, lists: Dict[int, Dict[str, List[str]]], present: Set[str], utts: List[Utterance]) -> None:
        """``fold_lists`` and ``notes["dev"]``: each fold's train / dev / test under the dev rule."""
        usable = {u.id: u for u in utts}
        speaker_of = {u.id: u.speaker for u in utts}
        known = all(s != UNKNOWN_SPEAKER for s in speaker_of.values()) and bool(speaker_of)
        dev_notes: Dict[str, str] = {}
        for k, parts in lists.items():
            name = str(k) if self.view == "folds" else "split"
            train_keys = [key for key in parts["train"] if key in present]
            test = [key for key in parts["test"] if key in usable]
            if "valid" in parts:
                dev = [key for key in parts["valid"] if key in usable]
                train = [key for key in train_keys if key in usable]
                rule = f"official valid list ({self.fold_file(k, 'valid').name})"
            else:
                chosen = self._speaker_dev(train_keys, test, usable, speaker_of) if (
                    known and self.dev_rule == "auto") else None
                if chosen is not None:
                    spk = sorted(chosen)
                    dev = [key for key in train_keys if key in usable and speaker_of[key] in chosen]
                    train = [key for key in train_keys if key in usable and speaker_of[key] not in chosen]
                    rule = (f"speaker-disjoint: training speaker(s) {', '.join(spk)} (not in the fold's test list; "
                            f"seed {self.dev_seed}, >= {DEV_SHARE:.0%} of train)")
                else:
                    kept, held = emobox_dev_split(train_keys, self.dev_seed)
                    held_set = set(held)
                    dev = [key for key in train_keys if key in held_set and key in usable]
                    train = [key for key in train_keys if key not in held_set and key in usable]
                    why = ("dev_rule emobox" if self.dev_rule == "emobox" else
                           "speakers unknown" if not known else "no training speaker outside the test list")
                    rule = (f"EmoBox's 80/20 random split of the train list (seed {self.dev_seed}; {why}; random "
                            "utterances: leaks training speakers into dev)")
            self.fold_lists[name] = {"train": train, "dev": dev, "test": test}
            dev_notes[name] = f"{rule}: train {len(train)}, dev {len(dev)}, test {len(test)}"
        self.notes["dev"] = dev_notes
        if self.view == "folds":
            self.notes["dev_applied"] = (
                "protocol folds: the run's protocol.dev makes the dev sets; the rule above is EmoBox's "
                "(fold_lists), applied with corpus.fold: k"
            )

    def _speaker_dev(
        self, train_keys: Sequence[str], test: Sequence[str], usable: Mapping[str, Utterance],
        speaker_of: Mapping[str, str],
    ) -> Optional[Set[str]]:
        """Training speakers not in the test list, shuffled (``dev_seed``), until 20 % of train; None if none."""
        train = [key for key in train_keys if key in usable]
        in_test = {speaker_of[key] for key in test}
        spk_train = sorted({speaker_of[key] for key in train})
        candidates = [s for s in spk_train if s not in in_test]
        if len(spk_train) < 2 or not candidates:
            return None
        random.Random(self.dev_seed).shuffle(candidates)
        counts = {s: 0 for s in spk_train}
        for key in train:
            counts[speaker_of[key]] += 1
        chosen: Set[str] = set()
        held = 0
        for s in candidates:
            if len(chosen) == len(spk_train) - 1 or held >= DEV_SHARE * len(train):
                break
            chosen.add(s)
            held += counts[s]
        return chosen

    # ------------------------------------------------------------------ the miniature
    @classmethod
    def generate(cls, root: str, seed: int = 0, utterances_per_speaker: int = 12, overwrite: bool = False) -> dict:
        """Write a synthetic miniature in EmoBox's layout under ``root``; returns its summary.

        See ``generate_miniature`` (``ser demo-corpus DIR --corpus emobox``); read it with
        ``root: DIR/data``.
        """
        return generate_miniature(root, seed=seed, utterances_per_speaker=utterances_per_speaker, overwrite=overwrite)


def _seconds(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def _segment_ok(rec: Mapping[str, Any]) -> bool:
    """``start_time``/``end_time`` absent, or both finite numbers with ``0 <= start < end``."""
    start, end = rec.get("start_time"), rec.get("end_time")
    if start is None and end is None:
        return True
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (start, end)):
        return False
    return 0 <= float(start) < float(end)  # type: ignore[arg-type]


def _with(u: Utterance, **changes: Any) -> Utterance:
    from dataclasses import replace

    return replace(u, **changes)


# ---------------------------------------------------------------------------------- miniature
README_MARKER = "SYNTHETIC EMOBOX-LAYOUT MINIATURE"
#: the miniature's data sets: ``minifolds`` (3 speaker-independent folds, no valid list, like
#: ravdess/iemocap) and ``minisplit`` (one fold with an official valid list, like meld).
MINI_FOLDS = "minifolds"
MINI_SPLIT = "minisplit"
#: raw emo value -> demo_synth label, and the label maps written (iemocap-like and meld-like)
_MINI_EMOS: Mapping[str, Tuple[Tuple[str, str], ...]] = {
    MINI_FOLDS: (("ang", "ang"), ("hap", "hap"), ("neu", "neu"), ("sad", "sad"), ("exc", "exc")),
    MINI_SPLIT: (("anger", "ang"), ("joy", "hap"), ("neutral", "neu"), ("sadness", "sad")),
}
_MINI_MAPS: Mapping[str, Mapping[str, str]] = {
    MINI_FOLDS: {"neu": "Neutral", "hap": "Happy", "ang": "Angry", "sad": "Sad", "exc": "Happy"},
    MINI_SPLIT: {"neutral": "Neutral", "joy": "Happy", "sadness": "Sad", "anger": "Angry"},
}
_MINI_SPEAKERS: Mapping[str, Tuple[Tuple[str, str], ...]] = {
    MINI_FOLDS: (("s01", "F"), ("s02", "M"), ("s03", "F"), ("s04", "M"), ("s05", "F"), ("s06", "M")),
    MINI_SPLIT: (("Ann", "F"), ("Bob", "M"), ("Cid", "M"), ("Dee", "F")),
}
#: minisplit's quirk, as in EmoBox's emodb: an emo value its label_map.json does not map (two rows)
MINI_UNMAPPED = "surprise"


def _json_line(rec: Mapping[str, Any]) -> str:
    return json.dumps(rec, ensure_ascii=False) + "\n"


def _stm_line(rec: Mapping[str, Any], spk: str) -> str:
    return (f"{rec['key']} 1 {spk} 0 {rec['length']} <id={rec['key']},lang=en,spk={spk},emotion={rec['emo']}> "
            f"{rec['emo']}\n")


def generate_miniature(root: str, seed: int = 0, utterances_per_speaker: int = 12, overwrite: bool = False) -> dict:
    """Write two synthetic data sets in EmoBox's layout under ``root``; return a summary.

    ``root/data/<dataset>/`` holds ``<dataset>.jsonl``, ``label_map.json``, ``data.seg.wrd.stm`` and
    ``fold_<k>/<dataset>_{train,test[,valid]}_fold_<k>.jsonl``; ``root/downloads/<dataset>/wav/``
    the audio (16 kHz mono PCM, 0.5-0.9 s of corpora.demo_synth pseudo-speech). ``minifolds``: six
    speakers, emo values ang/hap/exc/neu/sad (label_map: exc -> Happy, as EmoBox's iemocap), three
    folds each testing two speakers, plus fold_1's duplicate lists without the underscore, as
    EmoBox's emodb has (not read). ``minisplit``: four speakers, anger/joy/neutral/sadness, one fold
    whose train/valid/test lists take 3/5, 1/5 and 1/5 of each speaker's utterances, and two rows with
    an emo value (``surprise``) its label_map.json lacks. Same seed -> byte-identical files. Raises
    ``FileExistsError`` when ``root`` already holds ``data/`` or ``downloads/`` and ``overwrite`` is
    False (or it is not a generated miniature).
    """
    from corpora import demo_synth

    if not 5 <= utterances_per_speaker <= 200:
        raise ValueError("utterances_per_speaker must be between 5 and 200")
    root_p = Path(root)
    _prepare_root(root_p, overwrite)
    summary: Dict[str, Any] = {"seed": seed, "utterances_per_speaker": utterances_per_speaker, "datasets": {}}
    seconds = 0.0
    for d_i, ds in enumerate((MINI_FOLDS, MINI_SPLIT)):
        meta, audio = root_p / "data" / ds, root_p / "downloads" / ds / "wav"
        audio.mkdir(parents=True)
        meta.mkdir(parents=True)
        recs: List[Dict[str, Any]] = []
        spk_of: Dict[str, str] = {}
        index_of: Dict[str, int] = {}
        emos = _MINI_EMOS[ds]
        for s_i, (spk, gender) in enumerate(_MINI_SPEAKERS[ds]):
            voice = demo_synth._make_voice(spk, gender, np.random.default_rng([seed, d_i, s_i]))
            for u_i in range(utterances_per_speaker):
                raw, synth_label = emos[(u_i + s_i) % len(emos)]
                if ds == MINI_SPLIT and s_i < 2 and u_i == utterances_per_speaker - 1:
                    raw, synth_label = MINI_UNMAPPED, "sur"
                rng = np.random.default_rng([seed, d_i, s_i, u_i, 3])
                wav = demo_synth.synthesize_utterance(synth_label, voice, float(rng.uniform(0.5, 0.9)), rng)
                stem = f"{spk}_{u_i:03d}_{raw}"
                sf.write(str(audio / f"{stem}.wav"), wav, demo_synth.SAMPLE_RATE, subtype="PCM_16")
                length = len(wav) / demo_synth.SAMPLE_RATE
                seconds += length
                key = f"{ds}-{stem}"
                recs.append({
                    "key": key, "dataset": ds, "wav": f"downloads/{ds}/wav/{stem}.wav", "type": "raw",
                    "sample_rate": demo_synth.SAMPLE_RATE, "num_frame": float(len(wav)), "task": "category",
                    "length": length, "emo": raw, "channel": 1,
                })
                spk_of[key], index_of[key] = spk, u_i
        with open(meta / f"{ds}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(_json_line(r) for r in recs)
        with open(meta / STM_FILE, "w", encoding="utf-8") as fh:
            fh.writelines(_stm_line(r, spk_of[r["key"]]) for r in recs)
        (meta / "label_map.json").write_text(json.dumps(_MINI_MAPS[ds], indent=4) + "\n", encoding="utf-8")
        folds: Dict[str, Dict[str, int]] = {}
        if ds == MINI_FOLDS:
            speakers = [s for s, _ in _MINI_SPEAKERS[ds]]
            for k in (1, 2, 3):
                tested = set(speakers[2 * (k - 1): 2 * k])
                parts = {"train": [r for r in recs if spk_of[r["key"]] not in tested],
                         "test": [r for r in recs if spk_of[r["key"]] in tested]}
                folds[str(k)] = _write_fold(meta, ds, k, parts, duplicate_names=k == 1)
        else:
            part_of = {key: {3: "valid", 4: "test"}.get(i % 5, "train") for key, i in index_of.items()}
            parts = {p: [r for r in recs if part_of[r["key"]] == p] for p in ("train", "valid", "test")}
            folds["1"] = _write_fold(meta, ds, 1, parts, duplicate_names=False)
        classes: Dict[str, int] = {}
        for r in recs:
            classes[r["emo"]] = classes.get(r["emo"], 0) + 1
        summary["datasets"][ds] = {
            "utterances": len(recs), "speakers": len(_MINI_SPEAKERS[ds]), "emo": dict(sorted(classes.items())),
            "folds": folds,
        }
    summary["seconds"] = round(seconds, 3)
    (root_p / "README.txt").write_text(
        f"{README_MARKER}\n\nThis folder is SYNTHETIC: generated by ser_plugins' corpora.emobox (seed={seed}, "
        f"utterances_per_speaker={utterances_per_speaker}).\nIt mimics EmoBox's layout (data/<dataset>/ metadata, "
        "downloads/<dataset>/ audio) so the emobox reader can be exercised (root: data, data_root: this folder), "
        "but it holds no real speech: every wav is source-filter pseudo-speech whose acted emotion is set by f0, "
        "tempo, loudness, spectral tilt and voice quality.\nNumbers measured on it say nothing about real speech "
        "emotion recognition.\n",
        encoding="utf-8",
    )
    (root_p / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def _write_fold(meta: Path, ds: str, k: int, parts: Mapping[str, List[Dict[str, Any]]],
                duplicate_names: bool) -> Dict[str, int]:
    folder = meta / f"fold_{k}"
    folder.mkdir()
    for part, recs in parts.items():
        names = [f"{ds}_{part}_fold_{k}.jsonl"] + ([f"{ds}_{part}_fold{k}.jsonl"] if duplicate_names else [])
        for name in names:
            with open(folder / name, "w", encoding="utf-8") as fh:
                fh.writelines(_json_line(r) for r in recs)
    return {part: len(recs) for part, recs in parts.items()}


def _prepare_root(root: Path, overwrite: bool) -> None:
    existing = [root / name for name in ("data", "downloads") if (root / name).exists()]
    if not existing:
        root.mkdir(parents=True, exist_ok=True)
        return
    what = ", ".join(p.name for p in existing)
    if not overwrite:
        raise FileExistsError(f"{root} already holds {what}; pass overwrite=True (ser demo-corpus --overwrite) "
                              "to regenerate it")
    readme = root / "README.txt"
    if not (readme.is_file() and README_MARKER in readme.read_text(errors="replace")):
        raise FileExistsError(f"refusing to overwrite {root}: it has {what} but no README.txt marking it as a "
                              "generated miniature")
    for p in existing:
        shutil.rmtree(p)


__all__ = [
    "DATASETS",
    "EMOBOX_SEED",
    "EmoboxCorpus",
    "EmoboxError",
    "MINI_FOLDS",
    "MINI_SPLIT",
    "emobox_dev_split",
    "generate_miniature",
]
