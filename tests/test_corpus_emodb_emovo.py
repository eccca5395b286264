"""The EmoDB and EMOVO readers: generated miniatures, full-size listings of the releases, quirks, options, runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf

from corpora import demo_synth, emodb, emovo
from corpora.emodb import DOCUMENTED_COUNTS, DOCUMENTED_SPEAKER_COUNTS, EmodbCorpus
from corpora.emovo import EMOBOX_FOLDS, EmovoCorpus
from ser_plugins.data.folds import check_folds, make_folds
from ser_plugins.plugins import registry
from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO
from ser_plugins.testing import check_corpus

#: EmoDB files per speaker and class (columns W L E A F T N: ang bor dis fea hap sad neu), counted from
#: the 535 release names as EmoBox's data/emodb/emodb.jsonl lists them. Its column sums are the
#: documented per-class counts and its row sums the per-speaker counts (asserted below).
EMODB_RELEASE_GRID: Dict[str, List[int]] = {
    "03": [14, 5, 1, 4, 7, 7, 11],
    "08": [12, 10, 0, 6, 11, 9, 10],
    "09": [13, 4, 8, 1, 4, 4, 9],
    "10": [10, 8, 1, 8, 4, 3, 4],
    "11": [11, 8, 2, 10, 8, 7, 9],
    "12": [12, 5, 2, 6, 2, 4, 4],
    "13": [12, 10, 8, 7, 10, 5, 9],
    "14": [16, 8, 8, 12, 8, 10, 7],
    "15": [13, 9, 5, 8, 6, 4, 11],
    "16": [14, 14, 11, 7, 11, 9, 5],
}
LETTERS = "WLEAFTN"


@pytest.fixture(scope="module")
def emodb_mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("emodb") / "emodb"
    return root, EmodbCorpus.generate(str(root), seed=0, utterances_per_speaker=7)


@pytest.fixture(scope="module")
def emovo_mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("emovo") / "EMOVO"
    return root, EmovoCorpus.generate(str(root), seed=0, utterances_per_speaker=7)


def _kinds(corpus) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for p in corpus.problems:
        out[p.kind] = out.get(p.kind, 0) + p.count
    return out


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def _emodb_listing(root: Path) -> Path:
    """The 535 names of a full EmoDB release, as empty files (takes and texts made up, counts the release's)."""
    for spk, row in EMODB_RELEASE_GRID.items():
        for letter, n in zip(LETTERS, row):
            for i in range(n):
                _touch(root / "wav" / f"{spk}{emodb.TEXTS[i % 10]}{letter}{'abcdef'[i // 10]}.wav")
    for d in emodb.LABEL_DIRS:
        (root / d).mkdir()
    (root / "erklaerung.txt").write_text("documentation\n")
    return root


def _emovo_listing(root: Path) -> Path:
    """The complete 588-file EMOVO grid, as empty files, with the documenti/ folder some copies have."""
    for actor in emovo.ACTORS:
        for code in emovo.CODES:
            for sentence in emovo.SENTENCES:
                _touch(root / actor / f"{code}-{actor}-{sentence}.wav")
    _touch(root / "documenti" / "EMOVO.pdf")
    return root


# ---------------------------------------------------------------------------------- the miniatures
def test_emodb_miniature_layout_codes_and_folds(emodb_mini) -> None:
    root, summary = emodb_mini
    assert summary["utterances"] == 28 and summary["speakers"] == {s: 7 for s in ("03", "08", "10", "13")}
    assert summary["quirk_files"] == ["wav/.DS_Store", "wav/._03a01Wa.wav"]
    info = sf.info(str(root / "wav" / "03a01Wa.wav"))
    assert info.samplerate == 16000 and info.channels == 1 and 1.0 <= info.duration <= 2.0
    assert all(len(list((root / d).iterdir())) == 28 for d in emodb.LABEL_DIRS)
    corpus = registry.create_corpus("emodb", root=str(root))
    assert type(corpus) is EmodbCorpus and corpus.default_protocol == "speaker"
    utts = corpus.load()
    assert len(utts) == 28 and corpus.counts == {name: 4 for name in emodb.DEFAULT_LABELS}
    assert corpus.labels == ["ang", "bor", "dis", "fea", "hap", "sad", "neu"]
    assert _kinds(corpus) == {"hidden_file": 2} and len(corpus.problems) == 1  # the two quirk files, one problem
    assert corpus.ignored == ["README.txt", "lablaut/", "labsilb/", "silb/", "summary.json"]
    u = utts[0]
    assert (u.id, u.label, u.speaker, u.session, u.fold) == ("03a01Wa", "ang", "03", "", None)
    by_id = {u.id: u for u in utts}
    assert by_id["13b10Na"].label == "neu" and by_id["08a05Ea"].label == "dis" and by_id["10b03Ta"].label == "sad"
    folds = make_folds(utts, corpus.default_protocol, dev="speaker")
    assert [f.name for f in folds] == ["03", "08", "10", "13"]  # leave one speaker out
    speaker = {u.id: u.speaker for u in utts}
    assert not [w for w in check_folds(folds, {u.id: u.label for u in utts}, corpus.labels, speaker) if "speakers" in w]


def test_emovo_miniature_layout_codes_and_folds(emovo_mini) -> None:
    root, summary = emovo_mini
    assert summary["utterances"] == 42 and summary["sample_rate"] == 48000
    info = sf.info(str(root / "f1" / "rab-f1-b1.wav"))
    assert info.samplerate == 48000 and info.channels == 1 and 1.0 <= info.duration <= 2.0
    corpus = registry.create_corpus("emovo", root=str(root))
    utts = corpus.load()
    assert len(utts) == 42 and corpus.counts == {name: 6 for name in emovo.NAMES}
    assert corpus.speaker_counts == {a: 7 for a in emovo.ACTORS} and corpus.missing == 588 - 42
    assert _kinds(corpus) == {"hidden_file": 2}
    assert corpus.ignored == ["README.txt", "documenti/", "summary.json"]  # documenti/ is expected
    by_id = {u.id: u for u in utts}
    assert {by_id[f"{c}-m2-{s}"].label for c, s in (("gio", "l3"), ("sor", "n2"))} == {"hap", "sur"}
    assert (by_id["tri-f3-l2"].label, by_id["pau-m1-l4"].label, by_id["rab-f1-b1"].label) == ("sad", "fea", "ang")
    assert by_id["neu-m3-n5"].speaker == "m3" and by_id["neu-m3-n5"].fold == "2"
    folds = make_folds(utts, corpus.default_protocol, dev="speaker")
    assert [f.name for f in folds] == list(emovo.ACTORS)  # leave one actor out
    emobox = make_folds(utts, "folds", dev="speaker")
    assert [f.name for f in emobox] == ["1", "2", "3", "4", "5", "6"]
    speaker_of = {u.id: u.speaker for u in utts}
    for f in emobox:  # EmoBox's fold_k tests one actor: the same partition
        assert {speaker_of[i] for i in f.test} == {a for a, k in EMOBOX_FOLDS.items() if k == f.name}


def test_contract_checks(emodb_mini, emovo_mini) -> None:
    for name, (root, _) in (("emodb", emodb_mini), ("emovo", emovo_mini)):
        ran = check_corpus(name, root=str(root))
        assert {"declaration", "load", "utterances", "problems", "deterministic"} <= set(ran)


def test_generators_are_deterministic(emodb_mini, emovo_mini, tmp_path: Path) -> None:
    for module, (root, summary) in ((emodb, emodb_mini), (emovo, emovo_mini)):
        again = tmp_path / f"{module.__name__}-again"
        assert module.generate_miniature(str(again), seed=0, utterances_per_speaker=7) == summary
        files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
        assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
        with pytest.raises(FileExistsError, match="overwrite"):
            module.generate_miniature(str(again), seed=1, utterances_per_speaker=1)
        other = module.generate_miniature(str(again), seed=1, utterances_per_speaker=1, overwrite=True)
        assert other["utterances"] == len(other["speakers"]) and other["seconds"] != summary["seconds"]
        assert len([p for p in again.rglob("*.wav") if not p.name.startswith(".")]) == other["utterances"]
    (tmp_path / "real" / "wav").mkdir(parents=True)
    (tmp_path / "real" / "f1").mkdir()
    for module in (emodb, emovo):
        with pytest.raises(FileExistsError, match="refusing"):
            module.generate_miniature(str(tmp_path / "real"), overwrite=True)
    with pytest.raises(ValueError, match="between 1 and 98"):
        emovo.generate_miniature(str(tmp_path / "big"), utterances_per_speaker=99)


def test_the_cli_writes_a_miniature(tmp_path: Path) -> None:
    from ser_plugins.cli import main

    assert main(["demo-corpus", str(tmp_path / "e"), "--corpus", "emodb", "--utterances-per-speaker", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "e" / "wav").iterdir())[-4:] == [
        "03a01Wa.wav",
        "08a02Wa.wav",
        "10a04Wa.wav",
        "13a05Wa.wav",
    ]


def test_synthesis_is_demo_synth_with_more_classes(emodb_mini) -> None:
    """demo_synth's labels give demo_synth's waveform; the added classes are audible (loudness, f0 range)."""
    voice = demo_synth._make_voice("x", "F", np.random.default_rng(5))
    expected = demo_synth.synthesize_utterance("ang", voice, 1.2, np.random.default_rng(9))
    np.testing.assert_array_equal(
        emodb.synth_module().synthesize_utterance("ang", voice, 1.2, np.random.default_rng(9)), expected
    )
    assert demo_synth.EMOTION_PARAMS.keys() == {"neu", "hap", "exc", "ang", "sad", "fru", "sur"}  # untouched
    loud: Dict[str, List[float]] = {}
    for u in EmodbCorpus(str(emodb_mini[0])).load():
        wav, _ = sf.read(u.path)
        frames = (wav[: len(wav) // 400 * 400].reshape(-1, 400) ** 2).mean(1)
        loud.setdefault(u.label, []).append(10 * np.log10(frames[frames > 0.01 * frames.max()].mean()))
    mean = {k: float(np.mean(v)) for k, v in loud.items()}
    assert mean["ang"] > mean["hap"] > mean["neu"] > mean["bor"] > mean["sad"]


# ---------------------------------------------------------------------------------- the full releases
def test_emodb_full_listing_counts_match_the_documentation(tmp_path: Path) -> None:
    columns = [sum(row[i] for row in EMODB_RELEASE_GRID.values()) for i in range(7)]
    assert dict(zip((emodb.CODES[c] for c in LETTERS), columns)) == dict(DOCUMENTED_COUNTS)
    assert {s: sum(row) for s, row in EMODB_RELEASE_GRID.items()} == dict(DOCUMENTED_SPEAKER_COUNTS)
    assert sum(columns) == emodb.RELEASE_FILES == 535
    corpus = EmodbCorpus(str(_emodb_listing(tmp_path / "emodb")))
    utts = corpus.load()
    assert corpus.problems == [] and len(utts) == 535
    assert corpus.counts == dict(DOCUMENTED_COUNTS)  # ang 127 bor 81 dis 46 fea 69 hap 71 sad 62 neu 79
    assert corpus.speaker_counts == dict(DOCUMENTED_SPEAKER_COUNTS)
    assert corpus.ignored == ["erklaerung.txt", "lablaut/", "labsilb/", "silb/"]
    assert {emodb.GENDER[s] for s in corpus.speaker_counts} == {"male", "female"}
    folds = make_folds(utts, "speaker", dev="none")
    assert len(folds) == 10 and sorted(len(f.test) for f in folds) == sorted(DOCUMENTED_SPEAKER_COUNTS.values())
    assert len(make_folds(utts, "speaker", dev="none", num_folds=5)) == 5


def test_emovo_full_grid_counts_match_the_documentation(tmp_path: Path) -> None:
    corpus = EmovoCorpus(str(_emovo_listing(tmp_path / "EMOVO")))
    utts = corpus.load()
    assert corpus.problems == [] and len(utts) == emovo.RELEASE_FILES == 588 and corpus.missing == 0
    assert corpus.counts == dict(emovo.DOCUMENTED_COUNTS) == {name: 84 for name in emovo.NAMES}
    assert corpus.speaker_counts == {a: 98 for a in emovo.ACTORS}
    folds = make_folds(utts, "speaker", dev="speaker")
    assert len(folds) == 6 and all(len(f.test) == 98 for f in folds)


# ---------------------------------------------------------------------------------- quirks and options
def test_emodb_quirks_are_counted(tmp_path: Path) -> None:
    root = _emodb_listing(tmp_path / "emodb")
    for name in ("._03a01Wa.wav", ".DS_Store", "notes.txt", "03a01.wav", "99a01Wa.wav", "03c01Wa.wav", "03a01Xa.wav"):
        _touch(root / "wav" / name)
    _touch(root / "wav" / "03a01Wa.WAV")  # a second spelling of 03a01Wa.wav
    (root / "wav" / "sub").mkdir()
    (root / "extra").mkdir()
    _touch(root / "03b10Na.wav")
    _touch(root / ".DS_Store")
    corpus = EmodbCorpus(str(root))
    utts = corpus.load()
    assert len(utts) == 535 and corpus.counts == dict(DOCUMENTED_COUNTS)  # nothing odd is read
    assert _kinds(corpus) == {
        "hidden_file": 3,
        "extra_folder": 2,
        "misplaced_audio": 1,
        "extra_file": 1,
        "bad_name": 1,
        "bad_code": 3,
        DUPLICATE_AUDIO: 1,
    }
    codes = {p.key: p.count for p in corpus.problems if p.kind == "bad_code"}
    assert codes == {"speaker": 1, "text": 1, "emotion": 1}
    assert not any(p.fatal for p in corpus.problems)
    hidden = next(p for p in corpus.problems if p.kind == "hidden_file")
    assert ".DS_Store" in hidden.message and "wav/._03a01Wa.wav" in hidden.message
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        EmodbCorpus(str(root / "wav")).load()
    with pytest.raises(FileNotFoundError, match="pass it as root"):
        EmodbCorpus(str(tmp_path)).load()
    shutil.rmtree(root / "wav")
    (root / "wav").mkdir()
    corpus.load()
    assert any(p.fatal and p.kind == "no_utterances" for p in corpus.problems)


def test_emovo_quirks_are_counted(tmp_path: Path) -> None:
    root = _emovo_listing(tmp_path / "EMOVO")
    shutil.rmtree(root / "m3")
    for name in ("._dis-f1-b1.wav", "dis-m1-b2.wav", "xyz-f1-b1.wav", "dis-f1-z9.wav", "dis-f1.wav", "note.pdf"):
        _touch(root / "f1" / name)
    _touch(root / "f2" / "DIS-f2-b1.wav")  # dis-f2-b1.wav again
    _touch(root / "extra" / "neu-f1-b1.wav")
    _touch(root / "neu-f2-b1.wav")
    _touch(root / ".DS_Store")
    corpus = EmovoCorpus(str(root))
    utts = corpus.load()
    assert len(utts) == 5 * 98 and corpus.missing == 98
    assert corpus.counts == {name: 70 for name in emovo.NAMES}
    assert _kinds(corpus) == {
        "hidden_file": 2,
        "actor_mismatch": 1,
        "bad_code": 2,
        "bad_name": 1,
        "extra_file": 1,
        "extra_folder": 1,
        "misplaced_audio": 1,
        DUPLICATE_AUDIO: 1,
        "missing_folder": 1,
    }
    assert {p.key for p in corpus.problems if p.kind == "bad_code"} == {"emotion", "sentence"}
    assert corpus.ignored == ["documenti/"]  # expected: not a problem
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        EmovoCorpus(str(root / "f1")).load()
    with pytest.raises(FileNotFoundError, match="pass it as root"):
        EmovoCorpus(str(tmp_path)).load()


def test_labels_and_merge(tmp_path: Path) -> None:
    root = _emodb_listing(tmp_path / "emodb")
    corpus = EmodbCorpus(str(root), labels=["ang", "hap", "sad", "neu"], merge={"L": "neu"})
    utts = corpus.load()
    assert corpus.dropped == {"dis": 46, "fea": 69}
    assert {u.label: 0 for u in utts}.keys() == {"ang", "hap", "sad", "neu"}
    assert sum(u.label == "neu" for u in utts) == 79 + 81  # boredom merged into neutral
    dropped = {p.key: p.count for p in corpus.problems if p.kind == DROPPED_LABEL}
    assert dropped == {"dis": 46, "fea": 69} and len(corpus.problems) == 2
    assert EmodbCorpus(str(root), merge={"bor": "neu"}, labels=["neu", "ang"]).merge == {"bor": "neu"}
    grid = _emovo_listing(tmp_path / "EMOVO")
    four = EmovoCorpus(str(grid), labels=["ang", "hap", "neu", "sad"], merge={"sor": "hap"})
    labels = [u.label for u in four.load()]
    assert labels.count("hap") == 168 and four.dropped == {"dis": 84, "fea": 84}
    for cls, bad, match in (
        (EmodbCorpus, {"merge": {"Q": "neu"}}, "merge source"),
        (EmodbCorpus, {"merge": {"bor": "xyz"}}, "merge target"),
        (EmodbCorpus, {"labels": ["ang", "sur"]}, "neither a class"),
        (EmodbCorpus, {"labels": ["ang", "ang"]}, "duplicate"),
        (EmovoCorpus, {"labels": ["ang", "bor"]}, "neither a class"),
        (EmovoCorpus, {"merge": {"gio": "ang"}}, "both a label"),
    ):
        with pytest.raises(ValueError, match=match):
            cls(str(tmp_path), **bad)


# ---------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name,folds", [("emodb", ["03", "08", "10", "13"]), ("emovo", list(emovo.ACTORS))])
def test_runs_end_to_end_with_the_default_protocol(name, folds, emodb_mini, emovo_mini, tmp_path: Path) -> None:
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import Runner

    root = (emodb_mini if name == "emodb" else emovo_mini)[0]
    recipe = load_recipe(
        {
            "name": name,
            "seed": 0,
            "corpus": {"name": name, "root": str(root)},
            "upstream": {"name": "fbank", "n_mels": 24},
            "aggregator": "stats",
            "classifier": "linear",
            "training": {"max_steps": 20, "batch_size": 8},
            "data": {"num_threads": 1},
            "output": {"tensorboard": False},
        }
    )
    summary = Runner(recipe, tmp_path / name, progress=False).run()
    assert list(summary.folds) == folds and len(summary.labels) == 7
    assert 0.0 <= summary.mean_std["ua"]["mean"] <= 1.0
    assert len(summary.pooled["confusion"]) == 7
