"""Guided backpropagation.

Springenberg, Dosovitskiy, Brox, Riedmiller (2015), "Striving for Simplicity: The All
Convolutional Net", ICLR workshop (arXiv:1412.6806).
Backward through every ReLU/ReLU6 module passes only positive gradients to positive inputs.
Raw: the guided gradient (N, C, H, W); map: max over channels of its magnitude.
Limits: ReLUs called as functions (not modules) are not rectified; the map is largely
independent of the class and of the weights (Adebayo et al. 2018).
"""

from __future__ import annotations

from xaiscope.methods._common import batched_input_gradients, channel_max_abs
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "guided_backprop",
    family="gradient",
    paper="Springenberg et al. 2015, Striving for Simplicity (arXiv:1412.6806)",
    summary="gradient with negative signals removed at every ReLU on the way back",
    aliases=("guided_backpropagation", "guidedbackprop"),
)
def guided_backprop(ctx: MethodContext) -> MethodOutput:
    grad, _ = batched_input_gradients(ctx, ctx.x, ctx.targets, guided=True)
    return MethodOutput(raw=grad, map=channel_max_abs(grad))
