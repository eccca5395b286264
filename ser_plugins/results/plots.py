"""Figures written to run directories (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from ser_plugins.io import atomic_save


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str = "") -> None:
    """Confusion matrix as a PNG: counts and row-normalised recall in each cell."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.2 * len(labels) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}\n{norm[i, j]:.2f}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_title(title)
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_curves(history: List[Dict[str, float]], path: Path, title: str = "") -> None:
    """Training and dev loss and dev UA per epoch as a PNG."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:red", label="train loss")
    if all("dev_loss" in h for h in history):
        ax1.plot(epochs, [h["dev_loss"] for h in history], "^--", color="tab:orange", label="dev loss")
    ax1.legend(loc="upper center", fontsize=8)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (cross-entropy)", color="tab:red")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["dev_ua"] for h in history], "s-", color="tab:blue", label="dev UA")
    ax2.set_ylabel("dev UA", color="tab:blue")
    ax2.set_ylim(0, 1)
    ax1.set_title(title)
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
