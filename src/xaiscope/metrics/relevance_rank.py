"""Relevance rank accuracy: how many of the K most relevant pixels lie on the object.

Arras, Osman, Samek (2022), "CLEVR-XAI: A benchmark dataset for the ground truth evaluation
of neural network explanations", Information Fusion 81. With K the mask's pixel count,
score = |top-K pixels of the map  intersect  mask| / K, in [0, 1]; higher is better. Ties
among the map's values are broken at random (seeded), so a flat map scores the mask's area
fraction on average, as a random map does. Empty masks score NaN.
"""

from __future__ import annotations

import numpy as np

from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register
from xaiscope.metrics.similarity import top_k_mask


@register(
    "relevance_rank",
    category="localization",
    higher_is_better=True,
    paper="Arras et al. 2022, CLEVR-XAI (Information Fusion 81; arXiv:2003.07258)",
    summary="share of the K most relevant pixels inside the mask (K = mask size)",
    needs_masks=True,
    bounds=(0.0, 1.0),
)
def relevance_rank(ctx: MetricContext, maps: MapList) -> MetricOutput:
    masks = ctx.require_masks("relevance_rank")
    rng = ctx.rng(5)
    scores = np.full(len(maps), np.nan)
    for i, (m, mask) in enumerate(zip(maps, masks, strict=True)):
        k = int(mask.sum())
        if k:
            top = top_k_mask(np.nan_to_num(m, nan=-np.inf), k, rng).reshape(mask.shape)
            scores[i] = (top & mask).sum() / k
    return MetricOutput(scores=scores)
