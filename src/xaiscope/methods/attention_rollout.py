"""Attention rollout.

Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers", ACL
(arXiv:2005.00928). The attention of each layer l, fused over heads (``head_fusion``: mean,
max or min), with the residual connection accounted for and rows renormalised,

    Â_l = normalise_rows((A_l + I) / 2),

is multiplied through the layers, first to last: R = Â_L ... Â_2 Â_1. Row t of R is how
much of token t's representation at the top flows from each input token. The map is the
row of the class token (the mean of the prefix-token rows for DeiT's class and distillation
tokens; the mean of all rows for models without prefix tokens), restricted to the patch
tokens and laid out on the model's patch grid.

``discard_ratio`` (from Gildenblat's vit-explain) zeroes, per image and layer, that fraction
of the smallest fused attention weights before the identity is added (the class token's
attention to itself is kept), which sharpens the map. ``discard_ratio=0`` with mean fusion
is the paper's rollout.

Shapes: ``raw`` and ``map`` (N, h, w) on the patch grid (e.g. 14 x 14 for a 224 px ViT
with 16 px patches), non-negative, each summing to at most 1 (the share of flow from patch
tokens). ``extras``: ``grid``, ``prefix_tokens`` and ``layers`` (attention modules used).
Class-agnostic: every target gives the same map. Limits: PyTorch vision transformers only
(timm ViT/DeiT, torchvision ViT, ``tiny_vit``); another model raises
:class:`~xaiscope.errors.UnsupportedModelError`. Cost: one forward per distinct image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xaiscope._keywords import Rule
from xaiscope.errors import ParameterError
from xaiscope.methods._perturb import image_groups
from xaiscope.methods.registry import MethodContext, MethodOutput, register
from xaiscope.models.vit import attention_probabilities, require_transformer, token_layout

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(N, heads, T, T) -> (N, T, T): mean, max or min over the heads."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ParameterError(
        f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}"
    )


def discard_lowest(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the ``ratio`` smallest entries of each (T, T) matrix of ``fused`` (N, T, T),
    keeping entry [0, 0] (the class token's attention to itself)."""
    if ratio <= 0.0:
        return fused
    n, t, _ = fused.shape
    flat = fused.reshape(n, t * t).clone()
    k = int(t * t * ratio)
    if k == 0:
        return fused
    idx = flat.topk(k, dim=1, largest=False).indices
    keep = flat[:, 0].clone()
    flat.scatter_(1, idx, 0.0)
    flat[:, 0] = keep
    return flat.reshape(n, t, t)


def rollout(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> torch.Tensor:
    """Attention rollout R = Â_L ... Â_1 from per-layer attention (N, heads, T, T): (N, T, T)."""
    if not attentions:
        raise ParameterError("attention rollout needs the attention of at least one layer")
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ParameterError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    first = attentions[0]
    n, t = first.shape[0], first.shape[-1]
    eye = torch.eye(t, device=first.device, dtype=torch.float64)
    result = eye.expand(n, t, t).clone()
    for a in attentions:
        fused = discard_lowest(fuse_heads(a.double(), head_fusion), float(discard_ratio))
        step = (fused + eye) / 2
        step = step / step.sum(dim=-1, keepdim=True)
        result = step @ result
    return result.float()


def rollout_map(result: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(N, T, T) rollout -> (N, h, w): the prefix tokens' rows (all rows without prefix
    tokens) over the patch tokens."""
    rows = result[:, :prefix] if prefix > 0 else result
    flow = rows.mean(dim=1)[:, prefix:]
    return flow.reshape(result.shape[0], *grid)


@register(
    "attention_rollout",
    family="attention",
    paper="Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers (ACL; "
    "arXiv:2005.00928)",
    summary="attention of every layer, heads fused and the residual added, multiplied "
    "through the layers (vision transformers only; class-agnostic)",
    aliases=("rollout",),
    # no gradient is computed, but it reads inside the model: not a black-box method
    needs_gradients=True,
    needs_attention=True,
    rules={"discard_ratio": Rule(low=0, high=1, open_high=True)},
)
def attention_rollout(
    ctx: MethodContext, *, head_fusion: str = "mean", discard_ratio: float = 0.0
) -> MethodOutput:
    if head_fusion not in HEAD_FUSIONS:
        raise ParameterError(
            f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {head_fusion!r}"
        )
    if not 0.0 <= float(discard_ratio) < 1.0:
        raise ParameterError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    require_transformer(ctx.model, "attention_rollout")
    # class-agnostic: the target sets of one image share its forward
    groups = image_groups(ctx.x)
    attentions = attention_probabilities(ctx.model, ctx.x[groups.first])
    layout = token_layout(ctx.model, attentions[0].shape[-1])
    result = rollout(attentions, head_fusion, discard_ratio)
    cam = rollout_map(result, layout.prefix, layout.grid)[groups.inverse]
    return MethodOutput(
        raw=cam,
        map=cam,
        extras={
            "grid": list(layout.grid),
            "prefix_tokens": layout.prefix,
            "layers": len(attentions),
        },
    )
