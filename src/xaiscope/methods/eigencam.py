"""Eigen-CAM.

Muhammad, Yeasin (2020), "Eigen-CAM: Class Activation Map using Principal Components",
IJCNN (arXiv:2008.00299). The layer's activation of each image, seen as h*w points in
c dimensions and centred (the mean over positions subtracted, as pytorch-grad-cam's
``get_2d_projection`` does), is projected on its first principal component (the first right
singular vector of the SVD); the map is that projection after ReLU.

Class-agnostic: the target class plays no part, every target gives the same map.
Sign convention: a singular vector is defined up to its sign, and pytorch-grad-cam keeps
whatever LAPACK returns (so its map may come out inverted, or blank after the ReLU). Here
the sign is chosen so that the projection correlates positively (over positions) with the
channel-summed activation, i.e. it points the way the layer fires; ties keep LAPACK's sign.

Shapes: ``raw`` and ``map`` (N, h, w) at the layer's resolution, after ReLU. Cost: one
forward to the layer and one small batched SVD of (h*w, c) per image, on the device.
Limits: as coarse as the layer; a constant activation (no variance) gives an all-zero map,
flagged by :func:`xaiscope.explain`.
"""

from __future__ import annotations

import torch

from xaiscope.methods._perturb import image_groups
from xaiscope.methods.registry import MethodContext, MethodOutput, register
from xaiscope.methods.scorecam import layer_activation


def first_component_projection(a: torch.Tensor) -> torch.Tensor:
    """(N, c, h, w) -> (N, h, w): centred activations projected on the first principal axis.

    Signed (before ReLU), with the sign convention of the module docstring.
    """
    n, c, h, w = a.shape
    m = a.reshape(n, c, h * w).transpose(1, 2).float()  # (N, hw, c)
    m = m - m.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    proj = m @ vh[:, 0, :, None]  # (N, hw, 1)
    proj = proj[..., 0]
    total = a.float().sum(1).reshape(n, h * w)
    corr = ((proj - proj.mean(1, keepdim=True)) * (total - total.mean(1, keepdim=True))).sum(1)
    sign = torch.where(corr < 0, -torch.ones_like(corr), torch.ones_like(corr))
    return (proj * sign[:, None]).reshape(n, h, w)


@register(
    "eigencam",
    family="cam",
    paper="Muhammad & Yeasin 2020, Eigen-CAM: Class Activation Map using Principal "
    "Components (IJCNN; arXiv:2008.00299)",
    summary="projection of the layer activations on their first principal component "
    "(class-agnostic)",
    aliases=("eigen_cam",),
    needs_gradients=False,
    uses_layer=True,
)
def eigencam(ctx: MethodContext) -> MethodOutput:
    # class-agnostic: the target sets of one image share its forward and its SVD
    groups = image_groups(ctx.x)
    a = layer_activation(ctx, x=ctx.x[groups.first])
    cam = first_component_projection(a).clamp_(min=0)[groups.inverse]
    return MethodOutput(raw=cam, map=cam)
