"""Ablation-CAM.

Desai, Ramaswamy (2020), "Ablation-CAM: Visual Explanations for Deep Convolutional Network
via Gradient-free Localization", WACV. Channel k of the layer is set to zero and the target
score y_k of the ablated network is compared with the score y of the intact one:

    w_k = (y - y_k) / y,        cam = ReLU(sum_k w_k A_k)

the formula of the paper and of pytorch-grad-cam's ``AblationCAM``, with which the outputs
agree on layers whose activations are non-negative (after a ReLU). Where a layer also takes
negative values pytorch-grad-cam replaces the channel by (batch minimum - 1e7) instead of
zero, a deviation from the paper that we do not copy. y is the raw output (logit): for a
negative target logit the weights change sign, as in both references; for y = 0 the
relative drop is undefined, the weights are the plain drops y - y_k and the result carries a
warning.

Speed: the layers before the target layer run once per chunk of channels at batch 1
(``Model.forward_from_layer``); only the layers after it run for every ablated channel.
Channels that are all zero are not run at all: ablating them changes nothing (y_k = y) and
they add nothing to the sum. Shapes: ``raw`` and ``map`` (N, h, w) at the layer's
resolution, after ReLU. Cost: (number of non-zero channels) x (the layers after the target
layer), plus the prefix once per chunk, per distinct image (its target sets share them).
Limits: as coarse as the layer; needs a model that can replace a layer's output (PyTorch;
ONNX where its adapter implements it).
"""

from __future__ import annotations

import torch

from xaiscope.batching import run_batched
from xaiscope.errors import UnknownLayerError
from xaiscope.methods._common import _tokens_to_grid
from xaiscope.methods._perturb import image_groups
from xaiscope.methods.registry import MethodContext, MethodOutput, register

#: Bytes of replaced activations per chunk. Each chunk re-runs the prefix once (at batch 1),
#: so after a late layer, where the suffix is cheap, one chunk should hold all channels
#: (EfficientNet-Lite0's bn2: 250 KB a row, 512 rows); after an early layer the activation
#: and the suffix are large and chunks shrink accordingly.
CHUNK_BYTES = {"cpu": 128 << 20, "cuda": 1 << 30}


def chunk_rows(ctx: MethodContext, row_bytes: int) -> int:
    """Channels per chunk: at least ``ctx.batch_size``, about CHUNK_BYTES of activations."""
    budget = CHUNK_BYTES.get(ctx.x.device.type, CHUNK_BYTES["cpu"])
    return max(int(ctx.batch_size), min(1024, budget // max(1, row_bytes)))


@register(
    "ablationcam",
    family="cam",
    paper="Desai & Ramaswamy 2020, Ablation-CAM: Visual Explanations for Deep Convolutional "
    "Network via Gradient-free Localization (WACV)",
    summary="layer channels weighted by the relative drop of the target score when each "
    "channel is zeroed",
    aliases=("ablation_cam",),
    needs_gradients=False,
    uses_layer=True,
)
def ablationcam(ctx: MethodContext) -> MethodOutput:
    layer = ctx.layer
    if layer is None:
        raise UnknownLayerError("ablationcam needs a layer; give layer= (see model.layers())")
    dev = ctx.x.device
    groups = image_groups(ctx.x)
    read = groups.member_targets(ctx.targets.to(dev))  # (U, K)
    # the target sets of one image share its ablated forwards
    xu = ctx.x[groups.first]
    native = ctx.model.activations(xu, layer)
    if native.ndim == 4:
        a = native
    elif native.ndim == 3:
        a = _tokens_to_grid(native, ctx.model)  # ablating feature k of every token, as for channels
    else:
        raise UnknownLayerError(
            f"layer {layer!r} outputs shape {tuple(native.shape)}; CAMs need a spatial "
            "(N, C, h, w) layer such as the model's default_layer"
        )
    a = a.float()
    u_count, c = a.shape[:2]
    y = ctx.target_scores().to(dev)  # (N,)
    # channels that are zero everywhere need no forward: y_k = y and A_k = 0
    live = (a.flatten(2) != 0).any(2)  # (U, c)
    pairs = live.nonzero()  # (R, 2) image-major; one host sync for the whole call
    counts = live.sum(1).tolist()
    # ablated[u, k, ch]: target k of image u with channel ch zeroed (default: not ablated)
    ablated = y[groups.members.clamp(min=0)][:, :, None].expand(-1, -1, c).clone()
    rows = chunk_rows(ctx, native[0].numel() * native.element_size())
    offset = 0
    for i in range(u_count):
        chans = pairs[offset : offset + counts[i], 1]
        offset += counts[i]
        if chans.numel() == 0:
            continue

        def step(start: int, stop: int, i: int = i, chans: torch.Tensor = chans) -> torch.Tensor:
            ch = chans[start:stop]
            b = stop - start
            act = native[i : i + 1].expand(b, *native.shape[1:]).clone()
            hit = torch.arange(b, device=act.device)
            if act.ndim == 4:
                act[hit, ch.to(act.device)] = 0
            else:
                act[hit, :, ch.to(act.device)] = 0
            out = ctx.model.forward_from_layer(xu[i : i + 1], layer, act).float()
            return out[:, read[i].to(out.device)].to(dev)  # (b, K)

        parts = run_batched(step, chans.numel(), rows, desc="ablationcam", progress=ctx.progress)
        ablated[i, :, chans] = torch.cat(parts).T
    ablated = ablated[groups.inverse, groups.position]  # (N, c)
    a = a[groups.inverse]
    drop = y[:, None] - ablated
    zero = y == 0
    weights = drop / torch.where(zero, torch.ones_like(y), y)[:, None]
    warnings: list[tuple[int | None, str]] = [
        (i, "target score is 0, Ablation-CAM weights are the unnormalised score drops y - y_k")
        for i in zero.nonzero()[:, 0].tolist()
    ]
    cam = torch.einsum("nc,nchw->nhw", weights, a).clamp_(min=0)
    return MethodOutput(
        raw=cam,
        map=cam,
        extras={"forwards": int(pairs.shape[0])},
        warnings=warnings,
    )
