"""Figures of what a network computes: maps of several classes, feature maps, attention.

* :func:`topk_grid`: one image, the maps of its 1st, 2nd, 5th, 10th... most likely classes.
* :func:`activation_grid`: every channel of a layer tiled 16 per row, each channel scaled
  on its own (so weak channels stay visible), as one image.
* :func:`attention_grid`: a vision transformer's attention from the class token, one tile
  per layer (rows) and head (columns).

Tiles are composed into one array (:func:`tile_maps`) drawn with a single ``imshow``:
hundreds of channels cost one image, not hundreds of axes, and tests read the tiles back
from ``fig.axes[0].images[0].get_array()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

from xaiscope.errors import NotSpatialError, ParameterError
from xaiscope.viz.colors import CmapLike, as_image, get_cmap, is_signed, overlay, resize_map
from xaiscope.viz.figures import _table

if TYPE_CHECKING:
    from xaiscope.models.activations import Activations, AttentionMaps

#: Ranks shown by :func:`topk_grid` by default (those above the class count are skipped).
DEFAULT_RANKS = (1, 2, 5, 10)


# ------------------------------------------------------------------------ top-k
def topk_grid(
    model: Any,
    image: Any,
    method: str | Sequence[str] = "gradcam",
    *,
    ranks: Sequence[int] = DEFAULT_RANKS,
    layer: str | None = None,
    alpha: float = 0.5,
    cmap: CmapLike = "jet",
    seed: int | None = None,
    title: str | None = None,
    **params: Any,
) -> Figure:
    """One image and its maps for the classes ranked ``ranks`` (1 = top prediction).

    ``method``: one method name, or several (one row each; their passes are shared).
    Ranks beyond the model's number of classes are skipped. Each map is titled with its
    rank, class name and probability. Other keywords go to :func:`xaiscope.explain`.
    """
    from xaiscope.explain import as_model, explain

    wanted = sorted({int(r) for r in ranks})
    if not wanted or wanted[0] < 1:
        raise ParameterError(f"ranks must be positive integers (1 = top class), got {list(ranks)}")
    m = as_model(model)
    usable = [r for r in wanted if r <= m.num_classes]
    if not usable:
        raise ParameterError(f"ranks {wanted} are all beyond the model's {m.num_classes} classes")
    names = [method] if isinstance(method, str) else list(method)
    if not names:
        raise ParameterError("topk_grid needs at least one method")
    img = as_image(image)
    k = usable[-1]
    exps = explain(m, img, methods=names, targets=f"top{k}", layer=layer, seed=seed, **params)
    assert isinstance(exps, list)
    per_method = [exps[i * k : (i + 1) * k] for i in range(len(exps) // k)]
    fig, grid = _table(
        len(usable) + 1,
        [img.shape[0] / img.shape[1]] * len(per_method),
        title,
        axes_lines=2,
    )
    for axes, ranked in zip(grid, per_method, strict=True):
        _draw(axes[0], img, f"{ranked[0].method}\nimage")
        for ax, r in zip(axes[1:], usable, strict=True):
            e = ranked[r - 1]
            label = e.target_labels[0] if e.target_labels else str(int(e.targets[0]))
            prob = f" ({float(e.probabilities[0]):.1%})" if e.probabilities is not None else ""
            mp = resize_map(np.asarray(e.map(0), dtype=np.float32), img.shape[:2])
            _draw(ax, overlay(img, mp, alpha, cmap, signed=is_signed(mp)), f"#{r} {label}{prob}")
    return fig


def _draw(ax: Any, rgb: np.ndarray, title: str) -> None:
    ax.imshow(rgb, interpolation="bilinear")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


# ------------------------------------------------------------------------ tiles
def scale_each(maps: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (C, h, w) float32, each map min-max scaled to [0, 1] on its own.

    A constant map (an all-zero channel after a ReLU) becomes all zeros.
    """
    m = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo = m.min(axis=(1, 2), keepdims=True)
    span = m.max(axis=(1, 2), keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (m - lo) / safe, 0.0).astype(np.float32)


def tile_maps(maps: np.ndarray, per_row: int = 16, gap: int = 1) -> np.ndarray:
    """Lay out (C, h, w) maps row-major, ``per_row`` per row, ``gap`` NaN pixels between.

    Returns (rows * (h + gap) - gap, cols * (w + gap) - gap) float32 with NaN in the gaps
    and the empty cells of the last row; tile k sits at
    ``[(k // per_row) * (h + gap) :][:h, (k % per_row) * (w + gap) :][:, :w]``.
    """
    if per_row < 1:
        raise ParameterError(f"per_row must be at least 1, got {per_row}")
    if gap < 0:
        raise ParameterError(f"gap must be >= 0, got {gap}")
    c, h, w = maps.shape
    cols = min(per_row, c)
    rows = -(-c // cols)
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    for k in range(c):
        r, q = divmod(k, cols)
        out[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = maps[k]
    return out


def _feature_maps(acts: Any, index: int) -> tuple[np.ndarray, str | None]:
    """(C, h, w) maps of image ``index`` and the layer name, from Activations or an array."""
    from xaiscope.models.activations import Activations

    if isinstance(acts, Activations):
        maps = acts.require_maps()
        if not 0 <= index < maps.shape[0]:
            raise ParameterError(f"image index {index} out of range for {maps.shape[0]} images")
        return maps[index], acts.layer
    if hasattr(acts, "detach"):
        acts = acts.detach().float().cpu().numpy()
    arr = np.asarray(acts, dtype=np.float32)
    if arr.ndim == 4:
        if not 0 <= index < arr.shape[0]:
            raise ParameterError(f"image index {index} out of range for {arr.shape[0]} images")
        arr = arr[index]
    if arr.ndim != 3:
        raise NotSpatialError(
            f"activation_grid needs (C, h, w) or (N, C, h, w) feature maps; got shape "
            f"{tuple(np.shape(acts))}, which has no spatial layout"
        )
    return arr, None


def activation_grid(
    acts: Activations | Any,
    *,
    index: int = 0,
    per_row: int = 16,
    cmap: CmapLike = "viridis",
    max_channels: int | None = None,
    gap: int = 1,
    title: str | None = None,
) -> Figure:
    """Every channel of a layer as a tiled grid, ``per_row`` (16) per row, one image.

    ``acts``: :class:`~xaiscope.models.activations.Activations` (from ``xs.activations``), or a
    (C, h, w) / (N, C, h, w) array or tensor (``index`` picks the image). Each channel is
    min-max scaled on its own, so the grid shows where each channel fires, not which
    channels fire most. ``max_channels`` keeps the first channels only. Gaps are white.
    Raises :class:`~xaiscope.errors.NotSpatialError` for a layer without spatial output
    (a classifier head, pooled (C, 1, 1) features).
    """
    maps, layer = _feature_maps(acts, index)
    c, h, w = maps.shape
    if h * w <= 1:
        what = f"layer {layer!r} gives" if layer else "these activations give"
        raise NotSpatialError(
            f"{what} {c} maps of {h}x{w}: no spatial extent to show (pooled features); "
            "pick an earlier layer"
        )
    if max_channels is not None:
        if max_channels < 1:
            raise ParameterError(f"max_channels must be at least 1, got {max_channels}")
        maps = maps[:max_channels]
    mosaic = tile_maps(scale_each(maps), per_row=per_row, gap=gap)
    head = title or (
        f"{layer + ': ' if layer else ''}{c} channels of {h}x{w}"
        + (f" (first {maps.shape[0]} shown)" if maps.shape[0] < c else "")
        + ", each scaled on its own"
    )
    return _mosaic_figure(mosaic, cmap, head, vmin=0.0, vmax=1.0)


def _mosaic_figure(
    mosaic: np.ndarray,
    cmap: CmapLike,
    title: str,
    *,
    vmin: float,
    vmax: float,
    width: float = 12.0,
) -> Figure:
    rows, cols = mosaic.shape
    aspect = rows / cols
    img_h = min(max(width * aspect, 1.0), 40.0)
    img_w = img_h / aspect if width * aspect > 40.0 else width
    head = 0.45
    fig = Figure(figsize=(max(img_w, 4.0), img_h + head))
    ax = fig.add_axes((0.0, 0.0, 1.0, img_h / (img_h + head)))
    colours = get_cmap(cmap).with_extremes(bad="white")
    ax.imshow(mosaic, cmap=colours, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10, y=1.0 - 0.08 / (img_h + head), va="top")
    return fig


# ------------------------------------------------------------------------ attention
def attention_grid(
    attention: AttentionMaps,
    *,
    index: int = 0,
    cmap: CmapLike = "inferno",
    gap: int = 1,
    title: str | None = None,
) -> Figure:
    """Raw attention from the class token to each patch: one tile per layer (rows, first
    layer on top) and head (columns), each tile scaled on its own.

    ``attention``: from ``xs.attention_maps(model, image)``; ``index`` picks the image.
    """
    cls = attention.cls_maps(index)  # (L, heads, h, w)
    layers, heads, gh, gw = cls.shape
    flat = cls.reshape(layers * heads, gh, gw)
    mosaic = tile_maps(scale_each(flat), per_row=heads, gap=gap)
    head = title or (
        f"attention from the class token: {layers} layers (rows) x {heads} heads (columns), "
        f"{gh}x{gw} patches"
    )
    return _mosaic_figure(mosaic, cmap, head, vmin=0.0, vmax=1.0, width=min(12.0, 1.2 * heads + 1))
