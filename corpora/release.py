"""What the readers of released corpora share, and the miniatures they generate.

Used by ``corpora.msp_podcast``, ``corpora.ravdess``, ``corpora.crema_d``, ``corpora.emodb`` and
``corpora.emovo``; each keeps its own layout, codes and messages and calls these for the parts
that are the same:

* scanning a release folder for quirks -- hidden files (macOS ``._*``, ``.DS_Store``), extra
  folders, files of other extensions, misplaced, empty or git-lfs audio, the same recording under
  two spellings -- and counting them as problems (``ProblemTally``: one counted problem per kind
  and key, the first names cited; ``report_lines``: one problem citing the lines of a table);
  the labels and merge checks of ``load`` (``kept_label``, ``report_dropped``, ``report_empty``);
* the ``labels`` / ``merge`` option checks (``label_list``, ``check_labels``,
  ``check_merge_target``, ``check_reachable``);
* a miniature's folder preparation (``prepare_root``: regenerate only a generated miniature),
  demo_synth's voices (``demo_synth_copy``, ``blend``, ``vary``), writing its wavs, quirk files,
  README and summary.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import types
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf

from corpora.demo_synth import _PARAM_NAMES, EMOTION_PARAMS
from corpora.manifest import _lines_text
from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO, Corpus, Utterance

#: ``line 3`` / ``lines 3, 5, ...`` (the first ten), as the manifest reader cites lines
lines_text = _lines_text

# CorpusProblem kinds of the release readers (besides the core's dropped_label and duplicate_audio)
HIDDEN_FILE = "hidden_file"
EXTRA_FOLDER = "extra_folder"
EXTRA_FILE = "extra_file"
BAD_NAME = "bad_name"
BAD_CODE = "bad_code"
ACTOR_MISMATCH = "actor_mismatch"
MISPLACED_AUDIO = "misplaced_audio"
EMPTY_AUDIO = "empty_audio"
NOT_WAV = "not_wav"
EMPTY_LABEL = "empty_label"
NO_UTTERANCES = "no_utterances"

#: what a dot-file quirk is (EmoDB, EMOVO)
DOT_FILES = "hidden file(s) (macOS ._* / .DS_Store metadata or other dot-files)"
#: Windows' folder metadata, hidden like dot-files (RAVDESS, CREMA-D)
SYSTEM_FILES: Tuple[str, ...] = ("thumbs.db", "desktop.ini")


# ---------------------------------------------------------------------------------- quirks
def is_dot_file(name: str) -> bool:
    """Dot-files: macOS metadata (``._*`` AppleDouble files, ``.DS_Store``) and other hidden entries."""
    return name.startswith(".")


def is_hidden(name: str) -> bool:
    """macOS/Windows metadata and other hidden entries: ``._*``, ``.DS_Store``, any dot name, ``Thumbs.db``."""
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def wav_problem(path: Path) -> Optional[Tuple[str, str]]:
    """``(kind, why)`` when the file at ``path`` cannot hold WAV audio, else None.

    Reads at most the first 64 bytes; never decodes audio. Empty files and header-only files
    (44 bytes or fewer) are ``empty_audio``; git-lfs pointer stubs (a repository downloaded
    without git-lfs) and anything without a RIFF/RF64 ... WAVE header are ``not_wav``.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return EMPTY_AUDIO, "empty file (0 bytes)"
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        return NOT_WAV, f"cannot be read ({exc.strerror or exc})"
    if head.startswith(b"version https://git-lfs"):
        return NOT_WAV, "git-lfs pointer, not audio (fetch the audio with git lfs)"
    if head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return NOT_WAV, "no RIFF/WAVE header"
    if size <= 44:
        return EMPTY_AUDIO, "header only, no samples"
    return None


