"""Shared fixtures: the embedded model, real photos, and small hand-built models."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import xaiscope as xs  # noqa: E402


@pytest.fixture(scope="session")
def effnet() -> xs.Model:
    """The embedded ImageNet EfficientNet-Lite0 (real weights, offline)."""
    return xs.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    return xs.sample_images()["chelsea"]


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return xs.sample_images()


def rand_images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 random images."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


class LinearNet(nn.Module):
    """logits = W . flatten(x) + b: every gradient method has a closed form."""

    def __init__(self, size: int = 8, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * size * size, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, 3 * size * size, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class ReluNet(nn.Module):
    """logits_c = sum_i w_ci relu(x_i): piecewise linear, one ReLU module."""

    def __init__(self, size: int = 8, classes: int = 3, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.relu = nn.ReLU()
        self.w = nn.Parameter(torch.randn(classes, 3 * size * size, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x.flatten(1)) @ self.w.T


class CamNet(nn.Module):
    """conv 1x1 -> ReLU -> global average pool -> linear: CAMs have closed forms."""

    def __init__(self, channels: int = 4, classes: int = 3, seed: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, channels, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


class SmallCNN(nn.Module):
    """A small conv net with BN, in-place ReLUs and max pooling, for contract tests."""

    def __init__(self, classes: int = 5, seed: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, classes)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


def identity_wrap(module: nn.Module, size: int = 8) -> xs.Model:
    """Wrap with no normalisation: model input = pixels / 255."""
    return xs.wrap(module, input_size=size, mean=(0, 0, 0), std=(1, 1, 1))


def model_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def hook_count(module: nn.Module) -> int:
    """Number of hooks of every kind on every submodule."""
    total = 0
    for m in module.modules():
        total += len(m._forward_hooks) + len(m._forward_pre_hooks)
        total += len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
    return total
