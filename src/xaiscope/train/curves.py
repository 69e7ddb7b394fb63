"""Accuracy and loss curves of a training run, as matplotlib Figures (no pyplot, no window)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from xaiscope.train.result import TrainResult

_TITLES = {"acc": "accuracy", "loss": "loss", "f1": "macro F1"}


def _draw(ax: Axes, result: TrainResult, metric: str) -> None:
    colours = [f"C{i % 10}" for i in range(len(result.folds))]
    for fold, colour in zip(result.folds, colours, strict=True):
        epochs = [row["epoch"] for row in fold.history]
        tag = f"fold {fold.fold}" if len(result.folds) > 1 else ""
        ax.plot(epochs, [r[f"train_{metric}"] for r in fold.history], "--", color=colour,
                label=f"{tag} train".strip())  # fmt: skip
        ax.plot(epochs, [r[f"val_{metric}"] for r in fold.history], "-", color=colour,
                label=f"{tag} validation".strip())  # fmt: skip
        best = fold.best
        ax.plot([best["epoch"]], [best[f"val_{metric}"]], "o", color=colour, fillstyle="none",
                markersize=9)  # fmt: skip
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(_TITLES[metric])
    ax.set_title(f"{result.arch}: {_TITLES[metric]} (o = kept epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(result.folds) > 2 else 1)


def plot_metric(result: TrainResult, metric: str = "acc") -> Figure:
    """One panel: training (dashed) and validation (solid) ``metric`` per epoch and fold."""
    if metric not in _TITLES:
        raise ValueError(f"metric must be one of {', '.join(_TITLES)}, got {metric!r}")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    _draw(fig.add_subplot(1, 1, 1), result, metric)
    return fig


def plot_history(result: TrainResult) -> Figure:
    """Two panels: accuracy and loss per epoch, for every fold."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    _draw(fig.add_subplot(1, 2, 1), result, "acc")
    _draw(fig.add_subplot(1, 2, 2), result, "loss")
    return fig
