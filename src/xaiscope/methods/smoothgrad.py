"""SmoothGrad: saliency averaged over noisy copies of the input.

Smilkov, Thorat, Kim, Viégas, Wattenberg (2017), "SmoothGrad: removing noise by adding
noise" (arXiv:1706.03825).
Noise is Gaussian with standard deviation ``noise_level`` times the range (max - min) of
each preprocessed image, as in the paper, or ``stdev`` in input units when given.
Raw: mean over samples of |grad| (``abs=True``, as Captum's NoiseTunnel over Saliency) or
of the signed gradient, or of grad² (``squared=True``, SmoothGrad²); (N, C, H, W).
Map: max over channels of |raw|. Reproducible with ``seed``.

Cost: n_samples gradient passes per image; memory O(chunk + image) for any ``n_samples``
(noise is drawn and gradients are summed chunk by chunk, see :func:`noisy_gradient_stats`).
Limits: ``n_samples`` is bounded by the ``max_samples`` setting; ``noise_level`` must be
>= 0 and ``stdev`` > 0 (finite): other values are refused before any work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from xaiscope._keywords import Rule
from xaiscope.batching import run_batched
from xaiscope.errors import ParameterError
from xaiscope.methods._common import channel_max_abs
from xaiscope.methods._sampling import SampleNoise
from xaiscope.methods.registry import MethodContext, MethodOutput, register

#: noise_level is a fraction of each image's range (0: plain saliency); stdev, in input
#: units, replaces it when given and must be positive
NOISE_RULES = {
    # beyond 1e6 times the input's range (or units) the noise overflows float32 arithmetic
    "noise_level": Rule(low=0, high=1e6),
    "stdev": Rule(low=0, high=1e6, open_low=True, none_ok=True),
}


def noise_sigma(ctx: MethodContext, noise_level: float, stdev: float | None) -> torch.Tensor:
    """The noise's standard deviation per image, (N, 1, 1, 1)."""
    x = ctx.x
    n = x.shape[0]
    if stdev is None:
        if not noise_level >= 0:
            raise ParameterError(f"noise_level must be >= 0, got {noise_level}")
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(n, 1, 1, 1)
        return noise_level * span
    if not 0 < stdev < float("inf"):
        raise ParameterError(f"stdev must be > 0 and finite, got {stdev}")
    return torch.full((n, 1, 1, 1), float(stdev), device=x.device)


def noisy_gradient_stats(
    ctx: MethodContext,
    n_samples: int,
    noise_level: float,
    stdev: float | None,
    *,
    value: Callable[[torch.Tensor], torch.Tensor] | None = None,
    variance: bool = False,
    desc: str = "smoothgrad",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean over ``n_samples`` noisy copies of each image of ``value(gradient)`` (default:
    the gradient), (N, C, H, W), and with ``variance`` its population variance (else None).

    One noise draw per sample is shared by all images (scaled by each image's sigma), so an
    image's result does not depend on the rest of the batch. Rows (sample j, image i) run in
    the order and chunks of a single batch of n_samples x N noisy images, with the noise of
    ``torch.randn((n_samples, 1, C, H, W))`` drawn chunk by chunk (:class:`SampleNoise`):
    memory is O(chunk + image) whatever ``n_samples``. Sums are kept in float64; the variance
    from sums of differences to each image's first sample, which keeps the cancellation of
    sum-of-squares formulas away (equal to a two-pass variance to ~1e-12 relative).
    """
    if n_samples < 1:
        raise ParameterError(f"n_samples must be >= 1, got {n_samples}")
    x = ctx.x
    n = x.shape[0]
    sigma = noise_sigma(ctx, noise_level, stdev)
    noise = SampleNoise(n_samples, (1, *x.shape[1:]), ctx.generator(), x.device)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    shift = torch.zeros_like(total) if variance else None
    squares = torch.zeros_like(total) if variance else None
    out_dtype: list[torch.dtype] = []

    def step(start: int, stop: int) -> None:
        r = torch.arange(start, stop, device=x.device)
        j, i = r // n, r % n
        first = start // n
        eps = noise.rows(first, (stop - 1) // n + 1)[j - first, 0]
        # the same float operations, in the same order, as on the full (S, N, ...) batch
        noisy = x[i] + eps * sigma[i]
        gp = ctx.model.grad_pass(noisy, ctx.targets[i])
        assert gp.input_grads is not None
        g = gp.input_grads[0]
        if not out_dtype:
            out_dtype.append(g.dtype)
        v = (g if value is None else value(g)).to(torch.float64)
        if shift is None or squares is None:
            total.index_add_(0, i, v)
            return
        at_first = j == 0  # rows come in order: an image's first sample comes first
        shift[i[at_first]] = v[at_first]
        d = v - shift[i]
        total.index_add_(0, i, d)
        squares.index_add_(0, i, d * d)

    run_batched(step, n_samples * n, ctx.batch_size, desc=desc, progress=ctx.progress)
    dtype = out_dtype[0] if out_dtype else x.dtype
    mean = total / n_samples
    if shift is None or squares is None:
        return mean.to(dtype), None
    var = (squares / n_samples - mean * mean).clamp_(min=0)
    return (shift + mean).to(dtype), var.to(dtype)


@register(
    "smoothgrad",
    family="gradient",
    paper="Smilkov et al. 2017, SmoothGrad (arXiv:1706.03825)",
    summary="saliency averaged over noisy copies of the image",
    aliases=("smooth_grad", "noisetunnel"),
    stochastic=True,
    rules=NOISE_RULES,
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
    value = torch.square if squared else torch.abs if abs else None
    raw, _ = noisy_gradient_stats(ctx, n_samples, noise_level, stdev, value=value)
    return MethodOutput(raw=raw, map=channel_max_abs(raw))
