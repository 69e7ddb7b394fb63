"""Helpers for perturbation methods: scoring many perturbed inputs in memory-sized chunks.

Perturbations are built in pixel space ([0, 1] images at the model's input size) and
preprocessed like the image (``model.normalize``), so black-box models work the same way.
Batches are built on the model's device chunk by chunk: no full set of perturbed images is
ever held at once, and scores stay on the device until the end (no per-sample host sync).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from xaiscope.batching import run_batched
from xaiscope.methods.registry import MethodContext


def scores_of(
    ctx: MethodContext,
    total: int,
    build: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    *,
    desc: str,
) -> torch.Tensor:
    """Scores (total,) of the rows ``build(start, stop)`` returns as (model inputs, targets).

    ``targets`` are class indices (rows,) whose output is read: the model's raw output
    (logits for torch models, whatever a black-box function returns); with (rows, K)
    targets every row's K scores are read and the result is (total, K).
    """

    def step(start: int, stop: int) -> torch.Tensor:
        x, targets = build(start, stop)
        out = ctx.model.forward(x)
        targets = targets.to(out.device)
        if targets.ndim == 2:
            return out.float().gather(1, targets)
        return out.float().gather(1, targets[:, None])[:, 0]

    parts = run_batched(step, total, ctx.batch_size, desc=desc, progress=ctx.progress)
    return torch.cat(parts) if parts else torch.zeros(0, device=ctx.x.device)


def fill_image(ctx: MethodContext, fill: object) -> torch.Tensor:
    """The pixel-space image that replaces hidden regions, (N, 3, H, W) in [0, 1].

    ``fill``: a gray level in [0, 1], ``"mean"`` (each image's mean colour), ``"blur"``
    (each image blurred with a Gaussian of sigma = 5 % of its size) or an (H, W, 3) array.
    """
    import numpy as np

    from xaiscope.errors import ParameterError
    from xaiscope.methods.baselines import gaussian_blur

    x01 = ctx.images01
    if isinstance(fill, str):
        if fill == "mean":
            return x01.mean(dim=(2, 3), keepdim=True).expand_as(x01).contiguous()
        if fill == "blur":
            return gaussian_blur(x01, sigma=0.05 * max(x01.shape[-2:]))
        raise ParameterError(f"unknown fill {fill!r}; use a gray level, 'mean', 'blur' or an array")
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        if not 0 <= float(fill) <= 1:
            raise ParameterError(f"fill must be a gray level in [0, 1], got {fill}")
        return torch.full_like(x01, float(fill))
    if isinstance(fill, np.ndarray):
        return ctx.model.pixels(fill).to(x01.device).expand_as(x01).contiguous()
    raise ParameterError(f"unsupported fill of type {type(fill).__name__}")


@dataclass
class ImageGroups:
    """Rows of a batch that hold the same image (explain stacks one copy per target set).

    ``first`` (U,): a row of each distinct image; ``inverse`` (N,): the group of each row;
    ``members`` (U, K): the rows of each group, padded with -1; ``position`` (N,): the
    column of each row in ``members``. Perturbed copies of an image are then scored once
    and read for every target of the group.
    """

    first: torch.Tensor
    inverse: torch.Tensor
    members: torch.Tensor
    position: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.first.shape[0])

    def member_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """(U, K) target of each member (padding repeats a valid one: read, then ignored)."""
        rows = torch.where(self.members >= 0, self.members, self.first[:, None])
        return targets[rows]


def image_groups(x: torch.Tensor) -> ImageGroups:
    """Group identical rows of ``x`` (N, ...): exact, by a fingerprint then a full check."""
    n = x.shape[0]
    dev = x.device
    flat = x.flatten(1).float()
    ramp = torch.linspace(1.0, 2.0, flat.shape[1], device=dev)
    prints = torch.stack([flat.sum(1), (flat * ramp).sum(1)], 1)
    _, inverse = torch.unique(prints, dim=0, return_inverse=True)
    u = int(inverse.max()) + 1 if n else 0
    rows = torch.arange(n, device=dev)
    first = torch.full((u,), n, dtype=torch.long, device=dev)
    first.scatter_reduce_(0, inverse, rows, "amin")
    if not bool((flat == flat[first[inverse]]).all()):
        # a fingerprint collision between different images: share nothing rather than guess
        inverse, first, u = rows, rows.clone(), n
    counts = torch.bincount(inverse, minlength=u)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(rows)
    position[order] = rows - starts[inverse[order]]
    members = torch.full((u, int(counts.max()) if n else 0), -1, dtype=torch.long, device=dev)
    members[inverse, position] = rows
    return ImageGroups(first=first, inverse=inverse, members=members, position=position)
