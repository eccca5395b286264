"""EMOVO reader (Italian emotional speech, ``<actor>/<emotion>-<actor>-<sentence>.wav``) and a generated miniature.

Release layout read -- the EMOVO corpus of Costantini et al. (2014), "EMOVO Corpus: an Italian
Emotional Speech Database", LREC; the real data is not available here, so the tests read the
miniature ``EmovoCorpus.generate`` writes in the same layout::

    <root>/f1/dis-f1-b1.wav    one folder per actor: f1 f2 f3 (female), m1 m2 m3 (male)
    <root>/m3/tri-m3-d2.wav    48 kHz wav files (the audio loader resamples and downmixes)
    <root>/documenti/ ...      the documentation, in some copies: expected, not read

A file name is ``<emotion>-<actor>-<sentence>.wav``: the emotion an Italian code (``CODES``), the
actor its folder's name, the sentence one of 14 (``SENTENCES``). Six actors x seven emotions x
fourteen sentences: 588 files, 84 per emotion, 98 per actor.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import MappingProxyType
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import soxr

from corpora.demo_synth import SAMPLE_RATE
from corpora.emodb import report_labels, resolve_labels, synth_module
from corpora.release import (
    ACTOR_MISMATCH,
    APPLEDOUBLE,
    BAD_NAME,
    DOT_FILES,
    DS_STORE,
    Quirks,
    bad_code,
    kept_label,
    prepare_root,
    scan_top,
    sort_out,
    spelled_twice,
    write_readme,
    write_summary,
    write_wav,
)
from ser_plugins.plugins.contracts import Corpus, Utterance

#: The six actors (folder names), three female and three male.
ACTORS: Tuple[str, ...] = ("f1", "f2", "f3", "m1", "m2", "m3")
#: The 14 sentence codes.
SENTENCES: Tuple[str, ...] = ("b1", "b2", "b3", "l1", "l2", "l3", "l4", "n1", "n2", "n3", "n4", "n5", "d1", "d2")
#: Italian emotion code -> short English class name.
CODES: Mapping[str, str] = MappingProxyType(
    {"dis": "dis", "gio": "hap", "neu": "neu", "pau": "fea", "rab": "ang", "sor": "sur", "tri": "sad"}
)
#: Italian emotion code -> the word it abbreviates (docs, messages).
ITALIAN: Mapping[str, str] = MappingProxyType(
    {
        "dis": "disgusto, disgust",
        "gio": "gioia, joy",
        "neu": "neutrale, neutral",
        "pau": "paura, fear",
        "rab": "rabbia, anger",
        "sor": "sorpresa, surprise",
        "tri": "tristezza, sadness",
    }
)
NAMES: Tuple[str, ...] = tuple(CODES.values())
#: All seven, in the order of the Italian codes.
DEFAULT_LABELS: Tuple[str, ...] = ("dis", "hap", "neu", "fea", "ang", "sur", "sad")
#: The release's grid: every actor reads every sentence in every emotion.
RELEASE_FILES = len(ACTORS) * len(CODES) * len(SENTENCES)  # 588
DOCUMENTED_COUNTS: Mapping[str, int] = MappingProxyType({name: len(ACTORS) * len(SENTENCES) for name in NAMES})
DOCUMENTED_SPEAKER_COUNTS: Mapping[str, int] = MappingProxyType({a: len(CODES) * len(SENTENCES) for a in ACTORS})
#: EmoBox's fold of each actor (data/emovo/fold_k tests one actor): ``protocol: folds`` numbers them so.
EMOBOX_FOLDS: Mapping[str, str] = MappingProxyType({"f2": "1", "m3": "2", "m2": "3", "f3": "4", "f1": "5", "m1": "6"})
DOC_DIRS: Tuple[str, ...] = ("documenti",)
NAME_PATTERN = "<emotion>-<actor>-<sentence>.wav (e.g. dis-f1-b1.wav)"
_NAME_RE = re.compile(r"^(?P<emotion>[a-z]+)-(?P<actor>[a-z]\d+)-(?P<sentence>[a-z]\d+)$")

MISSING_FOLDER = "missing_folder"  # a problem kind of this reader (besides those of corpora.release)


class EmovoCorpus(Corpus):
    """The EMOVO corpus read from its release folder (see the module docstring for the layout).

    Options:
      * ``labels`` -- the classes, in logit order (default: all 7, ``dis hap neu fea ang sur sad``,
        the order of the Italian codes); ``[ang, hap, neu, sad]`` leaves the others out.
      * ``merge`` -- maps classes (English names or Italian codes) onto ``labels``, e.g.
        ``{sor: hap}`` or ``{sur: hap}``.

    Classes: ``dis`` disgusto -> ``dis``, ``gio`` gioia -> ``hap``, ``neu`` -> ``neu``, ``pau``
    paura -> ``fea``, ``rab`` rabbia -> ``ang``, ``sor`` sorpresa -> ``sur``, ``tri`` tristezza ->
    ``sad``. Speakers are the actors (``f1`` ... ``m3``); there are no sessions. Each utterance's
    ``fold`` is its actor's EmoBox fold (``EMOBOX_FOLDS``).

    Protocol: ``speaker`` (the default) -- leave one actor out, 6 folds named by actor. EmoBox's 6
    folds are the same partition (each of its fold_k tests one actor): ``protocol: folds`` runs
    them numbered as EmoBox numbers them. ``protocol.num_folds: 3`` gives speaker-independent
    3-fold (two actors per fold).

    After ``load()``: ``counts`` -- files per class (every readable file, before ``labels`` and
    ``merge``; the release's are ``DOCUMENTED_COUNTS``), ``speaker_counts`` -- files per actor,
    ``dropped`` -- files per class left out by ``labels``, ``missing`` -- the number of cells of the
    588-file grid with no file, ``ignored`` -- ``documenti/`` and loose documentation files.

    Problems (counted, one per kind, never silently skipped): hidden files (``hidden_file``),
    folders that are not actor folders or ``documenti/`` (``extra_folder``), files in actor folders
    that are not ``.wav`` (``extra_file``), names that are not
    ``<emotion>-<actor>-<sentence>.wav`` (``bad_name``), unknown emotion, actor or sentence
    codes (``bad_code``, key the field), a name whose actor is not its folder's
    (``actor_mismatch``: which is right cannot be told, so the file is not read), ``.wav`` files
    outside the actor folders (``misplaced_audio``), the same file in two spellings
    (``duplicate_audio``), an actor folder missing (``missing_folder``). Classes outside ``labels``
    are ``dropped_label`` problems; a label without any utterance is an ``empty_label`` problem;
    nothing readable at all is fatal. A wrong ``root`` raises ``FileNotFoundError``.
    """

    default_protocol = "speaker"

    def __init__(
        self, root: str, labels: Sequence[str] = DEFAULT_LABELS, merge: Optional[Mapping[str, str]] = None
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.labels, self.merge = resolve_labels("EmovoCorpus", NAMES, CODES, labels, merge)
        self.counts: Dict[str, int] = {}
        self.speaker_counts: Dict[str, int] = {}
        self.dropped: Dict[str, int] = {}
        self.missing = 0
        self.ignored: List[str] = []

    # ------------------------------------------------------------------ layout
    def actor_dirs(self) -> Dict[str, Path]:
        """``{actor: folder}`` of the actor folders under ``root`` (names matched case-insensitively);
        raises ``FileNotFoundError`` naming the expected layout when there is none."""
        expected = f"the EMOVO release folder, holding the actor folders {' '.join(ACTORS)}"
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(f"EMOVO root {str(root)!r} does not exist or is not a folder; expected {expected}")
        found = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in ACTORS}
        if found:
            return found
        hint = ""
        if root.name.lower() in ACTORS:
            hint = f" ({root} is an actor folder: pass its parent, {root.parent}, as root)"
        else:
            inner = sorted(
                p for p in root.iterdir() if p.is_dir() and any((p / a).is_dir() for a in ACTORS + ("F1", "M1"))
            )
            if inner:
                hint = f" ({inner[0]} holds actor folders: pass it as root)"
        raise FileNotFoundError(f"no actor folder under {str(root)!r}{hint}; expected root to be {expected}")

    # ------------------------------------------------------------------ reading
    def load(self) -> List[Utterance]:
        """List the actor folders; return one utterance per readable file, by actor then file name."""
        self.problems = []
        self.counts, self.speaker_counts, self.dropped, self.missing, self.ignored = {}, {}, {}, 0, []
        actors = self.actor_dirs()
        quirks = Quirks(self.root)
        self.ignored = scan_top(
            self.root,
            quirks,
            lambda p: p.name.lower() in ACTORS and actors.get(p.name.lower()) == p,
            lambda p: p.name.lower() in DOC_DIRS,
            f"folder(s) that are neither actor folders ({' '.join(ACTORS)}) nor documenti/",
            "wav file(s) outside the actor folders",
        )
        missing = [a for a in ACTORS if a not in actors]
        out: List[Utterance] = []
        seen: Dict[str, Path] = {}
        for actor, folder in actors.items():
            for p in sorted(folder.iterdir()):
                utt = self._utterance(p, actor, quirks, seen)
                if utt is not None:
                    out.append(utt)
        quirks.report(self)
        if missing:
            self.problem(
                str(self.root),
                f"actor folder(s) {' '.join(missing)} missing: the release has {' '.join(ACTORS)}",
                kind=MISSING_FOLDER,
                count=len(missing),
            )
        self.missing = RELEASE_FILES - sum(self.counts.values())
        report_labels(self, str(self.root), out, self.dropped, lambda name: _CODE_OF[name])
        return out

    def _utterance(self, p: Path, actor: str, quirks: Quirks, seen: Dict[str, Path]) -> Optional[Utterance]:
        if sort_out(
            quirks,
            p,
            DOT_FILES,
            "folder(s) inside actor folders, which hold only files",
            "file(s) in actor folders that are not .wav",
            "actor",
        ):
            return None
        m = _NAME_RE.match(p.stem.lower())
        if m is None:
            quirks.add(BAD_NAME, p, f".wav file(s) whose name is not {NAME_PATTERN}")
            return None
        emotion, name_actor, sentence = m.group("emotion"), m.group("actor"), m.group("sentence")
        checks = (("emotion", emotion, tuple(CODES)), ("actor", name_actor, ACTORS), ("sentence", sentence, SENTENCES))
        if bad_code(quirks, p, checks, "an"):
            return None
        if name_actor != actor:
            quirks.add(ACTOR_MISMATCH, p, "file(s) whose name's actor is not their folder's")
            return None
        uid = f"{emotion}-{actor}-{sentence}"
        if spelled_twice(self, p, uid, seen, f"{uid}.wav"):
            return None
        self.speaker_counts[actor] = self.speaker_counts.get(actor, 0) + 1
        label = kept_label(self, CODES[emotion])
        if label is None:
            return None
        return Utterance(id=uid, path=str(p), label=label, speaker=actor, fold=EMOBOX_FOLDS[actor])

    # ------------------------------------------------------------------ the miniature
    @classmethod
    def generate(cls, root: str, seed: int = 0, utterances_per_speaker: int = 14, overwrite: bool = False) -> dict:
        """Write a synthetic miniature in the release layout under ``root``; returns its summary.

        See ``generate_miniature`` (``ser demo-corpus DIR --corpus emovo``).
        """
        return generate_miniature(root, seed=seed, utterances_per_speaker=utterances_per_speaker, overwrite=overwrite)


_CODE_OF = {name: code for code, name in CODES.items()}

# ---------------------------------------------------------------------------------- miniature
README_MARKER = "SYNTHETIC EMOVO-LAYOUT MINIATURE"
RELEASE_RATE = 48000
#: the order emotions are dealt in, per actor
EMOTION_ORDER: Tuple[str, ...] = ("rab", "gio", "tri", "pau", "sor", "dis", "neu")


def generate_miniature(root: str, seed: int = 0, utterances_per_speaker: int = 14, overwrite: bool = False) -> dict:
    """Write a synthetic EMOVO miniature under ``root`` in the release layout; return a summary.

    ``<actor>/<emotion>-<actor>-<sentence>.wav`` for all six actors (f1-f3 female voices, m1-m3
    male), ``utterances_per_speaker`` files each (default 14: two per emotion, at most 98: the
    whole grid); emotions are dealt in turn (``EMOTION_ORDER``), each emotion's files on different
    sentences. Audio: 1-2 s of demo_synth pseudo-speech, resampled to the release's 48 kHz, mono
    PCM. ``documenti/`` holds a placeholder (expected, not read). Two quirk files, as found in
    copies unpacked on macOS: ``.DS_Store`` at the top and an AppleDouble ``f1/._<first file>``
    (the reader counts them as one ``hidden_file`` problem). Same seed -> byte-identical files.
    Raises ``FileExistsError`` when ``root`` already holds the layout and ``overwrite`` is False
    (or it is not a generated miniature).
    """
    limit = len(CODES) * len(SENTENCES)
    if not 1 <= utterances_per_speaker <= limit:
        raise ValueError(f"utterances_per_speaker must be between 1 and {limit} (the actor's whole grid)")
    root_p = Path(root)
    prepare_root(root_p, (*ACTORS, *DOC_DIRS, ".DS_Store"), README_MARKER, overwrite)
    synth = synth_module()
    classes = {CODES[c]: 0 for c in EMOTION_ORDER}
    files: List[str] = []
    seconds = 0.0
    for a_i, actor in enumerate(ACTORS):
        folder = root_p / actor
        folder.mkdir(parents=True)
        srng = np.random.default_rng([seed, a_i, 11])
        voice = synth._make_voice(actor, actor[0].upper(), srng)
        for u_i in range(utterances_per_speaker):
            e_i, rnd = u_i % len(EMOTION_ORDER), u_i // len(EMOTION_ORDER)
            code = EMOTION_ORDER[e_i]
            sentence = SENTENCES[(a_i + e_i + rnd) % len(SENTENCES)]
            name = f"{code}-{actor}-{sentence}.wav"
            urng = np.random.default_rng([seed, a_i, u_i, 11])
            wav = synth.synthesize_utterance(CODES[code], voice, float(urng.uniform(1.0, 2.0)), urng)
            wav48 = np.clip(soxr.resample(wav, SAMPLE_RATE, RELEASE_RATE, quality="HQ"), -1.0, 1.0)
            write_wav(folder / name, wav48, RELEASE_RATE)
            seconds += len(wav) / SAMPLE_RATE
            classes[CODES[code]] += 1
            files.append(f"{actor}/{name}")
    (root_p / "documenti").mkdir()
    (root_p / "documenti" / "README.txt").write_text("synthetic placeholder for the release's documentation\n")
    quirks = [".DS_Store", f"f1/._{sorted(f for f in files if f.startswith('f1/'))[0][3:]}"]
    (root_p / quirks[0]).write_bytes(DS_STORE)
    (root_p / quirks[1]).write_bytes(APPLEDOUBLE)
    summary = {
        "seed": seed,
        "utterances_per_speaker": utterances_per_speaker,
        "utterances": len(files),
        "speakers": {a: utterances_per_speaker for a in ACTORS},
        "classes": classes,
        "quirk_files": quirks,
        "sample_rate": RELEASE_RATE,
        "seconds": round(seconds, 3),
    }
    write_readme(root_p, README_MARKER, "corpora.emovo", seed, utterances_per_speaker, "the EMOVO release")
    return write_summary(root_p, summary)


__all__ = [
    "ACTORS",
    "CODES",
    "DEFAULT_LABELS",
    "DOCUMENTED_COUNTS",
    "EMOBOX_FOLDS",
    "EmovoCorpus",
    "SENTENCES",
    "generate_miniature",
]
