"""The RAVDESS and CREMA-D readers: generated miniatures, full-size listings of empty files, quirks, options, runs."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf

from corpora.crema_d import KNOWN_ODD, MISSING_CLIPS, CremaDCorpus, fold_of
from corpora.crema_d import parse_name as crema_parse
from corpora.ravdess import ACTORS, EMOBOX_FOLDS, RELEASE_COUNTS, RavdessCorpus, design, parse_name
from ser_plugins import cli
from ser_plugins.data.folds import check_folds, make_folds
from ser_plugins.plugins import registry
from ser_plugins.plugins.contracts import DROPPED_LABEL, DUPLICATE_AUDIO
from ser_plugins.recipe import load_recipe
from ser_plugins.testing import check_corpus
from ser_plugins.training.runner import Runner


@pytest.fixture(scope="module")
def rv_mini(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("ravdess") / "ravdess"
    return root, RavdessCorpus.generate(str(root), seed=0, utterances_per_speaker=16)


@pytest.fixture(scope="module")
def cd_mini(tmp_path_factory) -> tuple:
    root = tmp_path_factory.mktemp("crema") / "CREMA-D"
    return root, CremaDCorpus.generate(str(root), seed=0, utterances_per_speaker=18)


def _kinds(corpus) -> Dict[str, int]:
    out: Counter = Counter()
    for p in corpus.problems:
        out[p.kind] += p.count
    return dict(out)


def _wav(path: Path, seconds: float = 0.1, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * rate), dtype=np.float32), rate, subtype="PCM_16")
    return path


def _tree_digest(root: Path) -> Dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------- RAVDESS
def test_ravdess_names_parse_to_the_documented_codes() -> None:
    codes, kind, _ = parse_name("03-01-06-01-02-01-12")
    assert kind == "" and codes.label == "fea" and codes.channel == "speech"
    assert (codes.modality, codes.intensity, codes.statement, codes.repetition) == ("03", "01", "02", "01")
    assert codes.actor == "12" and codes.gender == "female" and parse_name("03-01-06-01-02-01-11")[0].gender == "male"
    assert parse_name("03-02-03-02-01-02-05")[0].channel == "song"
    for stem, kind in (
        ("03-01-06-01-02-01", "bad_name"),
        ("3-1-6-1-2-1-12", "bad_name"),
        ("03-01-09-01-01-01-01", "bad_code"),
        ("03-01-01-02-01-01-01", "bad_code"),
        ("03-02-07-01-01-01-01", "bad_code"),
        ("03-01-01-01-01-01-25", "bad_code"),
        ("04-01-01-01-01-01-01", "bad_code"),
        ("03-01-01-01-03-01-01", "bad_code"),
    ):
        assert parse_name(stem)[:2] == (None, kind), stem


def test_ravdess_miniature_reads_in_the_release_layout(rv_mini) -> None:
    root, summary = rv_mini
    assert (root / "Audio_Speech_Actors_01-24" / "Actor_01").is_dir() and not (
        root / "Audio_Song_Actors_01-24" / "Actor_18"
    ).exists()
    corpus = RavdessCorpus(str(root))
    utts = corpus.load()
    assert corpus.labels == ["neu", "cal", "hap", "sad", "ang", "fea", "dis", "sur"]
    assert corpus.counts == summary["counts"]["speech"] and len(utts) == 6 * 16
    assert corpus.left_out == {"song": summary["files"] - 96}
    assert _kinds(corpus) == {"hidden_file": 2, "bad_name": 1}  # .DS_Store, ._ file, "... copy.wav"
    assert not any(p.fatal for p in corpus.problems)
    by_id = {u.id: u for u in utts}
    u = by_id["03-01-05-02-01-01-09"]
    assert (u.label, u.speaker, u.session, u.fold) == ("ang", "Actor_09", "Actor_09", "fold_3")
    assert sf.info(u.path).samplerate == 48000 and 1.0 <= sf.info(u.path).duration <= 2.01
    assert {u.fold for u in utts} == set(EMOBOX_FOLDS)  # one actor of every EmoBox fold
    assert all(u.speaker[len("Actor_") :] in EMOBOX_FOLDS[u.fold] for u in utts)
    assert corpus.speaker_info["Actor_01"] == {"gender": "male"} and corpus.speaker_info["Actor_04"] == {
        "gender": "female"
    }
    check_corpus("ravdess", root=str(root))


def test_ravdess_full_release_listing_has_the_documented_counts(tmp_path) -> None:
    """1440 speech and 1012 song names (24 x 60, 23 x 44) as empty files: counted from the names alone."""
    root = tmp_path / "RAVDESS"
    speech_emotions = [f"{e:02d}" for e in range(1, 9)]
    song_emotions = [f"{e:02d}" for e in range(1, 7)]
    n = 0
    for actor in range(1, 25):
        folder = root / f"Actor_{actor:02d}"
        folder.mkdir(parents=True)
        for vc, emotions in (("01", speech_emotions), ("02", song_emotions)):
            if vc == "02" and actor == 18:
                continue
            for e in emotions:
                for i in ("01",) if e == "01" else ("01", "02"):
                    for s in ("01", "02"):
                        for r in ("01", "02"):
                            (folder / f"03-{vc}-{e}-{i}-{s}-{r}-{actor:02d}.wav").touch()
                            n += 1
    assert n == 1440 + 1012
    speech = RavdessCorpus(str(root), check_audio=False)
    utts = speech.load()
    assert len(utts) == 1440 and speech.counts == dict(RELEASE_COUNTS["speech"]) and speech.problems == []
    assert speech.label_counts == speech.counts and speech.speaker_counts == {f"Actor_{a}": 60 for a in ACTORS}
    assert speech.counts == {"neu": 96, **{k: 192 for k in ("cal", "hap", "sad", "ang", "fea", "dis", "sur")}}
    assert Counter(u.fold for u in utts) == {f: 240 for f in EMOBOX_FOLDS}  # six folds of four actors
    song = RavdessCorpus(str(root), vocal_channel="song", check_audio=False)
    assert len(song.load()) == 1012 and song.counts == dict(RELEASE_COUNTS["song"]) and song.problems == []
    assert song.labels == ["neu", "cal", "hap", "sad", "ang", "fea"] and "Actor_18" not in song.speaker_info
    both = RavdessCorpus(str(root), vocal_channel="both", check_audio=False)
    assert len(both.load()) == 2452
    strong = RavdessCorpus(str(root), intensity="strong", check_audio=False)
    assert (
        len(strong.load()) == 7 * 96 and "neu" not in strong.labels and strong.left_out == {"song": 1012, "normal": 768}
    )
    # protocols: EmoBox's folds (default), leave-one-actor-out (session), speaker-independent k-fold
    assert len(make_folds(utts, speech.default_protocol, dev="none")) == 6
    assert len(make_folds(utts, "session", dev="none")) == 24
    k5 = make_folds(utts, "speaker", dev="speaker", num_folds=5)
    speaker_of = {u.id: u.speaker for u in utts}
    assert len(k5) == 5 and not check_folds(k5, {u.id: u.label for u in utts}, speech.labels, speaker_of)
    # audio checked (the default): empty files are problems, not utterances
    checked = RavdessCorpus(str(root))
    assert checked.load() == [] and _kinds(checked)["empty_audio"] == 1440
    assert any(p.fatal and p.kind == "no_utterances" for p in checked.problems)


def test_ravdess_quirks_are_counted_never_silently_skipped(tmp_path) -> None:
    root = tmp_path / "r"
    good = [
        _wav(root / "Actor_01" / "03-01-05-01-01-01-01.wav"),
        _wav(root / "Actor_02" / "03-01-04-02-01-02-02.wav"),
        _wav(root / "Actor_02" / "03-01-01-01-02-02-02.wav"),
    ]
    _wav(root / "03-01-03-01-01-01-03.wav")  # a loose file next to the actor folders: read, its name gives the actor
    (root / "Actor_01" / "._03-01-05-01-01-01-01.wav").write_bytes(b"\x00\x05\x16\x07")
    (root / ".DS_Store").write_bytes(b"x")
    (root / "__MACOSX" / "Actor_01").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "Actor_01" / "extra").mkdir()
    _wav(root / "Actor_25" / "03-01-05-01-01-01-25.wav")
    _wav(root / "Actor_01" / "03-01-05-01-01-01-01 (2).wav")  # bad name
    _wav(root / "Actor_01" / "03-01-09-01-01-01-01.wav")  # emotion 09
    _wav(root / "Actor_01" / "03-01-01-02-01-01-01.wav")  # neutral, strong
    _wav(root / "Actor_01" / "03-02-08-01-01-01-01.wav")  # sung surprise
    _wav(root / "Actor_01" / "03-01-05-01-01-01-07.wav")  # actor 07 in Actor_01
    (root / "Actor_01" / "02-01-05-01-01-01-01.mp4").write_bytes(b"video")  # video-only
    (root / "Actor_01" / "01-01-05-01-01-01-01.mp4").write_bytes(b"video")  # full-AV
    (root / "Actor_01" / "notes.txt").write_text("x")
    (root / "Actor_02" / "03-01-06-01-01-01-02.wav").write_text("version https://git-lfs.github.com/spec/v1\n")
    (root / "Actor_02" / "03-01-07-01-01-01-02.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 24)
    # the same recording again in a container folder (the Kaggle copy holds every file twice)
    _wav(root / "audio_speech_actors_01-24" / "Actor_01" / "03-01-05-01-01-01-01.wav")
    corpus = RavdessCorpus(str(root))
    utts = corpus.load()
    assert sorted(u.id for u in utts) == sorted([p.stem for p in good] + ["03-01-03-01-01-01-03"])
    assert {u.path for u in utts} >= {str(p) for p in good}
    kinds = _kinds(corpus)
    assert kinds == {
        "hidden_file": 3,
        "extra_folder": 3,
        "bad_name": 1,
        "bad_code": 3,
        "actor_mismatch": 1,
        "not_audio_only": 2,
        "extra_file": 1,
        "not_wav": 1,
        "empty_audio": 1,
        DUPLICATE_AUDIO: 1,
        "empty_label": 4,  # cal fea dis sur: no usable file
    }, kinds
    messages = "\n".join(str(p) for p in corpus.problems)
    assert "git-lfs pointer" in messages and "header only" in messages and "video-only" in messages
    assert "03-01-05-01-01-01-01 (2).wav" in messages and "Actor_25" in messages
    assert not any(p.fatal for p in corpus.problems)
    song = RavdessCorpus(str(root), vocal_channel="song")
    song.load()
    assert any(p.kind == "missing_channel" and p.key == "song" for p in song.problems)
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        RavdessCorpus(str(root / "Actor_01")).load()
    (tmp_path / "zips").mkdir()
    (tmp_path / "zips" / "Audio_Speech_Actors_01-24.zip").write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match="extract"):
        RavdessCorpus(str(tmp_path / "zips")).load()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RavdessCorpus(str(tmp_path / "nowhere")).load()


def test_ravdess_options(rv_mini) -> None:
    root, summary = rv_mini
    merged = RavdessCorpus(str(root), merge={"cal": "neu"})
    merged.load()
    assert (
        merged.labels == ["neu", "hap", "sad", "ang", "fea", "dis", "sur"]
        and merged.label_counts["neu"] == 24
        and merged.counts["cal"] == 12
    )
    by_code = RavdessCorpus(str(root), merge={"02": "neu"})
    assert by_code.labels == merged.labels
    song = RavdessCorpus(str(root), vocal_channel="song")
    utts = song.load()
    assert song.counts == summary["counts"]["song"] and {u.speaker for u in utts} == {
        f"Actor_{a}" for a in ("01", "03", "04", "06", "09")
    }  # 18 has no song, as in the release
    assert all(u.id.startswith("03-02-") for u in utts) and song.left_out == {"speech": 96}
    assert len(RavdessCorpus(str(root), vocal_channel="both").load()) == summary["files"]
    normal = RavdessCorpus(str(root), intensity="normal")
    normal.load()
    assert normal.counts == {"neu": 12, **{k: 6 for k in ("cal", "hap", "sad", "ang", "fea", "dis", "sur")}}
    assert normal.left_out == {"song": 60, "strong": 42}
    two = RavdessCorpus(str(root), labels=["ang", "sad"])
    assert len(two.load()) == 24
    dropped = {p.key: p.count for p in two.problems if p.kind == DROPPED_LABEL}
    assert dropped == {k: 12 for k in ("neu", "cal", "hap", "fea", "dis", "sur")}
    for bad in (
        {"vocal_channel": "sing"},
        {"intensity": "high"},
        {"labels": ["ang", "xyz"]},
        {"merge": {"xyz": "ang"}},
        {"labels": ["ang", "neu"], "merge": {"cal": "sad"}},
        {"labels": ["ang", "ang"]},
    ):
        with pytest.raises(ValueError):
            RavdessCorpus(str(root), **bad)


# ---------------------------------------------------------------------------------- CREMA-D
def _all_design() -> List[str]:
    """The design: per actor, IEO at three levels (neutral: XX) and the other 11 sentences at XX, six emotions."""
    sentences = "IEO TIE IOM IWW TAI MTI IWL ITH DFA ITS TSI WSI".split()
    out = []
    for actor in range(1001, 1092):
        for e in "ANG DIS FEA HAP NEU SAD".split():
            levels = ("XX",) if e == "NEU" else ("LO", "MD", "HI")
            out += [f"{actor}_IEO_{e}_{lv}" for lv in levels] + [f"{actor}_{s}_{e}_XX" for s in sentences[1:]]
    return out


def _crema_release_names() -> List[str]:
    """The 7442 clip names of the release: the design (7462) less the 20 clips its AudioWAV listing lacks."""
    absent = {"1002_TIE_NEU_XX", "1076_ITS_NEU_XX"} | {
        f"{a}_{s}_{e}_XX"
        for a, s in (("1008", "WSI"), ("1009", "MTI"), ("1019", "ITH"))
        for e in "ANG DIS FEA HAP NEU SAD".split()
    }
    return [n for n in _all_design() if n not in absent]


def test_crema_names_parse_to_the_documented_codes() -> None:
    assert crema_parse("1001_DFA_ANG_XX") == (("1001", "DFA", "ANG", "XX"), "", "")
    assert crema_parse("1040_ITH_SAD_X")[0] == ("1040", "ITH", "SAD", "XX")  # the release's old misnamed file
    for stem, kind in (
        ("1001_DFA_ANG", "bad_name"),
        ("1001_DFA_ANG_XX (1)", "bad_name"),
        ("1100_DFA_ANG_XX", "bad_code"),
        ("1001_XYZ_ANG_XX", "bad_code"),
        ("1001_DFA_CAL_XX", "bad_code"),
        ("1001_DFA_ANG_ZZ", "bad_code"),
    ):
        assert crema_parse(stem)[:2] == (None, kind), stem
    assert [fold_of(str(a), 5) for a in (1001, 1002, 1005, 1006, 1091)] == [
        "fold_1",
        "fold_2",
        "fold_5",
        "fold_1",
        "fold_1",
    ]


def test_crema_full_release_listing_has_the_documented_counts(tmp_path) -> None:
    """7442 clips (Cao et al. 2014): 1271 per emotion, 1087 neutral; counted from the names alone."""
    names = _crema_release_names()
    assert len(_all_design()) == 7462 and len(names) == 7442
    assert sorted(set(_all_design()) - set(names)) == sorted(MISSING_CLIPS)
    audio = tmp_path / "CREMA-D" / "AudioWAV"
    audio.mkdir(parents=True)
    for n in names:
        (audio / f"{n}.wav").touch()
    corpus = CremaDCorpus(str(audio.parent), check_audio=False)
    utts = corpus.load()
    assert len(utts) == 7442 and corpus.counts == {
        "ang": 1271,
        "dis": 1271,
        "fea": 1271,
        "hap": 1271,
        "sad": 1271,
        "neu": 1087,
    }
    assert Counter(u.id.split("_")[3] for u in utts) == {"XX": 6077, "LO": 455, "MD": 455, "HI": 455}
    assert (
        corpus.speaker_counts["1001"] == 82 and corpus.speaker_counts["1008"] == 76 and len(corpus.speaker_counts) == 91
    )
    actors_per_fold = {f: len({u.speaker for u in utts if u.fold == f}) for f in {u.fold for u in utts}}
    assert actors_per_fold == {"fold_1": 19, "fold_2": 18, "fold_3": 18, "fold_4": 18, "fold_5": 18}
    assert all(u.fold == fold_of(u.speaker, 5) for u in utts) and len({u.speaker for u in utts}) == 91
    assert _kinds(corpus) == {"known_odd_file": 1} and next(iter(KNOWN_ODD)) in str(corpus.problems[0])
    folds = make_folds(utts, corpus.default_protocol, dev="speaker")
    speaker_of = {u.id: u.speaker for u in utts}
    assert len(folds) == 5 and not check_folds(folds, {u.id: u.label for u in utts}, corpus.labels, speaker_of)
    skipped = CremaDCorpus(str(audio.parent), check_audio=False, skip_known_odd=True)
    skipped.load()
    assert skipped.counts["sad"] == 1270 and skipped.left_out == {"known_odd": 1} and skipped.problems == []
    hi = CremaDCorpus(str(audio.parent), check_audio=False, levels=["HI"])
    assert len(hi.load()) == 455 and hi.left_out == {"XX": 6077, "LO": 455, "MD": 455}
    # an older copy: 1040_ITH_SAD_X.wav read as ..._XX, counted
    (audio / "1040_ITH_SAD_XX.wav").rename(audio / "1040_ITH_SAD_X.wav")
    old = CremaDCorpus(str(audio.parent), check_audio=False)
    old_utts = old.load()
    assert len(old_utts) == 7442 and old.counts["sad"] == 1271 and _kinds(old) == {"known_odd_file": 1, "odd_name": 1}
    assert "1040_ITH_SAD_XX" in {u.id for u in old_utts}


def test_crema_miniature_reads_in_the_release_layout(cd_mini) -> None:
    root, summary = cd_mini
    corpus = CremaDCorpus(str(root))
    utts = corpus.load()
    assert corpus.labels == ["ang", "dis", "fea", "hap", "neu", "sad"] and corpus.counts == summary["counts"]
    assert len(utts) == 5 * 18 - 1  # the empty file is skipped
    assert _kinds(corpus) == {"hidden_file": 2, "bad_name": 1, "odd_name": 1, "empty_audio": 1}
    odd = next(u for u in utts if u.path.endswith("_X.wav"))
    assert odd.id.endswith("_SAD_XX") and odd.label == "sad" and odd.speaker == "1002"
    assert {u.fold for u in utts} == {f"fold_{k}" for k in range(1, 6)}
    assert {(u.speaker, u.fold) for u in utts} == {(f"100{k}", f"fold_{k}") for k in range(1, 6)}
    assert corpus.speaker_info["1001"]["gender"] == "male" and corpus.speaker_info["1002"]["sex"] == "Female"
    assert sf.info(utts[0].path).samplerate == 16000
    check_corpus("crema_d", root=str(root))


def test_crema_voted_labels_from_the_summary_table(cd_mini, tmp_path) -> None:
    root, summary = cd_mini
    voted = CremaDCorpus(str(root), label_source="voted")
    utts = voted.load()
    assert voted.counts == summary["voted"] and voted.no_class == {"tie": summary["voted_ties"]}
    assert len(utts) == sum(summary["voted"].values()) and voted.counts["neu"] > summary["counts"]["neu"]
    intended = {u.id: u.label for u in CremaDCorpus(str(root)).load()}
    assert sum(intended[u.id] != u.label for u in utts) > 0  # weak expressions were heard as neutral
    multi = CremaDCorpus(str(root), label_source="voted", vote="multimodal")
    assert {u.id: u.label for u in multi.load()} == intended  # the miniature's raters saw the faces
    with pytest.raises(ValueError, match="label_source: voted"):
        CremaDCorpus(str(root), vote="face")
    # a hand-made release: a bad vote letter, a clip without a row, a row without a clip, a repeated row
    rel = tmp_path / "rel"
    for n in ("1001_DFA_ANG_XX", "1001_DFA_SAD_XX", "1001_IEO_HAP_HI", "1002_DFA_NEU_XX"):
        _wav(rel / "AudioWAV" / f"{n}.wav")
    (rel / "processedResults").mkdir()
    (rel / "processedResults" / "summaryTable.csv").write_text(
        '"","FileName","VoiceVote","VoiceLevel","FaceVote","FaceLevel","MultiModalVote","MultiModalLevel"\n'
        '"1","1001_DFA_ANG_XX","A","60","A","60","A","60"\n"2","1001_DFA_SAD_XX","Q","60","S","60","S","60"\n'
        '"3","1001_IEO_HAP_HI","H:N","60:50","H","60","H","60"\n"4","1009_DFA_ANG_XX","A","60","A","60","A","60"\n'
        '"5","1001_DFA_ANG_XX","D","60","A","60","A","60"\n'
    )
    hand = CremaDCorpus(str(rel), label_source="voted")
    assert [(u.id, u.label) for u in hand.load()] == [("1001_DFA_ANG_XX", "ang")]
    assert _kinds(hand) == {"bad_table": 1, "bad_vote": 1, "no_vote": 1, "missing_audio": 1, "empty_label": 5}
    assert hand.no_class == {"tie": 1}
    (rel / "processedResults" / "summaryTable.csv").unlink()
    missing = CremaDCorpus(str(rel), label_source="voted")
    assert missing.load() == [] and any(p.fatal and "summaryTable.csv" in str(p) for p in missing.problems)


def test_crema_quirks_and_options(tmp_path, cd_mini) -> None:
    rel = tmp_path / "CREMA-D"
    for n in ("1001_DFA_ANG_XX", "1001_IEO_SAD_LO", "1002_TIE_NEU_XX", "1002_IEO_DIS_HI", "1040_ITH_SAD_X"):
        _wav(rel / "AudioWAV" / f"{n}.wav")
    _wav(rel / "AudioWAV" / "1040_ITH_SAD_XX.wav")  # both spellings of one clip: a duplicate
    for n in ("1100_DFA_ANG_XX", "1001_XYZ_ANG_XX", "1001_DFA_CAL_XX", "1001_DFA_ANG_ZZ", "1001_DFA_ANG"):
        _wav(rel / "AudioWAV" / f"{n}.wav")
    (rel / "AudioWAV" / "1001_DFA_HAP_XX.wav").write_text("version https://git-lfs.github.com/spec/v1\noid x\n")
    (rel / "AudioWAV" / "1001_DFA_HAP_XX.mp3").write_bytes(b"ID3")
    (rel / "AudioWAV" / "old").mkdir()
    (rel / "AudioWAV" / "._1001_DFA_ANG_XX.wav").write_bytes(b"x")
    (rel / "VideoDemographics.csv").write_text(
        '"ActorID","Age","Sex","Race","Ethnicity"\n1001,51,"Male","Caucasian",'
        '"Not Hispanic"\nabc,1,"Female","Asian","Not Hispanic"\n'
    )
    corpus = CremaDCorpus(str(rel))
    utts = corpus.load()
    assert sorted(u.id for u in utts) == [
        "1001_DFA_ANG_XX",
        "1001_IEO_SAD_LO",
        "1002_IEO_DIS_HI",
        "1002_TIE_NEU_XX",
        "1040_ITH_SAD_XX",
    ]
    kinds = _kinds(corpus)
    assert kinds == {
        "hidden_file": 1,
        "extra_folder": 1,
        "extra_file": 1,
        "bad_name": 1,
        "bad_code": 4,
        "odd_name": 1,
        DUPLICATE_AUDIO: 1,
        "not_wav": 1,
        "demographics": 3,
        "empty_label": 2,  # fea, and hap (a git-lfs stub)
    }, kinds
    assert corpus.speaker_info == {
        "1001": {"age": "51", "sex": "Male", "race": "Caucasian", "ethnicity": "Not Hispanic", "gender": "male"}
    }
    merged = CremaDCorpus(str(rel), merge={"DIS": "ang"})
    merged.load()
    assert (
        merged.labels == ["ang", "fea", "hap", "neu", "sad"]
        and merged.label_counts["ang"] == 2
        and merged.counts == {"ang": 1, "dis": 1, "neu": 1, "sad": 2}
    )
    few = CremaDCorpus(str(rel), labels=["neu", "sad"])
    assert len(few.load()) == 3 and {p.key for p in few.problems if p.kind == DROPPED_LABEL} == {"ang", "dis"}
    assert not any("has no usable" in str(p) for p in few.problems)
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        CremaDCorpus(str(rel / "AudioWAV")).load()
    for bad in (
        {"label_source": "crowd"},
        {"vote": "ears", "label_source": "voted"},
        {"levels": ["HIGH"]},
        {"num_folds": 1},
        {"labels": ["cal"]},
    ):
        with pytest.raises(ValueError):
            CremaDCorpus(str(rel), **bad)


# ---------------------------------------------------------------------------------- generators, runs
def test_generators_are_deterministic_and_refuse_to_overwrite(tmp_path) -> None:
    for cls in (RavdessCorpus, CremaDCorpus):
        a, b, c = (tmp_path / cls.__name__ / k for k in "abc")
        assert cls.generate(str(a), seed=3, utterances_per_speaker=2) == cls.generate(
            str(b), seed=3, utterances_per_speaker=2
        )
        assert _tree_digest(a) == _tree_digest(b)
        cls.generate(str(c), seed=4, utterances_per_speaker=2)
        assert _tree_digest(a) != _tree_digest(c)
        with pytest.raises(FileExistsError):
            cls.generate(str(a), seed=3, utterances_per_speaker=2)
        cls.generate(str(a), seed=4, utterances_per_speaker=2, overwrite=True)
        assert _tree_digest(a) == _tree_digest(c)
        (a / "README.txt").unlink()
        with pytest.raises(FileExistsError, match="refusing"):
            cls.generate(str(a), seed=4, utterances_per_speaker=2, overwrite=True)
    assert design("speech")[:8] == [(f"0{e}", "01", "01", "01") for e in range(1, 9)]
    assert len(design("speech")) == 60 and len(design("song")) == 44


def test_demo_corpus_cli_generates_either(tmp_path, capsys) -> None:
    for name in ("ravdess", "crema_d"):
        out = tmp_path / name
        assert (
            cli.main(["demo-corpus", str(out), "--corpus", name, "--utterances-per-speaker", "2", "--seed", "1"]) == 0
        )
        assert json.loads((out / "summary.json").read_text())["utterances_per_speaker"] == 2
        assert registry.create_corpus(name, root=str(out)).load()
    assert "corpus written to" in capsys.readouterr().out


@pytest.mark.parametrize("name,fixture,n_folds", [("ravdess", "rv_mini", 6), ("crema_d", "cd_mini", 5)])
def test_a_run_on_each_miniature_with_its_default_protocol(name, fixture, n_folds, request, tmp_path) -> None:
    root, _summary = request.getfixturevalue(fixture)
    recipe = load_recipe(
        {
            "name": f"{name}-mini",
            "seed": 0,
            "corpus": {"name": name, "root": str(root)},
            "upstream": {"name": "fbank", "n_mels": 24},
            "aggregator": "stats",
            "classifier": "linear",
            "training": {"max_steps": 20, "batch_size": 16},
            "output": {"tensorboard": False},
        }
    )
    summary = Runner(recipe, tmp_path / "run", progress=False).run()
    assert len(summary.folds) == n_folds and sorted(summary.folds) == [f"fold_{k}" for k in range(1, n_folds + 1)]
    assert 0.0 <= summary.mean_std["ua"]["mean"] <= 1.0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert all(f["test"] > 0 and f["train"] > 0 for f in run["folds"])
