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
import textwrap
from pathlib import Path

import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "ser-example-plugin"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The example distribution pip-installed into a folder of its own (a site-packages)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    source = build / "ser-example-plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # keep the repo clean
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, cwd=build,
                   env={**os.environ, "PIP_NO_INPUT": "1"})
    return target


def env_with(site: Path) -> dict:
    """The environment of a process that sees ``site`` as installed packages."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def plugin_env(plugin_site):
    return env_with(plugin_site)


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


def test_the_example_plugin_checks_itself_with_one_call(plugin_env, tmp_path):
    """What a third party's own test suite does: docs/examples/ser-example-plugin/tests/test_contract.py."""
    shutil.copytree(EXAMPLE / "tests", tmp_path / "tests")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=tmp_path,
                         env=plugin_env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 passed" in res.stdout


def test_editing_the_installed_plugin_recomputes_its_cached_features(plugin_site, fast_recipe, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(plugin_site, site)  # a private installed copy to edit
    env = env_with(site)
    recipe = dict(fast_recipe, upstream="frame_energy", aggregator="max_pool", data={"cache_dir": str(tmp_path / "cache")},
                  training={**fast_recipe["training"], "epochs": 1})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    def run(name):
        res = ser(["run", str(path), "--out", str(tmp_path / name), "--folds", "1", "-q"], env)
        assert res.returncode == 0, res.stderr
        return json.loads((tmp_path / name / "run.json").read_text())["feature_cache"]

    first, second = run("r1"), run("r2")
    assert (first["hits"], second["hits"], second["misses"]) == (0, 100, 0)  # the cache serves a second process
    module = site / "ser_example_plugin" / "upstream.py"
    module.write_text(module.read_text().replace("+ 1e-8", "+ 1e-6"))  # same version, other features
    third = run("r3")
    assert (third["hits"], third["misses"]) == (0, 100)


def test_a_pyproject_toml_registration_is_found(tmp_path):
    """The ``[project.entry-points."ser_plugins.upstreams"]`` form shown in docs/plugins.md."""
    project = tmp_path / "pyproject-plugin"
    shutil.copytree(EXAMPLE / "ser_example_plugin", project / "ser_example_plugin")
    (project / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=64"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "ser-pyproject-plugin"
        version = "0.2.0"
        dependencies = ["ser-plugins", "torch"]

        [project.entry-points."ser_plugins.upstreams"]
        frame_energy_toml = "ser_example_plugin.upstream:FrameEnergyUpstream"

        [project.entry-points."ser_plugins.aggregators"]
        max_pool_toml = "ser_example_plugin.aggregator:MaxPooling"
    """))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(project)], check=True, cwd=tmp_path,
                   env={**os.environ, "PIP_NO_INPUT": "1"})
    res = ser(["list", "--json", "--pattern", "*_toml"], env_with(target), check=True)
    specs = {(s["kind"], s["name"]): (s["dist"], s["version"]) for s in json.loads(res.stdout)}
    assert specs == {("upstream", "frame_energy_toml"): ("ser-pyproject-plugin", "0.2.0"),
                     ("aggregator", "max_pool_toml"): ("ser-pyproject-plugin", "0.2.0")}
