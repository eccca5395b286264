"""Label and corpus faults, created for real in a copy of the IEMOCAP-layout corpus: each one is
reported before training with the file and line, ``data.strict`` makes them errors, and folds that
cannot be evaluated are refused or warned about. See docs/reliability.md.
"""
from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path
from typing import Dict, List

import pytest
import yaml

from ser_plugins import cli, registry
from ser_plugins.data.folds import ProtocolError
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import RunError, Runner, run_recipe
from helpers import LogCollector, recipe_for




def consensus_lines(txt: Path, labels=("neu", "hap", "ang", "sad")) -> List[int]:
    """1-based numbers of consensus lines of ``txt`` whose label is one of ``labels``."""
    out = []
    for no, line in enumerate(txt.read_text().splitlines(), 1):
        parts = line.split("\t")
        if line.startswith("[") and len(parts) >= 3 and parts[2] in labels:
            out.append(no)
    return out


def edit_line(txt: Path, line_no: int, fn) -> str:
    lines = txt.read_text().splitlines(keepends=True)
    lines[line_no - 1] = fn(lines[line_no - 1])
    txt.write_text("".join(lines))
    return lines[line_no - 1]


@pytest.fixture(scope="module")
def bad_labels(tmp_path_factory, tiny_demo_root):
    """A corpus copy with a malformed line, an unknown label, a listed-but-absent wav, a missing
    EmoEvaluation folder (Session4) and no 'sad' in Sessions 1-3; one fold-1 run over it."""
    base = tmp_path_factory.mktemp("bad_labels")
    root = base / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    emo = root / "Session1" / "dialog" / "EmoEvaluation"
    f_malformed, f_unknown, f_absent = sorted(p for p in emo.glob("*.txt") if not p.name.startswith("."))[:3]
    where: Dict[str, tuple] = {}

    line = consensus_lines(f_malformed)[0]
    edit_line(f_malformed, line, lambda s: "[" + s.split(" - ")[0][1:] + " - ]" + s.split("]", 1)[1])
    where["malformed"] = (f_malformed, line)

    line = consensus_lines(f_unknown)[0]
    edit_line(f_unknown, line, lambda s: "\t".join(p if i != 2 else "xyz" for i, p in enumerate(s.split("\t"))))
    where["unknown_label"] = (f_unknown, line)

    line = consensus_lines(f_absent)[0]
    utt = f_absent.read_text().splitlines()[line - 1].split("\t")[1]
    wav = root / "Session1" / "sentences" / "wav" / f_absent.stem / f"{utt}.wav"
    wav.unlink()
    where["absent_wav"] = (wav, line)

    missing = root / "Session4" / "dialog" / "EmoEvaluation"
    shutil.rmtree(missing)
    where["missing_folder"] = (missing, None)

    for session in ("Session1", "Session2", "Session3"):  # 'sad' only in Session5 from now on
        for txt in (root / session / "dialog" / "EmoEvaluation").glob("Ses*.txt"):
            txt.write_text("\n".join(
                ln.replace("\tsad\t", "\tfru\t") if ln.startswith("[") else ln for ln in txt.read_text().split("\n")))

    import ser_plugins.training.runner as runner_mod

    handler = LogCollector()

    class SpyTrainer(runner_mod.FoldTrainer):
        def fit(self, *a, **k):
            handler.events.append("TRAINING STARTS")
            return super().fit(*a, **k)

    logger = logging.getLogger("ser_plugins")
    logger.addHandler(handler)
    out = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner_mod, "FoldTrainer", SpyTrainer)
        summary = run_recipe(load_recipe(recipe_for(root)), str(out), folds=["1"], progress=False)
    logger.removeHandler(handler)
    return {"root": root, "out": out, "summary": summary, "where": where, "log": handler.events}


def _before_training(events: List[str]) -> List[str]:
    return events[: events.index("TRAINING STARTS")]


