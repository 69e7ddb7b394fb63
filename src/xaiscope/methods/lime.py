"""LIME on superpixels: a weighted ridge surrogate fitted to random superpixel coalitions.

Ribeiro, Singh, Guestrin (2016), "'Why Should I Trust You?': Explaining the Predictions of
Any Classifier", KDD (arXiv:1602.04938). Follows the ``lime`` package's LimeImageExplainer:

- superpixels (:mod:`xaiscope.methods._segmentation`: SLIC by default, quick shift, a grid)
  of each image at the model's input size; M superpixels per image;
- ``n_samples`` binary coalitions z in {0, 1}^M: the first is all ones (the image itself),
  each other switches every superpixel on with probability 1/2; switched-off superpixels take
  ``fill`` (default: each superpixel's mean colour, ``lime``'s ``hide_color=None``);
- the score explained is the model's raw output for the target (logits for torch models,
  a black-box function's output as it is);
- sample weights sqrt(exp(-d^2 / kernel_width^2)), d the cosine distance of z to all ones;
- a ridge fit with intercept, sum_s w_s (y_s - b - z_s . beta)^2 + alpha |beta|^2 (scikit-learn's
  ``Ridge(alpha=1)`` with ``sample_weight``, as ``lime``), solved in torch in float64.

Raw: (N, C, H, W), each pixel carrying its superpixel's weight beta (broadcast over channels);
map: (N, H, W) the same. ``extras``: ``segments`` (N, H, W) long, ``weights`` (N, M_max) with
NaN beyond each image's M_i, ``n_superpixels`` (N,), ``intercept`` (N,), ``score`` (N,) the
weighted R^2 of the fit. :func:`top_superpixels` shows the top-k positive or negative ones.
Cost: n_samples forward passes per image and target, plus an M x M solve.
Limits: weights are local and depend on the segmentation, the fill and the seed; with fewer
samples than superpixels the fit is under-determined (flagged in ``warnings``).
"""

from __future__ import annotations

from typing import Any

import torch

from xaiscope._keywords import Rule, count
from xaiscope.errors import ParameterError
from xaiscope.methods._segmentation import (
    MAX_SEGMENTS,
    Segmentation,
    degenerate_warnings,
    expand_values,
    flat_score_warnings,
    score_coalitions,
    segment_batch,
    segment_counts,
    superpixel_fill,
    top_superpixels,
)
from xaiscope.methods.registry import MethodContext, MethodOutput, register

__all__ = ["lime", "top_superpixels", "weighted_ridge"]


def fit_dtype(device: torch.device) -> torch.dtype:
    """float64 for the small surrogate fits, where the device has it."""
    return torch.float32 if device.type == "mps" else torch.float64


def weighted_ridge(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted ridge regression with an unpenalised intercept (scikit-learn's ``Ridge``).

    Minimises sum_s w_s (y_s - b - z_s . beta)^2 + alpha |beta|^2 for z (S, M), y (S,), w (S,).
    Returns (beta (M,), b (), weighted R^2 ()).
    """
    sw = w.sum()
    zm = (w @ z) / sw
    ym = (w @ y) / sw
    zc = z - zm
    yc = y - ym
    wz = zc * w[:, None]
    if alpha > 0:
        a = zc.T @ wz + alpha * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        beta = torch.linalg.solve(a, wz.T @ yc)
    else:  # ordinary weighted least squares: minimum-norm solution if rank-deficient
        root = w.sqrt()
        beta = torch.linalg.pinv(zc * root[:, None]) @ (yc * root)
    b = ym - zm @ beta
    resid = (w * (y - z @ beta - b) ** 2).sum()
    total = (w * yc**2).sum()
    # scikit-learn's convention for a constant target: 1 if fitted exactly, else 0
    r2 = torch.where(total > 0, 1 - resid / total.clamp(min=1e-300), (resid <= 0).to(total.dtype))
    return beta, b, r2


@register(
    "lime",
    family="perturbation",
    paper="Ribeiro, Singh, Guestrin 2016, LIME (KDD; arXiv:1602.04938)",
    summary="weighted ridge surrogate fitted to random superpixel coalitions",
    needs_gradients=False,
    stochastic=True,
    rules={
        # the image itself is the first sample: a fit needs at least one more
        "n_samples": count(2),
        "n_segments": Rule(low=1, high=MAX_SEGMENTS, integer=True),
        "kernel_width": Rule(low=0, open_low=True),
        "alpha": Rule(low=0),
    },
)
def lime(
    ctx: MethodContext,
    *,
    n_samples: int = 1000,
    segmentation: Segmentation = "slic",
    n_segments: int = 50,
    kernel_width: float = 0.25,
    fill: Any = "mean",
    alpha: float = 1.0,
) -> MethodOutput:
    if n_samples < 2:
        raise ParameterError(
            f"lime needs n_samples >= 2 (the image and one sample), got {n_samples}"
        )
    if not kernel_width > 0:
        raise ParameterError(f"kernel_width must be > 0, got {kernel_width}")
    if not alpha >= 0:
        raise ParameterError(f"alpha (ridge penalty) must be >= 0, got {alpha}")
    device = ctx.x.device
    n = ctx.x.shape[0]
    segments = segment_batch(ctx, segmentation, n_segments)
    counts = segment_counts(segments).tolist()
    m_max = max(counts)
    fill_pix = superpixel_fill(ctx, segments, fill)
    notes = degenerate_warnings(ctx, segments, fill_pix, n_samples, name="lime")

    # as lime_image.data_labels: every superpixel on with probability 1/2, first row all on;
    # each image draws from the seed alone, so its map does not depend on the other images
    fresh = ctx.image_generators()
    z = torch.zeros((n, n_samples, m_max), dtype=torch.int64, device=device)
    for i, m in enumerate(counts):
        z[i, :, :m] = torch.randint(0, 2, (n_samples, m), generator=fresh(), device=device)
    z[:, 0] = 1
    rows = torch.arange(n, device=device).repeat_interleave(n_samples)
    scores = score_coalitions(
        ctx, z.view(n * n_samples, m_max), rows, segments, fill_pix, desc="lime"
    ).view(n, n_samples)
    notes += flat_score_warnings(scores.flatten(), rows, n, "lime")

    dt = fit_dtype(device)
    weights = torch.full((n, m_max), float("nan"), dtype=dt, device=device)
    intercept = torch.zeros(n, dtype=dt, device=device)
    r2 = torch.zeros(n, dtype=dt, device=device)
    for i, m in enumerate(counts):  # one small fit per image (M_i differs between images)
        zi = z[i, :, :m].to(dt)
        # cosine distance to the all-ones row: 1 - |z|_1 / sqrt(m |z|_1) = 1 - sqrt(k / m)
        dist = 1 - (zi.sum(1) / m).sqrt()
        w = (-(dist**2) / kernel_width**2).exp().sqrt()
        beta, b, score = weighted_ridge(zi, scores[i].to(dt), w, alpha)
        weights[i, :m] = beta
        intercept[i] = b
        r2[i] = score
    map_ = expand_values(torch.nan_to_num(weights, nan=0.0), segments).float()
    raw = map_[:, None].expand(-1, ctx.x.shape[1], -1, -1).contiguous()
    extras: dict[str, Any] = {
        "segments": segments,
        "weights": weights.float(),
        "n_superpixels": torch.tensor(counts, device=device),
        "intercept": intercept.float(),
        "score": r2.float(),
    }
    return MethodOutput(raw=raw, map=map_, extras=extras, warnings=notes)
