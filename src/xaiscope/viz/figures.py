"""Matplotlib figures of explanations: panels, side-by-side comparisons, and saving.

Figures are built as :class:`matplotlib.figure.Figure` objects, not through pyplot, so
they work under any backend (Agg on servers) and never open windows or leak pyplot state.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from xaiscope.errors import ParameterError
from xaiscope.viz.colors import (
    CmapLike,
    as_2d,
    display_image,
    display_map,
    heatmap,
    is_signed,
    overlay,
    resize_map,
)
from xaiscope.viz.colors import signed as signed_colours

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from xaiscope.explanation import Explanation

#: Width of one image column in inches; heights follow the image aspect ratio.
COLUMN_INCHES = 3.6


#: Heights in inches of one line of an axes title and of the figure title, and the margins.
_AXES_LINE, _TITLE_LINE, _MARGIN, _GAP = 0.22, 0.21, 0.06, 0.08


def _grid(
    ncols: int, aspect: float, title: str | None = None, *, axes_lines: int = 1
) -> tuple[Figure, list[Axes]]:
    """A one-row figure of ``ncols`` image axes of aspect ``aspect`` (= H / W).

    Axes are placed by hand rather than with a layout engine: the geometry is known in
    advance, and it renders about a third faster (the CLI saves one panel per map).
    """
    fig, rows = _table(ncols, [aspect], title, axes_lines=axes_lines)
    return fig, rows[0]


def _table(
    ncols: int,
    aspects: Sequence[float],
    title: str | None = None,
    *,
    axes_lines: int = 1,
    column_inches: float = COLUMN_INCHES,
) -> tuple[Figure, list[list[Axes]]]:
    """A figure of ``len(aspects)`` rows of ``ncols`` image axes; row r has aspect
    ``aspects[r]`` (= H / W). Returns the figure and the axes, row by row (top first)."""
    # clamp so extreme panoramas still give a readable figure
    cells = [column_inches * min(max(a, 0.35), 2.5) for a in aspects]
    head = axes_lines * _AXES_LINE + 0.08
    top = (title.count("\n") + 1) * _TITLE_LINE + 0.06 if title else 0.0
    width = ncols * column_inches + (ncols - 1) * _GAP + 2 * _MARGIN
    height = sum(cells) + len(cells) * head + top + 2 * _MARGIN
    fig = Figure(figsize=(width, height))
    rows: list[list[Axes]] = []
    for r, cell_h in enumerate(cells):
        below = sum(cells[r + 1 :]) + (len(cells) - 1 - r) * head
        rows.append(
            [
                fig.add_axes(
                    (
                        (_MARGIN + i * (column_inches + _GAP)) / width,
                        (_MARGIN + below) / height,
                        column_inches / width,
                        cell_h / height,
                    )
                )
                for i in range(ncols)
            ]
        )
    if title:
        fig.suptitle(title, fontsize=11, y=1.0 - _MARGIN / height, va="top")
    return fig, rows


def _show(ax: Axes, rgb: np.ndarray, title: str | None) -> None:
    ax.imshow(rgb, interpolation="bilinear")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _colour(map2d: np.ndarray, cmap: CmapLike, signed: bool) -> np.ndarray:
    return signed_colours(map2d) if signed else heatmap(map2d, cmap)


def panel(
    image: Any,
    map: Any,
    title: str | None = None,
    *,
    alpha: float = 0.5,
    cmap: CmapLike = "jet",
    signed: bool | None = None,
) -> Figure:
    """Original | heatmap | overlay for one image and one map, with an optional title.

    ``signed=None`` picks green/red colouring when the map has both signs (IG, gradient x
    input) and ``cmap`` otherwise. The map is resized to the image when sizes differ.
    """
    img = display_image(image)
    m = resize_map(as_2d(map), img.shape[:2])
    use_signed = is_signed(m) if signed is None else bool(signed)
    fig, axes = _grid(3, img.shape[0] / img.shape[1], title)
    _show(axes[0], img, "image")
    _show(
        axes[1],
        _colour(m, cmap, use_signed),
        "attribution (+green / -red)" if use_signed else "heatmap",
    )
    _show(axes[2], overlay(img, m, alpha, cmap, signed=use_signed), "overlay")
    return fig


def _explanation_title(exp: Explanation, index: int) -> str:
    label = exp.target_labels[index] if index < len(exp.target_labels) else None
    target = int(exp.targets[index])
    text = f"{exp.method}\n{label or target}"
    parts = []
    if exp.probabilities is not None:
        parts.append(f"{float(exp.probabilities[index]):.1%}")
    if exp.scores is not None and len(exp.scores) > index:
        parts.append(f"score {float(exp.scores[index]):.3g}")
    return text + (f" ({', '.join(parts)})" if parts else "")


def _pick_image(images: Any, index: int) -> Any:
    """Image ``index`` of a list / (N, H, W, 3) array, or ``images`` itself if it is one image."""
    if isinstance(images, (list, tuple)):
        if not 0 <= index < len(images):
            raise ParameterError(f"image index {index} out of range for {len(images)} images")
        return images[index]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if not 0 <= index < images.shape[0]:
            raise ParameterError(f"image index {index} out of range for {images.shape[0]} images")
        return images[index]
    return images


def _image_count(images: Any) -> int | None:
    """How many images ``images`` holds, or None when it is one image."""
    if isinstance(images, (list, tuple)):
        return len(images)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return int(images.shape[0])
    return None


def side_by_side(
    image: Any,
    maps: Mapping[str, Any] | Sequence[Explanation],
    *,
    index: int | None = None,
    alpha: float = 0.5,
    cmap: CmapLike = "jet",
    overlay_maps: bool = True,
    title: str | None = None,
    row_titles: Sequence[str] | None = None,
) -> Figure:
    """Images x methods: each row an image followed by one column per map.

    ``maps``: ``{name: map}`` (one image) or a list of Explanations (one column each,
    titled with the method, the target's class name and its probability). With
    Explanations and several ``image`` (a list or an (N, H, W, 3) array), every image gets
    a row unless ``index`` picks one; with one image, ``index`` (default 0) picks its map.
    Signed maps (both signs) are drawn green/red. ``overlay_maps=False`` shows bare
    heatmaps instead of overlays. ``row_titles`` replace the first column's "image" titles.
    """
    count = _image_count(image)
    if isinstance(maps, Mapping) or index is not None or count is None:
        picks = [0 if index is None else index]
    else:
        picks = list(range(count))
    rows: list[tuple[np.ndarray, list[tuple[str, np.ndarray]]]] = []
    for i in picks:
        img = display_image(_pick_image(image, i))
        columns: list[tuple[str, np.ndarray]] = []
        if isinstance(maps, Mapping):
            columns = [(str(name), as_2d(m)) for name, m in maps.items()]
        else:
            for exp in maps:
                if not 0 <= i < len(exp):
                    raise ParameterError(
                        f"image index {i} out of range for an explanation of {len(exp)} images"
                    )
                columns.append((_explanation_title(exp, i), as_2d(exp.map(i))))
        if not columns:
            raise ParameterError("side_by_side needs at least one map")
        rows.append((img, columns))
    if row_titles is not None and len(row_titles) != len(rows):
        raise ParameterError(f"got {len(row_titles)} row titles for {len(rows)} rows")
    lines = max(name.count("\n") + 1 for _, cols in rows for name, _ in cols)
    aspects = [img.shape[0] / img.shape[1] for img, _ in rows]
    fig, grid = _table(len(rows[0][1]) + 1, aspects, title, axes_lines=lines)
    for r, ((img, columns), axes) in enumerate(zip(rows, grid, strict=True)):
        _show(axes[0], img, row_titles[r] if row_titles is not None else "image")
        for ax, (name, m) in zip(axes[1:], columns, strict=True):
            m = resize_map(m, img.shape[:2])
            sgn = is_signed(m)
            rgb = (
                overlay(img, m, alpha, cmap, signed=sgn) if overlay_maps else _colour(m, cmap, sgn)
            )
            _show(ax, rgb, name)
    return fig


def plot_explanation(
    explanation: Explanation,
    images: Any = None,
    *,
    ax: Any = None,
    alpha: float = 0.5,
    cmap: CmapLike = "jet",
) -> Figure:
    """One column per image: the map overlaid on ``images`` (or a bare heatmap without them).

    ``images``: one image, a list (sizes may differ, like ``explanation.maps``) or an
    (N, H, W, 3) array. ``ax``: an Axes (one image) or a sequence of Axes to draw into;
    otherwise a new Figure is made. Returns the Figure drawn on.
    """
    n = len(explanation)
    if n == 0:
        raise ParameterError("the explanation holds no maps")
    if images is not None:
        count = (
            len(images)
            if isinstance(images, (list, tuple))
            else images.shape[0]
            if isinstance(images, np.ndarray) and images.ndim == 4
            else 1
        )
        if count != n:
            raise ParameterError(f"got {count} images for an explanation of {n} maps")
    if ax is None:
        first = as_2d(explanation.map(0))
        fig, axes = _grid(n, first.shape[0] / first.shape[1])
    else:
        axes = list(np.atleast_1d(np.asarray(ax, dtype=object)).ravel())
        if len(axes) < n:
            raise ParameterError(f"got {len(axes)} axes for an explanation of {n} maps")
        owner = axes[0].figure
        fig = owner if isinstance(owner, Figure) else owner.figure  # a SubFigure's root
    for i in range(n):
        m = display_map(as_2d(explanation.map(i)))
        sgn = is_signed(m)
        if images is None:
            rgb = _colour(m, cmap, sgn)
        else:
            rgb = overlay(display_image(_pick_image(images, i)), m, alpha, cmap, signed=sgn)
        _show(axes[i], rgb, _explanation_title(explanation, i).replace("\n", ": "))
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) and close it; returns the path.

    The file is written under a temporary name and renamed, so an interrupted save never
    leaves a truncated PNG in place of a good one.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        close_figure(fig)
    return out


def close_figure(fig: Figure) -> None:
    """Release a figure: forget it in pyplot (if pyplot made it) and drop its artists."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # only figures made through pyplot are registered there
        pyplot.close(fig)
    fig.clear()
