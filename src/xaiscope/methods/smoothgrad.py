"""SmoothGrad: saliency averaged over noisy copies of the input.

Smilkov, Thorat, Kim, Viégas, Wattenberg (2017), "SmoothGrad: removing noise by adding
noise" (arXiv:1706.03825).
Noise is Gaussian with standard deviation ``noise_level`` times the range (max - min) of
each preprocessed image, as in the paper, or ``stdev`` in input units when given.
Raw: mean over samples of |grad| (``abs=True``, as Captum's NoiseTunnel over Saliency) or
of the signed gradient, or of grad² (``squared=True``, SmoothGrad²); (N, C, H, W).
Map: max over channels of |raw|. Reproducible with ``seed``.
"""

from __future__ import annotations

import torch

from xaiscope.errors import ParameterError
from xaiscope.methods._common import batched_input_gradients, channel_max_abs
from xaiscope.methods.registry import MethodContext, MethodOutput, register


def noisy_gradients(
    ctx: MethodContext, n_samples: int, noise_level: float, stdev: float | None
) -> torch.Tensor:
    """Gradients at ``n_samples`` noisy copies of each image: (n_samples, N, C, H, W)."""
    if n_samples < 1:
        raise ParameterError(f"n_samples must be >= 1, got {n_samples}")
    x = ctx.x
    n = x.shape[0]
    if stdev is None:
        if noise_level < 0:
            raise ParameterError(f"noise_level must be >= 0, got {noise_level}")
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(n, 1, 1, 1)
        sigma = noise_level * span
    else:
        sigma = torch.full((n, 1, 1, 1), float(stdev), device=x.device)
    # one noise draw per sample shared by all images (scaled by each image's sigma), so an
    # image's result does not depend on the rest of the batch
    shape = (n_samples, 1, *x.shape[1:])
    noise = torch.randn(shape, generator=ctx.generator(), device=x.device)
    noisy = (x[None] + noise * sigma[None]).reshape(n_samples * n, *x.shape[1:])
    targets = ctx.targets.repeat(n_samples)
    grads, _ = batched_input_gradients(ctx, noisy, targets, desc="smoothgrad")
    return grads.view(n_samples, *x.shape)


@register(
    "smoothgrad",
    family="gradient",
    paper="Smilkov et al. 2017, SmoothGrad (arXiv:1706.03825)",
    summary="saliency averaged over noisy copies of the image",
    aliases=("smooth_grad", "noisetunnel"),
    stochastic=True,
)
def smoothgrad(
    ctx: MethodContext,
    *,
    n_samples: int = 25,
    noise_level: float = 0.15,
    stdev: float | None = None,
    abs: bool = True,  # noqa: A002
    squared: bool = False,
) -> MethodOutput:
    grads = noisy_gradients(ctx, n_samples, noise_level, stdev)
    if squared:
        raw = (grads**2).mean(0)
    elif abs:
        raw = grads.abs().mean(0)
    else:
        raw = grads.mean(0)
    return MethodOutput(raw=raw, map=channel_max_abs(raw))
