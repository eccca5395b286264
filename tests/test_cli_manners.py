"""Manners of the command line and its figures (issue 24, item 7): ``ser --version``, readable curves.png."""
from __future__ import annotations

import math
import subprocess
import sys
from importlib import metadata

import pytest

import ser_plugins
from ser_plugins.cli import commands as cli  # the command module (cli.main, cli.version_text)
from ser_plugins.results.plots import MARKER_EPOCHS, plot_curves


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def test_version_names_ser_plugins_torch_and_transformers(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"ser-plugins {ser_plugins.__version__} (")
    assert f"torch {_installed('torch')}" in out
    transformers = _installed("transformers")
    assert (f"transformers {transformers}" if transformers != "not installed" else "transformers not installed") in out


def test_version_says_not_installed_and_imports_nothing_heavy(monkeypatch):
    real = metadata.version

    def version(dist):
        if dist == "transformers":
            raise metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(metadata, "version", version)
    assert "transformers not installed" in cli.version_text()
    code = ("import sys; from ser_plugins.cli import commands as cli; print(cli.version_text()); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    text, imported = res.stdout.strip().splitlines()
    assert text.startswith("ser-plugins ") and imported == "[]"  # read from the metadata, nothing imported


def _history(epochs: int, dev: bool = True):
    rows = []
    for e in range(epochs):
        row = {"epoch": e + 1, "train_loss": 1.4 * math.exp(-e / 60) + 0.2}
        if dev:
            row.update(dev_loss=1.3 * math.exp(-e / 80) + 0.5, dev_ua=0.75 - 0.5 * math.exp(-e / 40))
        rows.append(row)
    return rows


def test_long_curves_are_lines_and_the_legend_hides_no_curve(tmp_path):
    path = tmp_path / "curves.png"
    fig = plot_curves(_history(320), path, "fold 1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert [line.get_label() for line in lines] == ["train loss", "dev loss", "dev UA"]
    assert all(line.get_marker() in (None, "None", "") for line in lines)  # 320 markers would merge into a band
    assert all(not ax.get_legend() for ax in fig.axes)  # no legend inside an axes, over the curves
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["train loss", "dev loss", "dev UA"]
    fig.canvas.draw()
    box = legend.get_window_extent()
    for ax in fig.axes:  # below the plotting area: it overlaps neither axes
        assert box.y1 <= ax.get_window_extent().y0


def test_short_curves_keep_their_markers_and_no_dev_set_draws_the_loss_only(tmp_path):
    fig = plot_curves(_history(MARKER_EPOCHS), tmp_path / "short.png")
    assert {line.get_marker() for ax in fig.axes for line in ax.get_lines()} == {"o", "^", "s"}
    fig = plot_curves(_history(5, dev=False), tmp_path / "nodev.png")
    assert len(fig.axes) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["train loss"]
