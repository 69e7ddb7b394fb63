"""Gradient times input.

Shrikumar, Greenside, Shcherbina, Kundaje (2016), "Not Just a Black Box: Learning Important
Features Through Propagating Activation Differences" (arXiv:1605.01713).
Raw: x * dy_c/dx (N, C, H, W), x being the preprocessed input; map: sum over channels.
Exact (complete) only for models linear in x with zero bias.
"""

from __future__ import annotations

from xaiscope.methods._common import channel_sum, shared_pass
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "gradient_x_input",
    family="gradient",
    paper="Shrikumar et al. 2016, Not Just a Black Box (arXiv:1605.01713)",
    summary="input times the gradient of the target score",
    aliases=("input_x_gradient", "gxi"),
    shared={"input"},
)
def gradient_x_input(ctx: MethodContext) -> MethodOutput:
    gp = shared_pass(ctx, "input")
    assert gp.input_grads is not None
    attr = ctx.x * gp.input_grads[0]
    return MethodOutput(raw=attr, map=channel_sum(attr))
