"""Pointing game: does the map's maximum fall on the object?

Zhang, Bargal, Lin, Brandt, Shen, Sclaroff (2018), "Top-down Neural Attention by Excitation
Backprop", IJCV 126. A hit when the map's highest pixel lies in the ground-truth mask (or
within ``tolerance`` pixels of it; Zhang et al. use 15 px on ~500 px photos); the score is
1 or 0 per image and the mean is the hit rate. When several pixels share the maximum (a
flat map), the score is the share of them inside the mask: the expected hit of a random
tie-break. A random map scores the mask's area fraction on average (the area of the mask
grown by ``tolerance``). Images with an empty mask score NaN and are left out of the mean.
Maps and masks are compared at the image's resolution.
"""

from __future__ import annotations

import numpy as np

from xaiscope.errors import ParameterError
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


def grow(mask: np.ndarray, tolerance: float) -> np.ndarray:
    """``mask`` plus every pixel within ``tolerance`` pixels (Euclidean) of it."""
    if tolerance <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask) <= tolerance


@register(
    "pointing_game",
    category="localization",
    higher_is_better=True,
    paper="Zhang et al. 2018, Top-down Neural Attention by Excitation Backprop (IJCV)",
    summary="1 if the map's maximum lies on the object's mask, else 0",
    needs_masks=True,
    bounds=(0.0, 1.0),
)
def pointing_game(ctx: MetricContext, maps: MapList, *, tolerance: float = 0.0) -> MetricOutput:
    if not tolerance >= 0:
        raise ParameterError(f"tolerance must be >= 0 pixels, got {tolerance}")
    masks = ctx.require_masks("pointing_game")
    scores = np.full(len(maps), np.nan)
    for i, (m, mask) in enumerate(zip(maps, masks, strict=True)):
        if not mask.any():
            continue
        finite = np.where(np.isfinite(m), m, -np.inf)
        peak = finite == finite.max()
        scores[i] = (peak & grow(mask, tolerance)).sum() / peak.sum()
    return MetricOutput(scores=scores)
