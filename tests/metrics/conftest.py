"""Fixtures for the metric tests: hand-built models with known answers, and one small_cnn
trained on ``shapes`` by the training code (once per session, about 45 s on one thread).

Everything runs on one CPU thread: on the shared 2-core machine that is the fastest
setting, and results stay the same from run to run.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import xaiscope as xs

#: Training of the judged model: the training code's defaults except these. Grad-CAM's
#: pointing game depends on the training seed (see docs/metrics.md: the maximum lands
#: just outside triangles, which small_cnn finds by the edges around them).
SHAPES_TRAIN = {"n": 2000, "size": 32, "data_seed": 21, "seed": 2, "epochs": 15}
#: The evaluation images: new to the model (another seed); many, so that a hit rate is
#: known to about +-0.01.
SHAPES_EVAL = {"n": 1000, "size": 32, "seed": 1234}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RegionSum(nn.Module):
    """logit_0 = sum of w * x, with w = 1 on a region of pixels (every channel) and 0
    elsewhere; logit_1 = 0. Deletion and insertion have closed forms on it."""

    def __init__(self, region: np.ndarray) -> None:
        super().__init__()
        w = torch.from_numpy(np.asarray(region, dtype=np.float32))[None].repeat(3, 1, 1)
        self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def region_model(region: np.ndarray) -> xs.Model:
    """RegionSum wrapped with no normalisation (model input = pixels / 255)."""
    size = region.shape[0]
    return xs.wrap(RegionSum(region), input_size=size, mean=(0, 0, 0), std=(1, 1, 1))


def rect_masks(n: int, size: int, seed: int) -> np.ndarray:
    """(n, size, size) bool masks, each one random rectangle of 2 to size/2 pixels a side."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        h, w = rng.integers(2, size // 2 + 1, 2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        masks[i, y : y + h, x : x + w] = True
    return masks


@pytest.fixture(scope="session")
def shapes_model() -> xs.Model:
    """small_cnn trained on shapes by ``xs.train`` (see SHAPES_TRAIN)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = dict(SHAPES_TRAIN)
        data = xs.datasets.shapes(cfg.pop("n"), cfg.pop("size"), seed=cfg.pop("data_seed"))
        result = xs.train("small_cnn", data, save=False, progress=False, **cfg)
    finally:
        torch.set_num_threads(before)
    return result.model


@pytest.fixture(scope="session")
def shapes_eval() -> xs.ImageDataset:
    cfg = dict(SHAPES_EVAL)
    return xs.datasets.shapes(cfg.pop("n"), cfg.pop("size"), seed=cfg.pop("seed"))
