"""Protocols: leave-one-session-out, leave-one-speaker-out, fold/split columns, dev strategies."""
import pytest

from ser_plugins.plugins.contracts import Utterance
from ser_plugins.data.folds import ProtocolError, check_folds, make_folds


def corpus(n_per_speaker=4):
    utts = []
    for s in range(1, 6):
        for g in "FM":
            for k in range(n_per_speaker):
                utts.append(Utterance(f"Ses0{s}{g}_{k}", f"/x/{s}{g}{k}.wav", "neu" if k % 2 else "sad",
                                      f"Ses0{s}{g}", f"Session{s}"))
    return utts


def spk(ids):
    return {i.split("_")[0] for i in ids}


def test_leave_one_session_out_with_speaker_disjoint_dev():
    folds = make_folds(corpus(), "session")
    assert [f.name for f in folds] == [f"Session{i}" for i in range(1, 6)]
    seen_dev = set()
    for i, f in enumerate(folds, 1):
        assert spk(f.test) == {f"Ses0{i}F", f"Ses0{i}M"}
        assert len(spk(f.dev)) == 1 and not spk(f.dev) & spk(f.train) and not spk(f.dev) & spk(f.test)
        assert len(f.train) + len(f.dev) + len(f.test) == 40
        seen_dev |= spk(f.dev)
    assert len(seen_dev) == 5  # dev speaker rotates over folds


def test_leave_one_speaker_out_uses_session_mate_as_dev():
    folds = make_folds(corpus(), "speaker")
    assert len(folds) == 10
    f = folds[0]
    assert spk(f.test) == {"Ses01F"} and spk(f.dev) == {"Ses01M"}
    assert not spk(f.train) & {"Ses01F", "Ses01M"}


def test_random_dev_leaks_speakers_but_is_deterministic():
    a = make_folds(corpus(), "session", dev="random", dev_fraction=0.25, seed=3)
    b = make_folds(corpus(), "session", dev="random", dev_fraction=0.25, seed=3)
    assert [f.dev for f in a] == [f.dev for f in b]
    assert len(a[0].dev) == 8 and spk(a[0].dev) & spk(a[0].train)


def test_fold_column_and_split_column():
    utts = [Utterance(f"u{i}", "p", "a", f"s{i % 4}", fold=str(i % 3)) for i in range(12)]
    assert [f.name for f in make_folds(utts, "folds", dev="random")] == ["0", "1", "2"]
    split = [Utterance(f"u{i}", "p", "a", f"s{i}", split=["train", "train", "dev", "test"][i % 4]) for i in range(8)]
    (f,) = make_folds(split, "split")
    assert len(f.train) == 4 and len(f.dev) == 2 and len(f.test) == 2


def test_bad_protocols_and_empty_folds_are_errors():
    with pytest.raises(ProtocolError, match="unknown protocol"):
        make_folds(corpus(), "sesion")
    with pytest.raises(ProtocolError, match="fold"):
        make_folds(corpus(), "folds")
    folds = make_folds(corpus(), "session")
    folds[0].test = []
    with pytest.raises(ProtocolError, match="no test"):
        check_folds(folds, {u.id: u.label for u in corpus()}, ["neu", "sad"])


def test_class_absent_from_training_is_warned():
    utts = corpus()
    labels_of = {u.id: u.label for u in utts}
    folds = make_folds(utts, "session")
    warnings = check_folds(folds, labels_of, ["neu", "sad", "ang"])
    assert any("'ang' has no training utterances" in w for w in warnings)


def test_speaker_groups_make_k_speaker_independent_folds():
    folds = make_folds(corpus(), "speaker", dev="random", num_folds=5)
    assert len(folds) == 5
    tested = [spk(f.test) for f in folds]
    assert all(len(t) == 2 for t in tested) and len(set().union(*tested)) == 10
    assert all(not spk(f.test) & spk(f.train) for f in folds)
    with pytest.raises(ProtocolError, match="num_folds"):
        make_folds(corpus(), "speaker", num_folds=11)
