"""XGrad-CAM.

Fu, Hu, Zhang, Gao, Wu, Xu (2020), "Axiom-based Grad-CAM: Towards Accurate Visualization and
Explanation of CNNs", BMVC. Channel weights sum_ij(A_ij g_ij) / sum_ij(A_ij), which satisfy
the sensitivity and conservation axioms. Raw: ReLU(sum_k w_k A_k), (N, h, w).
"""

from __future__ import annotations

from xaiscope.methods._common import cam_from_weights, layer_tensors
from xaiscope.methods.registry import MethodContext, MethodOutput, register


@register(
    "xgradcam",
    family="cam",
    paper="Fu et al. 2020, Axiom-based Grad-CAM (BMVC; arXiv:2008.02312)",
    summary="Grad-CAM with activation-normalised gradient weights",
    aliases=("xgrad_cam", "axiom_gradcam"),
    uses_layer=True,
    shared={"layer"},
)
def xgradcam(ctx: MethodContext) -> MethodOutput:
    a, g = layer_tensors(ctx)
    a, g = a.float(), g.float()
    weights = (a * g).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + 1e-7)
    cam = cam_from_weights(weights, a)
    return MethodOutput(raw=cam, map=cam)
