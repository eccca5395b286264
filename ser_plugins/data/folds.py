"""Evaluation protocols: which utterances train, pick the checkpoint (dev), and test in each fold.

* ``session`` -- leave one session out (IEMOCAP: 5 folds, SUPERB and most papers),
* ``speaker`` -- leave one speaker out (IEMOCAP: 10 folds),
* ``folds``   -- the corpus's own ``fold`` column (test on one fold value at a time),
* ``split``   -- the corpus's own ``split`` column (train/dev/test; one fold),
* ``cross_corpus`` -- train (and dev) on some corpora of a multi-corpus run, test on others
  (``Utterance.corpus``; one fold named ``A->B``); the same corpora on both sides give their
  within-corpus figure (speaker-independent k-fold: ``num_folds``, default 5).

Dev sets: ``none`` holds nothing out (every training speaker trains; the recipe's default when
nothing reads a dev set); ``speaker`` holds out whole training speakers, so dev is speaker-disjoint
from train and test; ``random`` holds out a random fraction of training utterances (S3PRL's way),
which leaks training speakers into dev and makes early stopping optimistic. Under ``split`` a
corpus's own dev partition is the dev set; with ``none`` it is left out of training (it is the
release's, not a training partition).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ser_plugins.errors import UserError
from ser_plugins.plugins.contracts import Utterance


class ProtocolError(UserError, ValueError):
    """A protocol that cannot be applied to this corpus."""


@dataclass
class Fold:
    """One fold of a protocol: utterance ids of train, dev and test."""

    name: str
    train: List[str] = field(default_factory=list)
    dev: List[str] = field(default_factory=list)
    test: List[str] = field(default_factory=list)


def _group(utterances: Sequence[Utterance], key) -> Dict[str, List[Utterance]]:
    groups: Dict[str, List[Utterance]] = defaultdict(list)
    for u in utterances:
        groups[key(u)].append(u)
    return dict(sorted(groups.items()))


def _speaker_dev(
    train: List[Utterance],
    fold_index: int,
    test_group: str,
    groups_order: List[str],
    group_of,
    test: Sequence[Utterance] = (),
    fold_name: str = "",
) -> Tuple[List[Utterance], List[Utterance]]:
    """Hold out one training speaker as dev, rotating deterministically over folds.

    The dev speaker never speaks in ``test`` (a corpus's own folds or splits may share speakers
    between train and test; dev must not).
    """
    in_test = {u.speaker for u in test}
    speakers = sorted({u.speaker for u in train})
    if len(speakers) < 2:
        raise ProtocolError("dev: 'speaker' needs at least two training speakers; use protocol.dev: random")
    allowed = [s for s in speakers if s not in in_test]
    if not allowed:
        raise ProtocolError(
            f"fold {fold_name!r}: every training speaker also speaks in the test set ({', '.join(speakers[:10])}"
            f"{', ...' if len(speakers) > 10 else ''}), so no dev speaker can be speaker-disjoint from test; "
            "use protocol.dev: random (documented as leaking speakers) or speaker-independent folds"
        )
    # prefer a speaker of the next group (session) so each fold's dev comes from a different place
    order = groups_order[fold_index + 1 :] + groups_order[: fold_index + 1]
    by_group = _group(train, group_of)
    dev_spk = None
    for g in order:
        if g == test_group or g not in by_group:
            continue
        cands = sorted({u.speaker for u in by_group[g]} - in_test)
        if cands:
            dev_spk = cands[fold_index % len(cands)]
            break
    if dev_spk is None:
        dev_spk = allowed[fold_index % len(allowed)]
    dev = [u for u in train if u.speaker == dev_spk]
    return [u for u in train if u.speaker != dev_spk], dev


def _session_mates(train: List[Utterance], test: List[Utterance]) -> set:
    """Training speakers that share a (non-empty) session with the test speaker."""
    sessions = {u.session for u in test if u.session}
    return {u.speaker for u in train if u.session in sessions}


def _random_dev(train: List[Utterance], fraction: float, seed: int) -> Tuple[List[Utterance], List[Utterance]]:
    rng = random.Random(seed)
    ids = sorted(u.id for u in train)
    rng.shuffle(ids)
    n_dev = max(1, int(round(fraction * len(ids))))
    dev_ids = set(ids[:n_dev])
    return [u for u in train if u.id not in dev_ids], [u for u in train if u.id in dev_ids]


def make_folds(
    utterances: Sequence[Utterance],
    protocol: str,
    dev: str = "speaker",
    dev_fraction: float = 0.1,
    seed: int = 0,
    num_folds: Optional[int] = None,
    train_corpora: Optional[Sequence[str]] = None,
    test_corpora: Optional[Sequence[str]] = None,
) -> List[Fold]:
    """Split ``utterances`` into folds under ``protocol`` with the given dev strategy.

    ``cross_corpus`` trains on the utterances of ``train_corpora`` (all of them; the dev set, if
    any, comes from them too: a held-out speaker, or a random share) and tests on every utterance
    of ``test_corpora``.
    With ``num_folds``, the ``speaker`` protocol puts the speakers into that many groups
    (speaker-independent k-fold, e.g. 5 folds over the 24 actors of RAVDESS) instead of one
    fold per speaker.
    """
    if not utterances:
        raise ProtocolError("the corpus has no utterances")
    if protocol == "split":
        return [_split_fold(utterances, dev, dev_fraction, seed)]
    if protocol == "cross_corpus":
        train_c, test_c = list(train_corpora or []), list(test_corpora or [])
        if set(train_c) == set(test_c):  # the matrix's diagonal: within-corpus, speaker-independent k-fold
            own = [u for u in utterances if u.corpus in train_c]
            if not own:
                raise ProtocolError(f"protocol cross_corpus: no utterances of corpus {train_c[0]!r}")
            n_speakers = len({u.speaker for u in own})
            k = num_folds or min(5, n_speakers)
            inner = make_folds(own, "speaker", dev, dev_fraction, seed, k if k < n_speakers else None)
            tag = "+".join(train_c)
            return [Fold(f"{tag}->{tag}:{f.name}", f.train, f.dev, f.test) for f in inner]
        return [_cross_corpus_fold(utterances, train_c, test_c, dev, dev_fraction, seed)]
    if protocol == "session":
        group_of = lambda u: u.session or u.speaker  # noqa: E731
    elif protocol == "speaker" and num_folds:
        speakers = sorted({u.speaker for u in utterances})
        if not 2 <= num_folds <= len(speakers):
            raise ProtocolError(f"protocol.num_folds must be between 2 and the number of speakers ({len(speakers)})")
        group_of_speaker = {spk: f"speakers{i % num_folds + 1}" for i, spk in enumerate(speakers)}
        group_of = lambda u: group_of_speaker[u.speaker]  # noqa: E731
    elif protocol == "speaker":
        group_of = lambda u: u.speaker  # noqa: E731
    elif protocol == "folds":
        missing = [u.id for u in utterances if not u.fold]
        if missing:
            raise ProtocolError(
                f"protocol 'folds' needs a fold for every utterance; {len(missing)} have none (e.g. {missing[0]})"
            )
        group_of = lambda u: str(u.fold)  # noqa: E731
    else:
        raise ProtocolError(f"unknown protocol {protocol!r}; protocols: session, speaker, folds, split, cross_corpus")
    groups = _group(utterances, group_of)
    if len(groups) < 2:
        raise ProtocolError(f"protocol {protocol!r} needs at least two groups, found {list(groups)}")
    order = list(groups)
    folds = []
    for i, (name, test) in enumerate(groups.items()):
        train = [u for u in utterances if group_of(u) != name]
        if dev == "speaker" and protocol == "speaker" and _session_mates(train, test):
            # leave-one-speaker-out: the other speaker of the test session is the dev set
            mates = _session_mates(train, test)
            train, dev_set = [u for u in train if u.speaker not in mates], [u for u in train if u.speaker in mates]
        elif dev == "none":
            dev_set = []
        elif dev == "speaker":
            train, dev_set = _speaker_dev(train, i, name, order, group_of, test, name)
        elif dev == "random":
            train, dev_set = _random_dev(train, dev_fraction, seed + i)
        elif dev == "split":
            raise ProtocolError("dev: 'split' needs protocol: split")
        else:
            raise ProtocolError(
                f"unknown dev strategy {dev!r}; strategies: none, speaker, random, split "
                "('auto' is made concrete by the recipe)"
            )
        folds.append(Fold(name, [u.id for u in train], [u.id for u in dev_set], [u.id for u in test]))
    return folds


def _split_fold(utterances: Sequence[Utterance], dev: str, dev_fraction: float, seed: int) -> Fold:
    by_split = _group(utterances, lambda u: (u.split or "").lower())
    unknown = set(by_split) - {"train", "dev", "valid", "validation", "test"}
    if unknown:
        raise ProtocolError(f"protocol 'split': unknown split values {sorted(unknown)} (use train/dev/test)")
    train = by_split.get("train", [])
    test = by_split.get("test", [])
    dev_set = by_split.get("dev", []) + by_split.get("valid", []) + by_split.get("validation", [])
    if dev == "none":
        dev_set = []
    elif not dev_set:
        if dev == "random":
            train, dev_set = _random_dev(train, dev_fraction, seed)
        else:
            train, dev_set = _speaker_dev(
                train, 0, "", sorted({u.speaker for u in train}), lambda u: u.speaker, test, "split"
            )
    return Fold("split", [u.id for u in train], [u.id for u in dev_set], [u.id for u in test])


def _cross_corpus_fold(
    utterances: Sequence[Utterance],
    train_corpora: List[str],
    test_corpora: List[str],
    dev: str,
    fraction: float,
    seed: int,
) -> Fold:
    """Train (and dev) on ``train_corpora``, test on ``test_corpora``: one fold named ``A+B->C``."""
    found = sorted({u.corpus for u in utterances if u.corpus})
    unknown = [c for c in train_corpora + test_corpora if c not in found]
    if unknown:
        raise ProtocolError(
            f"protocol cross_corpus: no utterances of corpus {unknown[0]!r}; "
            f"the run's corpora: {', '.join(found) or 'none'} "
            "(cross_corpus needs a multi-corpus recipe: corpus: {name: multi, corpora: ...})"
        )
    train = [u for u in utterances if u.corpus in train_corpora]
    test = [u for u in utterances if u.corpus in test_corpora]
    if dev == "none":
        dev_set: List[Utterance] = []
    elif dev == "speaker":
        train, dev_set = _speaker_dev(
            train, 0, "", sorted({u.speaker for u in train}), lambda u: u.speaker, test, "cross_corpus"
        )
    elif dev == "random":
        train, dev_set = _random_dev(train, fraction, seed)
    else:
        raise ProtocolError(f"protocol cross_corpus: dev {dev!r} is not none, speaker or random")
    name = "+".join(train_corpora) + "->" + "+".join(test_corpora)
    return Fold(name, [u.id for u in train], [u.id for u in dev_set], [u.id for u in test])


def check_folds(
    folds: Sequence[Fold],
    labels_of: Dict[str, str],
    labels: Sequence[str],
    speaker_of: Optional[Dict[str, str]] = None,
    needs_dev: bool = True,
) -> List[str]:
    """Problems that would make a fold meaningless: raises for empty sets, returns warnings.

    Raises ``ProtocolError`` for a fold without test or train utterances, or without dev utterances
    when ``needs_dev`` (every protocol.dev but ``none``); warns (returns
    messages) for a class absent from a fold's training set and, given ``speaker_of``, for
    speakers shared between dev and test or between train and test (a corpus's own folds).
    """
    warnings = []
    for f in folds:
        for part in ("train", "dev", "test") if needs_dev else ("train", "test"):
            if not getattr(f, part):
                raise ProtocolError(f"fold {f.name!r} has no {part} utterances")
        present = {labels_of[i] for i in f.train}
        for lab in labels:
            if lab not in present:
                warnings.append(f"fold {f.name!r}: class {lab!r} has no training utterances")
        if speaker_of is not None:
            test = {speaker_of[i] for i in f.test}
            for part in ("dev", "train"):
                shared = sorted(test & {speaker_of[i] for i in getattr(f, part)})
                if shared:
                    warnings.append(
                        f"fold {f.name!r}: speakers {', '.join(shared[:10])} are in both {part} and test "
                        "(not speaker-independent)"
                    )
    return warnings
