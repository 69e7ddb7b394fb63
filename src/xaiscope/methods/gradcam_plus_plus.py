"""Grad-CAM++.

Chattopadhay, Sarkar, Howlader, Balasubramanian (2018), "Grad-CAM++: Generalized
Gradient-based Visual Explanations for Deep Convolutional Networks", WACV.
Channel weights sum_ij alpha_ij ReLU(g_ij) with
alpha = g^2 / (2 g^2 + sum_ij(A) g^3), the paper's closed form for an exponential score
(the form pytorch-grad-cam uses). ``eps`` is added to the denominator as pytorch-grad-cam
does (1e-6), so maps match it; since gradients are often ~1e-3, eps changes the weights
noticeably: ``eps=0`` gives the exact formula (alpha = 0 where the denominator vanishes).
Raw: ReLU(sum_k w_k A_k), (N, h, w).
"""

from __future__ import annotations

import torch

from xaiscope._keywords import Rule
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
    rules={"eps": Rule(low=0)},
)
def gradcam_plus_plus(ctx: MethodContext, *, eps: float = 1e-6) -> MethodOutput:
    a, g = layer_tensors(ctx)
    a, g = a.float(), g.float()
    g2 = g * g
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
    denom = denom + eps
    ok = (g != 0) & (denom != 0)
    alpha = torch.where(
        ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(g)
    )
    weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3))
    cam = cam_from_weights(weights, a)
    return MethodOutput(raw=cam, map=cam)