@pytest.mark.parametrize("case,words", [
    ("malformed", "malformed label line"),
    ("unknown_label", "unknown label 'xyz'"),
    ("absent_wav", "is missing; utterance skipped"),
    ("missing_folder", "missing annotation folder dialog/EmoEvaluation of Session4"),
])
def test_corpus_problem_is_warned_before_training_naming_file_and_line(bad_labels, case, words):
    path, line = bad_labels["where"][case]
    where = f"{path}:{line}" if line is not None else str(path)
    early = _before_training(bad_labels["log"])
    assert any(e.startswith("WARNING") and where in e and words in e for e in early), (case, early[:8])


def test_corpus_problems_are_counted_and_the_run_goes_on(bad_labels):
    summary = bad_labels["summary"]
    assert summary["corpus_problems"] == 4
    assert set(summary["folds"]) == {"Session1"}
    run_json = yaml.safe_load((bad_labels["out"] / "run.json").read_text())
    assert [f["name"] for f in run_json["folds"]] == ["Session1", "Session2", "Session3", "Session5"]
    assert run_json["corpus_problems"] == 4


def test_class_absent_from_a_training_fold_is_warned_before_training(bad_labels):
    expected = "fold 'Session5': class 'sad' has no training utterances"
    assert expected in bad_labels["summary"]["fold_warnings"]
    assert any(expected in e for e in _before_training(bad_labels["log"]))


def test_strict_makes_corpus_problems_an_error_naming_every_file_and_line(bad_labels, tmp_path, capsys):
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(bad_labels["root"], data={"strict": True})))
    out = tmp_path / "out"
    rc = cli.main(["run", str(recipe), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: corpus problems (data.strict is on)") and "Traceback" not in err
    for path, line in bad_labels["where"].values():
        assert (f"{path}:{line}" if line is not None else str(path)) in err
    assert not (out / "folds").exists()


def test_missing_corpus_root_is_one_clear_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(tmp_path / "nowhere" / "IEMOCAP_full_release")))
    rc = cli.main(["run", str(recipe), "--out", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: IEMOCAP root" in err and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "folds").exists()


def test_a_corpus_without_any_usable_label_is_fatal(tmp_path, tiny_demo_root):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    for txt in root.rglob("EmoEvaluation/Ses*.txt"):
        txt.write_text(txt.read_text().replace("\tneu\t", "\tfru\t").replace("\thap\t", "\tfru\t")
                       .replace("\texc\t", "\tfru\t").replace("\tang\t", "\tfru\t").replace("\tsad\t", "\tfru\t"))
    with pytest.raises(RunError, match="no labelled utterances found"):
        run_recipe(load_recipe(recipe_for(root)), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run" / "folds").exists()


def test_a_fold_with_no_test_utterances_is_an_error_before_training(tmp_path, tiny_demo_root, capsys):
    utts = registry.create("corpus", "iemocap", root=str(tiny_demo_root)).load()
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "speaker", "split"])
        for i, u in enumerate(utts):  # train and dev only: the single 'split' fold has no test set
            w.writerow([u.path, u.label, u.speaker, "dev" if i % 5 == 0 else "train"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(recipe_for(tiny_demo_root, corpus={"name": "manifest", "root": str(manifest)})))
    out = tmp_path / "out"
    rc = cli.main(["run", str(recipe), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: fold 'split' has no test utterances" in err and "Traceback" not in err
    assert not (out / "folds").exists()
    with pytest.raises(ProtocolError):
        run_recipe(load_recipe(str(recipe)), str(tmp_path / "out2"), progress=False)


def test_a_session_left_without_usable_utterances_is_not_dropped_silently(tmp_path, tiny_demo_root):
    root = tmp_path / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    for wav in (root / "Session3").rglob("*.wav"):
        wav.write_bytes(b"RIFF-broken")
    runner = Runner(load_recipe(recipe_for(root)), tmp_path / "run", progress=False)
    try:
        prep = runner.prepare()
    except (RunError, ProtocolError) as exc:  # refusing is as good as warning
        assert "Session3" in str(exc)
        return
    assert any("Session3" in w for w in prep.warnings), prep.warnings
