"""Sparseness: the Gini index of the map's absolute values.

Chalasani, Chen, Chowdhury, Wu, Jha (2020), "Concise Explanations of Neural Networks using
Adversarial Training", ICML. With |a| sorted ascending, a_(1) <= ... <= a_(n):
Gini = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)), in [0, 1): 0 for a uniform map,
(n - 1) / n for a one-hot map. Higher is better (attribution concentrated on few pixels).
Computed at the map's resolution (the image's); a map of zeros scores NaN. A uniform
random map scores about 1/3.
"""

from __future__ import annotations

import numpy as np

from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


def gini(values: np.ndarray) -> float:
    """Gini index of ``|values|`` (flattened); NaN when they sum to 0."""
    a = np.sort(np.abs(np.nan_to_num(np.asarray(values, dtype=np.float64))).ravel())
    n, total = a.size, a.sum()
    if n == 0 or total <= 0:
        return float("nan")
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * a).sum() / (n * total))


@register(
    "sparseness",
    category="complexity",
    higher_is_better=True,
    paper="Chalasani et al. 2020, Concise Explanations of Neural Networks (ICML)",
    summary="Gini index of |map|: 0 uniform, ~1 a single pixel",
    aliases=("gini",),
    bounds=(0.0, 1.0),
)
def sparseness(ctx: MetricContext, maps: MapList) -> MetricOutput:
    return MetricOutput(scores=np.array([gini(m) for m in maps]))
