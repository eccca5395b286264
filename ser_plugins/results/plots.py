"""Figures written to run directories (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ser_plugins.runtime.atomic import atomic_save


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str = "") -> None:
    """Confusion matrix as a PNG: counts and row-normalised recall in each cell."""
    plt = _pyplot()
    counts = np.asarray(cm, dtype=np.float64)
    rows = counts.sum(1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}\n{norm[i, j]:.2f}",
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=9,
            )
    ax.set_title(title)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


#: up to this many epochs each point gets a marker; beyond, plain lines (markers would merge into a band)
MARKER_EPOCHS = 20


def plot_curves(history: List[Dict[str, float]], path: Path, title: str = "", loss_label: str = "loss (cross-entropy)"):
    """Training and dev loss (left axis) and dev UA and/or dev CCC (right axis) per epoch as a PNG; returns the figure.

    Lines, with a marker on each point only for short histories (``MARKER_EPOCHS``); one legend for
    both axes, below the plot, so that it hides no curve. A history without dev values
    (``protocol.dev: none``) has the training loss only.
    """
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    marks = len(history) <= MARKER_EPOCHS

    def style(marker: str, line: str = "-") -> dict:
        return {"linestyle": line, "marker": marker if marks else None, "markersize": 4, "linewidth": 1.2}

    fig, ax1 = plt.subplots(figsize=(6, 4))
    lines = ax1.plot(epochs, [h["train_loss"] for h in history], color="tab:red", label="train loss", **style("o"))
    if history and all("dev_loss" in h for h in history):
        lines += ax1.plot(
            epochs, [h["dev_loss"] for h in history], color="tab:orange", label="dev loss", **style("^", "--")
        )
    ax1.set_xlabel("epoch")
    regression = bool(history) and "dev_ua" not in history[0] and "dev_ccc" in history[0]
    ax1.set_ylabel(loss_label, color="tab:red")
    if history and all("dev_ua" in h for h in history):  # protocol.dev: none has no dev curve
        ax2 = ax1.twinx()
        lines += ax2.plot(epochs, [h["dev_ua"] for h in history], color="tab:blue", label="dev UA", **style("s"))
        ax2.set_ylabel("dev UA", color="tab:blue")
        ax2.set_ylim(0, 1)
    if history and all("dev_ccc" in h for h in history):  # continuous targets: dev CCC (mean over targets)
        ax3 = ax1.twinx()
        if not regression:
            ax3.spines["right"].set_position(("axes", 1.12))
        lines += ax3.plot(epochs, [h["dev_ccc"] for h in history], color="tab:green", label="dev CCC", **style("d"))
        ax3.set_ylabel("dev CCC", color="tab:green")
        ax3.set_ylim(-0.1, 1)
    # one legend for both axes, outside them (below the x label): it covers no line, whatever their course
    fig.legend(
        lines, [line.get_label() for line in lines], loc="lower center", ncol=len(lines), fontsize=8, frameon=False
    )
    ax1.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend row
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return fig


def plot_targets(
    true_values: np.ndarray, values: np.ndarray, names: Sequence[str], path: Path, title: str = ""
) -> None:
    """Predicted against true values as a PNG: one scatter panel per continuous target, with its CCC and diagonal."""
    from ser_plugins.results.metrics import ccc

    plt = _pyplot()
    true = np.asarray(true_values, dtype=np.float64).reshape(-1, len(names))
    pred = np.asarray(values, dtype=np.float64).reshape(-1, len(names))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 0.5, 3.6), squeeze=False)
    for k, (ax, name) in enumerate(zip(axes[0], names)):
        ax.scatter(true[:, k], pred[:, k], s=6, alpha=0.5, color="tab:blue")
        if len(true):
            low = float(min(true[:, k].min(), pred[:, k].min()))
            high = float(max(true[:, k].max(), pred[:, k].max()))
            ax.plot([low, high], [low, high], color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(f"{name}: CCC {ccc(true[:, k], pred[:, k]):.3f}", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_layer_weights(weights: Dict[str, List[float]], path: Path, title: str = "") -> None:
    """Learned softmax layer weights, one line per fold: which layers carry emotion."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, w in weights.items():
        ax.plot(range(len(w)), w, "o-", label=name)
    ax.set_xlabel("upstream layer")
    ax.set_ylabel("softmax weight")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
