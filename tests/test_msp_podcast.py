"""The MSP-Podcast reader on its generated miniature and on small hand-written releases."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import pytest
import soundfile as sf

from corpora import demo_synth
from corpora.msp_podcast import (
    CODES,
    DEFAULT_LABELS,
    HEADER,
    MspPodcastCorpus,
    MspPodcastError,
    _synth_module,
    generate_miniature,
)
from ser_plugins.data.folds import check_folds, make_folds
from ser_plugins.errors import UserError
from ser_plugins.plugins import registry
from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO, NO_LABEL

CSV = "Labels/labels_consensus.csv"


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("msp") / "MSP-PODCAST"
    return root, MspPodcastCorpus.generate(str(root), seed=0)


def _release(
    root: Path, rows: Iterable[Sequence[str]], wavs: Optional[Iterable[str]] = None, header: Sequence[str] = HEADER
) -> Path:
    """A hand-written release: the CSV of ``rows`` and a short silent wav per file (or per ``wavs``)."""
    rows = [list(r) for r in rows]
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    (root / "Audios").mkdir(exist_ok=True)
    text = "\n".join(",".join(r) for r in [list(header)] + rows) + "\n"
    (root / CSV).write_text(text)
    for name in wavs if wavs is not None else [r[0] for r in rows if r and r[0]]:
        sf.write(str(root / "Audios" / name), np.zeros(1600, dtype=np.float32), 16000, subtype="PCM_16")
    return root


def _row(
    n: int, code: str = "N", part: str = "Train", spk: str = "1", avd=("4.0", "4.0", "4.0"), gender: str = "Female"
) -> list:
    return [f"MSP-PODCAST_0001_{n:04d}.wav", code, *avd, spk, gender, part]


def _base_rows() -> list:
    """One row of every class letter in Train, two speakers in Development and Test1, one Test2 row."""
    rows = [_row(i + 1, code, spk=str(1 + i % 2)) for i, code in enumerate(CODES)]
    rows += [_row(20, "A", "Development", "3"), _row(21, "H", "Development", "4")]
    rows += [_row(30, "S", "Test1", "5"), _row(31, "N", "Test1", "6"), _row(40, "A", "Test2", "7")]
    return rows


def _by_id(utts) -> Dict[str, object]:
    return {u.id: u for u in utts}


def _kinds(corpus) -> Dict[str, list]:
    out: Dict[str, list] = {}
    for p in corpus.problems:
        out.setdefault(p.kind, []).append(p)
    return out


# ---------------------------------------------------------------------------------- the miniature
def test_miniature_is_in_the_release_layout(mini) -> None:
    root, summary = mini
    assert summary["utterances"] == 116 and summary["speakers"] == 13
    assert summary["per_split"] == {"Train": 48, "Development": 20, "Test1": 16, "Test2": 16, "Test3": 16}
    lines = (root / CSV).read_text().splitlines()
    assert lines[0] == ",".join(HEADER) and len(lines) == 117
    rows = [line.split(",") for line in lines[1:]]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert sorted(p.name for p in (root / "Audios").iterdir()) == [r[0] for r in rows]
    test3 = [r for r in rows if r[7] == "Test3"]
    assert len(test3) == 16 and all(r[1:5] == ["", "", "", ""] and r[5] == "Unknown" for r in test3)
    labelled = [r for r in rows if r[7] != "Test3"]
    assert {r[1] for r in labelled} == set(CODES)  # all 8 classes, O and X
    assert all(1.0 <= float(x) <= 7.0 for r in labelled for x in r[2:5])
    unknown = [r for r in labelled if r[5] == "Unknown"]
    assert len(unknown) == summary["unknown_speaker_utterances"] == 12
    assert {r[7] for r in unknown} == {"Train", "Development"}
    info = sf.info(str(root / "Audios" / rows[0][0]))
    assert info.samplerate == 16000 and info.channels == 1 and 1.0 <= info.duration <= 2.0
    assert "SYNTHETIC" in (root / "README.txt").read_text()


def test_miniature_is_deterministic(mini, tmp_path: Path) -> None:
    root, summary = mini
    again = tmp_path / "again"
    assert generate_miniature(str(again), seed=0) == summary
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    other = tmp_path / "other"
    generate_miniature(str(other), seed=1, utterances_per_speaker=2)
    assert (other / CSV).read_text() != (root / CSV).read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_miniature(str(other), seed=1, utterances_per_speaker=2)
    assert generate_miniature(str(other), seed=2, utterances_per_speaker=1, overwrite=True)["utterances"] == 14
    (tmp_path / "real" / "Audios").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="refusing"):
        generate_miniature(str(tmp_path / "real"), overwrite=True)


def test_miniature_synthesis_is_demo_synth_unchanged() -> None:
    """The private copy of demo_synth, given a demo label's parameters, makes the original's waveform."""
    rng = np.random.default_rng(5)
    voice = demo_synth._make_voice("x", "F", rng)
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    expected = demo_synth.synthesize_utterance("ang", voice, 1.2, a)
    params = demo_synth._expressive_params("ang", b)  # what the original draws first, from the same rng
    got = _synth_module().synthesize_utterance(params, voice, 1.2, b)
    np.testing.assert_array_equal(got, expected)


def test_miniature_arousal_is_audible(mini) -> None:
    utts = MspPodcastCorpus(str(mini[0])).load()
    loudness = []
    for u in utts:
        wav, _ = sf.read(u.path)
        frames = (wav[: len(wav) // 400 * 400].reshape(-1, 400) ** 2).mean(1)
        loudness.append(10 * np.log10(frames[frames > 0.01 * frames.max()].mean()))
    arousal = [u.attributes["arousal"] for u in utts]
    assert np.corrcoef(loudness, arousal)[0, 1] > 0.4  # 0.71 for seed 0


def test_miniature_reads_into_the_split_protocol(mini) -> None:
    root, _ = mini
    corpus = registry.create_corpus("msp_podcast", root=str(root))
    assert type(corpus) is MspPodcastCorpus and corpus.default_protocol == "split"
    assert registry.load("corpus", "msp_podcast").can_generate()
    assert tuple(corpus.attributes) == ("arousal", "valence", "dominance")
    assert dict(corpus.attribute_scales) == {k: (1.0, 7.0) for k in corpus.attributes}
    utts = corpus.load()
    assert corpus.problems == []
    assert len(utts) == 48 + 20 + 16
    assert corpus.left_out == {"Test2": 16, "Test3": 16}
    assert corpus.no_class == {"oth": 7, "xxx": 7} and corpus.dropped == {}
    assert {u.label for u in utts} == set(DEFAULT_LABELS) | {NO_LABEL}
    assert all(set(u.attributes) == {"arousal", "valence", "dominance"} for u in utts)
    by_split = {s: {u.id for u in utts if u.split == s} for s in ("train", "dev", "test")}
    assert [len(by_split[s]) for s in ("train", "dev", "test")] == [48, 20, 16]
    for dev in ("split", "speaker", "none"):
        [fold] = make_folds(utts, "split", dev=dev)
        assert set(fold.train) == by_split["train"] and set(fold.test) == by_split["test"]
        assert set(fold.dev) == (set() if dev == "none" else by_split["dev"])
    [fold] = make_folds(utts, "split", dev="split")
    warnings = check_folds([fold], {u.id: u.label for u in utts}, corpus.labels, {u.id: u.speaker for u in utts})
    assert not [w for w in warnings if "speakers" in w]  # speaker-disjoint partitions
    test2 = MspPodcastCorpus(str(root), test_set="Test2").load()
    assert sum(u.split == "test" for u in test2) == 16 and not {u.id for u in test2} & by_split["test"]


def test_contract_checks(mini) -> None:
    from ser_plugins.testing import check_corpus

    ran = check_corpus(MspPodcastCorpus, root=str(mini[0]), keep_unlabelled=False)
    assert {"declaration", "load", "utterances", "problems", "deterministic"} <= set(ran)


# ---------------------------------------------------------------------------------- hand-written releases
def test_codes_attributes_speakers_and_splits(tmp_path: Path) -> None:
    root = _release(tmp_path, _base_rows())
    corpus = MspPodcastCorpus(str(root))
    utts = _by_id(corpus.load())
    assert corpus.problems == []
    labels = {f"MSP-PODCAST_0001_{i + 1:04d}": name for i, name in enumerate(CODES.values())}
    for uid, name in labels.items():
        assert utts[uid].label == (name if name in DEFAULT_LABELS else NO_LABEL)
        assert utts[uid].split == "train" and utts[uid].path == str(root / "Audios" / f"{uid}.wav")
    assert {u.split for u in utts.values()} == {"train", "dev", "test"}
    assert "MSP-PODCAST_0001_0040" not in utts and corpus.left_out == {"Test2": 1}
    assert utts["MSP-PODCAST_0001_0020"].speaker == "3"
    assert utts["MSP-PODCAST_0001_0030"].attributes == {"arousal": 4.0, "valence": 4.0, "dominance": 4.0}
    assert corpus.no_class == {"oth": 1, "xxx": 1}

    rows = _base_rows()
    rows[0] = _row(1, "A", avd=("6.5", "1.75", "5"))
    rows[1] = _row(2, "h", avd=("", "3.2", ""))  # lower-case letter; attributes that are missing stay out
    utts = _by_id(MspPodcastCorpus(str(_release(tmp_path / "b", rows))).load())
    assert utts["MSP-PODCAST_0001_0001"].attributes == {"arousal": 6.5, "valence": 1.75, "dominance": 5.0}
    assert utts["MSP-PODCAST_0001_0002"].label == "hap"
    assert utts["MSP-PODCAST_0001_0002"].attributes == {"valence": 3.2}


def test_unlabelled_dropped_and_merged_classes(tmp_path: Path) -> None:
    rows = _base_rows() + [_row(50, "", "Train", "2")]  # attributes, no class
    root = _release(tmp_path, rows)
    corpus = MspPodcastCorpus(str(root), labels=["neu", "hap", "ang", "sad"])
    utts = _by_id(corpus.load())
    assert utts["MSP-PODCAST_0001_0050"].label == NO_LABEL and utts["MSP-PODCAST_0001_0050"].attributes
    assert utts["MSP-PODCAST_0001_0009"].label == NO_LABEL  # O
    assert utts["MSP-PODCAST_0001_0005"].label == NO_LABEL  # F, outside labels: kept for regression
    assert corpus.no_class == {"oth": 1, "xxx": 1, "none": 1}
    assert corpus.dropped == {"sur": 1, "fea": 1, "dis": 1, "con": 1}
    dropped = {p.key: p for p in corpus.problems if p.kind == DROPPED_LABEL}
    assert set(dropped) == {"sur", "fea", "dis", "con"} and dropped["fea"].count == 1 and dropped["fea"].lines == (6,)
    assert not [p for p in corpus.problems if p.kind != DROPPED_LABEL]

    strict = MspPodcastCorpus(str(root), labels=["neu", "hap", "ang", "sad"], keep_unlabelled=False).load()
    assert len(strict) == len(utts) - 7 and all(u.label for u in strict)

    merged = MspPodcastCorpus(str(root), labels=["neu", "hap", "ang", "sad"], merge={"C": "ang", "dis": "ang"})
    got = _by_id(merged.load())
    assert got["MSP-PODCAST_0001_0007"].label == "ang" and got["MSP-PODCAST_0001_0006"].label == "ang"
    assert merged.dropped == {"sur": 1, "fea": 1}
    other = _by_id(MspPodcastCorpus(str(root), labels=[*DEFAULT_LABELS, "oth"]).load())
    assert other["MSP-PODCAST_0001_0009"].label == "oth" and other["MSP-PODCAST_0001_0010"].label == NO_LABEL


def test_unknown_speakers(tmp_path: Path) -> None:
    rows = _base_rows() + [
        _row(60, "A", spk="Unknown", gender="Unknown"),
        _row(61, "S", spk="unknown"),
        _row(62, "N", "Development", spk="Unknown"),
    ]
    root = _release(tmp_path, rows)
    grouped = _by_id(MspPodcastCorpus(str(root)).load())
    assert {grouped[f"MSP-PODCAST_0001_{n:04d}"].speaker for n in (60, 61, 62)} == {"Unknown"}
    each = _by_id(MspPodcastCorpus(str(root), unknown_speakers="each").load())
    assert each["MSP-PODCAST_0001_0060"].speaker == "Unknown:MSP-PODCAST_0001_0060"
    assert len({each[f"MSP-PODCAST_0001_{n:04d}"].speaker for n in (60, 61, 62)}) == 3
    with pytest.raises(ValueError, match="unknown_speakers"):
        MspPodcastCorpus(str(root), unknown_speakers="drop")


def test_test_set_and_test3_without_labels(tmp_path: Path) -> None:
    withheld = [[f"MSP-PODCAST_0009_{n:04d}.wav", "", "", "", "", "Unknown", "Unknown", "Test3"] for n in (1, 2)]
    root = _release(tmp_path, _base_rows() + withheld)
    corpus = MspPodcastCorpus(str(root))
    utts = corpus.load()
    assert corpus.problems == [] and corpus.left_out == {"Test2": 1, "Test3": 2}
    assert {u.id for u in utts if u.split == "test"} == {"MSP-PODCAST_0001_0030", "MSP-PODCAST_0001_0031"}
    t2 = MspPodcastCorpus(str(root), test_set="test2")
    assert t2.test_set == "Test2"
    assert [u.id for u in t2.load() if u.split == "test"] == ["MSP-PODCAST_0001_0040"]
    assert t2.left_out == {"Test1": 2, "Test3": 2}
    t3 = MspPodcastCorpus(str(root), test_set="Test3")
    assert not [u for u in t3.load() if u.split == "test"]
    assert t3.withheld == {"Test3": 2}
    fatal = [p for p in t3.problems if p.fatal]
    assert len(fatal) == 1 and "withheld" in fatal[0].message and "Test3" in fatal[0].message
    assert [p.count for p in t3.problems if p.kind == "withheld_labels"] == [2]
    with pytest.raises(ValueError, match="test_set"):
        MspPodcastCorpus(str(root), test_set="Test4")


def test_problems_are_counted_not_crashes(tmp_path: Path) -> None:
    rows = _base_rows() + [
        _row(70, "N"),  # its wav is missing
        _row(71, "H", part="Test1"),  # its wav is missing
        _row(72, "A", avd=("0.5", "4", "7.5")),  # arousal and dominance outside 1-7
        _row(73, "S", avd=("8", "4", "4")),
        _row(74, "Z"),  # unknown class letter
        _row(75, "N", avd=("abc", "4", "4")),  # not a number
        _row(76, "N", avd=("nan", "4", "4")),
        ["MSP-PODCAST_0001_0077.wav", "N", "4", "4"],  # too few cells
        ["", "N", "4", "4", "4", "1", "Female", "Train"],  # no file name
        _row(78, "N", part="Validation"),
        _row(79, "N", part="Validation"),
        _row(1, "N"),  # listed again, same partition
        _row(2, "N", part="Test1"),  # listed again, in the test set: fatal
        _row(3, "N", part="Test3"),  # listed again in a partition left out: a warning
    ]
    wavs = [r[0] for r in rows if r[0] and r[0][-8:-4] not in ("0070", "0071")]
    root = _release(tmp_path, rows, wavs=wavs)
    corpus = MspPodcastCorpus(str(root))
    utts = _by_id(corpus.load())
    kinds = _kinds(corpus)
    [missing] = kinds["missing_audio"]
    assert missing.count == 2 and "MSP-PODCAST_0001_0070.wav" in missing.message and not missing.fatal
    scale = {p.key: p for p in kinds["out_of_scale"]}
    assert scale["arousal"].count == 2 and scale["dominance"].count == 1 and "valence" not in scale
    assert utts["MSP-PODCAST_0001_0072"].label == "ang"
    assert utts["MSP-PODCAST_0001_0072"].attributes == {"valence": 4.0}
    assert utts["MSP-PODCAST_0001_0073"].attributes == {"valence": 4.0, "dominance": 4.0}
    malformed = kinds["malformed_row"]
    assert len(malformed) == 5 and all(p.line is not None for p in malformed)
    assert any("'Z'" in p.message for p in malformed) and any("'abc'" in p.message for p in malformed)
    for n in (70, 71, 74, 75, 76, 77, 78, 79):
        assert f"MSP-PODCAST_0001_{n:04d}" not in utts
    [part] = kinds["unknown_partition"]
    assert part.key == "Validation" and part.count == 2
    dupes = kinds[DUPLICATE_AUDIO]
    assert len(dupes) == 3 and [p.fatal for p in dupes] == [False, True, False]
    assert dupes[1].lines == (3, len(_base_rows()) + 14)
    assert utts["MSP-PODCAST_0001_0002"].split == "train"
    assert sum(p.fatal for p in corpus.problems) == 1


def test_wrong_root_and_bad_files(tmp_path: Path) -> None:
    root = _release(tmp_path / "rel", _base_rows())
    with pytest.raises(FileNotFoundError, match="Audios/ and Labels/labels_consensus.csv"):
        MspPodcastCorpus(str(tmp_path / "nowhere")).load()
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        MspPodcastCorpus(str(root / "Labels")).load()
    with pytest.raises(FileNotFoundError, match="it is a CSV file"):
        MspPodcastCorpus(str(root / CSV)).load()
    (root / CSV).rename(root / "Labels" / "labels_concensus.csv")
    with pytest.raises(FileNotFoundError, match="labels_concensus.csv: pass labels_file"):
        MspPodcastCorpus(str(root)).load()
    assert len(MspPodcastCorpus(str(root), labels_file="Labels/labels_concensus.csv").load()) == 14

    bad = _release(tmp_path / "bad", _base_rows(), header=("FileName", "EmoClass", "SpkrID", "Split_Set"))
    with pytest.raises(MspPodcastError, match="EmoAct, EmoVal, EmoDom") as err:
        MspPodcastCorpus(str(bad)).load()
    assert isinstance(err.value, UserError)

    nowav = _release(tmp_path / "nowav", _base_rows(), wavs=[])
    (nowav / "Audios").rmdir()
    corpus = MspPodcastCorpus(str(nowav))
    assert corpus.load() == []
    assert any(p.fatal and "Audios/" in p.message for p in corpus.problems)


def test_options_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate labels"):
        MspPodcastCorpus(str(tmp_path), labels=["ang", "ang"])
    with pytest.raises(ValueError, match="neither an MSP-Podcast class"):
        MspPodcastCorpus(str(tmp_path), labels=["exc"])
    with pytest.raises(ValueError, match="merge target"):
        MspPodcastCorpus(str(tmp_path), labels=["ang"], merge={"C": "neu"})
    with pytest.raises(ValueError, match="merge source"):
        MspPodcastCorpus(str(tmp_path), labels=["ang"], merge={"exc": "ang"})
    corpus = MspPodcastCorpus(str(tmp_path), labels="ang", merge={"c": "ang"})
    assert corpus.labels == ["ang"] and corpus.merge == {"con": "ang"}
