"""Helpers shared by metric files: maps at model resolution, pixel orders, perturbation curves.

Perturbation curves (deletion, insertion, MoRF, LeRF) are built at the model's input
resolution, on the images as :meth:`Model.pixels` gives them (in [0, 1]): the perturbed
images of every step of every image are stacked and sent through ``model.forward`` in
chunks (:func:`xaiscope.batching.run_batched`, halving on out-of-memory), never one forward
per step.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaiscope.batching import default_batch_size, run_batched
from xaiscope.errors import ParameterError
from xaiscope.metrics.registry import MapList, MetricContext

#: Fill values a perturbation can use for removed pixels (or a float grey level).
FILLS = ("black", "white", "mean", "blur", "noise")
SCORES = ("probability", "logit")


def maps_at_model_size(ctx: MetricContext, maps: MapList) -> torch.Tensor:
    """(N, h, w) float32 maps resized (bilinear, antialiased) to the model's input size."""
    model = ctx.require_model("this metric")
    h, w = model.input_size
    out = []
    for m in maps:
        t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
        if tuple(t.shape[-2:]) != (h, w):
            t = F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out.append(t[0, 0])
    return torch.stack(out).to(model.device)


def ranks(values: np.ndarray, rng: np.random.Generator, *, descending: bool = True) -> np.ndarray:
    """Rank of every element of each row of ``values`` (N, P): 0 for the first one removed.

    ``descending``: largest value first. Ties are broken at random (``rng``): CAM maps have
    plateaus of zeros, and a constant map must not remove pixels in scan order.
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.empty(v.shape, dtype=np.int64)
    for i in range(v.shape[0]):
        key = -v[i] if descending else v[i]
        order = np.lexsort((rng.random(v.shape[1]), key))
        out[i, order] = np.arange(v.shape[1])
    return out


def step_count(step: float | int, total: int, what: str = "step") -> int:
    """Units per step: ``step`` as a fraction of ``total`` (float) or a count (int)."""
    if isinstance(step, (bool, np.bool_)):
        raise ParameterError(f"{what} must be a fraction in (0, 1] or a positive count")
    if isinstance(step, (int, np.integer)):
        if step < 1:
            raise ParameterError(f"{what} must be at least 1, got {step}")
        return int(min(step, total))
    if not 0.0 < float(step) <= 1.0:
        raise ParameterError(f"{what} as a fraction must be in (0, 1], got {step}")
    return max(1, int(math.ceil(float(step) * total - 1e-9)))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflected borders."""
    if sigma <= 0:
        return x.clone()
    h, w = x.shape[-2:]
    radius = max(1, min(int(math.ceil(3 * sigma)), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous(), groups=c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous(), groups=c)


def fill_images(
    pixels: torch.Tensor, fill: Any, rng: np.random.Generator, blur_sigma: float
) -> torch.Tensor:
    """What removed pixels become, (N, 3, h, w) in [0, 1].

    ``fill``: ``"black"``, ``"white"``, ``"mean"`` (each image's channel means), ``"blur"``
    (a Gaussian blur, sigma = ``blur_sigma`` x the shorter side), ``"noise"`` (uniform
    noise), or a grey level in [0, 1].
    """
    if isinstance(fill, str) and fill.strip().replace(".", "", 1).isdigit():
        fill = float(fill)  # a grey level typed on the command line
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        if not 0.0 <= float(fill) <= 1.0:
            raise ParameterError(f"a grey fill must be in [0, 1], got {fill}")
        return torch.full_like(pixels, float(fill))
    if fill == "black":
        return torch.zeros_like(pixels)
    if fill == "white":
        return torch.ones_like(pixels)
    if fill == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels).clone()
    if fill == "blur":
        if not blur_sigma > 0:
            raise ParameterError(f"blur_sigma must be positive, got {blur_sigma}")
        return gaussian_blur(pixels, float(blur_sigma) * min(pixels.shape[-2:]))
    if fill == "noise":
        noise = torch.from_numpy(rng.random(tuple(pixels.shape), dtype=np.float32))
        return noise.to(pixels.device)
    raise ParameterError(f"unknown fill {fill!r}; valid: {', '.join(FILLS)} or a grey level")


