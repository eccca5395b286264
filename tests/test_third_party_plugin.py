"""A separate distribution (docs/examples/ser-example-plugin) installed with pip is listed and used.

No edit of the core and no monkeypatching of the registry: the example is pip-installed into a
target folder that the child processes see on their path, exactly like any installed package.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "ser-example-plugin"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    source = build / "ser-example-plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # keep the repo clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=build,
                   env={**os.environ, "PIP_NO_INPUT": "1"})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def ser(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "ser_plugins.cli", *args], env=env, capture_output=True, text=True, **kw)


def test_ser_list_shows_the_third_party_plugins(plugin_env):
    res = ser(["list", "--json"], plugin_env, check=True)
    specs = {(s["kind"], s["name"]): s["dist"] for s in json.loads(res.stdout)}
    assert specs[("upstream", "frame_energy")] == "ser-example-plugin"
    assert specs[("aggregator", "max_pool")] == "ser-example-plugin"
    assert specs[("upstream", "fbank")] == "ser-plugins"


def test_a_demo_run_uses_the_third_party_plugins(plugin_env, fast_recipe, tmp_path):
    recipe = dict(fast_recipe, upstream="frame_energy", aggregator="max_pool")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    res = ser(["run", str(path), "--out", str(out), "--folds", "1", "-q"], plugin_env)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["upstream"] == "frame_energy" and summary["aggregator"] == "max_pool"
    assert 0.0 <= summary["mean_std"]["ua"]["mean"] <= 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["upstream"]["class"] == "ser_example_plugin.upstream.FrameEnergyUpstream"
