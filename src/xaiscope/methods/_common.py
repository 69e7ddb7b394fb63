"""Helpers shared by several method files: batched gradients, reductions, CAM weighting."""

from __future__ import annotations

import torch

from xaiscope.batching import run_batched
from xaiscope.methods.registry import MethodContext
from xaiscope.models.base import GradPass


def batched_input_gradients(
    ctx: MethodContext,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    guided: bool = False,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``targets`` scores w.r.t. ``inputs`` (M, C, H, W), in chunks.

    Returns (gradients (M, C, H, W), target scores (M,)).
    """

    def step(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        gp = ctx.model.grad_pass(inputs[start:stop], targets[start:stop], guided=guided)
        assert gp.input_grads is not None
        scores = gp.logits.gather(1, targets[start:stop, None].to(gp.logits.device))[:, 0]
        return gp.input_grads[0], scores.float()

    parts = run_batched(step, inputs.shape[0], ctx.batch_size, desc=desc, progress=ctx.progress)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def channel_max_abs(attr: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): max over channels of |attr| (saliency's convention)."""
    return attr.abs().amax(dim=1)


def channel_sum(attr: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W): signed sum over channels (attributions add up)."""
    return attr.sum(dim=1)


def shared_pass(ctx: MethodContext, need: str) -> GradPass:
    """The shared forward/backward of this target set, computed here if explain() did not."""
    gp = ctx.shared
    if (
        gp is None
        or (need == "input" and gp.input_grads is None)
        or (need == "layer" and gp.layer_grads is None)
    ):
        gp = ctx.model.grad_pass(
            ctx.x,
            ctx.targets,
            layer=ctx.layer if need == "layer" else None,
            need_input=need == "input",
        )
    return gp


def cam_from_weights(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A_k): weights (N, c), activation (N, c, h, w) -> (N, h, w)."""
    return torch.einsum("nc,nchw->nhw", weights.float(), activation.float()).clamp_(min=0)


def layer_tensors(ctx: MethodContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(activation A (N, c, h, w), gradient dy/dA (N, c, h, w)) at ``ctx.layer``."""
    gp = shared_pass(ctx, "layer")
    assert gp.activation is not None and gp.layer_grads is not None
    a, g = gp.activation, gp.layer_grads[0]
    if a.ndim == 3:
        # (N, tokens, d) from a transformer block: the patch grid without CLS/distillation
        a, g = _tokens_to_grid(a, ctx.model), _tokens_to_grid(g, ctx.model)
    if a.ndim != 4:
        from xaiscope.errors import UnknownLayerError

        raise UnknownLayerError(
            f"layer {ctx.layer!r} outputs shape {tuple(a.shape)}; CAMs need a spatial "
            "(N, C, h, w) layer such as the model's default_layer"
        )
    return a, g


def _tokens_to_grid(t: torch.Tensor, model: object = None) -> torch.Tensor:
    """(N, tokens, d) -> (N, d, h, w): the model's patch grid, prefix tokens dropped.

    The layout (CLS/distillation tokens, grid shape) is read from the model where it says
    (timm, torchvision, tiny_vit); see :func:`xaiscope.models.vit.token_layout`.
    """
    from xaiscope.models.vit import tokens_to_grid

    return tokens_to_grid(t, model)
