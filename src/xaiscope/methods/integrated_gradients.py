"""Integrated gradients.

Sundararajan, Taly, Yan (2017), "Axiomatic Attribution for Deep Networks", ICML.
attr = (x - b) * sum_i w_i * grad f(b + a_i (x - b)), with the nodes a_i and weights w_i of
``rule``: riemann_left, riemann_right, riemann_middle, riemann_trapezoid (exactly as
Captum defines them, so results match Captum's) or gausslegendre. ``delta`` is the
completeness gap per image, sum(attr) - (f(x) - f(b)); it shrinks as ``n_steps`` grows.
Raw (N, C, H, W); map: sum over channels. The baseline is defined in pixel space
(see :mod:`.baselines`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xaiscope.batching import run_batched
from xaiscope.errors import ParameterError
from xaiscope.methods._common import channel_sum
from xaiscope.methods.baselines import make_baseline
from xaiscope.methods.registry import MethodContext, MethodOutput, register

RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def path_nodes(rule: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of an ``n_steps`` quadrature of [0, 1] by ``rule``."""
    if n_steps < 1 or (rule == "riemann_trapezoid" and n_steps < 2):
        raise ParameterError(f"n_steps must be >= {2 if rule == 'riemann_trapezoid' else 1}")
    n = n_steps

    def linspace(a: float, b: float) -> np.ndarray:
        # float32 nodes as Captum builds them: on ReLU6 networks a one-ulp move of a node
        # can shift the attributions by 1e-3, so the same nodes are needed to compare
        return torch.linspace(a, b, n).double().numpy()

    if rule == "riemann_left":
        return linspace(0, 1 - 1 / n), np.full(n, 1 / n)
    if rule == "riemann_right":
        return linspace(1 / n, 1), np.full(n, 1 / n)
    if rule == "riemann_middle":
        return linspace(1 / (2 * n), 1 - 1 / (2 * n)), np.full(n, 1 / n)
    if rule == "riemann_trapezoid":
        # Captum's convention, kept so results compare one to one: nodes 0..1, steps 1/n
        # with halved end weights (they sum to (n - 1)/n, a bias of about 1/n)
        w = np.full(n, 1 / n)
        w[0] = w[-1] = 1 / (2 * n)
        return linspace(0, 1), w
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    raise ParameterError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")


def path_integral(
    ctx: MethodContext,
    starts: torch.Tensor,
    alphas: torch.Tensor,
    weights: torch.Tensor,
    rows: int,
    desc: str,
) -> torch.Tensor:
    """sum_j weights[j] * grad f(starts[img] + alphas[j] (x[img] - starts[img])), batched.

    ``starts`` (N, C, H, W); ``alphas`` and ``weights`` (N, S) per image. Points are built
    chunk by chunk (never all N*S at once) and gradients are accumulated per image.
    """
    x, targets = ctx.x, ctx.targets
    n, steps = alphas.shape
    total = torch.zeros_like(x, dtype=torch.float32)
    diff = x - starts

    def step(start: int, stop: int) -> None:
        r = torch.arange(start, stop, device=x.device)
        img, j = r // steps, r % steps
        a = alphas[img, j].view(-1, 1, 1, 1).to(x.dtype)
        points = starts[img] + a * diff[img]
        gp = ctx.model.grad_pass(points, targets[img], need_input=True)
        assert gp.input_grads is not None
        contrib = gp.input_grads[0].float() * weights[img, j].view(-1, 1, 1, 1)
        total.index_add_(0, img, contrib)

    run_batched(step, rows, ctx.batch_size, desc=desc, progress=ctx.progress)
    return total


@register(
    "integrated_gradients",
    family="gradient",
    paper="Sundararajan et al. 2017, Axiomatic Attribution for Deep Networks (arXiv:1703.01365)",
    summary="gradients integrated along the straight path from a baseline to the image",
    aliases=("ig", "integratedgradients"),
)
def integrated_gradients(
    ctx: MethodContext,
    *,
    n_steps: int = 50,
    rule: str = "gausslegendre",
    baseline: Any = "black",
) -> MethodOutput:
    if rule not in RULES:
        raise ParameterError(f"unknown rule {rule!r}; use one of {', '.join(RULES)}")
    a_np, w_np = path_nodes(rule, int(n_steps))
    n = ctx.x.shape[0]
    base = make_baseline(ctx, baseline).to(ctx.x.dtype)
    alphas = torch.as_tensor(a_np, device=ctx.x.device, dtype=torch.float64).expand(n, -1)
    weights = torch.as_tensor(w_np, device=ctx.x.device, dtype=torch.float32).expand(n, -1)
    grads = path_integral(ctx, base, alphas, weights, n * len(a_np), "integrated gradients")
    attr = (ctx.x - base).float() * grads
    f_x = ctx.target_scores()
    f_b = ctx.model.forward(base).float().gather(1, ctx.targets[:, None])[:, 0]
    delta = attr.flatten(1).sum(1) - (f_x - f_b)
    return MethodOutput(
        raw=attr, map=channel_sum(attr), delta=delta, extras={"baseline_score": f_b}
    )
