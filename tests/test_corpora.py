"""IEMOCAP and manifest readers on small hand-written fixtures."""
from __future__ import annotations

from contextlib import nullcontext as _nullcontext
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import soundfile as sf

from corpora.iemocap import IemocapCorpus, dialog_kind, parse_label_line
from corpora.manifest import ManifestCorpus

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
