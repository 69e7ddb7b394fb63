"""VarGrad: variance of the gradient over noisy copies of the input.

Adebayo, Gilmer, Goodfellow, Kim (2018), "Local Explanation Methods for Deep Neural Networks
Lack Sensitivity to Parameter Values", ICLR workshop (arXiv:1810.03307).
Same noise as SmoothGrad. Raw: per-pixel population variance (N, C, H, W), computed in a
streaming form (float64 sums, memory O(chunk + image) for any ``n_samples``); map: sum
over channels.
"""

from __future__ import annotations

from xaiscope.methods.registry import MethodContext, MethodOutput, register
from xaiscope.methods.smoothgrad import NOISE_RULES, noisy_gradient_stats


@register(
    "vargrad",
    family="gradient",
    paper="Adebayo et al. 2018, Local Explanation Methods ... Lack Sensitivity (arXiv:1810.03307)",
    summary="variance of the gradient over noisy copies of the image",
    aliases=("var_grad",),
    stochastic=True,
    rules=NOISE_RULES,
)
def vargrad(
    ctx: MethodContext,
    *,
    n_samples: int = 25,
    noise_level: float = 0.15,
    stdev: float | None = None,
) -> MethodOutput:
    _, raw = noisy_gradient_stats(ctx, n_samples, noise_level, stdev, variance=True, desc="vargrad")
    assert raw is not None
    return MethodOutput(raw=raw, map=raw.sum(1))
