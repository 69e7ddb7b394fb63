"""MoRF: pixel flipping of the most relevant regions first.

Samek, Binder, Montavon, Lapuschkin, Mueller (2017), "Evaluating the Visualization of What a
Deep Neural Network Has Learned", IEEE TNNLS 28(11). The image is cut into ``patch`` x
``patch`` regions at the model's input resolution (default: 1/25 of the side, 9 px at
224 px), ranked by mean relevance; regions are replaced by uniform noise (``fill``) most
relevant first, ``step`` of them at a time. The score is the area under the target's
probability against the fraction of regions flipped, in [0, 1]; lower is better (a steep
fall). ``details`` also holds the AOPC of Samek et al.: the mean drop from the original
score over the steps.
"""

from __future__ import annotations

from typing import Any

from xaiscope.metrics._common import auc, curve_details, ordered_curves
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


def region_size(ctx: MetricContext, patch: int | None) -> int:
    if patch is not None:
        return patch
    h, w = ctx.require_model("pixel flipping").input_size
    return max(1, round(min(h, w) / 25))


@register(
    "morf",
    category="faithfulness",
    higher_is_better=False,
    paper="Samek et al. 2017, Evaluating the visualization of what a DNN has learned (TNNLS)",
    summary="pixel flipping, most relevant regions first: area under the target probability",
    aliases=("pixel_flipping",),
    needs_model=True,
    bounds=(0.0, 1.0),
)
def morf(
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
        ctx, maps, insert=False, most_relevant_first=True, fill=fill, step=step,
        score=score, blur_sigma=blur_sigma, patch=region_size(ctx, patch), salt=3, desc="morf",
    )  # fmt: skip
    details = curve_details(x, y)
    details["aopc"] = (y[:, :1] - y).mean(axis=1).tolist()
    return MetricOutput(scores=auc(x, y), details=details)
