"""A cross-corpus grid over two different release readers' miniatures (RAVDESS, CREMA-D) writes its matrix."""
from __future__ import annotations

import json

import pytest
import yaml

from ser_plugins import cli
from ser_plugins.plugins import registry


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    base = tmp_path_factory.mktemp("cross")
    ravdess, crema = base / "RAVDESS", base / "CREMA-D"
    registry.load("corpus", "ravdess").generate(str(ravdess), seed=0, utterances_per_speaker=8, sample_rate=16000)
    registry.load("corpus", "crema_d").generate(str(crema), seed=0, utterances_per_speaker=8)
    return ravdess, crema


def _recipe(path, ravdess, crema):
    recipe = {
        "name": "cross",
        "seed": 0,
        "corpus": {
            "name": "multi",
            "corpora": {
                "ravdess": {"name": "ravdess", "root": str(ravdess), "vocal_channel": "speech"},
                "crema_d": {"name": "crema_d", "root": str(crema)},
            },
            "labels": ["neu", "hap", "ang", "sad"],
            "maps": {"ravdess": {"cal": "neu"}},
        },
        "protocol": {"name": "cross_corpus", "train": ["ravdess"], "test": ["crema_d"], "num_folds": 2},
        "upstream": {"name": "fbank", "n_mels": 24},
        "aggregator": "mean",
        "classifier": {"name": "linear"},
        "training": {"max_steps": 20, "batch_size": 16},
        "output": {"tensorboard": False},
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_cross_corpus_grid_over_two_readers_writes_the_matrix(two_corpora, tmp_path, one_torch_thread):
    ravdess, crema = two_corpora
    recipe = _recipe(tmp_path / "cross.yaml", ravdess, crema)
    out = tmp_path / "grid"
    rc = cli.main(["grid", str(recipe), "--out", str(out), "-q",
                   "--sweep", "protocol.train=ravdess,crema_d", "--sweep", "protocol.test=ravdess,crema_d"])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "## Cross-corpus" in report
    ua_matrix = report.split("## Cross-corpus", 1)[1].split("macro-F1:", 1)[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in ua_matrix.splitlines() if line.startswith(("| ravdess |", "| crema_d |"))}
    assert list(rows) == ["ravdess", "crema_d"]
    header = [c.strip() for c in ua_matrix.split("| train ↓ test → |", 1)[1].splitlines()[0].strip("|").split("|")]
    for run in (p.parent for p in out.rglob("summary.json")):  # every cell is that pair's run, mean over folds
        summary = json.loads((run / "summary.json").read_text())
        pair = summary["cross_corpus"]
        cell = rows[pair["train"][0]][header.index(pair["test"][0])]
        assert cell.split(" ")[0] == f"{100 * summary['mean_std']['ua']['mean']:.2f}"

    # the classes outside the shared set are dropped and counted, per corpus and class, in every run
    runs = [p.parent for p in out.rglob("run.json")]
    assert len(runs) == 4
    info = json.loads((runs[0] / "run.json").read_text())
    dropped = info["dropped_labels"]
    assert {"ravdess:fea", "ravdess:dis", "ravdess:sur", "crema_d:fea", "crema_d:dis"} <= set(dropped)
    assert all(n > 0 for n in dropped.values())
    assert not any(key.startswith("ravdess:cal") for key in dropped)  # calm is mapped onto neutral

    # the diagonal is within-corpus k-fold; off the diagonal one fold trained on A and tested on B
    folds = {r.name: sorted(p.name for p in (r / "folds").iterdir()) for r in runs}
    assert sorted(len(f) for f in folds.values()) == [1, 1, 2, 2]
    assert any(f == ["ravdess->crema_d"] for f in folds.values())