def perturbation_curves(
    ctx: MetricContext,
    order: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    *,
    units: int,
    step: int,
    score: str,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the target along a perturbation path, for every image.

    ``order`` (N, h*w): the step rank of every pixel (pixels of one region share a rank);
    after ``c`` units are switched, pixels with rank < c show ``end``, the rest ``start``
    (both (N, 3, h, w) in [0, 1]). Points at c = 0, step, 2 step, ..., units.
    Returns ``x`` (K,) the switched fraction in [0, 1] and ``y`` (N, K) the target's
    probability (``score="probability"``) or logit.
    """
    if score not in SCORES:
        raise ParameterError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    model = ctx.require_model(desc)
    n = order.shape[0]
    h, w = start.shape[-2:]
    counts = torch.tensor([*range(0, units, step), units], device=start.device)
    points = len(counts)
    targets = torch.as_tensor(np.asarray(ctx.targets), dtype=torch.long, device=start.device)
    bs = default_batch_size(model.device, ctx.batch_size, (h, w))

    def chunk(a: int, b: int) -> torch.Tensor:
        rows = torch.arange(a, b, device=start.device)
        img, k = rows // points, rows % points
        switched = (order[img] < counts[k][:, None]).view(-1, 1, h, w)
        x01 = torch.where(switched, end[img], start[img])
        logits = model.forward(model.normalize(x01))
        values = model.probabilities(logits) if score == "probability" else logits.float()
        return values.gather(1, targets[img][:, None].to(values.device))[:, 0].float().cpu()

    y = torch.cat(run_batched(chunk, n * points, bs, desc=desc, progress=ctx.progress))
    x = (counts.float() / units).cpu().numpy()
    return x.astype(np.float64), y.view(n, points).numpy().astype(np.float64)


def auc(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Area under each curve of ``y`` (N, K) over ``x`` (K,) in [0, 1] (trapezoid rule)."""
    dx = np.diff(x)
    return ((y[:, 1:] + y[:, :-1]) * 0.5 * dx).sum(axis=1)


def curve_details(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Curves as JSON-ready lists: the fraction switched and the score per image."""
    return {"x": x.tolist(), "curves": y.tolist()}


def ordered_curves(
    ctx: MetricContext,
    maps: MapList,
    *,
    insert: bool,
    most_relevant_first: bool,
    fill: Any,
    step: float | int,
    score: str,
    blur_sigma: float,
    patch: int,
    salt: int,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Switch pixels (or ``patch`` x ``patch`` regions) in the order of the maps.

    ``insert=False``: start from the image and replace pixels by ``fill`` (deletion,
    pixel flipping); ``insert=True``: start from ``fill`` and put the image's pixels back.
    Regions are ranked by their mean attribution, highest first when
    ``most_relevant_first``; ties at random. Returns ``x`` (K,) and ``y`` (N, K) as
    :func:`perturbation_curves` does.
    """
    if not isinstance(patch, (int, np.integer)) or isinstance(patch, bool) or patch < 1:
        raise ParameterError(f"patch must be a positive number of pixels, got {patch!r}")
    rng = ctx.rng(salt)
    pixels = ctx.pixels()
    values = maps_at_model_size(ctx, maps)
    n, h, w = values.shape
    if patch > 1:
        # regions: mean attribution inside each patch (partial patches at the border too)
        region = F.avg_pool2d(values[:, None], patch, stride=patch, ceil_mode=True)[:, 0]
        rh, rw = region.shape[-2:]
        region_rank = ranks(region.flatten(1).cpu().numpy(), rng, descending=most_relevant_first)
        ys = torch.arange(h) // patch
        xs = torch.arange(w) // patch
        index = (ys[:, None] * rw + xs[None, :]).flatten()
        order = torch.from_numpy(region_rank)[:, index]
        units = rh * rw
    else:
        order = torch.from_numpy(
            ranks(values.flatten(1).cpu().numpy(), rng, descending=most_relevant_first)
        )
        units = h * w
    filled = fill_images(pixels, fill, rng, blur_sigma)
    start, end = (filled, pixels) if insert else (pixels, filled)
    return perturbation_curves(
        ctx,
        order.to(pixels.device),
        start,
        end,
        units=units,
        step=step_count(step, units),
        score=score,
        desc=desc,
    )