class ProblemTally:
    """A load's quirks gathered per ``(kind, key)``; ``report`` records one counted problem each.

    A release copy can hold hundreds of the same quirk, which is one problem with a count and the
    first five names (relative to ``root``), not hundreds of lines, in the order the groups were
    first met. Each problem's path is the one file, or the folder the group's files share; with
    ``at_root`` it is ``root``, folders are named with a trailing ``/`` (``mark_folders``) and
    ``suffix`` ends every message (the EmoDB and EMOVO readers: ``Quirks``).
    """

    def __init__(self, root: Path, mark_folders: bool = False, at_root: bool = False, suffix: str = "") -> None:
        self.root = root
        self.mark_folders = mark_folders
        self.at_root = at_root
        self.suffix = suffix
        self.groups: Dict[Tuple[str, str], Tuple[str, List[Path], List[str], bool]] = {}

    def add(self, kind: str, path: Path, what: str, key: str = "", fatal: bool = False) -> None:
        """Count ``path`` under ``(kind, key)``; the group's first ``what`` says what it is (``"hidden file(s)"``)."""
        entry = self.groups.setdefault((kind, key), (what, [], [], fatal))
        entry[1].append(path)
        entry[2].append(self._rel(path) + ("/" if self.mark_folders and path.is_dir() else ""))

    def count(self, kind: str) -> int:
        return sum(len(paths) for (k, _), (_, paths, _n, _f) in self.groups.items() if k == kind)

    def _rel(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def _where(self, paths: List[Path]) -> str:
        if self.at_root:
            return str(self.root)
        if len(paths) == 1:
            return str(paths[0])
        try:
            return os.path.commonpath([str(p) for p in paths])
        except ValueError:
            return str(self.root)

    def report(self, corpus: Corpus) -> None:
        for (kind, key), (what, paths, names, fatal) in self.groups.items():
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            corpus.problem(
                self._where(paths),
                f"{len(paths)} {what} ({shown}){self.suffix}",
                fatal=fatal,
                kind=kind,
                key=key,
                count=len(paths),
            )


class Quirks(ProblemTally):
    """The EmoDB / EMOVO tally: every problem at ``root``, folders named ``name/``, messages ending "; not read"."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, mark_folders=True, at_root=True, suffix="; not read")


def sort_out(
    tally: ProblemTally,
    path: Path,
    hidden: str,
    folder: str,
    other: str,
    folder_key: str = "",
    hidden_test: Callable[[str], bool] = is_dot_file,
) -> bool:
    """True (and ``path`` counted) when ``path`` is hidden, a folder or not a ``.wav`` file; ``hidden``,
    ``folder`` and ``other`` say what each such quirk is."""
    if hidden_test(path.name):
        tally.add(HIDDEN_FILE, path, hidden)
    elif path.is_dir():
        tally.add(EXTRA_FOLDER, path, folder, folder_key)
    elif path.suffix.lower() != ".wav":
        tally.add(EXTRA_FILE, path, other)
    else:
        return False
    return True


def scan_top(
    root: Path,
    tally: ProblemTally,
    audio: Callable[[Path], bool],
    expected: Callable[[Path], bool],
    extra_folder: str,
    misplaced: str,
) -> List[str]:
    """Count the quirks at the top of a release folder; return the entries that are expected but not read.

    Dot-files are ``hidden_file``; folders are skipped when they hold the ``audio``, noted
    (``name/``) when ``expected``, else ``extra_folder``; ``.wav`` files are ``misplaced_audio``;
    any other file (documentation) is noted.
    """
    ignored: List[str] = []
    for p in sorted(root.iterdir()):
        if is_dot_file(p.name):
            tally.add(HIDDEN_FILE, p, DOT_FILES)
        elif p.is_dir():
            if audio(p):
                continue
            if expected(p):
                ignored.append(p.name + "/")
            else:
                tally.add(EXTRA_FOLDER, p, extra_folder)
        elif p.suffix.lower() == ".wav":
            tally.add(MISPLACED_AUDIO, p, misplaced)
        else:
            ignored.append(p.name)
    return ignored


def bad_code(tally: ProblemTally, path: Path, checks: Iterable[Tuple[str, str, Sequence[str]]], article: str) -> bool:
    """True (and ``path`` counted as ``bad_code``, key the field) when a ``(field, value, known)`` value is unknown."""
    for field, value, known in checks:
        if value not in known:
            what = f"file(s) with {article} {field} code outside the release's ({' '.join(known)})"
            tally.add(BAD_CODE, path, what, field)
            return True
    return False


def spelled_twice(corpus: Corpus, path: Path, uid: str, seen: Dict[str, Path], again: str) -> bool:
    """True (and a ``duplicate_audio`` problem) when ``uid`` was seen before under another spelling; else notes it."""
    if uid in seen:
        corpus.problem(
            str(path),
            f"{path.name} is {again} again (as {seen[uid].name}): one recording under two spellings; not read",
            kind=DUPLICATE_AUDIO,
            key=uid,
        )
        return True
    seen[uid] = path
    return False


def report_lines(
    corpus: Corpus, path: str, message: str, lines: Sequence[int], kind: str, key: str = "", at_line: bool = True
) -> None:
    """One problem counting ``lines`` of a table (cited; the first as the problem's line when ``at_line``)."""
    corpus.problem(path, message, lines[0] if at_line else None, kind=kind, key=key, count=len(lines), lines=lines)


def number(text: str) -> float:
    """``float(text)``, or nan for text that is not a number."""
    try:
        return float(text)
    except ValueError:
        return math.nan


# ---------------------------------------------------------------------------------- labels
def name_of(key: str, codes: Mapping[str, str]) -> str:
    """A class given as a short name or as its code (``"02"`` -> ``"cal"``)."""
    return codes.get(key, codes.get(key.upper(), key))


def code_list(codes: Mapping[str, str]) -> str:
    """``"W=ang, L=bor, ..."``: a corpus's codes and classes, for messages."""
    return ", ".join(f"{code}={name}" for code, name in codes.items())


def label_list(labels: Sequence[str]) -> List[str]:
    """``labels`` as a list of strings (one name alone is a list of one)."""
    if isinstance(labels, str):
        labels = [labels]
    return [str(lab) for lab in labels]


def check_labels(owner: str, labels: Sequence[str]) -> None:
    """Raise ``ValueError`` for no labels or a label given twice."""
    if not labels:
        raise ValueError(f"{owner}: labels must name at least one class")
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"{owner}: duplicate labels {dupes}")


def check_merge_target(owner: str, src, dst, labels: Sequence[str], name: Optional[str] = None) -> None:
    """Raise ``ValueError`` when merging ``src`` (class ``name``, default ``src``) onto ``dst`` cannot be done:
    ``dst`` is not a label, or the class is itself a label other than ``dst``."""
    name = src if name is None else name
    if str(dst) not in labels:
        raise ValueError(f"{owner}: merge target {dst!r} (of {src!r}) is not one of labels {labels}")
    if name in labels and name != dst:
        raise ValueError(f"{owner}: {name!r} is both a label and merged into {dst!r}")


def check_reachable(
    owner: str, labels: Sequence[str], names: Sequence[str], merge: Mapping[str, str], classes: str, so: str = ", so"
) -> None:
    """Raise ``ValueError`` for a label that is neither one of ``names`` nor a merge target (``classes`` names
    the corpus's classes in the message)."""
    targets = set(merge.values())
    for lab in labels:
        if lab not in names and lab not in targets:
            raise ValueError(
                f"{owner}: label {lab!r} is neither {classes} nor a merge target{so} no utterance could have it"
            )


def kept_label(corpus: Corpus, name: str) -> Optional[str]:
    """Count a file of class ``name`` (``counts``) and return its label after ``merge``; None (counted in
    ``dropped``) when that is not one of ``labels``."""
    corpus.counts[name] = corpus.counts.get(name, 0) + 1
    label = corpus.merge.get(name, name)
    if label not in corpus.labels:
        corpus.dropped[name] = corpus.dropped.get(name, 0) + 1
        return None
    return label


def report_dropped(
    corpus: Corpus,
    src: str,
    dropped: Mapping[str, int],
    describe: Callable[[str], str],
    unit: str = "file(s)",
    sep: str = ";",
) -> None:
    """One ``dropped_label`` problem per class outside ``labels`` (``describe`` glosses the class)."""
    for name, n in dropped.items():
        corpus.problem(
            src,
            f"{n} {unit} of class {name} ({describe(name)}), outside labels {list(corpus.labels)}{sep} left out",
            kind=DROPPED_LABEL,
            key=name,
            count=n,
        )


def report_empty(corpus: Corpus, src: str, out: Sequence[Utterance], nothing: str) -> None:
    """An ``empty_label`` problem per label without an utterance; none at all: the fatal ``nothing`` problem."""
    if not out:
        corpus.problem(src, nothing, fatal=True, kind=NO_UTTERANCES)
        return
    present = {u.label for u in out}
    for lab in corpus.labels:
        if lab not in present:
            corpus.problem(src, f"label {lab!r} has no usable utterance", kind=EMPTY_LABEL, key=lab)


# ---------------------------------------------------------------------------------- miniatures
#: the quirk files of the generated miniatures: a ``.DS_Store`` and an AppleDouble ``._`` file (EmoDB,
#: EMOVO: full size; RAVDESS, CREMA-D: stubs)
DS_STORE = b"\x00\x00\x00\x01Bud1" + b"\x00" * 2040
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 4054
DS_STORE_STUB = b"\x00\x00\x00\x01Bud1" + b"\x00" * 24
APPLEDOUBLE_STUB = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 16
#: demo_synth's expressive parameters (``PARAM_FIELDS``) of its emotions, and fear and disgust as the
#: miniatures add them: fear high, fast, tremulous and breathy; disgust low, slow, rough, with strong consonants
PARAM_FIELDS: Tuple[str, ...] = tuple(_PARAM_NAMES)
EXPRESSIVE_PARAMS: Mapping[str, Tuple[float, ...]] = {
    **{k: EMOTION_PARAMS[k] for k in ("neu", "hap", "ang", "sad", "sur")},
    "fea": (5.0, 6.0, 1.30, 0.0, 0.55, 0.62, 0.40, 0.030, 0.10, 0.02, 0.20, 1.03, 0.0),
    "dis": (-1.5, 2.5, 0.85, 1.5, 0.40, 0.50, 0.30, 0.015, 0.07, 0.10, 0.06, 0.97, 3.0),
}


def prepare_root(
    root: Path,
    layout: Sequence[str],
    marker: str,
    overwrite: bool,
    what: str = "",
    extra: Sequence[Path] = (),
    as_a: str = "as a",
) -> None:
    """Make ``root`` ready for a miniature: refuse to touch a folder holding ``layout`` (names under ``root``)
    or the ``extra`` entries unless ``overwrite`` and its README.txt carries ``marker``; then remove them.

    ``what`` names them in the messages (default: the names of those found).
    """
    existing = [root / name for name in layout if (root / name).exists()] + list(extra)
    if not existing:
        root.mkdir(parents=True, exist_ok=True)
        return
    what = what or ", ".join(p.name for p in existing)
    if not overwrite:
        raise FileExistsError(
            f"{root} already holds {what}; pass overwrite=True (ser demo-corpus --overwrite) to regenerate it"
        )
    readme = root / "README.txt"
    if not (readme.is_file() and marker in readme.read_text(errors="replace")):
        raise FileExistsError(
            f"refusing to overwrite {root}: it has {what} but no README.txt marking it {as_a} generated miniature"
        )
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def demo_synth_copy() -> types.ModuleType:
    """A private copy of ``corpora.demo_synth`` (a module object of its own), for a miniature to adapt;
    ``corpora.demo_synth`` itself is not touched."""
    spec = importlib.util.find_spec("corpora.demo_synth")
    if spec is None or spec.loader is None:  # pragma: no cover
        raise ImportError("corpora.demo_synth cannot be found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blend(neutral: Sequence[float], target: Sequence[float], intensity: float) -> Dict[str, float]:
    """demo_synth's parameters (``PARAM_FIELDS``) of ``neutral`` blended towards ``target`` by ``intensity``."""
    base = np.array(neutral)
    return {k: float(v) for k, v in zip(PARAM_FIELDS, base + intensity * (np.array(target) - base))}


def vary(p: Dict[str, float], rng: np.random.Generator) -> Tuple[float, float, float, float]:
    """demo_synth's per-utterance noise on the parameters ``p`` (in place, the same draws in the same order);
    returns the f0, range, rate and gain noise."""
    f0_n, range_n, rate_n, gain_n = rng.normal(0, 1.0), rng.normal(0, 0.3), rng.normal(0, 0.12), rng.normal(0, 2.0)
    p["f0"] += f0_n
    p["range"] = max(0.5, p["range"] * 2**range_n)
    p["rate"] *= 2**rate_n
    p["gain"] += gain_n
    p["tilt"] = float(np.clip(p["tilt"] + rng.normal(0, 0.08), 0.05, 0.95))
    p["oq"] = float(np.clip(p["oq"] + rng.normal(0, 0.04), 0.35, 0.85))
    p["breath"] = max(0.0, p["breath"] * 2 ** rng.normal(0, 0.4))
    p["formant"] *= 2 ** rng.normal(0, 0.02)
    p["cons"] += rng.normal(0, 2.0)
    return f0_n, range_n, rate_n, gain_n


def write_wav(path: Path, wav: np.ndarray, rate: int) -> float:
    """Write ``wav`` as 16-bit PCM at ``rate``; return its seconds."""
    sf.write(str(path), wav, int(rate), subtype="PCM_16")
    return len(wav) / rate


def write_readme(root: Path, marker: str, module: str, seed: int, utterances_per_speaker: int, layout: str) -> None:
    """The README.txt of a miniature (EmoDB, EMOVO): ``marker``, then what it is and is not."""
    (root / "README.txt").write_text(
        f"{marker}\n\nThis folder is SYNTHETIC: generated by ser_plugins' {module} (seed={seed}, "
        f"utterances_per_speaker={utterances_per_speaker}).\nIt mimics the layout of {layout} so its reader can "
        f"be exercised, but it holds no real speech: every wav is source-filter pseudo-speech whose acted "
        f"emotion is set by f0, tempo, loudness, spectral tilt and voice quality.\nNumbers measured on it say "
        f"nothing about real speech emotion recognition.\n",
        encoding="utf-8",
    )


def write_summary(root: Path, summary: dict) -> dict:
    """Write ``summary`` as ``root/summary.json``; return it."""
    (root / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary
