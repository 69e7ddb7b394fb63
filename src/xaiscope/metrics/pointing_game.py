"""Pointing game: does the map's maximum fall on the object?

Zhang, Bargal, Lin, Brandt, Shen, Sclaroff (2018), "Top-down Neural Attention by Excitation
Backprop", IJCV 126. A hit when the map's highest pixel lies in the ground-truth mask or
within ``tolerance`` pixels of it; the score is 1 or 0 per image and the mean is the hit
rate. Zhang et al. allow 15 px on PASCAL/COCO photos (about 500 px): the default
``tolerance=None`` scales that to the image, 3 % of its longer side (1 px at 32 px, 7 px at
224 px); ``tolerance=0`` is the strict game. The strict score is always reported too
(``extra["strict"]``, the row ``pointing_game.strict``).

When several pixels share the maximum (a flat map), the score is the share of them on the
(grown) mask: the expected hit of a random tie-break. A random map scores the area fraction
of the mask grown by the tolerance on average. Images with an empty mask score NaN and are
left out of the mean. Maps and masks are compared at the image's resolution.
"""

from __future__ import annotations

import numpy as np

from xaiscope.errors import ParameterError
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register

#: Zhang et al.'s 15-pixel tolerance on ~500-pixel photos, as a share of the longer side.
ZHANG_TOLERANCE = 15 / 500


def grow(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """``mask`` plus every pixel within ``tolerance`` pixels (Euclidean) of it."""
    if tolerance <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask) <= tolerance


def pixels_tolerance(tolerance: float | None, shape: tuple[int, ...]) -> float:
    """The tolerance in pixels for an image of ``shape`` (None: Zhang et al.'s, scaled)."""
    if tolerance is None:
        return float(max(1, round(ZHANG_TOLERANCE * max(shape[:2]))))
    return float(tolerance)


def hits(m: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's maximal pixels inside ``region`` (1 or 0 unless the maximum ties)."""
    finite = np.where(np.isfinite(m), m, -np.inf)
    peak = finite == finite.max()
    return float((peak & region).sum() / peak.sum())


@register(
    "pointing_game",
    category="localization",
    higher_is_better=True,
    paper="Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop (IJCV)",
    summary="1 if the map's maximum lies on the object's mask (within a tolerance), else 0",
    needs_masks=True,
    bounds=(0.0, 1.0),
)
def pointing_game(
    ctx: MetricContext, maps: MapList, *, tolerance: float | None = None
) -> MetricOutput:
    if tolerance is not None and not tolerance >= 0:
        raise ParameterError(f"tolerance must be >= 0 pixels (or None), got {tolerance}")
    masks = ctx.require_masks("pointing_game")
    scores = np.full(len(maps), np.nan)
    strict = np.full(len(maps), np.nan)
    for i, (m, mask) in enumerate(zip(maps, masks, strict=True)):
        if not mask.any():
            continue
        strict[i] = hits(m, mask)
        scores[i] = hits(m, grow(mask, pixels_tolerance(tolerance, m.shape)))
    return MetricOutput(scores=scores, extra={"strict": strict})
