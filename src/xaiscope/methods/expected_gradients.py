"""Expected gradients: integrated gradients averaged over baselines drawn from a distribution.

Erion, Janizek, Sturmfels, Lundberg, Lee (2021), "Improving performance of deep learning
models with axiomatic attribution priors and expected gradients", Nature Machine
Intelligence. attr = E_{r~D, a~U(0,1)} [(x - r) * grad f(r + a (x - r))], estimated with
``n_samples`` draws of (r, a) per image. ``references``: ``"uniform"`` (uniform noise images),
``"batch"`` (the other images of the batch, the paper's choice of training data), or an
array (M, H, W, 3) of reference images in pixel space. Raw (N, C, H, W); map: sum over
channels; ``delta`` = sum(attr) - (f(x) - mean f(r)) over the drawn references.
Cost: n_samples gradient passes per image; memory O(chunk + image): the noisy points are
built per chunk and summed per image, never n_samples x image at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xaiscope.batching import run_batched
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
    if n_samples < 1:
        raise ParameterError(f"n_samples must be >= 1, got {n_samples}")
    gen = ctx.generator()
    refs = _references(ctx, references, gen)
    x = ctx.x
    n = x.shape[0]
    # the same draws for every image, so an image's result does not depend on the others
    pick = torch.randint(0, refs.shape[0], (1, n_samples), generator=gen, device=x.device)
    alphas = torch.rand((1, n_samples), generator=gen, device=x.device, dtype=torch.float64)
    pick, alphas = pick[0], alphas[0]
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)

    def step(start: int, stop: int) -> None:
        # row r: image r // n_samples, sample r % n_samples; each sample is its own
        # single-node path from its reference, built here for this chunk only
        r = torch.arange(start, stop, device=x.device)
        img, j = r // n_samples, r % n_samples
        ref = refs[pick[j]]
        diff = x[img] - ref
        a = alphas[j].view(-1, 1, 1, 1).to(x.dtype)
        gp = ctx.model.grad_pass(ref + a * diff, ctx.targets[img], need_input=True)
        assert gp.input_grads is not None
        contrib = diff.float() * gp.input_grads[0].float()
        total.index_add_(0, img, contrib.double())

    run_batched(
        step, n * n_samples, ctx.batch_size, desc="expected gradients", progress=ctx.progress
    )
    attr = (total / n_samples).float()
    f_x = ctx.target_scores()
    f_r = ctx.model.forward(refs).float()[:, ctx.targets]  # (M, N)
    expected_fr = f_r[pick].mean(0)
    delta = attr.flatten(1).sum(1) - (f_x - expected_fr)
    return MethodOutput(raw=attr, map=channel_sum(attr), delta=delta)
