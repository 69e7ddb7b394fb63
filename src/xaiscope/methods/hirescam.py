"""HiResCAM.

Draelos, Carin (2020), "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks" (arXiv:2011.08891). cam = ReLU(sum_k g_k * A_k) element-wise:
gradients are not averaged, so the map shows where the model's score actually comes from
(exact for a global-average-pooling head). Raw: (N, h, w).
"""

from __future__ import annotations

from xaiscope.methods._common import layer_tensors
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "hirescam",
    family="cam",
    paper="Draelos & Carin 2020, HiResCAM (arXiv:2011.08891)",
    summary="activations times gradients element-wise, summed over channels",
    aliases=("hires_cam",),
    uses_layer=True,
    shared={"layer"},
)
def hirescam(ctx: MethodContext) -> MethodOutput:
    a, g = layer_tensors(ctx)
    cam = (g.float() * a.float()).sum(1).clamp_(min=0)
    return MethodOutput(raw=cam, map=cam)
