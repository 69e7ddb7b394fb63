"""VarGrad: variance of the gradient over noisy copies of the input.

Adebayo, Gilmer, Goodfellow, Kim (2018), "Local Explanation Methods for Deep Neural Networks
Lack Sensitivity to Parameter Values", ICLR workshop (arXiv:1810.03307).
Same noise as SmoothGrad. Raw: per-pixel variance (N, C, H, W); map: sum over channels.
"""

from __future__ import annotations

from xaiscope.methods.registry import MethodContext, MethodOutput, register
from xaiscope.methods.smoothgrad import noisy_gradients


@register(
    "vargrad",
    family="gradient",
    paper="Adebayo et al. 2018, Local Explanation Methods ... Lack Sensitivity (arXiv:1810.03307)",
    summary="variance of the gradient over noisy copies of the image",
    aliases=("var_grad",),
    stochastic=True,
)
def vargrad(
    ctx: MethodContext,
    *,
    n_samples: int = 25,
    noise_level: float = 0.15,
    stdev: float | None = None,
) -> MethodOutput:
    grads = noisy_gradients(ctx, n_samples, noise_level, stdev)
    raw = grads.var(0, unbiased=False)
    return MethodOutput(raw=raw, map=raw.sum(1))
