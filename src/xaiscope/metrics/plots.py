"""Figures of evaluations and comparisons (matplotlib ``Figure`` objects, no pyplot state).

Every function returns a :class:`matplotlib.figure.Figure`; save it with
:func:`xaiscope.viz.save_figure`. Nothing opens a window.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from xaiscope.errors import ParameterError

if TYPE_CHECKING:
    from xaiscope.metrics.evaluate import Evaluation

CURVE_METRICS = ("deletion", "insertion", "morf", "lerf")
_REF = {"random": ("grey", "--"), "gaussian": ("black", ":")}


def _grid(n: int, cols: int, cell: tuple[float, float]) -> tuple[Figure, list[Any]]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(cell[0] * cols, cell[1] * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _empty(message: str) -> Figure:
    fig = Figure(figsize=(5, 1.5))
    fig.text(0.5, 0.5, message, ha="center", va="center")
    return fig


def plot_scores(evaluation: Evaluation) -> Figure:
    """One panel per metric: each method's mean score as a bar, the random and Gaussian
    references as lines; the title says which way is better."""
    metrics = list(dict.fromkeys(r["metric"] for r in evaluation.rows))
    if not metrics:
        return _empty("no scores")
    fig, axes = _grid(len(metrics), 4, (3.4, 2.8))
    for ax, metric in zip(axes, metrics, strict=True):
        rows = [r for r in evaluation.rows if r["metric"] == metric]
        names = [r["method"] for r in rows]
        values = [np.nan if r["score"] is None else r["score"] for r in rows]
        errs = [0.0 if r["std"] is None else r["std"] for r in rows]
        ax.bar(range(len(rows)), values, yerr=errs, color="tab:blue", alpha=0.8, capsize=3)
        for ref, (colour, style) in _REF.items():
            v = rows[0].get(f"{ref}_baseline")
            if v is not None:
                ax.axhline(v, color=colour, linestyle=style, label=ref)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        arrow = "higher" if rows[0]["higher_is_better"] else "lower"
        ax.set_title(f"{metric} ({arrow} is better)", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].legend(fontsize=7)
    return fig


def plot_curves(evaluation: Evaluation, metric: str | None = None) -> Figure:
    """Mean perturbation curves (target probability vs fraction switched) per method, with
    the random and Gaussian references; one panel per curve metric."""
    wanted = [metric] if metric else list(CURVE_METRICS)
    present = {key[1] for key, v in evaluation.details.items() if v["method"].get("curves")}
    panels = [m for m in wanted if m in present]
    if metric and not panels:
        raise ParameterError(f"no curves for {metric!r} in this evaluation")
    if not panels:
        return _empty("no deletion, insertion, MoRF or LeRF curves in this evaluation")
    fig, axes = _grid(len(panels), 4, (3.6, 3.0))
    for ax, m in zip(axes, panels, strict=True):
        refs_drawn = False
        for (method, name), d in evaluation.details.items():
            if name != m or "curves" not in d["method"]:
                continue
            x = np.asarray(d["method"]["x"])
            y = np.asarray(d["method"]["curves"], dtype=float)
            score = evaluation.score(method, m)
            ax.plot(x, np.nanmean(y, axis=0), label=f"{method} ({score:.3f})")
            if not refs_drawn:
                for ref, (colour, style) in _REF.items():
                    if "curves" in d[ref]:
                        yr = np.asarray(d[ref]["curves"], dtype=float)
                        ax.plot(x, np.nanmean(yr, axis=0), color=colour, linestyle=style, label=ref)
                refs_drawn = True
        ax.set_xlabel("fraction of pixels switched", fontsize=8)
        ax.set_ylabel("target score", fontsize=8)
        ax.set_title(f"{m} (AUC in legend)", fontsize=9)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=8)
    return fig


def plot_sanity(evaluation: Evaluation) -> Figure:
    """Model-randomisation cascade: mean Spearman (|maps|) and SSIM between the trained
    and the randomised maps after each step, top layer first (Adebayo et al. 2018)."""
    runs = [
        (method, d)
        for (method, name), d in evaluation.details.items()
        if name == "sanity_model_randomization" and d["method"].get("layers")
    ]
    if not runs:
        return _empty("no sanity_model_randomization in this evaluation")
    fig, axes = _grid(2, 2, (5.0, 3.6))
    labels = runs[0][1]["method"]["layers"]
    steps = np.arange(len(labels))
    for ax, stat, title in (
        (axes[0], "spearman_abs", "Spearman rank correlation of |maps|"),
        (axes[1], "ssim", "SSIM"),
    ):
        for method, d in runs:
            y = np.nanmean(np.asarray(d["method"][stat], float), axis=1)
            ax.plot(steps, y, "o-", label=method)
        for ref, (colour, style) in _REF.items():
            if runs[0][1][ref].get(stat):
                yr = np.nanmean(np.asarray(runs[0][1][ref][stat], float), axis=1)
                ax.plot(steps, yr, color=colour, linestyle=style, label=ref)
        ax.set_xticks(steps, labels, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("randomised down to (cascading from the top)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.2, 1.05)
        ax.axhline(0, color="lightgrey", linewidth=0.8)
        ax.legend(fontsize=7)
    return fig


def plot_histograms(maps: dict[str, list[np.ndarray]], threshold: float, bins: int = 40) -> Figure:
    """Per method, the histogram of normalised attributions whose |value| exceeds ``threshold``."""
    from xaiscope.metrics.compare import normalized

    fig, axes = _grid(len(maps), 4, (3.2, 2.6))
    for ax, (name, ms) in zip(axes, maps.items(), strict=True):
        values = np.concatenate([normalized(m).ravel() for m in ms])
        kept = values[np.abs(values) > threshold]
        lo = -1.0 if (values < 0).any() else threshold
        ax.hist(kept, bins=bins, range=(lo, 1.0), color="tab:blue", alpha=0.85)
        ax.set_title(f"{name}: {kept.size / max(values.size, 1):.1%} > {threshold:g}", fontsize=9)
        ax.set_xlabel("attribution / max |attribution|", fontsize=8)
        ax.tick_params(labelsize=8)
    return fig


def plot_scatter_matrix(
    maps: dict[str, list[np.ndarray]], spearman: np.ndarray, max_points: int, seed: int
) -> Figure:
    """Scatter-plot matrix of normalised pixel values (a random subset of ``max_points``
    pixels), histograms on the diagonal, each pair's mean Spearman in its panel."""
    from xaiscope.metrics.compare import normalized

    names = list(maps)
    flat = {n: np.concatenate([normalized(m).ravel() for m in maps[n]]) for n in names}
    size = len(next(iter(flat.values())))
    rng = np.random.default_rng(seed)
    pick = rng.choice(size, size=min(max_points, size), replace=False)
    m = len(names)
    fig = Figure(figsize=(2.2 * m + 0.4, 2.2 * m + 0.4), layout="constrained")
    axes = fig.subplots(m, m, squeeze=False)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            ax = axes[i][j]
            if i == j:
                ax.hist(flat[a][pick], bins=30, color="tab:blue", alpha=0.8)
            else:
                ax.scatter(flat[b][pick], flat[a][pick], s=2, alpha=0.3, rasterized=True)
                ax.text(
                    0.03, 0.95, f"rho {spearman[i, j]:.2f}", transform=ax.transAxes,
                    fontsize=7, va="top",
                )  # fmt: skip
            ax.tick_params(labelsize=6)
            if i == m - 1:
                ax.set_xlabel(b, fontsize=8)
            if j == 0:
                ax.set_ylabel(a, fontsize=8)
    return fig


def plot_matrix(names: list[str], values: np.ndarray, statistic: str) -> Figure:
    """Heatmap of one statistic between every pair of methods, values written in the cells."""
    m = len(names)
    fig = Figure(figsize=(1.0 * m + 2.2, 1.0 * m + 1.4), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(values, vmin=-1 if statistic in ("spearman", "pearson") else 0, vmax=1,
                   cmap="viridis")  # fmt: skip
    for i in range(m):
        for j in range(m):
            v = values[i, j]
            ax.text(j, i, "" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if v < 0.5 else "black", fontsize=8)  # fmt: skip
    ax.set_xticks(range(m), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(m), names, fontsize=8)
    ax.set_title(statistic.replace("_", " "), fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig
