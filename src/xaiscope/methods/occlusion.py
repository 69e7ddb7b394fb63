"""Occlusion sensitivity.

Zeiler, Fergus (2014), "Visualizing and Understanding Convolutional Networks", ECCV
(arXiv:1311.2901). A ``window`` slides over the image with ``stride``; each position hides
its pixels behind ``fill`` and the drop of the target score, score(x) - score(occluded x),
is credited to every pixel of the window. The map at a pixel is the mean drop over the
windows that cover it, exactly as Captum's ``Occlusion`` (window over all channels,
positions ``0, s, 2s, ...`` until the image is covered, the last window cut at the border).

Hiding happens in pixel space ([0, 1] images at the model's input size), then
``model.normalize``: for the usual per-channel affine normalisation this is Captum with the
normalised fill as baseline; black-box models see ordinary images.

Shapes: ``raw`` (N, C, H, W) in model-input space, the per-pixel drop repeated over the
C channels (Captum's output for a window spanning all channels); ``map`` (N, H, W).
Cost: (P + 1) forwards for P windows, no backward, per distinct image: the target sets of
one image (``targets="top3"``) share the forwards. The score drops become the map through
one transposed convolution (no full-size mask per window is ever kept).
Limits: more windows per image than the ``max_samples`` setting are refused up front;
pixels that no window covers (only when ``stride`` > ``window``) get 0 (flagged in
``warnings``); the map is as coarse as ``stride``; a window larger than the input is cut to
the input size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from xaiscope import settings
from xaiscope._keywords import Rule
from xaiscope.batching import run_batched
from xaiscope.errors import ParameterError
from xaiscope.methods._perturb import fill_image, image_groups
from xaiscope.methods.registry import MethodContext, MethodOutput, register


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (int,)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = (int(value[0]), int(value[1]))
    else:
        raise ParameterError(f"{name} must be an int or a pair (h, w), got {value!r}")
    if min(pair) < 1:
        raise ParameterError(f"{name} must be >= 1, got {value!r}")
    return pair


def window_grid(size: int, window: int, stride: int) -> int:
    """Window positions along one axis: Captum's ``ceil((size - window) / stride) + 1``."""
    return math.ceil((size - window) / stride) + 1


@register(
    "occlusion",
    family="perturbation",
    paper="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks "
    "(ECCV; arXiv:1311.2901)",
    summary="drop of the target score when a sliding window hides the pixels, averaged per pixel",
    needs_gradients=False,
    rules={
        "window": Rule(low=1, integer=True, pair=True),
        "stride": Rule(low=1, integer=True, pair=True),
    },
)
def occlusion(
    ctx: MethodContext,
    *,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    fill: Any = 0.0,
) -> MethodOutput:
    """``window`` and ``stride`` in model-input pixels (int or (h, w)); ``fill`` a gray level
    in [0, 1], ``"mean"``, ``"blur"`` or an (H, W, 3) image (see ``fill_image``)."""
    x01 = ctx.images01
    n, _, height, width = x01.shape
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride, "stride")
    wh, ww = min(wh, height), min(ww, width)
    gh, gw = window_grid(height, wh, sh), window_grid(width, ww, sw)
    per_image = gh * gw
    if per_image > settings.get("max_samples"):
        # one forward per window: the window count is this method's number of samples
        raise ParameterError(
            f"occlusion: window {(wh, ww)} with stride {(sh, sw)} on a {height}x{width} input "
            f"makes {per_image:,} windows per image, more than allowed; raise the stride or "
            f"{settings.limit_hint('max_samples')}"
        )
    filled = fill_image(ctx, fill).to(x01.dtype)
    dev = x01.device
    rows = torch.arange(height, device=dev)
    cols = torch.arange(width, device=dev)
    groups = image_groups(x01)
    read = groups.member_targets(ctx.targets.to(dev))  # (U, K)

    def step(start: int, stop: int) -> torch.Tensor:
        # row r of the flat (distinct image, window) grid: image r // P, window r % P
        idx = torch.arange(start, stop, device=dev)
        grp, win = idx // per_image, idx % per_image
        img = groups.first[grp]
        top, left = (win // gw) * sh, (win % gw) * sw
        in_r = (rows[None] >= top[:, None]) & (rows[None] < (top + wh)[:, None])
        in_c = (cols[None] >= left[:, None]) & (cols[None] < (left + ww)[:, None])
        hidden = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (b, 1, H, W)
        pix = torch.where(hidden, filled[img], x01[img])
        out = ctx.model.forward(ctx.model.normalize(pix)).float()
        return out.gather(1, read[grp].to(out.device)).to(dev)  # (b, K): every target

    parts = run_batched(
        step, groups.size * per_image, ctx.batch_size, desc="occlusion", progress=ctx.progress
    )
    scores = torch.cat(parts).view(groups.size, per_image, -1)  # (U, P, K)
    occluded = scores[groups.inverse, :, groups.position]  # (N, P)
    base = ctx.target_scores().to(dev)
    drops = (base[:, None] - occluded.view(n, per_image)).view(n, 1, gh, gw)
    # per-pixel mean over covering windows: scatter each drop onto its window (a transposed
    # convolution with a window of ones) and divide by the same scatter of ones
    kernel = torch.ones(1, 1, wh, ww, device=dev, dtype=drops.dtype)
    total = F.conv_transpose2d(drops, kernel, stride=(sh, sw))[..., :height, :width]
    count = F.conv_transpose2d(torch.ones_like(drops[:1]), kernel, stride=(sh, sw))
    count = count[..., :height, :width]
    # gaps between windows (stride > window) are covered by no window: 0, as Captum would have
    attr = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    attr = attr[:, 0]
    raw = attr[:, None].expand(-1, ctx.x.shape[1], -1, -1).contiguous()
    notes: list[tuple[int | None, str]] = []
    uncovered = float((count == 0).float().mean())
    if uncovered > 0:
        notes.append(
            (
                None,
                f"stride {(sh, sw)} is larger than window {(wh, ww)}: {uncovered:.0%} of the "
                "pixels are hidden by no window and get 0; use stride <= window",
            )
        )
    return MethodOutput(
        raw=raw,
        map=attr,
        extras={"window": (wh, ww), "stride": (sh, sw), "n_windows": per_image},
        warnings=notes,
    )
