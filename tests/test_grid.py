"""``ser grid``: a frozen upstream runs once per utterance for a whole grid of heads."""
from __future__ import annotations

import json

import pytest
import yaml

from ser_plugins import cli
from ser_plugins.launch.grid import GridError, parse_sweeps


@pytest.fixture
def grid_recipe(tmp_path, tiny_demo_root):
    from helpers import recipe_for

    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(recipe_for(tiny_demo_root, name="g", training={"max_steps": 4, "epochs": 2})))
    return path


def test_a_three_head_grid_runs_the_upstream_once_per_utterance(grid_recipe, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "grid"
    # mean + linear first: a mean-only head that, alone, would store only means
    rc = cli.main(["grid", str(grid_recipe), "--out", str(out), "-q", "--folds", "1",
                   "--sweep", "aggregator=mean,stats,attentive_stats", "-o", "classifier=linear"])
    assert rc == 0, capsys.readouterr().err
    grid = json.loads((out / "grid.json").read_text())
    runs = {r["name"]: r for r in grid["runs"]}
    assert set(runs) == {"g_mean", "g_stats", "g_attentive_stats"}
    n_utts = 100  # the tiny demo corpus: 5 sessions x 2 speakers x 10 usable utterances
    assert grid["upstream_forward_passes"] == n_utts
    assert runs["g_mean"]["upstream_forward_passes"] == n_utts and runs["g_mean"]["stored_frames"]
    assert runs["g_stats"]["upstream_forward_passes"] == runs["g_attentive_stats"]["upstream_forward_passes"] == 0
    for name in runs:
        run = json.loads((out / name / "run.json").read_text())
        assert run["feature_cache"]["written"] == "frames"
    printed = capsys.readouterr().out
    assert "g_attentive_stats" in printed and "100 upstream forward passes" in printed
    assert (out / "report.md").is_file() and (out / "report.csv").is_file()


def test_a_mean_head_served_from_frames_equals_its_own_extraction(grid_recipe, tmp_path, one_torch_thread):
    from ser_plugins.recipe import load_recipe
    from ser_plugins.training.runner import run_recipe

    cli.main(["grid", str(grid_recipe), "--out", str(tmp_path / "grid"), "-q", "--folds", "1",
              "--sweep", "aggregator=mean,stats", "-o", "classifier=linear"])
    alone = run_recipe(load_recipe(grid_recipe, ["aggregator=mean", "classifier=linear"]), str(tmp_path / "alone"),
                       folds=["1"], progress=False)
    assert json.loads((tmp_path / "alone" / "run.json").read_text())["upstream_forward_passes"] == 100
    a = (tmp_path / "grid" / "g_mean" / "folds" / "Session1" / "predictions.csv").read_text()
    b = (tmp_path / "alone" / "folds" / "Session1" / "predictions.csv").read_text()
    assert a == b and alone.folds["Session1"]["ua"] >= 0


def test_sweeps_are_validated():
    assert parse_sweeps(["aggregator=mean,stats"]) == [["aggregator=mean", "aggregator=stats"]]
    with pytest.raises(GridError):
        parse_sweeps(["aggregator"])
    with pytest.raises(GridError):
        parse_sweeps(["aggregator="])
