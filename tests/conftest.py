"""Shared fixtures: tiny generated corpora, fake installed distributions, a fast recipe."""
from __future__ import annotations

import copy
import os
import textwrap
from pathlib import Path
from typing import Dict

import pytest

# The suite runs on 2 pytest-xdist workers (setup.cfg) on a 2-core machine: one intra-op thread per process, in
# the workers and in every process they start (ser run, torchrun ranks, DataLoader workers), so the workers never
# oversubscribe the cores; tiny tensors gain nothing from more threads anyway. A value set by the caller is kept.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


@pytest.fixture(scope="session")
def tiny_demo_root(tmp_path_factory) -> Path:
    """A small demo corpus (IEMOCAP layout) generated once per test session."""
    from ser_plugins.plugins import registry

    root = tmp_path_factory.mktemp("demo") / "IEMOCAP_full_release"
    registry.load("corpus", "demo").generate(root, seed=0, utterances_per_speaker=12)
    return root


@pytest.fixture
def fast_recipe(tiny_demo_root) -> Dict:
    """A quick fbank + stats + mlp recipe on the tiny demo corpus."""
    from helpers import recipe_for

    return copy.deepcopy(recipe_for(tiny_demo_root, name="fast", classifier={"hidden_sizes": [32]},
                                    training={"epochs": 3}))


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Install a fake distribution (dist-info + module) on sys.path: a real entry-point source.

    ``fake_dist(name, module_source, entry_points={"ser_plugins.upstreams": {"x": "mod:Obj"}})``
    """
    def make(dist_name: str, module_name: str, module_source: str, entry_points: Dict[str, Dict[str, str]]) -> Path:
        site = tmp_path / f"site_{dist_name}"
        site.mkdir()
        (site / f"{module_name}.py").write_text(textwrap.dedent(module_source))
        info = site / f"{dist_name.replace('-', '_')}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 0.1\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        monkeypatch.syspath_prepend(str(site))
        return site

    return make


@pytest.fixture
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids spin-waiting on a busy 2-core machine (~50x faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
