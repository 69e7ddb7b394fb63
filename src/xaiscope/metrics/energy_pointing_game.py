"""Energy-based pointing game: the share of the map's energy that lies on the object.

Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu (2020), "Score-CAM: Score-Weighted Visual
Explanations for Convolutional Neural Networks", CVPR workshops. Each map is min-max
scaled to [0, 1] (so its minimum counts as no energy), and the score is
sum(map inside the mask) / sum(map), in [0, 1]; higher is better. Wang et al. use the
object's bounding box: ``box=True`` does the same with the mask's bounding box. A random
map scores about the mask's area fraction. Images with an empty mask, or a constant map,
score NaN (left out of the mean).
"""

from __future__ import annotations

import numpy as np

from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


def bounding_box(mask: np.ndarray) -> np.ndarray:
    """The filled bounding box of the mask's pixels."""
    out = np.zeros_like(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size:
        out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    return out


@register(
    "energy_pointing_game",
    category="localization",
    higher_is_better=True,
    paper="Wang et al. 2020, Score-CAM (CVPR workshops; arXiv:1910.01279)",
    summary="share of the min-max scaled map's sum inside the object's mask (or its box)",
    aliases=("energy_pg",),
    needs_masks=True,
    bounds=(0.0, 1.0),
)
def energy_pointing_game(ctx: MetricContext, maps: MapList, *, box: bool = False) -> MetricOutput:
    masks = ctx.require_masks("energy_pointing_game")
    scores = np.full(len(maps), np.nan)
    for i, (m, mask) in enumerate(zip(maps, masks, strict=True)):
        if not mask.any():
            continue
        lo, hi = float(np.nanmin(m)), float(np.nanmax(m))
        if not hi > lo:
            continue
        energy = np.nan_to_num((m - lo) / (hi - lo))
        region = bounding_box(mask) if box else mask
        scores[i] = energy[region].sum() / energy.sum()
    return MetricOutput(scores=scores)
