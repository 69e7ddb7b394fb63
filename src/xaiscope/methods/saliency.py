"""Vanilla gradient saliency.

Simonyan, Vedaldi, Zisserman (2014), "Deep Inside Convolutional Networks: Visualising Image
Classification Models and Saliency Maps", ICLR workshop.
Raw: |dy_c/dx| (N, C, H, W) (signed with ``abs=False``); map: max over channels of |grad|.
Limits: noisy, and saturated units give zero gradient.
"""

from __future__ import annotations

from xaiscope.methods._common import channel_max_abs, shared_pass
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "saliency",
    family="gradient",
    paper="Simonyan et al. 2014, Deep Inside Convolutional Networks (arXiv:1312.6034)",
    summary="gradient of the target score with respect to the input pixels",
    aliases=("gradient", "vanilla_gradient"),
    shared={"input"},
)
def saliency(ctx: MethodContext, *, abs: bool = True) -> MethodOutput:  # noqa: A002
    gp = shared_pass(ctx, "input")
    assert gp.input_grads is not None
    grad = gp.input_grads[0]
    return MethodOutput(raw=grad.abs() if abs else grad, map=channel_max_abs(grad))
