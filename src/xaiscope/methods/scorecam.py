"""Score-CAM.

Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu (2020), "Score-CAM: Score-Weighted Visual
Explanations for Convolutional Neural Networks", CVPR Workshops (arXiv:1910.01279).
Each channel A_k of the layer, upsampled to the input size and min-max normalised to
[0, 1], masks the model input; the target scores s_k of the masked inputs, through a
softmax over channels, weight the channels:

    cam = ReLU(sum_k softmax(s)_k A_k)

Details follow pytorch-grad-cam's ``ScoreCAM`` so that the outputs agree: bilinear
upsampling with ``align_corners=True`` (``nn.UpsamplingBilinear2d``), normalisation
(M - min) / (max - min + 1e-8), masking ``x * M`` in model-input space, and raw scores
(logits) before the softmax. One deliberate difference: a channel that is constant at the
layer's resolution gets the all-zero mask that its normalisation means, (A - min) = 0;
pytorch-grad-cam upsamples first, and for a non-zero constant the rounding of bilinear
interpolation (about 1e-7) divided by 1e-8 gives it a near-binary mask of noise. All-zero
channels (the usual constant ones after a ReLU) agree exactly.

Speed: a channel whose activation map is constant (after a ReLU, about half the channels
of a late layer are all zero for a given image) normalises to an all-zero mask, and
``x * 0`` is the same input for every such channel and every image: it takes one forward
in all. Identical non-constant channels of an image share one forward too. The remaining
masked inputs are built on the device chunk by chunk, mixing images and channels, never all
at once. Shapes: ``raw`` and ``map`` (N, h, w) at the layer's resolution, after ReLU.
Cost: F per distinct non-constant channel of each distinct image, plus one; the target
sets of one image (``targets="top3"``) share them. Limits: as coarse as the layer; with
many channels of similar score the softmax is nearly uniform and the map tends to the
channel sum (flagged in ``warnings`` where every channel scores the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaiscope.batching import run_batched
from xaiscope.errors import UnknownLayerError
from xaiscope.methods._common import _tokens_to_grid
from xaiscope.methods._perturb import image_groups
from xaiscope.methods.registry import MethodContext, MethodOutput, register


def layer_activation(
    ctx: MethodContext, layer: str | None = None, x: torch.Tensor | None = None
) -> torch.Tensor:
    """Activation of ``layer`` (default ``ctx.layer``) for ``x`` (default ``ctx.x``) as
    (N, c, h, w), float32.

    Token outputs (N, tokens, d) of transformer blocks become a square grid (class token
    dropped), as for the gradient CAMs.
    """
    name = layer if layer is not None else ctx.layer
    if name is None:
        raise UnknownLayerError("this method needs a layer; give layer= (see model.layers())")
    a = ctx.model.activations(ctx.x if x is None else x, name)
    if a.ndim == 3:
        a = _tokens_to_grid(a, ctx.model)
    if a.ndim != 4:
        raise UnknownLayerError(
            f"layer {name!r} outputs shape {tuple(a.shape)}; CAMs need a spatial "
            "(N, C, h, w) layer such as the model's default_layer"
        )
    return a.float()


def constant_channels(a: torch.Tensor) -> torch.Tensor:
    """(N, c) bool: channels whose map is the same value everywhere (e.g. all zero)."""
    flat = a.flatten(2)
    return flat.amax(2) == flat.amin(2)


def distinct_channels(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The channels whose masks need a forward, and where every channel's score comes from.

    Returns (image index (R,), channel index (R,), source (N, c)): ``source[i, k]`` is the
    row in [0, R) whose score channel k of image i shares, or R for constant channels (the
    one all-zero mask). Rows are the first occurrences of each distinct non-constant map.
    """
    n, c = a.shape[:2]
    dev = a.device
    keep = (~constant_channels(a)).flatten().nonzero()[:, 0]  # into the (N * c) channels
    source = torch.full((n * c,), 0, dtype=torch.long, device=dev)
    if keep.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=dev)
        return empty, empty, source.view(n, c)
    # exact duplicates within an image give identical masks, hence identical scores: one
    # unique over (image, map) rows finds them for all images at once
    maps = a.flatten(2).reshape(n * c, -1)[keep]
    key = torch.cat([(keep // c).to(maps.dtype)[:, None], maps], 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = int(inverse.max()) + 1
    first = torch.full((rows,), keep.numel(), dtype=torch.long, device=dev)
    first.scatter_reduce_(0, inverse, torch.arange(keep.numel(), device=dev), "amin")
    source.fill_(rows)
    source[keep] = inverse
    return keep[first] // c, keep[first] % c, source.view(n, c)


def score_masks(a: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks (b, 1, H, W) from channel maps (b, h, w), exactly as pytorch-grad-cam builds them."""
    up = F.interpolate(a[:, None], size=size, mode="bilinear", align_corners=True)
    flat = up.flatten(1)
    lo = flat.amin(1)[:, None, None, None]
    hi = flat.amax(1)[:, None, None, None]
    return (up - lo) / (hi - lo + 1e-8)


@register(
    "scorecam",
    family="cam",
    paper="Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for "
    "Convolutional Neural Networks (CVPR Workshops; arXiv:1910.01279)",
    summary="layer channels weighted by the softmax of the target score of the input "
    "masked by each channel",
    aliases=("score_cam",),
    needs_gradients=False,
    uses_layer=True,
)
def scorecam(ctx: MethodContext) -> MethodOutput:
    x = ctx.x
    dev = x.device
    groups = image_groups(x)
    read = groups.member_targets(ctx.targets.to(dev))  # (U, K)
    # the target sets of one image share its masked forwards
    xu = x[groups.first]
    a = layer_activation(ctx, x=xu)  # (U, c, h, w)
    c = a.shape[1]
    size = (x.shape[-2], x.shape[-1])
    imgs, chans, source = distinct_channels(a)
    rows = int(imgs.numel())

    def step(start: int, stop: int) -> torch.Tensor:
        img, ch = imgs[start:stop], chans[start:stop]
        masks = score_masks(a[img, ch], size).to(x.dtype)
        out = ctx.model.forward(xu[img] * masks).float()
        return out.gather(1, read[img].to(out.device)).to(dev)  # (b, K)

    parts = run_batched(step, rows, ctx.batch_size, desc="scorecam", progress=ctx.progress)
    scores = torch.cat(parts) if parts else torch.zeros(0, read.shape[1], device=dev)
    has_const = bool((source == rows).any())
    if has_const:
        # every constant channel masks the input to zeros: one forward serves all images
        zero_out = ctx.model.forward(torch.zeros_like(x[:1])).float()[0].to(dev)
        zero_scores = zero_out[ctx.targets.to(dev)]  # (N,)
    else:
        zero_scores = torch.zeros(x.shape[0], device=dev)
    src = source[groups.inverse]  # (N, c): distinct-mask row of each channel, R if constant
    padded = torch.cat([scores, scores.new_zeros(1, scores.shape[1])])
    per_row = padded[src, groups.position[:, None].expand(-1, c)]  # (N, c)
    per_row = torch.where(src == rows, zero_scores[:, None], per_row)
    weights = torch.softmax(per_row, dim=1)
    cam = torch.einsum("nc,nchw->nhw", weights, a[groups.inverse]).clamp_(min=0)
    lo, hi = per_row.amin(1), per_row.amax(1)
    flat = (hi - lo <= 1e-7 * hi.abs().clamp(min=1.0)).tolist()
    notes: list[tuple[int | None, str]] = [
        (
            i,
            "every channel's mask gives the same target score, so the weights are uniform "
            "and the map is the plain mean of the layer's channels: it says nothing about "
            "the target class",
        )
        for i, same in enumerate(flat)
        if same and c > 1
    ]
    return MethodOutput(
        raw=cam, map=cam, extras={"forwards": rows + int(has_const)}, warnings=notes
    )
