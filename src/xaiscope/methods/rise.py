"""RISE: Randomized Input Sampling for Explanation.

Petsiuk, Das, Saenko (2018), "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC (arXiv:1806.07421). ``n_masks`` random masks M_i: an s x s grid (``grid``)
whose cells are kept with probability ``p``, upsampled bilinearly to (s + 1) x cell pixels
(cell = ceil(H / s)) and cropped to H x W at a random shift in [0, cell) on each axis, as in
the paper, so that masks are smooth and not aligned to a fixed grid. The map is the
Monte-Carlo estimate of E[f(x . M) | pixel kept]:

    map = sum_i f(x . M_i) M_i / (n_masks p)

with f the target-class probability (the paper's choice; ``score="logit"`` for the raw
output). ``x . M`` is blended in pixel space, ``x M + fill (1 - M)`` (``fill`` 0: black,
the paper's I . M), then preprocessed like the image.

Masks are drawn once per call from ``seed`` (the low-resolution grids and shifts, a few KB)
and shared by all images, so an image's map does not depend on the rest of the batch;
full-size masks are built on the model's device chunk by chunk and never all held at once.
Grids of more than :data:`GRID_VALUES` values in all (a cell of a few pixels and many
masks) are read chunk by chunk too, with the same values on a CPU: memory stays
O(chunk + image) whatever ``n_masks``.
Shapes: ``raw`` (N, C, H, W) in model-input space (the map repeated over channels), ``map``
(N, H, W). Cost: ``n_masks`` forwards per distinct image (its target sets share them).
Limits: a Monte-Carlo estimate, whose noise falls as 1 / sqrt(n_masks); the paper uses
4000 to 8000 masks for ImageNet models, the default 1000 is a CPU-friendly compromise
(raise it for publication-quality maps). Fewer than ``FEW_MASKS`` masks, and scores that
do not move under any mask, are flagged in the explanation's ``warnings``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from xaiscope._keywords import Rule
from xaiscope.batching import run_batched
from xaiscope.errors import ParameterError
from xaiscope.methods._perturb import fill_image, image_groups
from xaiscope.methods._sampling import UniformRows
from xaiscope.methods.registry import MethodContext, MethodOutput, register

#: Grid values (n_masks x cells) drawn at once; above, grids are read per chunk
#: (:class:`~xaiscope.methods._sampling.UniformRows`): 16 M values, 64 MiB of float32.
GRID_VALUES = 1 << 24

#: Fewer masks than this are flagged: the map is then mostly the masks' sampling noise.
FEW_MASKS = 100


def rise_masks(
    grids: torch.Tensor, shifts: torch.Tensor, size: tuple[int, int], cell: tuple[int, int]
) -> torch.Tensor:
    """Full-size masks (b, 1, H, W) from binary grids (b, s, s) and shifts (b, 2) in pixels."""
    b, sh, sw = grids.shape
    height, width = size
    up = F.interpolate(
        grids[:, None],
        size=((sh + 1) * cell[0], (sw + 1) * cell[1]),
        mode="bilinear",
        align_corners=False,
    )
    dev = grids.device
    rows = shifts[:, 0, None] + torch.arange(height, device=dev)[None]  # (b, H)
    cols = shifts[:, 1, None] + torch.arange(width, device=dev)[None]  # (b, W)
    # one gather per axis crops every mask at its own shift without a Python loop
    up = up[:, 0].gather(1, rows[:, :, None].expand(-1, -1, up.shape[-1]))
    up = up.gather(2, cols[:, None, :].expand(-1, height, -1))
    return up[:, None]


@register(
    "rise",
    family="perturbation",
    paper="Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation of "
    "Black-box Models (BMVC; arXiv:1806.07421)",
    summary="target probability under random smooth masks, averaged per pixel over the masks",
    needs_gradients=False,
    stochastic=True,
    rules={
        # the mask grid is grid x grid cells, upsampled to the input: finer than 1024 is
        # finer than any model input's pixels
        "grid": Rule(low=1, high=1024, integer=True),
        "cell": Rule(low=1, integer=True, none_ok=True),
        "p": Rule(low=0, high=1, open_low=True),
    },
)
def rise(
    ctx: MethodContext,
    *,
    n_masks: int = 1000,
    grid: int = 7,
    cell: int | None = None,
    p: float = 0.5,
    fill: Any = 0.0,
    score: str = "probability",
) -> MethodOutput:
    """``n_masks`` random masks; ``grid`` the paper's s (cells per side of the low-resolution
    mask); ``cell`` the cell size in pixels instead (then ``grid`` = ceil(H / cell));
    ``p`` the keep probability; ``fill`` what hidden pixels become (see ``fill_image``);
    ``score`` ``"probability"`` (softmax of the output, as the paper) or ``"logit"``."""
    if int(n_masks) < 1:
        raise ParameterError(f"n_masks must be >= 1, got {n_masks}")
    if not 0 < float(p) <= 1:
        raise ParameterError(f"p (keep probability) must lie in (0, 1], got {p}")
    if score not in ("probability", "logit"):
        raise ParameterError(f"score must be 'probability' or 'logit', got {score!r}")
    x01 = ctx.images01
    n, _, height, width = x01.shape
    dev = x01.device
    if cell is not None:
        if int(cell) < 1:
            raise ParameterError(f"cell must be >= 1 pixel, got {cell}")
        s_h, s_w = math.ceil(height / int(cell)), math.ceil(width / int(cell))
    else:
        if int(grid) < 1:
            raise ParameterError(f"grid must be >= 1, got {grid}")
        s_h = s_w = int(grid)
    cell_hw = (math.ceil(height / s_h), math.ceil(width / s_w))
    m = int(n_masks)
    p = float(p)

    gen = ctx.generator()
    stream: UniformRows | None = None
    if m * s_h * s_w <= GRID_VALUES:
        grids = (torch.rand((m, s_h, s_w), generator=gen, device=dev) < p).to(x01.dtype)
    else:
        # fine grids (a small cell) would hold n_masks x image values: read them per chunk
        stream = UniformRows(m, (s_h, s_w), gen, dev)
        stream.skip(gen)
    shifts = torch.stack(
        [
            torch.randint(0, cell_hw[0], (m,), generator=gen, device=dev),
            torch.randint(0, cell_hw[1], (m,), generator=gen, device=dev),
        ],
        dim=1,
    )
    filled = fill_image(ctx, fill).to(x01.dtype)
    groups = image_groups(x01)
    read = groups.member_targets(ctx.targets.to(dev))  # (U, K)
    # one map per (distinct image, target of it): target sets share the masked forwards
    sums = torch.zeros(groups.size, read.shape[1], height, width, device=dev)
    # the range of each (image, target) score over the masks, to flag scores that never move
    lo = torch.full((groups.size, read.shape[1]), float("inf"), device=dev)
    hi = torch.full((groups.size, read.shape[1]), float("-inf"), device=dev)

    def grids_of(k: torch.Tensor) -> torch.Tensor:
        if stream is None:
            return grids[k]
        # k runs up by one, starting again from 0 where the chunk reaches the next image
        runs = torch.nonzero(k[1:] != k[:-1] + 1)[:, 0].tolist()
        bounds = [0, *[b + 1 for b in runs], len(k)]
        parts = [stream.rows(int(k[a]), int(k[b - 1]) + 1) for a, b in zip(bounds, bounds[1:])]
        return (torch.cat(parts) < p).to(x01.dtype)

    def step(start: int, stop: int) -> None:
        # row r of the flat (distinct image, mask) grid: image r // m, mask r % m
        idx = torch.arange(start, stop, device=dev)
        grp, k = idx // m, idx % m
        img = groups.first[grp]
        masks = rise_masks(grids_of(k), shifts[k], (height, width), cell_hw)
        pix = x01[img] * masks + filled[img] * (1 - masks)
        out = ctx.model.forward(ctx.model.normalize(pix))
        if score == "probability":
            out = ctx.model.probabilities(out)
        f = out.float().gather(1, read[grp].to(out.device)).to(dev)  # (b, K)
        sums.index_add_(0, grp, f[:, :, None, None] * masks.float())
        where = grp[:, None].expand_as(f)
        lo.scatter_reduce_(0, where, f, "amin")
        hi.scatter_reduce_(0, where, f, "amax")

    run_batched(step, groups.size * m, ctx.batch_size, desc="rise", progress=ctx.progress)
    saliency = sums[groups.inverse, groups.position]  # (N, H, W)
    saliency /= m * p
    raw = saliency[:, None].expand(-1, ctx.x.shape[1], -1, -1).contiguous()
    notes: list[tuple[int | None, str]] = []
    if m < FEW_MASKS:
        notes.append(
            (
                None,
                f"n_masks={m}: a Monte-Carlo estimate from so few masks is mostly sampling "
                f"noise; use n_masks >= {FEW_MASKS} (the paper uses 4000 to 8000)",
            )
        )
    lo_n, hi_n = lo[groups.inverse, groups.position], hi[groups.inverse, groups.position]
    flat = (hi_n - lo_n <= 1e-7 * hi_n.abs().clamp(min=1.0)).tolist()
    notes += [
        (
            i,
            "the model's score is the same under every mask, so the RISE map shows only the "
            "masks' sampling noise (constant image, or a fill equal to the image?)",
        )
        for i, same in enumerate(flat)
        if same
    ]
    return MethodOutput(
        raw=raw,
        map=saliency,
        extras={"grid": (s_h, s_w), "cell": cell_hw, "n_masks": m, "p": p},
        warnings=notes,
    )
