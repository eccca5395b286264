"""The EmoBox reader (corpora.emobox): EmoBox's prepared data read unchanged, its folds and dev rules, the
problems it counts, a run and a grid on its generated miniature, and the EmoBox-layout table of ``ser report``."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import soundfile as sf
import yaml

from corpora.emobox import (
    EMOBOX_SEED,
    MINI_FOLDS,
    MINI_SPLIT,
    EmoboxCorpus,
    EmoboxError,
    emobox_dev_split,
    generate_miniature,
)
from ser_plugins import cli
from ser_plugins.data.folds import make_folds
from ser_plugins.plugins import registry
from ser_plugins.plugins.contracts import DUPLICATE_AUDIO
from ser_plugins.results.report import emobox_rows, to_emobox
from ser_plugins.testing import check_corpus

UPS = 5  # utterances per speaker: minifolds 6 speakers x 5 = 30, minisplit 4 x 5 = 20 (two of them unmapped)


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """The generated miniature's folder (``data/`` metadata, ``downloads/`` audio); read-only for the tests."""
    root = tmp_path_factory.mktemp("emobox") / "EmoBox"
    generate_miniature(str(root), seed=0, utterances_per_speaker=UPS)
    return root


@pytest.fixture
def copy(mini, tmp_path) -> Path:
    """A private copy of the miniature a test may damage."""
    dst = tmp_path / "EmoBox"
    shutil.copytree(mini, dst)
    return dst


def _keys(path: Path) -> List[str]:
    return [json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()]


def _fold_file(root: Path, ds: str, k: int, part: str) -> Path:
    return root / "data" / ds / f"fold_{k}" / f"{ds}_{part}_fold_{k}.jsonl"


def _kinds(corpus) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for p in corpus.problems:
        out[p.kind] = out.get(p.kind, 0) + p.count
    return out


def _corpus(root: Path, ds: str, **options) -> EmoboxCorpus:
    corpus = registry.create_corpus("emobox", root=str(root / "data"), dataset=ds, **options)
    assert isinstance(corpus, EmoboxCorpus)
    return corpus


# ---------------------------------------------------------------------------------- layout and contract
def test_miniature_is_emobox_layout_and_passes_the_contract_checks(mini) -> None:
    summary = json.loads((mini / "summary.json").read_text())
    assert summary["datasets"][MINI_FOLDS]["utterances"] == 30 and summary["datasets"][MINI_SPLIT]["utterances"] == 20
    line = json.loads((mini / "data" / MINI_FOLDS / f"{MINI_FOLDS}.jsonl").read_text().splitlines()[0])
    assert set(line) == {"key", "dataset", "wav", "type", "sample_rate", "num_frame", "task", "length", "emo",
                         "channel"}  # EmoBox's fields
    assert line["wav"].startswith(f"downloads/{MINI_FOLDS}/")  # relative to EmoBox's checkout, as EmoBox's are
    info = sf.info(str(mini / line["wav"]))
    assert info.samplerate == 16000 and info.channels == 1 and info.duration <= 1.0
    assert (mini / "data" / MINI_FOLDS / "fold_1" / f"{MINI_FOLDS}_train_fold1.jsonl").is_file()  # unread copy
    assert not (mini / "data" / MINI_FOLDS / "fold_1" / f"{MINI_FOLDS}_valid_fold_1.jsonl").exists()
    assert _fold_file(mini, MINI_SPLIT, 1, "valid").is_file()
    for ds in (MINI_FOLDS, MINI_SPLIT):
        assert check_corpus("emobox", root=str(mini / "data"), dataset=ds) == [
            "declaration", "load", "utterances", "problems", "deterministic"]
    assert registry.load("corpus", "emobox").can_generate()


