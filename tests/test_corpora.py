"""IEMOCAP and manifest readers on small hand-written fixtures (classes and continuous targets)."""
from __future__ import annotations

from contextlib import nullcontext as _nullcontext
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile as sf

from corpora.iemocap import BAD_ATTRIBUTES, IemocapCorpus, dialog_kind, parse_attributes, parse_label_line
from corpora.manifest import BAD_ATTRIBUTE, MISSING_ATTRIBUTE, ManifestCorpus
from ser_plugins.plugins.contracts import DROPPED_LABEL, NO_LABEL

HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _wav(path: Path, seconds: float = 0.2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(16000 * seconds), dtype=np.float32), 16000, subtype="PCM_16")


def _block(utt: str, label: str, t: float = 1.0) -> str:
    return (f"[{t:.4f} - {t + 1.5:.4f}]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]\n"
            f"C-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\nA-E3:\tval 3; act 2; dom  2;\t()\n")


def _dialog(root: Path, session: int, dialog: str, items: List[Tuple[str, str]], wavs: bool = True,
            extra: str = "") -> Path:
    """Write one EmoEvaluation file (and its wavs) for ``items`` = [(utt_id, label)]."""
    emo = root / f"Session{session}" / "dialog" / "EmoEvaluation"
    emo.mkdir(parents=True, exist_ok=True)
    text = HEADER + "\n".join(_block(u, lab, 1.0 + 2 * i) for i, (u, lab) in enumerate(items)) + extra
    txt = emo / f"{dialog}.txt"
    txt.write_text(text)
    if wavs:
        for utt, _ in items:
            _wav(root / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav")
    return txt


@pytest.fixture()
def iemocap(tmp_path: Path) -> Path:
    root = tmp_path / "IEMOCAP_full_release"
    _dialog(root, 1, "Ses01F_impro01", [
        ("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "exc"), ("Ses01F_impro01_F001", "fru"),
        ("Ses01F_impro01_M001", "ang"), ("Ses01F_impro01_F002", "xxx"),
    ])
    _dialog(root, 1, "Ses01M_script01_1", [
        ("Ses01M_script01_1_F000", "sad"), ("Ses01M_script01_1_M000", "hap"), ("Ses01M_script01_1_M001", "sur"),
    ])
    _dialog(root, 2, "Ses02F_impro05a", [("Ses02F_impro05a_F000", "ang"), ("Ses02F_impro05a_M000", "sad")])
    return root


def _by_id(utts) -> Dict[str, object]:
    return {u.id: u for u in utts}


# ---------------------------------------------------------------------------------- IEMOCAP
def test_parse_label_line_and_dialog_kind() -> None:
    assert parse_label_line("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]") == (
        6.2901, 8.2357, "Ses01F_impro01_F000", "neu")
    assert parse_label_line("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu") is not None
    assert parse_label_line("[6.29 - x]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]") is None
    assert parse_label_line("[6.29 - 8.1]\tSes01F_impro01_F000") is None
    assert dialog_kind("Ses01F_impro05a") == "improvised"
    assert dialog_kind("Ses03M_script01_1") == "scripted"
    assert dialog_kind("Ses03M_odd") is None


def test_iemocap_reads_merges_and_counts_drops(iemocap: Path) -> None:
    corpus = IemocapCorpus(str(iemocap))
    assert corpus.labels == ["neu", "hap", "ang", "sad"]
    assert corpus.default_protocol == "session"
    utts = corpus.load()
    got = _by_id(utts)
    assert set(got) == {"Ses01F_impro01_F000", "Ses01F_impro01_M000", "Ses01F_impro01_M001",
                        "Ses01M_script01_1_F000", "Ses01M_script01_1_M000", "Ses02F_impro05a_F000",
                        "Ses02F_impro05a_M000"}
    assert got["Ses01F_impro01_M000"].label == "hap"  # exc merged
    assert corpus.dropped == {"fru": 1, "xxx": 1, "sur": 1}
    u = got["Ses01M_script01_1_F000"]
    assert (u.speaker, u.session, u.label) == ("Ses01F", "Session1", "sad")
    assert got["Ses02F_impro05a_M000"].speaker == "Ses02M"
    assert u.start is None and u.end is None
    assert u.path == str(iemocap / "Session1" / "sentences" / "wav" / "Ses01M_script01_1" / f"{u.id}.wav")
    assert corpus.problems == []


def test_iemocap_subsets(iemocap: Path) -> None:
    impro = IemocapCorpus(str(iemocap), subset="improvised").load()
    scripted = IemocapCorpus(str(iemocap), subset="scripted").load()
    assert {u.id for u in scripted} == {"Ses01M_script01_1_F000", "Ses01M_script01_1_M000"}
    assert all("impro" in u.id for u in impro) and len(impro) == 5
    with pytest.raises(ValueError, match="subset"):
        IemocapCorpus(str(iemocap), subset="acted")


def test_iemocap_custom_labels_and_merge(iemocap: Path) -> None:
    for merge in ({}, {"exc": "hap"}):
        with pytest.raises(ValueError, match="merge target") if merge else _nullcontext():
            IemocapCorpus(str(iemocap), labels=["neu", "ang", "sad"], merge=merge)
    corpus = IemocapCorpus(str(iemocap), labels=["neu", "ang", "sad"])  # default merge: ignored
    utts = corpus.load()
    assert {u.label for u in utts} == {"neu", "ang", "sad"}
    assert corpus.dropped == {"exc": 1, "fru": 1, "xxx": 1, "hap": 1, "sur": 1}
    pos = IemocapCorpus(str(iemocap), labels=["neu", "pos"], merge={"hap": "pos", "exc": "pos"})
    assert sorted(u.id for u in pos.load() if u.label == "pos") == ["Ses01F_impro01_M000", "Ses01M_script01_1_M000"]


def test_iemocap_validates_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="merge target 'joy'"):
        IemocapCorpus(str(tmp_path), merge={"exc": "joy"})
    with pytest.raises(ValueError, match="not an IEMOCAP label"):
        IemocapCorpus(str(tmp_path), merge={"happy": "hap"})
    with pytest.raises(ValueError, match="neither an IEMOCAP label"):
        IemocapCorpus(str(tmp_path), labels=["neu", "joy"], merge={})
    with pytest.raises(ValueError, match="both a label and merged"):
        IemocapCorpus(str(tmp_path), labels=["neu", "hap", "exc"])
    with pytest.raises(ValueError, match="duplicate"):
        IemocapCorpus(str(tmp_path), labels=["neu", "neu", "hap"])


def test_iemocap_malformed_lines_unknown_labels_and_missing_wavs(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    extra = ("\n[3.0 - oops]\tSes01F_impro01_F009\tneu\t[2.5, 2.5, 2.5]\n"
             "\n[4.0 - 5.0]\tSes01F_impro01_F010\n"
             "\n[6.0 - 7.0]\tSes01F_impro01_F011\thappy\t[2.5, 2.5, 2.5]\n")
    txt = _dialog(root, 1, "Ses01F_impro01", [("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "ang")],
                  extra=extra)
    (root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_M000.wav").unlink()
    corpus = IemocapCorpus(str(root))
    utts = corpus.load()
    assert [u.id for u in utts] == ["Ses01F_impro01_F000"]
    lines = txt.read_text().splitlines()
    malformed = [p for p in corpus.problems if p.message.startswith("malformed")]
    assert len(malformed) == 2 and all(p.path == str(txt) for p in malformed)
    assert all(lines[p.line - 1].startswith("[") for p in malformed)
    unknown = [p for p in corpus.problems if "unknown label 'happy'" in p.message]
    assert len(unknown) == 1 and lines[unknown[0].line - 1].startswith("[6.0 - 7.0]")
    missing = [p for p in corpus.problems if "missing" in p.message]
    assert len(missing) == 1 and missing[0].path.endswith("Ses01F_impro01_M000.wav")
    assert len(corpus.problems) == 4 and not any(p.fatal for p in corpus.problems)


def test_iemocap_skips_hidden_and_non_txt_files(iemocap: Path) -> None:
    emo = iemocap / "Session1" / "dialog" / "EmoEvaluation"
    (emo / "._Ses01F_impro01.txt").write_bytes(
        b"\x00\x05\x16\x07Mac OS X\n[0.0 - 1.0]\tSes01F_impro01_F999\tneu\t[2.5, 2.5, 2.5]\n")
    (emo / "notes.csv").write_text("[0.0 - 1.0]\tSes01F_impro01_F998\tneu\t[2.5, 2.5, 2.5]\n")
    (emo / "Categorical").mkdir()
    corpus = IemocapCorpus(str(iemocap))
    ids = {u.id for u in corpus.load()}
    assert "Ses01F_impro01_F999" not in ids and "Ses01F_impro01_F998" not in ids
    assert corpus.problems == []


def test_iemocap_irregular_ids_get_a_problem_and_a_speaker(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    _dialog(root, 3, "Ses03M_impro02", [("Ses03M_impro02_M000", "neu"), ("Ses03M_impro02_X7", "sad"),
                                        ("Ses03M_impro02_weird", "ang")])
    corpus = IemocapCorpus(str(root))
    got = _by_id(corpus.load())
    assert len(got) == 3
    assert got["Ses03M_impro02_M000"].speaker == "Ses03M"
    assert got["Ses03M_impro02_X7"].speaker == "Ses03M"  # from the dialog name
    assert got["Ses03M_impro02_weird"].speaker == "Ses03M"
    irregular = [p for p in corpus.problems if "irregular" in p.message]
    assert len(irregular) == 2 and all(p.line is not None and not p.fatal for p in irregular)


def test_iemocap_missing_folders(tmp_path: Path, iemocap: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Session1"):
        IemocapCorpus(str(tmp_path / "nowhere")).load()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="SessionN"):
        IemocapCorpus(str(empty)).load()
    (iemocap / "Session3").mkdir()
    corpus = IemocapCorpus(str(iemocap))
    utts = corpus.load()
    assert len(utts) == 7
    [problem] = corpus.problems
    assert "EmoEvaluation" in problem.path and "Session3" in problem.path and not problem.fatal


def test_iemocap_missing_wav_folder_is_one_problem(iemocap: Path) -> None:
    import shutil

    shutil.rmtree(iemocap / "Session2" / "sentences")
    corpus = IemocapCorpus(str(iemocap))
    assert len(corpus.load()) == 5
    [problem] = corpus.problems
    assert "2 labelled utterances skipped" in problem.message


def test_iemocap_no_utterances_is_fatal(iemocap: Path) -> None:
    corpus = IemocapCorpus(str(iemocap), labels=["fea"], merge={})
    assert corpus.load() == []
    assert any(p.fatal for p in corpus.problems)


# ---------------------------------------------------------------------------------- manifest
def _manifest(tmp_path: Path, text: str, wavs=("a.wav", "b.wav", "sub/c.wav", "d.wav")) -> Path:
    for w in wavs:
        _wav(tmp_path / w)
    csv_path = tmp_path / "manifest.csv"
    csv_path.write_text(text)
    return csv_path


def test_manifest_basic_relative_paths_and_speaker_protocol(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label,speaker\na.wav,neu,s1\nb.wav,ang,s2\nsub/c.wav,neu,s2\n"
                               f"{tmp_path / 'd.wav'},sad,s3\n")
    corpus = ManifestCorpus(str(path))
    assert corpus.labels == ["ang", "neu", "sad"] and corpus.default_protocol == "speaker"
    utts = corpus.load()
    assert [u.id for u in utts] == ["a", "b", "c", "d"]
    assert utts[2].path == str(tmp_path / "sub" / "c.wav") and utts[2].speaker == "s2"
    assert utts[0].start is None and utts[0].fold is None and corpus.problems == []


def test_manifest_folds_segments_ids_and_audio_root(tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    for w in ("x.wav", "y/x.wav"):
        _wav(audio / w)
    path = tmp_path / "m.csv"
    path.write_text("path,label,speaker,fold,start,end,session\n"
                    "x.wav,neu,s1,1,0.0,0.1,S1\nx.wav,hap,s1,1,0.1,0.2,S1\ny/x.wav,hap,s2,2,,,S2\n")
    corpus = ManifestCorpus(str(path), audio_root=str(audio))
    assert corpus.default_protocol == "folds"
    utts = corpus.load()
    assert [u.id for u in utts] == ["x", "x_2", "x_3"]
    assert (utts[1].start, utts[1].end, utts[1].fold, utts[1].session) == (0.1, 0.2, "1", "S1")
    assert utts[2].start is None and utts[2].path == str(audio / "y" / "x.wav")


def test_manifest_split_protocol_labels_merge_and_drops(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "id,path,label,speaker,split\nu1,a.wav,neu,s1,train\nu2,b.wav,exc,s1,test\n"
                               "u3,sub/c.wav,fru,s2,dev\nu4,d.wav,hap,s2,train\n")
    corpus = ManifestCorpus(str(path), labels=["neu", "hap"], merge={"exc": "hap"})
    assert corpus.default_protocol == "split"
    utts = corpus.load()
    assert [(u.id, u.label, u.split) for u in utts] == [("u1", "neu", "train"), ("u2", "hap", "test"),
                                                        ("u4", "hap", "train")]
    assert corpus.dropped == {"fru": 1}
    with pytest.raises(ValueError, match="merge target"):
        ManifestCorpus(str(path), labels=["neu"], merge={"exc": "hap"})


def test_manifest_bad_rows_are_problems(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label,speaker,start,end,id\n"
                               "a.wav,neu,s1,,,\n"          # 2 ok
                               ",neu,s1,,,\n"               # 3 empty path
                               "b.wav,,s1,,,\n"             # 4 empty label
                               "b.wav,neu,,,,\n"            # 5 empty speaker
                               "b.wav,neu,s1,abc,,\n"       # 6 bad start
                               "b.wav,neu,s1,0.5,0.2,\n"    # 7 end before start
                               "missing.wav,neu,s1,,,\n"    # 8 missing audio
                               "\n"                         # 9 blank: ignored
                               "b.wav,ang,s2,,,a\n")        # 10 duplicate id
    corpus = ManifestCorpus(str(path))
    utts = corpus.load()
    assert [u.id for u in utts] == ["a"]
    assert sorted(p.line for p in corpus.problems if p.line is not None) == [3, 4, 5, 6, 7, 8, 10]
    missing = [p for p in corpus.problems if p.line == 8]
    assert missing[0].path.endswith("missing.wav")
    assert any("'ang' has no usable utterance" in p.message for p in corpus.problems)


def test_manifest_missing_column_and_file(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.wav,neu\n")
    with pytest.raises(ValueError, match="'speaker'"):
        ManifestCorpus(str(path))
    with pytest.raises(FileNotFoundError, match="path,label,speaker"):
        ManifestCorpus(str(tmp_path / "none.csv"))


# ---------------------------------------------------------------------------------- continuous targets
def test_parse_attributes_bracket() -> None:
    line = "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 3.0000, 1.5000]"
    assert parse_attributes(line) == {"valence": 2.5, "arousal": 3.0, "dominance": 1.5}  # [V, A, D]
    assert parse_attributes("[6.29 - 8.23]\tSes01F_impro01_F000\tneu\t[ 4 ,1.25,5 ]") == {
        "valence": 4.0, "arousal": 1.25, "dominance": 5.0}
    assert parse_attributes("[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu") == {}  # no bracket
    for bad in ("[2.5, 2.5]", "[2.5, x, 2.5]", "[2.5, 2.5, 2.5, 2.5]", "[2.5, nan, 2.5]", "[2.5, 2.5, 2.5] extra",
                "[2.5, 2.5, 2.5", "[]"):
        assert parse_attributes(f"[1.0 - 2.0]\tSes01F_impro01_F000\tneu\t{bad}") is None, bad
    assert parse_attributes("not a consensus line") is None


def test_iemocap_gives_bracket_attributes(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    extra = ("\n[9.0 - 10.0]\tSes01F_impro01_F005\tsad\n"                        # no bracket: no attributes
             "\n[11.0 - 12.0]\tSes01F_impro01_F006\tang\t[2.0, oops, 4.0]\n"     # malformed: a problem
             "\n[13.0 - 14.0]\tSes01F_impro01_M007\thap\t[4.0000, 3.5000, 3.0000]\n")
    txt = _dialog(root, 1, "Ses01F_impro01", [("Ses01F_impro01_F000", "neu")], extra=extra)
    for utt in ("Ses01F_impro01_F005", "Ses01F_impro01_F006", "Ses01F_impro01_M007"):
        _wav(root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / f"{utt}.wav")
    corpus = IemocapCorpus(str(root))
    assert tuple(corpus.attributes) == ("arousal", "valence", "dominance")
    assert dict(corpus.attribute_scales) == {k: (1.0, 5.0) for k in ("arousal", "valence", "dominance")}
    got = _by_id(corpus.load())
    assert len(got) == 4  # the malformed bracket costs the attributes, not the utterance
    assert got["Ses01F_impro01_F000"].attributes == {"valence": 2.5, "arousal": 2.5, "dominance": 2.5}
    assert got["Ses01F_impro01_M007"].attributes == {"valence": 4.0, "arousal": 3.5, "dominance": 3.0}
    assert got["Ses01F_impro01_M007"].label == "hap"
    assert got["Ses01F_impro01_F005"].attributes == {} and got["Ses01F_impro01_F006"].attributes == {}
    [problem] = corpus.problems
    assert problem.kind == BAD_ATTRIBUTES and problem.key == "Ses01F_impro01_F006" and not problem.fatal
    assert txt.read_text().splitlines()[problem.line - 1].startswith("[11.0 - 12.0]")
    assert "[V, A, D]" in problem.message


def test_iemocap_malformed_bracket_of_a_dropped_utterance_is_not_a_problem(tmp_path: Path) -> None:
    root = tmp_path / "IEMOCAP_full_release"
    _dialog(root, 1, "Ses01F_impro01", [("Ses01F_impro01_F000", "neu")],
            extra="\n[11.0 - 12.0]\tSes01F_impro01_F006\tfru\t[2.0, oops, 4.0]\n")
    corpus = IemocapCorpus(str(root))
    assert len(corpus.load()) == 1 and corpus.problems == [] and corpus.dropped == {"fru": 1}


def test_iemocap_keep_unlabelled(iemocap: Path) -> None:
    default = IemocapCorpus(str(iemocap))
    before = default.load()
    assert default.keep_unlabelled is False and default.unlabelled == {}
    assert all(u.label != NO_LABEL for u in before)
    corpus = IemocapCorpus(str(iemocap), keep_unlabelled=True)
    utts = corpus.load()
    got = _by_id(utts)
    assert len(utts) == 10 and corpus.problems == []
    assert corpus.dropped == {} and corpus.unlabelled == {"fru": 1, "xxx": 1, "sur": 1}
    unlabelled = {u.id for u in utts if u.label == NO_LABEL}
    assert unlabelled == {"Ses01F_impro01_F001", "Ses01F_impro01_F002", "Ses01M_script01_1_M001"}
    assert all(got[i].attributes == {"valence": 2.5, "arousal": 2.5, "dominance": 2.5} for i in unlabelled)
    # the labelled utterances are exactly the default's, in the same order and with the same fields
    assert [u for u in utts if u.label != NO_LABEL] == before
    assert got["Ses01F_impro01_F001"].speaker == "Ses01F" and got["Ses01F_impro01_F001"].session == "Session1"
    # unknown labels and missing audio are still skipped
    (iemocap / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "Ses01F_impro01_F002.wav").unlink()
    corpus.load()
    assert corpus.unlabelled == {"fru": 1, "sur": 1} and len(corpus.problems) == 1


def test_iemocap_six_classes_and_other_merges(iemocap: Path) -> None:
    six = IemocapCorpus(str(iemocap), labels=["neu", "hap", "ang", "sad", "exc", "fru"], merge={})
    utts = six.load()
    assert six.labels == ["neu", "hap", "ang", "sad", "exc", "fru"]
    assert {u.label for u in utts} == {"neu", "hap", "ang", "sad", "exc", "fru"}
    assert _by_id(utts)["Ses01F_impro01_M000"].label == "exc"  # not merged
    assert six.dropped == {"xxx": 1, "sur": 1} and six.problems == []
    with pytest.raises(ValueError, match="both a label and merged.*merge: {}"):
        IemocapCorpus(str(iemocap), labels=["neu", "hap", "ang", "sad", "exc", "fru"])  # default exc -> hap
    five = IemocapCorpus(str(iemocap), labels=["neu", "hap", "ang", "sad", "fru"])  # default merge applies
    assert {u.label for u in five.load()} == {"neu", "hap", "ang", "sad", "fru"}
    assert five.dropped == {"xxx": 1, "sur": 1}
    arousal = IemocapCorpus(str(iemocap), labels=["low", "high"],
                            merge={"sad": "low", "neu": "low", "ang": "high", "hap": "high", "exc": "high"})
    assert [u.label for u in arousal.load()].count("high") == 4


def test_manifest_attribute_columns(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label,speaker,EmoAct,EmoVal,EmoDom\n"
                               "a.wav,neu,s1,3.5,4,2.25\n"       # 2 all good
                               "b.wav,ang,s2,,4.5,3\n"            # 3 EmoAct empty
                               "sub/c.wav,neu,s2,high,x,1e0\n"    # 4 EmoAct, EmoVal not numbers
                               "d.wav,sad,s3,nan,2,inf\n")        # 5 nan / inf are not numbers either
    corpus = ManifestCorpus(str(path), attributes={"arousal": "EmoAct", "valence": "emoval", "dominance": "EmoDom"},
                            attribute_scales={"arousal": [1, 7], "valence": (1.0, 7.0)})
    assert corpus.attributes == ("arousal", "valence", "dominance")
    assert dict(corpus.attribute_scales) == {"arousal": (1.0, 7.0), "valence": (1.0, 7.0)}
    utts = corpus.load()
    assert [u.attributes for u in utts] == [
        {"arousal": 3.5, "valence": 4.0, "dominance": 2.25}, {"valence": 4.5, "dominance": 3.0},
        {"dominance": 1.0}, {"valence": 2.0}]
    assert [u.label for u in utts] == ["neu", "ang", "neu", "sad"]  # every row kept
    by_kind = {(p.kind, p.key): p for p in corpus.problems}
    assert set(by_kind) == {(MISSING_ATTRIBUTE, "arousal"), (BAD_ATTRIBUTE, "arousal"), (BAD_ATTRIBUTE, "valence"),
                            (BAD_ATTRIBUTE, "dominance")}
    assert by_kind[(MISSING_ATTRIBUTE, "arousal")].lines == (3,) and by_kind[(MISSING_ATTRIBUTE, "arousal")].count == 1
    assert by_kind[(BAD_ATTRIBUTE, "arousal")].lines == (4, 5) and by_kind[(BAD_ATTRIBUTE, "arousal")].count == 2
    assert "'emoact'" in by_kind[(BAD_ATTRIBUTE, "arousal")].message
    assert not any(p.fatal for p in corpus.problems)
    # a list names columns that are the attributes' names; no attributes: none read, as before
    listed = ManifestCorpus(str(path), attributes=["EmoVal"])
    assert listed.attributes == ("EmoVal",) and listed.load()[0].attributes == {"EmoVal": 4.0}
    plain = ManifestCorpus(str(path))
    assert plain.attributes == () and all(u.attributes == {} for u in plain.load()) and plain.problems == []


def test_manifest_attribute_options_are_checked(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,label,speaker,act\na.wav,neu,s1,3\n")
    with pytest.raises(ValueError, match="no column 'EmoAct' for attribute 'arousal'"):
        ManifestCorpus(str(path), attributes={"arousal": "EmoAct"})
    with pytest.raises(ValueError, match="'speaker' column"):
        ManifestCorpus(str(path), attributes={"arousal": "speaker"})
    with pytest.raises(ValueError, match="not one of attributes"):
        ManifestCorpus(str(path), attributes={"arousal": "act"}, attribute_scales={"valence": [1, 5]})
    for bad in ([5, 1], [1], "1-5", [1, "x"], [1, float("inf")]):
        with pytest.raises(ValueError, match="attribute_scales"):
            ManifestCorpus(str(path), attributes={"arousal": "act"}, attribute_scales={"arousal": bad})


def test_manifest_regression_only_and_unlabelled_rows(tmp_path: Path) -> None:
    path = _manifest(tmp_path, "path,speaker,arousal,valence\na.wav,s1,3,4\nb.wav,s2,,\nsub/c.wav,s2,2,\n")
    corpus = ManifestCorpus(str(path), attributes=["arousal", "valence"])  # no label column
    assert corpus.labels == []
    utts = corpus.load()
    assert [(u.id, u.label, u.attributes) for u in utts] == [
        ("a", NO_LABEL, {"arousal": 3.0, "valence": 4.0}), ("c", NO_LABEL, {"arousal": 2.0})]
    skipped = [p for p in corpus.problems if "neither a label nor any attribute" in p.message]
    assert len(skipped) == 1 and skipped[0].lines == (3,)
    # the missing cells of the skipped row are not counted; only the kept row's
    assert {(p.kind, p.key): p.lines for p in corpus.problems if p.kind} == {(MISSING_ATTRIBUTE, "valence"): (4,)}
    with pytest.raises(ValueError, match="'label'.*label may be left out when attributes"):
        ManifestCorpus(str(path))
    # with a label column: an empty label is NO_LABEL; keep_unlabelled keeps labels outside `labels`
    mixed = _manifest(tmp_path, "path,label,speaker,arousal\na.wav,neu,s1,3\nb.wav,,s1,2\nsub/c.wav,fru,s2,4\n"
                                "d.wav,ang,s2,5\n")
    m = ManifestCorpus(str(mixed), labels=["neu", "ang"], attributes=["arousal"])
    assert [(u.id, u.label) for u in m.load()] == [("a", "neu"), ("b", NO_LABEL), ("d", "ang")]
    assert m.dropped == {"fru": 1} and m.unlabelled == {}
    k = ManifestCorpus(str(mixed), labels=["neu", "ang"], attributes=["arousal"], keep_unlabelled=True)
    assert [(u.id, u.label) for u in k.load()] == [("a", "neu"), ("b", NO_LABEL), ("c", NO_LABEL), ("d", "ang")]
    assert k.dropped == {} and k.unlabelled == {"fru": 1} and not [p for p in k.problems if p.kind == DROPPED_LABEL]
    # without attributes an empty label cell still skips its row (as before)
    assert [u.id for u in ManifestCorpus(str(mixed), labels=["neu", "ang"]).load()] == ["a", "d"]
