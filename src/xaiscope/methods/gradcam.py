"""Grad-CAM.

Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra (2017), "Grad-CAM: Visual Explanations
from Deep Networks via Gradient-based Localization", ICCV.
cam = ReLU(sum_k w_k A_k), w_k the spatial mean of dy_c/dA_k. Raw: (N, h, w) at the
layer's resolution, after ReLU, before any normalisation. Limits: as coarse as the layer.
"""

from __future__ import annotations

from xaiscope.methods._common import cam_from_weights, layer_tensors
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "gradcam",
    family="cam",
    paper="Selvaraju et al. 2017, Grad-CAM (ICCV; arXiv:1610.02391)",
    summary="layer activations weighted by their spatially averaged gradients",
    aliases=("grad_cam",),
    uses_layer=True,
    shared={"layer"},
)
def gradcam(ctx: MethodContext) -> MethodOutput:
    a, g = layer_tensors(ctx)
    cam = cam_from_weights(g.float().mean(dim=(2, 3)), a)
    return MethodOutput(raw=cam, map=cam)
