"""Data augmentation on batches: random shifts and horizontal flips, seeded."""

from __future__ import annotations

import torch


def shift_flip(
    x: torch.Tensor, generator: torch.Generator, *, shift: float = 0.1, flip: bool = True
) -> torch.Tensor:
    """Shift each image of (N, C, H, W) ``x`` by up to ``shift`` of its size in x and y
    (whole pixels, uniformly), and flip half of them left-right.

    Pixels moved in from outside repeat the nearest edge pixel (Keras' ``fill_mode=
    "nearest"``), so no black borders appear that a model could learn from. Random numbers
    come from ``generator`` only: the same generator state gives the same batch.
    """
    n, _, h, w = x.shape
    my, mx = int(round(shift * h)), int(round(shift * w))
    if my or mx:
        dy = torch.randint(-my, my + 1, (n,), generator=generator)
        dx = torch.randint(-mx, mx + 1, (n,), generator=generator)
        padded = torch.nn.functional.pad(x, (mx, mx, my, my), mode="replicate")
        rows = (torch.arange(h)[None, :] + my - dy[:, None]).to(x.device)  # (N, H)
        cols = (torch.arange(w)[None, :] + mx - dx[:, None]).to(x.device)  # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        flipped = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    return x
