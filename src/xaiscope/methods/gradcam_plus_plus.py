"""Grad-CAM++.

Chattopadhay, Sarkar, Howlader, Balasubramanian (2018), "Grad-CAM++: Generalized
Gradient-based Visual Explanations for Deep Convolutional Networks", WACV.
Channel weights sum_ij alpha_ij ReLU(g_ij) with
alpha = g^2 / (2 g^2 + sum_ij(A) g^3), the paper's closed form for an exponential score
(the form pytorch-grad-cam uses). Raw: ReLU(sum_k w_k A_k), (N, h, w).
"""

from __future__ import annotations

import torch

from xaiscope.methods._common import cam_from_weights, layer_tensors
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "gradcam++",
    family="cam",
    paper="Chattopadhay et al. 2018, Grad-CAM++ (WACV; arXiv:1710.11063)",
    summary="Grad-CAM with pixel-wise weighting of positive gradients",
    aliases=("gradcampp", "gradcam_plus_plus", "gradcamplusplus"),
    uses_layer=True,
    shared={"layer"},
)
def gradcam_plus_plus(ctx: MethodContext) -> MethodOutput:
    a, g = layer_tensors(ctx)
    a, g = a.float(), g.float()
    g2 = g * g
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
    alpha = torch.where(g != 0, g2 / (denom + 1e-7), torch.zeros_like(g))
    weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3))
    cam = cam_from_weights(weights, a)
    return MethodOutput(raw=cam, map=cam)
