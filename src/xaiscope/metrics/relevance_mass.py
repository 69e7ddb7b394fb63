"""Relevance mass accuracy: the share of positive relevance that falls on the object.

Arras, Osman, Samek (2022), "CLEVR-XAI: A benchmark dataset for the ground truth evaluation
of neural network explanations", Information Fusion 81. Score = sum of the positive part
of the map inside the mask / sum of the positive part over the image, in [0, 1]; higher is
better. Negative relevance is ignored (as in Arras et al.); unlike the energy pointing
game, the map is not shifted, so a map's sign matters. A random non-negative map scores
about the mask's area fraction. A map with no positive value, or an empty mask, scores NaN.
"""

from __future__ import annotations

import numpy as np

from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


@register(
    "relevance_mass",
    category="localization",
    higher_is_better=True,
    paper="Arras et al. 2022, CLEVR-XAI (Information Fusion 81; arXiv:2003.07258)",
    summary="share of the map's positive relevance inside the object's mask",
    needs_masks=True,
    bounds=(0.0, 1.0),
)
def relevance_mass(ctx: MetricContext, maps: MapList) -> MetricOutput:
    masks = ctx.require_masks("relevance_mass")
    scores = np.full(len(maps), np.nan)
    for i, (m, mask) in enumerate(zip(maps, masks, strict=True)):
        positive = np.clip(np.nan_to_num(m), 0.0, None)
        total = positive.sum()
        if mask.any() and total > 0:
            scores[i] = positive[mask].sum() / total
    return MetricOutput(scores=scores)
