"""Complexity: the entropy of the map's share of attribution per pixel.

Bhatt, Weller, Moura (2020), "Evaluating and Aggregating Feature-based Model
Explanations", IJCAI. With p_i = |a_i| / sum_j |a_j|, complexity = -sum_i p_i ln p_i (nats):
0 for a one-hot map, ln(n) for a uniform map of n pixels. Lower is better (fewer pixels
carry the attribution). The value grows with the map's pixel count: compare maps of one
size, or set ``normalize=True`` to divide by ln(n) (then in [0, 1]). A map of zeros scores
NaN.
"""

from __future__ import annotations

import math

import numpy as np

from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


def entropy(values: np.ndarray, normalize: bool = False) -> float:
    a = np.abs(np.nan_to_num(np.asarray(values, dtype=np.float64))).ravel()
    total = a.sum()
    if total <= 0:
        return float("nan")
    p = a[a > 0] / total
    h = float(-(p * np.log(p)).sum())
    if normalize:
        return h / math.log(a.size) if a.size > 1 else 0.0
    return h


@register(
    "complexity",
    category="complexity",
    higher_is_better=False,
    paper="Bhatt et al. 2020, Evaluating and Aggregating Feature-based Model Explanations (IJCAI)",
    summary="entropy of |map| / sum|map|: 0 a single pixel, ln(pixels) uniform",
    aliases=("entropy",),
)
def complexity(ctx: MetricContext, maps: MapList, *, normalize: bool = False) -> MetricOutput:
    return MetricOutput(scores=np.array([entropy(m, bool(normalize)) for m in maps]))
