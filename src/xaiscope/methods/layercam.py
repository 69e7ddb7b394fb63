"""LayerCAM.

Jiang, Zhang, Hou, Cheng, Wei (2021), "LayerCAM: Exploring Hierarchical Class Activation
Maps for Localization", IEEE TIP. Element-wise weights ReLU(g): cam = ReLU(sum_k ReLU(g_k) A_k),
(N, h, w). Works at shallow layers too, where averaged gradients cancel out.
"""

from __future__ import annotations

from xaiscope.methods._common import layer_tensors
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "layercam",
    family="cam",
    paper="Jiang et al. 2021, LayerCAM (IEEE TIP)",
    summary="activations weighted element-wise by their positive gradients",
    aliases=("layer_cam",),
    uses_layer=True,
    shared={"layer"},
)
def layercam(ctx: MethodContext) -> MethodOutput:
    a, g = layer_tensors(ctx)
    cam = (g.float().clamp(min=0) * a.float()).sum(1).clamp_(min=0)
    return MethodOutput(raw=cam, map=cam)
