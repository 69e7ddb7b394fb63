"""Deletion: how fast the target's probability falls as the most relevant pixels go.

Petsiuk, Das, Saenko (2018), "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC. Pixels (at the model's input resolution) are replaced by ``fill``, most
relevant first, ``step`` pixels at a time (a fraction of all pixels, or a count); the
score is the area under the curve of the target's probability against the fraction
removed, in [0, 1]. Lower is better: a faithful map names the pixels the model needs.
Ties in the map (e.g. a CAM's zeros) are removed in random order.

The default fill is a blurred copy of the image (sigma = ``blur_sigma`` x the shorter
side), the substrate RISE uses for insertion; RISE's deletion removes to black
(``fill="black"``). Black draws new edges: a hole cut along an object keeps the object's
outline, which for shape-defined classes still carries the class (on ``shapes``, deleting
Grad-CAM's pixels to black scores worse than deleting random pixels, with blur better).
Cost: N x (1/step + 1) forward passes, batched.
"""

from __future__ import annotations

from typing import Any

from xaiscope.metrics._common import auc, curve_details, ordered_curves
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


@register(
    "deletion",
    category="faithfulness",
    higher_is_better=False,
    paper="Petsiuk et al. 2018, RISE (BMVC; arXiv:1806.07421)",
    summary="area under the target probability as the most relevant pixels are removed",
    needs_model=True,
    bounds=(0.0, 1.0),
)
def deletion(
    ctx: MetricContext,
    maps: MapList,
    *,
    fill: Any = "blur",
    step: float | int = 0.02,
    score: str = "probability",
    blur_sigma: float = 0.05,
) -> MetricOutput:
    x, y = ordered_curves(
        ctx, maps, insert=False, most_relevant_first=True, fill=fill, step=step,
        score=score, blur_sigma=blur_sigma, patch=1, salt=1, desc="deletion",
    )  # fmt: skip
    return MetricOutput(scores=auc(x, y), details=curve_details(x, y))
