"""A dev set only when something reads it; refit on train + dev; what the run files say about it."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import recipe_for
from ser_plugins.recipe import RecipeError, load_recipe
from ser_plugins.results.report import write_report
from ser_plugins.training.runner import Runner, run_recipe
from ser_plugins.training import trainer as trainer_mod


def quick(root, **sections):
    sections["output"] = {"tensorboard": False, **sections.get("output", {})}
    sections["data"] = {"num_threads": 1, **sections.get("data", {})}
    return recipe_for(root, name="dev", **sections)


def test_the_default_dev_follows_what_training_reads(tiny_demo_root):
    assert load_recipe(quick(tiny_demo_root)).protocol.dev == "none"  # select: last, no patience
    assert load_recipe(quick(tiny_demo_root, training={"select": "dev_ua"})).protocol.dev == "speaker"
    assert load_recipe(quick(tiny_demo_root, training={"select": "dev_loss", "patience": 2})).protocol.dev == "speaker"
    assert load_recipe(quick(tiny_demo_root, training={"select": "dev_loss", "refit": True})).protocol.dev == "speaker"
    explicit = load_recipe(quick(tiny_demo_root, protocol={"dev": "speaker"}))
    assert explicit.protocol.dev == "speaker"  # an explicit dev set is kept (its curves), even unread
    assert load_recipe(quick(tiny_demo_root, protocol={"dev": "random"})).protocol.dev == "random"


def test_a_dev_choice_without_a_dev_set_is_refused(tiny_demo_root):
    with pytest.raises(RecipeError, match=r"protocol.dev: none .*training.select: dev_ua needs one"):
        load_recipe(quick(tiny_demo_root, protocol={"dev": "none"}, training={"select": "dev_ua"}))
    with pytest.raises(RecipeError, match="training.refit needs a choice made on the dev set"):
        load_recipe(quick(tiny_demo_root, training={"refit": True}))


def test_a_head_whose_defaults_read_dev_gets_a_dev_set(tiny_demo_root):
    recipe = load_recipe(quick(tiny_demo_root, aggregator="ecapa_tdnn", classifier="linear"))
    assert recipe.training.uses_dev and recipe.protocol.dev == "speaker"


def test_no_dev_set_trains_on_every_training_speaker(tiny_demo_root, tmp_path):
    out = tmp_path / "none"
    summary = run_recipe(load_recipe(quick(tiny_demo_root, training={"epochs": 2})), str(out), folds=["1"],
                         progress=False)
    with_dev = Runner(load_recipe(quick(tiny_demo_root, protocol={"dev": "speaker"})), tmp_path / "x").prepare()
    fold = with_dev.folds[0]
    m = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    assert (m["dev"], m["train"]) == (0, len(fold.train) + len(fold.dev))  # the dev speaker trains too
    assert m["best_dev_ua"] is None and all("dev_ua" not in h for h in m["history"])
    assert (out / "folds" / "Session1" / "curves.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"]["dev"] == "none" and run["evaluation"]["refit"] is False
    assert summary.dev == "none" and "dev none (no dev set: every training speaker trains)" in summary.to_markdown()


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory, tiny_demo_root):
    recipe = load_recipe(quick(tiny_demo_root, training={"epochs": 4, "select": "dev_loss", "refit": True}))
    out = tmp_path_factory.mktemp("refit") / "run"
    summary = run_recipe(recipe, str(out), folds=["1"], progress=False)
    return recipe, out, summary


def test_refit_trains_again_on_train_and_dev_for_the_chosen_share(refit_run):
    recipe, out, summary = refit_run
    m = json.loads((out / "folds" / "Session1" / "metrics.json").read_text())
    assert m["dev"] > 0 and m["refit"]["train"] == m["train"] + m["dev"]
    first = m["history"]
    chosen = first[m["best_epoch"] - 1]["step"]
    total_first = len(first) * first[0]["step"]  # epochs x steps per epoch (no max_steps cut)
    refit = m["refit"]
    assert refit["steps"] == max(1, round(chosen * refit["total_steps"] / total_first))
    assert all("dev_ua" not in h for h in refit["history"])
    assert not any((out / "folds" / "Session1" / f).exists() for f in ("last_state.pt", "refit_state.pt",
                                                                        "selection.json"))
    assert summary.refit and summary.dev == "speaker"
    assert "refit on train + dev" in (out / "results.md").read_text()
    report = write_report([out])
    assert "speaker, refit" in report


class _Crash(Exception):
    pass


def test_a_crash_during_the_refit_resumes_to_the_same_model(refit_run, tmp_path):
    recipe, ref, _ = refit_run
    real = trainer_mod.save_state

    def die_in_refit(path, state):
        real(path, state)
        if path.name == "refit_state.pt" and state["progress"]["epoch"] == 2:
            raise _Crash()

    out = tmp_path / "crashed"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "save_state", die_in_refit)
        with pytest.raises(_Crash):
            run_recipe(recipe.model_copy(update={"output": recipe.output.model_copy(
                update={"checkpoint_interval": 0.0})}), str(out), folds=["1"], progress=False)
    fold = out / "folds" / "Session1"
    assert (fold / "selection.json").exists() and (fold / "refit_state.pt").exists()
    run_recipe(recipe, str(out), folds=["1"], resume=True, progress=False)
    a = json.loads((ref / "folds" / "Session1" / "metrics.json").read_text())
    b = json.loads((fold / "metrics.json").read_text())
    for m in (a, b):
        m.pop("seconds")
    assert a == b
    assert (ref / "folds" / "Session1" / "best.safetensors").read_bytes() == (fold / "best.safetensors").read_bytes()


def test_resume_checkpoints_are_written_at_most_every_interval(tiny_demo_root, tmp_path):
    saved = []
    real = trainer_mod.save_state

    def count(path, state):
        saved.append(state["progress"]["epoch"])
        real(path, state)

    recipe = load_recipe(quick(tiny_demo_root, training={"epochs": 6}, output={"checkpoint_interval": 3600}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "save_state", count)
        run_recipe(recipe, str(tmp_path / "a"), folds=["1"], progress=False)
    assert saved == [1]  # the first epoch only: the next one was not due
    saved.clear()
    recipe = load_recipe(quick(tiny_demo_root, training={"epochs": 3}, output={"checkpoint_interval": 0}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "save_state", count)
        run_recipe(recipe, str(tmp_path / "b"), folds=["1"], progress=False)
    assert saved == [1, 2, 3]


def test_a_head_on_precomputed_features_trains_on_one_thread_unless_told(tiny_demo_root, tmp_path, monkeypatch):
    seen = []
    real = trainer_mod.FoldTrainer.fit

    def spy(self, *a, **k):
        seen.append(torch.get_num_threads())
        return real(self, *a, **k)

    monkeypatch.setattr(trainer_mod.FoldTrainer, "fit", spy)
    before = torch.get_num_threads()
    run_recipe(load_recipe(quick(tiny_demo_root, data={"num_threads": 2})), str(tmp_path / "a"), folds=["1"],
               progress=False)
    run_recipe(load_recipe(quick(tiny_demo_root, training={"threads": 2})), str(tmp_path / "b"), folds=["1"],
               progress=False)
    assert seen == [1, 2]
    assert torch.get_num_threads() in (before, 2)  # the fold's choice ends with the fold (data.num_threads stays)


def test_bf16_on_a_cpu_is_reported_and_fp32_recorded(tiny_demo_root, tmp_path, caplog):
    recipe = load_recipe(quick(tiny_demo_root, training={"precision": "bf16", "device": "cpu"}))
    run_recipe(recipe, str(tmp_path / "r"), folds=["1"], progress=False)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["precision"] == "fp32"
    assert any("training.precision: bf16 is ignored on cpu" in r.getMessage() for r in caplog.records)


def test_run_json_names_each_skipped_file_and_each_missing_manifest_row(tiny_demo_root, tmp_path):
    import csv

    from ser_plugins.recipe import load_recipe as load
    from ser_plugins.training.runner import Runner as R

    utterances = R(load(quick(tiny_demo_root)), tmp_path / "x").prepare().utterances
    rows = [{"id": u.id, "path": u.path, "label": u.label, "speaker": u.speaker, "session": u.session}
            for u in utterances.values()]
    rows[0]["path"] = str(tmp_path / "gone.wav")  # a listed file that does not exist
    (tmp_path / "silent.wav").write_bytes(b"")  # exists, but holds no audio: skipped when decoded
    rows[1]["path"] = str(tmp_path / "silent.wav")
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    recipe = quick(tiny_demo_root)
    recipe["corpus"] = {"name": "manifest", "root": str(manifest)}
    recipe["protocol"] = {"name": "session"}
    out = tmp_path / "run"
    run_recipe(load_recipe(recipe), str(out), folds=["2"], progress=False)
    run = json.loads((out / "run.json").read_text())
    assert any("gone.wav" in p and "missing" in p for p in run["corpus_problem_details"])
    assert run["corpus_problems"] == len(run["corpus_problem_details"])
    assert [f["id"] for f in run["skipped_files"]] == [rows[1]["id"]]
    assert run["skipped_files"][0]["path"].endswith("silent.wav") and run["skipped_files"][0]["reason"]
