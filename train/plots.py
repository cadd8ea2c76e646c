"""The PNG plots of evaluations and experiments (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from train.curves import moving_average


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrices(models: Mapping[str, Mapping[str, Any]], title: str,
                            path: Path, columns: int = 4) -> Path:
    """One confusion matrix per model (metrics dicts with tp/fp/fn/tn/precision/recall/f1)."""
    plt = _pyplot()
    n = len(models)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, m) in zip(axes.flat, models.items()):
        grid = [[m["tn"], m["fp"]], [m["fn"], m["tp"]]]
        ax.imshow(grid, cmap="Blues", vmin=0)
        darkest = max(max(row) for row in grid) or 1
        for i in range(2):
            for j in range(2):
                ax.text(j, i, grid[i][j], ha="center", va="center", fontsize=14,
                        color="white" if grid[i][j] > darkest / 2 else "black")
        ax.set_xticks([0, 1], ["not signal", "signal"])
        ax.set_yticks([0, 1], ["not signal", "signal"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{name}\nP {m['precision']:.2f}  R {m['recall']:.2f}  F1 {m['f1']:.2f}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_window(table: Mapping[str, Mapping[str, float | None]], metric: str,
                    path: Path) -> Path:
    """``metric`` per time window (x) for each model (one line each)."""
    plt = _pyplot()
    windows = sorted({w for row in table.values() for w in row})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for model, row in table.items():
        ax.plot(windows, [row.get(w) for w in windows], marker="o", label=model)
    ax.set_xlabel("evaluation window")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{metric} per window")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_curves(curves: Mapping[str, Sequence[float]], path: Path,
                     target: float | None = None, smooth: int = 1) -> Path:
    """Training loss per step for each run; ``target`` draws the steps-to-target line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, alpha=0.35)
        if smooth > 1:
            ax.plot(range(1, len(curve) + 1), moving_average(curve, smooth),
                    label=f"{name} (moving average of {smooth})",
                    color=ax.lines[-1].get_color())
        else:
            ax.lines[-1].set_label(name)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", label=f"target loss {target:.3f}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (answer tokens), log scale")
    # The loss falls 100x; on a linear axis every curve is flat after the first steps.
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