def test_same_seed_same_files_and_no_silent_overwrite(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_miniature(str(a), seed=3, utterances_per_speaker=5)
    assert cli.main(["demo-corpus", str(b), "--corpus", "emobox", "--seed", "3", "--utterances-per-speaker", "5"]) == 0
    for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    with pytest.raises(FileExistsError):
        generate_miniature(str(a), seed=3, utterances_per_speaker=5)
    generate_miniature(str(a), seed=3, utterances_per_speaker=5, overwrite=True)  # a marked miniature: allowed
    with pytest.raises(EmoboxError, match="data sets found there: minifolds, minisplit"):
        EmoboxCorpus(str(a / "data"), "emodb")


# ---------------------------------------------------------------------------------- protocol and folds
def test_folds_view_is_exactly_the_fold_lists(mini) -> None:
    corpus = _corpus(mini, MINI_FOLDS)
    assert corpus.default_protocol == "folds" and corpus.view == "folds"
    utts = corpus.load()
    assert corpus.problems == [] and len(utts) == 30
    folds = {f.name: f for f in make_folds(utts, "folds", dev="none")}
    assert sorted(folds) == ["1", "2", "3"]
    for k in (1, 2, 3):
        test, train = _keys(_fold_file(mini, MINI_FOLDS, k, "test")), _keys(_fold_file(mini, MINI_FOLDS, k, "train"))
        assert sorted(u.id for u in utts if u.fold == str(k)) == sorted(test)  # fold k = its test list
        assert sorted(folds[str(k)].test) == sorted(test) and sorted(folds[str(k)].train) == sorted(train)
        lists = corpus.fold_lists[str(k)]
        assert sorted(lists["train"] + lists["dev"]) == sorted(train) and lists["test"] == test
    assert corpus.notes["view"] == "folds" and corpus.notes["folds"] == 3
    assert "protocol.dev" in corpus.notes["dev_applied"]


def test_split_view_uses_the_official_valid_list(mini) -> None:
    corpus = _corpus(mini, MINI_SPLIT)
    assert corpus.default_protocol == "split"
    utts = corpus.load()
    by_split: Dict[str, List[str]] = {}
    for u in utts:
        by_split.setdefault(u.split or "", []).append(u.id)
    mapped = {u.id for u in utts}
    for part, name in (("train", "train"), ("valid", "dev"), ("test", "test")):
        listed = [k for k in _keys(_fold_file(mini, MINI_SPLIT, 1, part)) if k in mapped]
        assert sorted(by_split[name]) == sorted(listed), part
    (fold,) = make_folds(utts, "split", dev="speaker")
    assert sorted(fold.dev) == sorted(by_split["dev"])  # the core keeps the corpus's dev
    assert corpus.notes["dev"]["split"].startswith("official valid list (minisplit_valid_fold_1.jsonl)")


def test_one_fold_as_a_split_has_a_speaker_disjoint_dev(mini) -> None:
    corpus = _corpus(mini, MINI_FOLDS, fold=2)
    assert corpus.default_protocol == "split" and corpus.view == "split"
    utts = corpus.load()
    spk = {u.id: u.speaker for u in utts}
    parts = {name: [u.id for u in utts if u.split == name] for name in ("train", "dev", "test")}
    assert sorted(parts["test"]) == sorted(_keys(_fold_file(mini, MINI_FOLDS, 2, "test")))
    assert sorted(parts["train"] + parts["dev"]) == sorted(_keys(_fold_file(mini, MINI_FOLDS, 2, "train")))
    dev_spk = {spk[i] for i in parts["dev"]}
    assert dev_spk and not dev_spk & {spk[i] for i in parts["train"]} and not dev_spk & {spk[i] for i in parts["test"]}
    assert len(parts["dev"]) >= 0.2 * (len(parts["train"]) + len(parts["dev"]))
    rule = corpus.notes["dev"]["split"]
    assert rule.startswith(f"speaker-disjoint: training speaker(s) {', '.join(sorted(dev_spk))}")
    assert f"seed {EMOBOX_SEED}" in rule and corpus.notes["speakers"] == "data.seg.wrd.stm (6 speakers)"
    with pytest.raises(EmoboxError, match=r"has no fold 4 \(its folds: 1, 2, 3\)"):
        _corpus(mini, MINI_FOLDS, fold=4)


def test_emobox_80_20_seed_12_rule_when_speakers_are_unknown(copy) -> None:
    train = _keys(_fold_file(copy, MINI_FOLDS, 1, "train"))
    # EmoDataset's split_sets as meant: random.seed(12), shuffle an index array, the first int(0.8 n) train
    random.seed(12)
    index = np.arange(len(train))
    random.shuffle(index)
    cut = int(len(train) * 0.8)
    expected_dev = [train[i] for i in index[cut:]]
    assert emobox_dev_split(train) == ([train[i] for i in index[:cut]], expected_dev)

    chosen = _corpus(copy, MINI_FOLDS, fold=1, dev_rule="emobox")  # speakers known, the rule asked for
    utts = chosen.load()
    assert sorted(u.id for u in utts if u.split == "dev") == sorted(expected_dev)
    assert "EmoBox's 80/20 random split of the train list (seed 12; dev_rule emobox" in chosen.notes["dev"]["split"]

    (copy / "data" / MINI_FOLDS / "data.seg.wrd.stm").unlink()  # no speakers: EmoBox's rule by default
    corpus = _corpus(copy, MINI_FOLDS, fold=1)
    utts = corpus.load()
    assert {u.speaker for u in utts} == {"unknown"} and corpus.notes["speakers"].startswith("unknown")
    dev = [u.id for u in utts if u.split == "dev"]
    assert sorted(dev) == sorted(expected_dev) and len(dev) == len(train) - cut
    assert "EmoBox's 80/20 random split of the train list (seed 12; speakers unknown" in corpus.notes["dev"]["split"]


# ---------------------------------------------------------------------------------- labels and problems
def test_label_map_is_applied_and_labels_and_merge_choose_classes(mini) -> None:
    corpus = _corpus(mini, MINI_FOLDS)
    assert corpus.labels == ["Angry", "Happy", "Neutral", "Sad"]  # exc and hap both map to Happy
    utts = corpus.load()
    raw = {json.loads(t)["key"]: json.loads(t)["emo"]
           for t in (mini / "data" / MINI_FOLDS / f"{MINI_FOLDS}.jsonl").read_text().splitlines()}
    label_map = json.loads((mini / "data" / MINI_FOLDS / "label_map.json").read_text())
    assert all(u.label == label_map[raw[u.id]] for u in utts) and "exc" in raw.values()
    four = _corpus(mini, MINI_FOLDS, labels=["Angry", "Sad"])
    kept = four.load()
    assert {u.label for u in kept} == {"Angry", "Sad"} and set(four.dropped) == {"Happy", "Neutral"}
    assert len(kept) + sum(four.dropped.values()) == 30 and _kinds(four) == {"dropped_label": 30 - len(kept)}
    merged = _corpus(mini, MINI_SPLIT, merge={"surprise": "Happy"})  # a raw emo value mapped by the recipe
    assert len(merged.load()) == 20 and merged.problems == []
    with pytest.raises(EmoboxError, match="not classes of minifolds"):
        _corpus(mini, MINI_FOLDS, labels=["Calm"])


def test_quirks_are_counted_problems_not_silent_skips(copy) -> None:
    meta = copy / "data" / MINI_FOLDS
    main = meta / f"{MINI_FOLDS}.jsonl"
    lines = main.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    (copy / first["wav"]).unlink()  # missing audio
    twin = dict(json.loads(lines[1]), key=f"{MINI_FOLDS}-twin")  # another key, the same audio
    lines += [lines[2], "{not json\n", json.dumps(dict(json.loads(lines[3]), key="odd", emo="fear")) + "\n",
              json.dumps(twin) + "\n"]  # a repeated key, a bad line, an unmapped emo, a duplicate audio
    main.write_text("".join(lines))
    test1 = _fold_file(copy, MINI_FOLDS, 1, "test")
    with open(test1, "a") as fh:  # a fold list naming a key the jsonl lacks; the new rows join fold 1
        fh.write(json.dumps(dict(first, key="ghost")) + "\n" + json.dumps(dict(first, key="odd")) + "\n"
                 + json.dumps(twin) + "\n")
    for k in (2, 3):
        with open(_fold_file(copy, MINI_FOLDS, k, "train"), "a") as fh:
            fh.write(json.dumps(dict(first, key="odd")) + "\n" + json.dumps(twin) + "\n")
    corpus = _corpus(copy, MINI_FOLDS)
    utts = corpus.load()
    assert _kinds(corpus) == {"duplicate_key": 1, "bad_line": 1, "fold_list": 1, "missing_audio": 1,
                              "unmapped_label": 1, DUPLICATE_AUDIO: 1, "no_speaker": 1}  # the twin: not in the STM
    assert not any(p.fatal for p in corpus.problems)
    assert len(utts) == 30 - 1 + 1  # the missing one out, the twin in (duplicates: keep)
    assert _corpus(copy, MINI_FOLDS, duplicates="first").load().__len__() == 29
    assert len(_corpus(copy, MINI_FOLDS, check_audio=False).load()) == 31  # metadata only: the missing row kept
    unmapped = next(p for p in corpus.problems if p.kind == "unmapped_label")
    assert "'fear'" in str(unmapped) and unmapped.lines == (len(lines) - 1,)

    # test lists that overlap cannot be a fold column: fatal, with the way out named
    with open(_fold_file(copy, MINI_FOLDS, 2, "test"), "a") as fh:
        fh.write(lines[1])
    broken = _corpus(copy, MINI_FOLDS)
    broken.load()
    assert any(p.fatal and p.kind == "fold_mismatch" and "corpus.fold: k" in p.message for p in broken.problems)


def test_minisplit_unmapped_emo_is_counted(mini) -> None:
    corpus = _corpus(mini, MINI_SPLIT)
    assert len(corpus.load()) == 18
    (p,) = corpus.problems
    assert p.kind == "unmapped_label" and p.key == "surprise" and p.count == 2 and not p.fatal


# ---------------------------------------------------------------------------------- runs, grid, report
def _recipe(mini: Path, tmp_path: Path, **corpus) -> Path:
    path = tmp_path / "emobox.yaml"
    path.write_text(yaml.safe_dump({
        "name": "eb", "seed": 0,
        "corpus": {"name": "emobox", "root": str(mini / "data"), "dataset": MINI_FOLDS, **corpus},
        "upstream": {"name": "fbank", "n_mels": 40},
        "aggregator": "stats",
        "classifier": {"name": "mlp", "hidden_sizes": [16]},
        "training": {"epochs": 2, "batch_size": 16, "select": "dev_ua", "patience": None},  # reads a dev set
        "output": {"tensorboard": False},
    }))
    return path


def test_ser_run_on_one_fold_states_the_dev_rule_in_run_json(mini, tmp_path, one_torch_thread) -> None:
    out = tmp_path / "run"
    rc = cli.main(["run", str(_recipe(mini, tmp_path, fold=1)), "--out", str(out), "-q"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"]["protocol"] == "split" and run["folds"][0]["name"] == "split"
    notes = run["corpus_notes"]
    assert notes["dataset"] == MINI_FOLDS and notes["fold"] == 1
    assert notes["dev"]["split"].startswith("speaker-disjoint")
    assert run["evaluation"]["dev"] == "speaker"  # protocol split: the corpus's dev set is the one used
    again = _corpus(mini, MINI_FOLDS, fold=1)
    again.load()
    dev_ids = set(again.fold_lists["split"]["dev"])
    assert run["folds"][0]["dev"] == len(dev_ids) > 0
    m = json.loads((out / "folds" / "split" / "metrics.json").read_text())
    assert {"wa", "ua", "macro_f1", "micro_f1"} <= set(m) and m["micro_f1"] == pytest.approx(m["wa"])


def test_grid_over_two_emobox_data_sets_writes_the_emobox_table(mini, tmp_path, capsys, one_torch_thread) -> None:
    out = tmp_path / "grid"
    rc = cli.main(["grid", str(_recipe(mini, tmp_path)), "--out", str(out), "-q",
                   "--sweep", f"corpus.dataset={MINI_FOLDS},{MINI_SPLIT}"])
    assert rc == 0, capsys.readouterr().err
    md = (out / "report.md").read_text()
    assert "## EmoBox" in md and "| data set | folds | WA | UA | micro-F1 | macro-F1 |" in md
    assert f"| {MINI_FOLDS} | 3 |" in md and f"| {MINI_SPLIT} | 1 |" in md
    table = (out / "report_emobox.csv").read_text().splitlines()
    assert table[0].startswith("setting,dataset,folds,wa,ua,micro_f1,macro_f1")
    assert [line.split(",")[1] for line in table[1:]] == [MINI_FOLDS, MINI_SPLIT]
    summary = json.loads((out / f"eb_{MINI_FOLDS}" / "summary.json").read_text())
    row = next(line.split(",") for line in table[1:] if line.split(",")[1] == MINI_FOLDS)
    assert float(row[3]) == pytest.approx(np.mean([m["wa"] for m in summary["folds"].values()]))
    assert float(row[5]) == pytest.approx(np.mean([m["micro_f1"] for m in summary["folds"].values()]))
    folds_run = json.loads((out / f"eb_{MINI_FOLDS}" / "run.json").read_text())
    assert folds_run["corpus_notes"]["view"] == "folds" and "dev_applied" in folds_run["corpus_notes"]
    assert "## EmoBox" in capsys.readouterr().out  # printed too
    assert "## EmoBox" in cli_report(out)  # ser report over the grid's runs writes the same table


def cli_report(grid: Path) -> str:
    rc = cli.main(["report", *[str(p) for p in sorted(grid.glob("eb_*"))], "--out", str(grid / "again")])
    assert rc == 0
    return (grid / "again.md").read_text()


def _row(run: str, dataset: str, folds: Dict[str, Dict[str, float]], setting: str = "s", corpus: str = "emobox"):
    return {"run": run, "corpus": corpus, "dataset": dataset, "setting": setting, "fold_metrics": folds,
            "folds": len(folds), "upstream": "fbank", "finetune": "frozen", "layer": "last", "aggregator": "stats",
            "classifier": "mlp", "normalize": "global", "dev": "none"}


def _m(wa: float, ua: float, f1: float) -> Dict[str, float]:
    return {"wa": wa, "ua": ua, "macro_f1": f1, "micro_f1": wa, "n": 10}


def test_emobox_table_means_over_folds_across_fold_runs() -> None:
    rows = [
        _row("a_1", "iemocap", {"split": _m(0.5, 0.4, 0.3)}),  # a grid over corpus.fold: one fold a run
        _row("a_2", "iemocap", {"split": _m(0.7, 0.6, 0.5)}),
        _row("b", "emodb", {"1": _m(0.9, 0.8, 0.7), "2": _m(0.7, 0.6, 0.5)}),
        _row("c", "emodb", {"1": _m(0.1, 0.1, 0.1)}, setting="other"),  # another setting: its own table
        _row("x", "demo", {"1": _m(0.1, 0.1, 0.1)}, corpus="demo"),  # not an EmoBox run
    ]
    table = emobox_rows(rows)
    assert [(t["setting"], t["dataset"], t["folds"]) for t in table] == [(1, "iemocap", 2), (1, "emodb", 2),
                                                                          (2, "emodb", 1)]
    assert table[0]["wa"] == pytest.approx(0.6) and table[0]["ua"] == pytest.approx(0.5)
    assert table[1]["macro_f1"] == pytest.approx(0.6) and table[1]["micro_f1"] == pytest.approx(0.8)
    md = to_emobox(rows)
    assert "| iemocap | 2 | 60.00 | 50.00 | 60.00 | 40.00 |" in md and md.count("| data set |") == 2
    assert to_emobox([rows[-1]]) == ""
