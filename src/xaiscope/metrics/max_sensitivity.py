"""Max-sensitivity: the largest change of the map under small input noise.

Yeh, Hsieh, Suggala, Inouye, Ravikumar (2019), "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS. Monte-Carlo estimate of
max_{||d||_inf <= r} ||Phi(x + d) - Phi(x)||_2 / ||Phi(x)||_2 over ``n_samples`` uniform
noise draws of radius ``radius`` (in [0, 1] pixel units, applied to the user's images and
rounded to uint8), where Phi is the explanation method re-run for the same target. Lower is
better (0: the map does not move). The relative norm (as in Quantus) makes methods of
different scales comparable; a zero map scores NaN.
Cost: ``n_samples`` runs of the method on all images (one batched call).
"""

from __future__ import annotations

import numpy as np

from xaiscope.errors import ParameterError
from xaiscope.metrics.explainers import call_explainer
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register


@register(
    "max_sensitivity",
    category="robustness",
    higher_is_better=False,
    paper="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations (NeurIPS)",
    summary="largest relative change of the map over small uniform noise on the image",
    needs_model=True,
    needs_method=True,
)
def max_sensitivity(
    ctx: MetricContext, maps: MapList, *, radius: float = 0.02, n_samples: int = 10
) -> MetricOutput:
    if not 0.0 < radius <= 1.0:
        raise ParameterError(f"radius must be in (0, 1] (pixel units), got {radius}")
    if not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ParameterError(f"n_samples must be a positive integer, got {n_samples!r}")
    explainer = ctx.require_explainer("max_sensitivity")
    rng = ctx.rng(6)
    n = len(ctx.images)
    noisy = [
        np.clip(np.rint(im + rng.uniform(-radius, radius, im.shape) * 255.0), 0, 255).astype(
            np.uint8
        )
        for _ in range(int(n_samples))
        for im in ctx.images
    ]
    targets = np.tile(np.asarray(ctx.targets), int(n_samples))
    moved = call_explainer(explainer, ctx.model, noisy, targets)
    scores = np.full(n, np.nan)
    for i, m in enumerate(maps):
        norm = np.linalg.norm(m)
        if norm > 0:
            diffs = [np.linalg.norm(moved[s * n + i] - m) for s in range(int(n_samples))]
            scores[i] = max(diffs) / norm
    return MetricOutput(scores=scores)
