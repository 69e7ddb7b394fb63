"""Statistical plots: histograms, scatter matrices and training curves.

Generic over named series (``{"gradcam": values, "ig": values}``), for comparing methods'
maps or metric scores, and over training histories (a :class:`~xaiscope.train.TrainResult`,
a Keras ``History.history`` dict, or a list of per-epoch rows). Every function returns a
:class:`matplotlib.figure.Figure` (no pyplot, no window); save it with
:func:`xaiscope.viz.save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from xaiscope.errors import ParameterError


def _series(values: Any) -> dict[str, np.ndarray]:
    """``{name: finite float64 1-D values}`` from a mapping or one array (named "values")."""
    items = values.items() if isinstance(values, Mapping) else [("values", values)]
    out: dict[str, np.ndarray] = {}
    for name, v in items:
        out[str(name)] = _flat(v)
    if not out:
        raise ParameterError("nothing to plot: no series given")
    return out


def _flat(v: Any) -> np.ndarray:
    """Float64 1-D values of an array, a tensor, or a list of arrays of different shapes
    (``Explanation.maps`` of images of different sizes)."""
    if hasattr(v, "detach"):
        v = v.detach().float().cpu().numpy()
    if isinstance(v, (list, tuple)) and v and all(np.ndim(x) >= 1 for x in v):
        return np.concatenate([_flat(x) for x in v])
    return np.asarray(v, dtype=np.float64).ravel()


def histograms(
    values: Mapping[str, Any] | Any,
    *,
    bins: int = 50,
    per_row: int = 4,
    title: str | None = None,
    xlabel: str | None = None,
    log: bool = False,
) -> Figure:
    """One histogram per named series (small multiples, ``per_row`` per row).

    ``values``: ``{name: array}`` (any shapes, flattened; NaN/inf ignored and counted in
    the panel title) or one array. ``log`` uses a log count axis.
    """
    series = _series(values)
    if bins < 1:
        raise ParameterError(f"bins must be at least 1, got {bins}")
    n = len(series)
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, arr) in zip(axes.ravel(), series.items(), strict=False):
        finite = arr[np.isfinite(arr)]
        dropped = arr.size - finite.size
        ax.hist(finite, bins=bins, color="C0", log=log)
        ax.set_title(name + (f" ({dropped} non-finite left out)" if dropped else ""), fontsize=9)
        if xlabel:
            ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


def scatter_matrix(
    values: Mapping[str, Any],
    *,
    max_points: int = 5000,
    bins: int = 40,
    seed: int = 0,
    title: str | None = None,
) -> Figure:
    """Pairwise scatter plots of named series of equal length, histograms on the diagonal.

    Each off-diagonal panel is titled with Pearson's r. Series are flattened (e.g. maps of
    several methods for the same image, pixel by pixel); pairs with a NaN/inf are left out;
    at most ``max_points`` points (a seeded random subset) are drawn.
    """
    series = _series(values)
    names = list(series)
    if len(names) < 2:
        raise ParameterError("a scatter matrix needs at least two series")
    lengths = {arr.size for arr in series.values()}
    if len(lengths) != 1:
        raise ParameterError(
            "scatter_matrix needs series of equal length; got "
            + ", ".join(f"{k}: {v.size}" for k, v in series.items())
        )
    data = np.stack([series[k] for k in names])  # (k, M)
    keep = np.isfinite(data).all(axis=0)
    data = data[:, keep]
    if data.shape[1] > max_points:
        rng = np.random.default_rng(seed)
        data = data[:, np.sort(rng.choice(data.shape[1], max_points, replace=False))]
    k = len(names)
    fig = Figure(figsize=(2.6 * k, 2.6 * k + (0.4 if title else 0.0)), layout="constrained")
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                ax.hist(data[i], bins=bins, color="C0")
            else:
                ax.scatter(data[j], data[i], s=3, alpha=0.4, color="C0", linewidths=0)
                ax.set_title(f"r = {_pearson(data[j], data[i]):.2f}", fontsize=8)
            if i == k - 1:
                ax.set_xlabel(names[j])
            if j == 0:
                ax.set_ylabel(names[i])
            ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title)
    return fig


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return float("nan")
    return float(((a - a.mean()) * (b - b.mean())).mean() / (sa * sb))


#: History keys understood by :func:`training_curves` for each metric, train then val.
_ALIASES = {
    "acc": (("train_acc", "acc", "accuracy"), ("val_acc", "val_accuracy")),
    "loss": (("train_loss", "loss"), ("val_loss",)),
    "f1": (("train_f1", "f1"), ("val_f1",)),
}


def _history_columns(history: Any) -> dict[str, list[float]]:
    if isinstance(history, Mapping):
        return {str(k): [float(v) for v in vals] for k, vals in history.items()}
    if isinstance(history, Sequence) and history and isinstance(history[0], Mapping):
        keys = list(history[0])
        return {str(k): [float(row[k]) for row in history] for k in keys}
    raise ParameterError(
        "training_curves takes a TrainResult, a dict of per-epoch lists (Keras "
        "History.history) or a list of per-epoch dicts"
    )


def training_curves(
    history: Any, metrics: Sequence[str] = ("acc", "loss"), *, title: str | None = None
) -> Figure:
    """Training (dashed) and validation (solid) curves per epoch, one panel per metric.

    ``history``: a :class:`~xaiscope.train.TrainResult` (every fold, kept epochs circled),
    a Keras-style ``{"loss": [...], "val_loss": [...], "accuracy": [...]}`` dict, or a list
    of per-epoch dicts. ``metrics``: among ``acc``, ``loss``, ``f1``.
    """
    for metric in metrics:
        if metric not in _ALIASES:
            raise ParameterError(f"unknown metric {metric!r}; use {', '.join(_ALIASES)}")
    if not metrics:
        raise ParameterError("training_curves needs at least one metric")
    if hasattr(history, "folds") and hasattr(history, "arch"):
        from xaiscope.train.curves import _draw

        fig = Figure(figsize=(6 * len(metrics), 4.2), layout="constrained")
        for i, metric in enumerate(metrics):
            _draw(fig.add_subplot(1, len(metrics), i + 1), history, metric)
        if title:
            fig.suptitle(title)
        return fig
    cols = _history_columns(history)
    fig = Figure(figsize=(6 * len(metrics), 4.2), layout="constrained")
    drawn = 0
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        train_keys, val_keys = _ALIASES[metric]
        for keys, style, label in ((train_keys, "--", "train"), (val_keys, "-", "validation")):
            key = next((k for k in keys if k in cols), None)
            if key is None:
                continue
            ys = cols[key]
            epochs = cols.get("epoch", list(range(1, len(ys) + 1)))
            ax.plot(epochs, ys, style, color="C0", label=label)
            drawn += 1
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    if drawn == 0:
        raise ParameterError(
            f"the history has none of the metrics {', '.join(metrics)} (keys: {', '.join(cols)})"
        )
    if title:
        fig.suptitle(title)
    return fig
