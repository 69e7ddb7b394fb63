"""Insertion: how fast the target's probability rises as the most relevant pixels return.

Petsiuk, Das, Saenko (2018), "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC. Starting from ``fill`` (a blurred copy of the image by default, sigma =
``blur_sigma`` x the shorter side), the image's pixels are put back most relevant first,
``step`` pixels at a time; the score is the area under the target's probability against
the fraction inserted, in [0, 1]. Higher is better.
Cost: N x (1/step + 1) forward passes, batched.
"""

from __future__ import annotations

from typing import Any

from xaiscope.metrics._common import auc, curve_details, ordered_curves
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


@register(
    "insertion",
    category="faithfulness",
    higher_is_better=True,
    paper="Petsiuk et al. 2018, RISE (BMVC; arXiv:1806.07421)",
    summary="area under the target probability as the most relevant pixels are inserted",
    needs_model=True,
    bounds=(0.0, 1.0),
)
def insertion(
    ctx: MetricContext,
    maps: MapList,
    *,
    fill: Any = "blur",
    step: float | int = 0.02,
    score: str = "probability",
    blur_sigma: float = 0.05,
) -> MetricOutput:
    x, y = ordered_curves(
        ctx, maps, insert=True, most_relevant_first=True, fill=fill, step=step,
        score=score, blur_sigma=blur_sigma, patch=1, salt=2, desc="insertion",
    )  # fmt: skip
    return MetricOutput(scores=auc(x, y), details=curve_details(x, y))
