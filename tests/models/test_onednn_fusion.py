"""Fused oneDNN convolutions for forward-only CPU passes: what is fused, the same values,
any batch and image size, and the fall-backs (untraceable networks, no oneDNN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaiscope.models import onednn_fusion
from xaiscope.models.batchnorm_folding import ChannelsLastInput, inference_copy
from xaiscope.models.onednn_fusion import FusedConv2d, fuse_convolutions

pytestmark = pytest.mark.skipif(not onednn_fusion.available(), reason="no oneDNN in this torch")


class Block(nn.Module):
    """Every pattern: conv+BN+ReLU, a residual add then ReLU, ReLU6, SiLU, a conv whose
    output is used twice, a 'same'-padded conv, a depthwise conv, a broadcast add."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.r1 = nn.ReLU(inplace=True)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.r2 = nn.ReLU6()
        self.c3 = nn.Conv2d(8, 8, 1)
        self.r3 = nn.ReLU()
        self.c4 = nn.Conv2d(8, 8, 3, padding="same")
        self.act4 = nn.SiLU()
        self.c5 = nn.Conv2d(8, 8, 1)
        self.c6 = nn.Conv2d(8, 1, 1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.r1(self.b1(self.c1(x)))
        y = self.r2(self.c2(x))
        x = self.r3(self.c3(y) + x)  # residual: conv -> add -> relu
        x = self.act4(self.c4(x))  # 'same' padding: not fused
        z = self.c5(x)
        x = z * torch.sigmoid(z)  # used twice: plain fused conv, no activation
        x = x + self.c6(x)  # broadcast (1 channel): the add stays outside
        return self.fc(self.drop(x.mean((2, 3))))


def _randomized(net: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def _fused(module: nn.Module) -> list[FusedConv2d]:
    return [m for m in module.modules() if isinstance(m, FusedConv2d)]


def test_patterns_fused_and_values_kept():
    net = _randomized(Block())
    probe = torch.randn(1, 3, 16, 16)
    fast = inference_copy(net, probe)
    assert isinstance(fast, ChannelsLastInput)
    fused = {(m.attr, m.binary) for m in _fused(fast)}
    # c1 (+folded BN) + relu, c2 + relu6, c3 + add + relu, c5 and c6 plain
    assert fused == {("relu", False), ("hardtanh", False), ("relu", True), ("none", False)}
    assert len(_fused(fast)) == 5
    # the 'same'-padded conv and its SiLU stay as they were; no batch norm is left
    assert sum(isinstance(m, nn.Conv2d) for m in fast.modules()) == 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    # the original network is untouched
    assert isinstance(net.b1, nn.BatchNorm2d) and net.c1.weight.is_contiguous()
    with torch.no_grad():
        # any batch size and image size, although the weights were prepacked for 1 x 16 x 16
        for shape in ((1, 3, 16, 16), (3, 3, 16, 16), (7, 3, 20, 12)):
            x = torch.randn(shape)
            torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)


def test_silu_fused():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    fused = fuse_convolutions(net, torch.randn(1, 3, 8, 8))
    assert fused is not None and [m.attr for m in _fused(fused)] == ["swish"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            fused(x.contiguous(memory_format=torch.channels_last)), net(x), rtol=1e-5, atol=1e-6
        )


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x)))
        if y.sum() > 0:
            y = y * 2
        return y.mean((2, 3))


def test_untraceable_network_keeps_the_unfused_copy():
    net = _randomized(Branchy())
    probe = torch.randn(1, 3, 8, 8)
    assert fuse_convolutions(net, probe) is None
    fast = inference_copy(net, probe)
    assert isinstance(fast, ChannelsLastInput) and not _fused(fast)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)


def test_without_onednn_nothing_is_fused(monkeypatch):
    monkeypatch.setattr(onednn_fusion, "available", lambda: False)
    net = _randomized(Block())
    assert fuse_convolutions(net, torch.randn(1, 3, 16, 16)) is None
    fast = inference_copy(net, torch.randn(1, 3, 16, 16))
    assert isinstance(fast, ChannelsLastInput) and not _fused(fast)
    assert inference_copy(net, torch.randn(1, 3, 16, 16), fuse=False) is not None


def test_embedded_model_runs_fused(effnet, chelsea):
    x = effnet.preprocess(chelsea)
    fast = inference_copy(effnet.module, x)
    assert fast is not None
    fused = _fused(fast)
    # every convolution of EfficientNet-Lite0: stem, depthwise, pointwise, head
    assert len(fused) == sum(isinstance(m, nn.Conv2d) for m in effnet.module.modules())
    assert {m.attr for m in fused} == {"hardtanh", "none"}
    with torch.no_grad():
        out, ref = fast(x.repeat(3, 1, 1, 1)), effnet.module(x)
    assert float((out - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert torch.equal(out[0].topk(5).indices, ref[0].topk(5).indices)
    assert int(out[2].argmax()) == 285  # Egyptian cat
    # and the model's forward-only passes use it
    torch.testing.assert_close(effnet.forward(x), out[:1], rtol=0, atol=1e-5)
