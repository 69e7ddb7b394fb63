"""Expected gradients: integrated gradients averaged over baselines drawn from a distribution.

Erion, Janizek, Sturmfels, Lundberg, Lee (2021), "Improving performance of deep learning
models with axiomatic attribution priors and expected gradients", Nature Machine
Intelligence. attr = E_{r~D, a~U(0,1)} [(x - r) * grad f(r + a (x - r))], estimated with
``n_samples`` draws of (r, a) per image. ``references``: ``"uniform"`` (uniform noise images),
``"batch"`` (the other images of the batch, the paper's choice of training data), or an
array (M, H, W, 3) of reference images in pixel space. Raw (N, C, H, W); map: sum over
channels; ``delta`` = sum(attr) - (f(x) - mean f(r)) over the drawn references.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xaiscope.errors import ParameterError
from xaiscope.methods._common import channel_sum
from xaiscope.methods.registry import MethodContext, MethodOutput, register


def _references(ctx: MethodContext, references: Any, gen: torch.Generator) -> torch.Tensor:
    x01 = ctx.images01
    if isinstance(references, str):
        if references == "uniform":
            pix = torch.rand((16, *x01.shape[1:]), generator=gen, device=x01.device)
            return ctx.model.normalize(pix)
        if references == "batch":
            return ctx.x
        raise ParameterError(
            f"unknown references {references!r}; use 'uniform', 'batch' or an image array"
        )
    arr = references.detach().cpu().numpy() if isinstance(references, torch.Tensor) else references
    if not isinstance(arr, np.ndarray) or arr.ndim != 4:
        raise ParameterError("references must be 'uniform', 'batch' or an (M, H, W, 3) array")
    return ctx.model.preprocess(arr).to(ctx.x.dtype)


@register(
    "expected_gradients",
    family="gradient",
    paper="Erion et al. 2021, Expected Gradients (Nature Machine Intelligence; arXiv:1906.10670)",
    summary="integrated gradients averaged over random baselines and path positions",
    aliases=("eg", "expectedgradients", "gradientshap"),
    stochastic=True,
)
def expected_gradients(
    ctx: MethodContext, *, n_samples: int = 32, references: Any = "uniform"
) -> MethodOutput:
    from xaiscope.methods.integrated_gradients import path_integral

    if n_samples < 1:
        raise ParameterError(f"n_samples must be >= 1, got {n_samples}")
    gen = ctx.generator()
    refs = _references(ctx, references, gen)
    n = ctx.x.shape[0]
    # the same draws for every image, so an image's result does not depend on the others
    pick = torch.randint(0, refs.shape[0], (1, n_samples), generator=gen, device=ctx.x.device)
    alphas = torch.rand((1, n_samples), generator=gen, device=ctx.x.device, dtype=torch.float64)
    pick, alphas = pick.expand(n, -1), alphas.expand(n, -1)
    # one reference per (image, sample): integrate each sample as its own single-node path
    starts = refs[pick.flatten()]
    rep = MethodContext(
        model=ctx.model,
        x=ctx.x.repeat_interleave(n_samples, 0),
        targets=ctx.targets.repeat_interleave(n_samples, 0),
        images01=ctx.images01,
        batch_size=ctx.batch_size,
        progress=ctx.progress,
    )
    ones = torch.ones((n * n_samples, 1), device=ctx.x.device)
    grads = path_integral(
        rep, starts, alphas.reshape(-1, 1), ones, n * n_samples, "expected gradients"
    )
    attr = ((rep.x - starts).float() * grads).view(n, n_samples, *ctx.x.shape[1:]).mean(1)
    f_x = ctx.target_scores()
    f_r = ctx.model.forward(refs).float()[:, ctx.targets]  # (M, N)
    expected_fr = f_r.gather(0, pick.T.contiguous()).mean(0)
    delta = attr.flatten(1).sum(1) - (f_x - expected_fr)
    return MethodOutput(raw=attr, map=channel_sum(attr), delta=delta)
