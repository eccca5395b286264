"""Scale in corpus size: frozen features served from the on-disk cache and audio streamed by DataLoader
workers give the same batches and results as the in-RAM paths."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from ser_plugins.data.feature_stream import LazyFeatures, prefetch
from ser_plugins.data.memory import resolve_workers
from ser_plugins.recipe import RecipeError, load_recipe
from ser_plugins.training.runner import run_recipe

TINY_BUDGET = 1e-6  # GiB: forces streaming on any corpus


def _files(run: Path) -> dict:
    """What a user reads from a fold: metrics (minus wall time), predictions, checkpoint tensors."""
    from safetensors.torch import load_file

    fold = run / "folds" / "Session1"
    metrics = json.loads((fold / "metrics.json").read_text())
    metrics.pop("seconds")
    return {"metrics": metrics, "predictions": (fold / "predictions.csv").read_text(),
            "best": load_file(str(fold / "best.safetensors"))}


def _same(a: dict, b: dict) -> None:
    assert a["metrics"] == b["metrics"]
    assert a["predictions"] == b["predictions"]
    assert a["best"].keys() == b["best"].keys()
    assert all(torch.equal(a["best"][k], b["best"][k]) for k in a["best"])


@pytest.mark.parametrize("aggregator,normalize", [("stats", None), ("mean", "speaker")])
def test_frozen_features_streamed_from_the_cache_give_identical_results(fast_recipe, tmp_path, caplog,
                                                                          aggregator, normalize):
    fast_recipe.update(aggregator=aggregator, features={"normalize": normalize},
                       training={"epochs": 2, "max_duration": 1.0 if aggregator == "stats" else None})
    in_ram = run_recipe(load_recipe(fast_recipe), str(tmp_path / "ram"), folds=["1"], progress=False)
    assert "streamed" not in json.loads((tmp_path / "ram" / "run.json").read_text())
    fast_recipe["data"] = {"max_ram_gb": TINY_BUDGET, "cache_dir": str(tmp_path / "cache")}
    with caplog.at_level(logging.INFO, logger="ser_plugins"):
        streamed = run_recipe(load_recipe(fast_recipe), str(tmp_path / "stream"), folds=["1"], progress=False)
    assert any("served from the on-disk cache" in r.getMessage() for r in caplog.records)
    run = json.loads((tmp_path / "stream" / "run.json").read_text())
    assert run["streamed"]["frames_on_disk"] == (aggregator == "stats")
    assert run["feature_cache"]["misses"] == 100
    assert streamed["folds"] == in_ram["folds"]
    _same(_files(tmp_path / "ram"), _files(tmp_path / "stream"))
    again = run_recipe(load_recipe(fast_recipe), str(tmp_path / "hits"), folds=["1"], progress=False)
    assert json.loads((tmp_path / "hits" / "run.json").read_text())["feature_cache"]["hits"] == 100
    assert again["folds"] == in_ram["folds"]
    _same(_files(tmp_path / "ram"), _files(tmp_path / "hits"))


def test_streamed_features_without_a_cache_dir_use_a_temporary_one_removed_afterwards(fast_recipe, tmp_path):
    from ser_plugins.training.runner import Runner

    fast_recipe["data"] = {"max_ram_gb": TINY_BUDGET}
    runner = Runner(load_recipe(fast_recipe), tmp_path / "r", progress=False)
    prep = runner.prepare()
    features = prep.source.features
    assert isinstance(features, LazyFeatures) and len(features) == 100
    tmp = Path(features.tmp_dir)
    entries = list(tmp.rglob("*.safetensors"))
    assert len(entries) == 100  # one entry per utterance, written as extracted
    uid = next(iter(features))
    assert features[uid][0].shape[0] == features.frame_counts[uid]
    del prep, features, runner
    import gc

    gc.collect()
    assert not tmp.exists()


def test_prefetch_keeps_order_passes_errors_and_stops_early():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("entry unreadable")

    got = []
    with pytest.raises(ValueError, match="entry unreadable"):
        for x in prefetch(broken()):
            got.append(x)
    assert got == [1]
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    gen = prefetch(counting(), depth=2)
    assert next(gen) == 0
    gen.close()  # a consumer that stops early (max_steps): the producer stops too
    assert len(produced) < 10


def test_recipe_keys_have_ranges():
    base = {"name": "x", "corpus": "demo", "upstream": "fbank", "aggregator": "mean", "classifier": "linear"}
    r = load_recipe({**base, "data": {"max_ram_gb": 0.5, "num_workers": 2}}, check_plugins=False)
    assert r.data.max_ram_gb == 0.5 and r.data.num_workers == 2
    assert load_recipe(base, check_plugins=False).data.max_ram_gb is None
    for bad in ({"max_ram_gb": 0}, {"max_ram_gb": -1.0}, {"num_workers": -1}, {"num_workers": 1.5}):
        with pytest.raises(RecipeError, match="data."):
            load_recipe({**base, "data": bad}, check_plugins=False)
    assert resolve_workers(3, 10) == 3 and resolve_workers(None, 10) == 0 and resolve_workers(None, 10_000) >= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_audio_gives_the_in_ram_batches_and_results(fast_recipe, tmp_path, caplog, workers):
    fast_recipe.update(data={"precompute": False}, training={"epochs": 2, "max_duration": 1.0})  # crops drawn
    run_recipe(load_recipe(fast_recipe), str(tmp_path / "ram"), folds=["1"], progress=False)
    fast_recipe["data"].update(max_ram_gb=TINY_BUDGET, num_workers=workers)
    with caplog.at_level(logging.INFO, logger="ser_plugins"):
        run_recipe(load_recipe(fast_recipe), str(tmp_path / "stream"), folds=["1"], progress=False)
    assert any(f"streamed from disk by {workers} DataLoader worker(s)" in r.getMessage() for r in caplog.records)
    _same(_files(tmp_path / "ram"), _files(tmp_path / "stream"))


def test_streamed_batches_equal_in_ram_batches_with_crops():
    import numpy as np

    from ser_plugins.data.sources import BatchPlan, WaveSource
    from ser_plugins.data.wave_stream import StreamedWaveSource
    from ser_plugins.plugins.contracts import Utterance
    import soundfile as sf
    import tempfile

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        utts, waves = [], {}
        for k in range(23):
            x = (0.1 * rng.standard_normal(int(16000 * rng.uniform(0.2, 2.0)))).astype("float32")
            path = Path(d) / f"u{k}.wav"
            sf.write(path, x, 16000, subtype="FLOAT")
            utts.append(Utterance(f"u{k}", str(path), "neu", "s1"))
            waves[f"u{k}"] = x
        targets = {u.id: i % 4 for i, u in enumerate(utts)}
        ids = [u.id for u in utts][::-1]
        plan = BatchPlan(4, max_batch_seconds=4.0, max_duration=1.0, shuffle=True, seed=3)
        ram = list(WaveSource(waves, targets, 16000).batches(ids, plan))
        disk = StreamedWaveSource(utts, {k: len(v) for k, v in waves.items()}, targets, 16000, num_workers=2)
        for _ in range(2):  # the persistent workers serve a second pass too
            got = list(disk.batches(ids, plan))
            assert [b.ids for b in got] == [b.ids for b in ram]
            assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.lengths, b.lengths) for a, b in zip(got, ram))
        partial = disk.batches(ids, plan)
        next(partial)  # abandoned mid-pass (max_steps): the next pass starts from its own first batch
        evaluation = BatchPlan(8)
        assert [b.ids for b in disk.batches(ids, evaluation)] == [b.ids for b in WaveSource(waves, targets, 16000)
                                                                   .batches(ids, evaluation)]


@pytest.fixture(scope="module")
def faulty_root(tmp_path_factory, tiny_demo_root):
    """The tiny corpus with Session1 files rewritten in every unusable and odd format (test_faults_audio's)."""
    import shutil

    import soundfile as sf

    from ser_plugins.plugins import registry
    from test_faults_audio import UNUSABLE, USABLE

    root = tmp_path_factory.mktemp("faulty") / "IEMOCAP_full_release"
    shutil.copytree(tiny_demo_root, root)
    s1 = [u for u in registry.create("corpus", "iemocap", root=str(root)).load() if u.session == "Session1"]
    writers = [w for _, w, _ in UNUSABLE] + [w for _, w in USABLE]
    for u, writer in zip(s1, writers):
        x, _ = sf.read(u.path)
        writer(Path(u.path), x)
    return root


@pytest.mark.parametrize("precompute", [True, False])
def test_skips_and_strict_errors_are_those_of_the_in_ram_validation_pass(faulty_root, tmp_path, caplog,
                                                                          precompute):
    from helpers import recipe_for
    from ser_plugins.data.decode import DataError

    def run(name, **data):
        recipe = recipe_for(faulty_root, data={"precompute": precompute, **data})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ser_plugins"):
            run_recipe(load_recipe(recipe), str(tmp_path / name), folds=["1"], progress=False)
        warnings = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping"))
        return json.loads((tmp_path / name / "run.json").read_text())["skipped"], warnings

    ram = run("ram")
    assert sum(ram[0].values()) == 8
    assert run("stream", max_ram_gb=TINY_BUDGET, num_workers=2) == ram
    _same(_files(tmp_path / "ram"), _files(tmp_path / "stream"))
    errors = []
    for data in ({}, {"max_ram_gb": TINY_BUDGET, "num_workers": 2}):
        with pytest.raises(DataError) as err:
            run_recipe(load_recipe(recipe_for(faulty_root, data={"precompute": precompute, "strict": True, **data})),
                       str(tmp_path / f"strict{len(errors)}"), progress=False)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and "data.strict is on" in errors[0]


def test_fine_tuning_on_streamed_audio_equals_in_ram(fast_recipe, tmp_path):
    pytest.importorskip("transformers")
    from test_hf_upstream import save_tiny
    from test_ssl_runs import ssl_recipe

    model = save_tiny(str(tmp_path / "hubert"), "hubert_base")
    recipe = ssl_recipe(fast_recipe, model, "finetune").to_dict()
    run_recipe(load_recipe(recipe), str(tmp_path / "ram"), folds=["1"], progress=False)
    recipe["data"].update(max_ram_gb=TINY_BUDGET, num_workers=2)
    run_recipe(load_recipe(recipe), str(tmp_path / "stream"), folds=["1"], progress=False)
    ram, stream = _files(tmp_path / "ram"), _files(tmp_path / "stream")
    assert any(k.startswith("upstream.") for k in stream["best"])  # the upstream itself was trained
    _same(ram, stream)


def test_kill_9_then_resume_with_streamed_features(tiny_demo_root, tmp_path, monkeypatch):
    """test_faults_interrupt's kill -9 / --resume case, every run of it with features served from disk."""
    import test_faults_interrupt as interrupt

    real = interrupt.recipe_dict

    def streamed(root, epochs=1, **sections):
        sections["data"] = {**sections.get("data", {}), "max_ram_gb": TINY_BUDGET,
                            "cache_dir": str(tmp_path / "cache")}
        return real(root, epochs, **sections)

    monkeypatch.setattr(interrupt, "recipe_dict", streamed)
    interrupt.test_kill_9_during_fold_3_then_resume_matches_an_uninterrupted_run(tiny_demo_root, tmp_path)
    run = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert run["streamed"]["frames_on_disk"] is True


def test_resume_accepts_another_ram_budget_and_worker_count(fast_recipe, tmp_path):
    """A run begun in RAM continues streamed (say, on a smaller machine): same results; other changes refused."""
    from ser_plugins.errors import RunError

    fast_recipe.update(training={"epochs": 1})
    whole = run_recipe(load_recipe(fast_recipe), str(tmp_path / "whole"), folds=["1", "2"], progress=False)
    part = tmp_path / "part"
    run_recipe(load_recipe(fast_recipe), str(part), folds=["1"], progress=False)
    kept = (part / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns
    fast_recipe["data"] = {"max_ram_gb": TINY_BUDGET, "num_workers": 0}
    resumed = run_recipe(load_recipe(fast_recipe), str(part), folds=["1", "2"], resume=True, progress=False)
    assert json.loads((part / "run.json").read_text())["streamed"]["max_ram_gb"] == TINY_BUDGET
    assert (part / "folds" / "Session1" / "metrics.json").stat().st_mtime_ns == kept
    assert resumed["folds"] == whole["folds"]
    fast_recipe["data"] = {"max_ram_gb": TINY_BUDGET, "strict": True}
    with pytest.raises(RunError, match="differs"):
        run_recipe(load_recipe(fast_recipe), str(part), resume=True, progress=False)


def test_temporary_caches_of_killed_runs_are_removed_by_the_next_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from ser_plugins.data import temp_cache

    code = ("import sys, time; from ser_plugins.data import temp_cache; "
            f"print(temp_cache.make({str(tmp_path)!r}), flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        left = Path(owner.stdout.readline().strip())
        (left / "entry.safetensors").write_bytes(b"x" * 10)
        assert temp_cache.sweep_stale(str(tmp_path)) == [] and left.is_dir()  # its process lives: kept
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
    mine = temp_cache.make(str(tmp_path))  # the next run: the killed run's folder goes, its own stays
    assert not left.exists() and Path(mine).is_dir()
    assert temp_cache.sweep_stale(str(tmp_path)) == [] and Path(mine).is_dir()
    temp_cache.release(mine)
    assert not Path(mine).exists()


def test_streamed_passes_trim_the_heap_only_when_their_rss_grew(monkeypatch):
    """Streamed passes keep their RSS near its starting level: a trim when it grew, none while it stays flat."""
    from ser_plugins.data import feature_stream, memory

    rss = [500]
    trimmed_to = [500]
    calls = []

    def trim():
        calls.append(rss[0])
        rss[0] = trimmed_to[0]
        return True

    monkeypatch.setattr(memory, "resident_bytes", lambda: rss[0])
    monkeypatch.setattr(memory, "release_free_heap", trim)
    trimmer = memory.HeapTrimmer(2, slack=0.1, cooldown=3)
    trimmer.tick(2)  # first check: the level (500)
    rss[0] = 540
    trimmer.tick(2)
    assert calls == []  # within 10 %: no trim
    rss[0] = 600
    trimmer.tick()
    assert calls == []  # not a multiple of 2 yet
    trimmer.tick()
    assert calls == [600] and rss[0] == 500 and trimmer.level == 500  # trimmed back
    rss[0], trimmed_to[0] = 700, 520
    trimmer.tick(2)
    trimmer.tick(2)
    assert calls == [600]  # over the line, but within the cooldown (3 checks) of the last trim
    trimmer.tick(2)
    assert calls == [600, 700] and trimmer.level == 520  # the level follows what the trim left
    rss[0] = 560  # under 520 * 1.1
    for _ in range(5):
        trimmer.tick(2)
    assert calls == [600, 700] and trimmer.trims == 2
    items = list(feature_stream._trimming(iter(range(5)), 1))
    assert items == list(range(5))


def test_cache_entries_read_again_equal_safetensors_and_a_changed_file_is_read_afresh(tmp_path):
    """The streamed reader keeps each entry's layout after its first read; later reads give the same tensors,
    a rewritten entry of another length is read the safe way, and a damaged one raises."""
    from safetensors.torch import load_file, save_file

    from ser_plugins.data.entry_reader import EntryReader

    path = tmp_path / "entry.safetensors"
    layers = {"layer0": torch.randn(7, 4).half(), "layer1": torch.randn(7, 4).bfloat16(), "layer10": torch.randn(7, 2)}
    save_file({**layers, "frames": torch.tensor([7])}, str(path))
    reader = EntryReader(["layer0", "layer1", "layer10"])
    for _ in range(2):  # parsed, then from the kept layout
        got = reader.read("u", path)
        assert [g.dtype for g in got] == [torch.float16, torch.bfloat16, torch.float32]
        assert all(torch.equal(g, layers[k]) for g, k in zip(got, ("layer0", "layer1", "layer10")))
    assert "u" in reader._layouts
    longer = {k: torch.cat([v, v]) for k, v in layers.items()}
    save_file({**longer, "frames": torch.tensor([14])}, str(path))  # replaced: 14 frames now
    got = reader.read("u", path)
    assert got[0].shape[0] == 14 and torch.equal(got[2], load_file(str(path))["layer10"])
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(Exception):
        reader.read("u", path)


def test_streamed_batches_are_read_straight_into_the_padded_batch(tmp_path):
    """``LazyFeatures.read_padded`` gives exactly the padded crops of the entries (bf16 and several layers too);
    an entry whose rows disagree with its frame count is a clear error."""
    from safetensors.torch import save_file

    from ser_plugins.data.batching import pad_features

    gen = torch.Generator().manual_seed(0)
    paths, counts, whole = {}, {}, {}
    for i, n in enumerate((5, 9, 3)):
        uid = f"u{i}"
        whole[uid] = [torch.randn(n, 4, generator=gen).bfloat16(), torch.randn(n, 6, generator=gen).half()]
        paths[uid] = tmp_path / f"{uid}.safetensors"
        save_file({"layer0": whole[uid][0], "layer1": whole[uid][1], "frames": torch.tensor([n])}, str(paths[uid]))
        counts[uid] = n
    feats = LazyFeatures(paths, counts, 2)
    uids, starts, lengths = ["u1", "u0", "u2"], [2, 0, 0], [6, 5, 3]
    for _ in range(2):  # first reads parse the headers, later ones use the kept layouts
        got = feats.read_padded(uids, starts, lengths)
        want, _ = pad_features([[f[s:s + n] for f in whole[u]] for u, s, n in zip(uids, starts, lengths)])
        assert [g.dtype for g in got] == [torch.bfloat16, torch.float16]
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    counts["u2"] = 4  # the frame count says 4, the entry holds 3
    with pytest.raises(ValueError, match="holds 3 frames"):
        feats.read_padded(["u2"], [0], [3])


def test_a_streamed_pass_shortens_the_thread_switch_interval_and_restores_it(fast_recipe, tmp_path):
    import sys

    from ser_plugins.data import feature_stream
    from ser_plugins.data.sources import BatchPlan
    from ser_plugins.training.runner import Runner

    fast_recipe["data"] = {"max_ram_gb": TINY_BUDGET}
    prep = Runner(load_recipe(fast_recipe), tmp_path / "r", progress=False).prepare()
    before = sys.getswitchinterval()
    ids = prep.folds[0].train
    seen = []
    for batch in prep.source.batches(ids, BatchPlan(batch_size=8, shuffle=True, seed=0)):
        seen.append(sys.getswitchinterval())
    assert seen and all(s == feature_stream.SWITCH_INTERVAL for s in seen)
    assert sys.getswitchinterval() == before
    stopped = prep.source.batches(ids, BatchPlan(batch_size=8, shuffle=True, seed=0))
    next(stopped)
    stopped.close()  # a pass left early (early stopping) restores it too
    assert sys.getswitchinterval() == before
