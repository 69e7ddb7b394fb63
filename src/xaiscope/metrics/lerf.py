"""LeRF: pixel flipping of the least relevant regions first.

Samek et al. (2017), "Evaluating the Visualization of What a Deep Neural Network Has
Learned", IEEE TNNLS 28(11); the LeRF order of Samek et al. and Ancona et al. (2018). As
:mod:`~xaiscope.metrics.morf`, but regions are flipped least relevant first: a faithful map
leaves the score high for long, so higher is better.
"""

from __future__ import annotations

from typing import Any

from xaiscope.metrics._common import auc, curve_details, ordered_curves
from xaiscope.metrics.morf import region_size
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


@register(
    "lerf",
    category="faithfulness",
    higher_is_better=True,
    paper="Samek et al. 2017, Evaluating the visualization of what a DNN has learned (TNNLS)",
    summary="pixel flipping, least relevant regions first: area under the target probability",
    needs_model=True,
    bounds=(0.0, 1.0),
)
def lerf(
    ctx: MetricContext,
    maps: MapList,
    *,
    patch: int | None = None,
    fill: Any = "noise",
    step: float | int = 0.02,
    score: str = "probability",
    blur_sigma: float = 0.05,
) -> MetricOutput:
    x, y = ordered_curves(
        ctx, maps, insert=False, most_relevant_first=False, fill=fill, step=step,
        score=score, blur_sigma=blur_sigma, patch=region_size(ctx, patch), salt=4, desc="lerf",
    )  # fmt: skip
    details = curve_details(x, y)
    details["aopc"] = (y[:, :1] - y).mean(axis=1).tolist()
    return MetricOutput(scores=auc(x, y), details=details)
