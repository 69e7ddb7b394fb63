"""Input gradients of 1x1 convolutions as matrix products: equal to torch's own backward,
used only where they apply, and inside a real ResNet's gradient pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import xaiscope as xs
from xaiscope.models.pointwise_grads import BATCHED_BELOW_PIXELS, pointwise_input_grad


def _native(grad, x, w, stride, padding=(0, 0), groups=1):
    return torch.ops.aten.convolution_backward(
        grad, x, w, None, list(stride), list(padding), [1, 1], False, [0, 0], groups,
        [True, False, False],
    )[0]  # fmt: skip


@pytest.mark.parametrize(
    ("n", "c_in", "size", "c_out", "stride"),
    [
        (4, 64, 7, 96, 1),  # small map: one product over the batch
        (3, 48, 14, 32, 2),  # strided, small output map
        (2, 16, 33, 24, 2),  # strided, odd size: the last row and column are read
        (2, 8, 30, 12, 3),  # strided by 3
        (1, 24, 9, 40, 2),  # one image, strided
    ],
)
def test_equals_torch_backward(n, c_in, size, c_out, stride):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(n, c_in, size, size, generator=g)
    w = torch.randn(c_out, c_in, 1, 1, generator=g)
    y = F.conv2d(x, w, stride=stride)
    grad = torch.randn(y.shape, generator=g)
    got = pointwise_input_grad(grad, x, w, (stride, stride), (0, 0), (1, 1), 1)
    assert got is not None and got.shape == x.shape and got.is_contiguous()
    ref = _native(grad, x, w, (stride, stride))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    if stride > 1:  # pixels the convolution never reads get exactly zero
        mask = torch.ones(size, size, dtype=torch.bool)
        mask[::stride, ::stride] = False
        assert torch.count_nonzero(got[:, :, mask]) == 0


def test_refuses_what_it_does_not_cover():
    x = torch.randn(2, 8, 6, 6)
    w1 = torch.randn(4, 8, 1, 1)
    grad = torch.randn(2, 4, 6, 6)
    args = ((1, 1), (0, 0), (1, 1), 1)
    # a 3x3 kernel, padding, groups, channels-last, float64
    assert pointwise_input_grad(grad, x, torch.randn(4, 8, 3, 3), *args) is None
    assert pointwise_input_grad(grad, x, w1, (1, 1), (1, 1), (1, 1), 1) is None
    assert pointwise_input_grad(grad, x, torch.randn(4, 4, 1, 1), (1, 1), (0, 0), (1, 1), 2) is None
    cl = x.contiguous(memory_format=torch.channels_last)
    assert pointwise_input_grad(grad, cl, w1, *args) is None
    assert pointwise_input_grad(grad.double(), x.double(), w1.double(), *args) is None
    # stride 1 on a large map: torch's own per-image products are kept
    big = torch.randn(2, 8, 16, 16)
    assert BATCHED_BELOW_PIXELS <= 16 * 16
    assert pointwise_input_grad(torch.randn(2, 4, 16, 16), big, w1, *args) is None


def test_resnet_gradient_pass_uses_it_and_matches_autograd(monkeypatch):
    torch.manual_seed(0)
    net = torchvision.models.resnet50(num_classes=5)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    model = xs.wrap(net, input_size=64)
    calls: list[tuple[int, bool]] = []
    real = pointwise_input_grad

    def counting(*args):
        out = real(*args)
        calls.append((args[0].shape[0], out is not None))
        return out

    monkeypatch.setattr("xaiscope.models.torch_model.pointwise_input_grad", counting)
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 3, 4])
    gp = model.grad_pass(x, targets)
    assert gp.input_grads is not None
    # (batch-1 passes are the layout probe.) At 64 px the 3 strided shortcuts and the 1x1
    # convolutions on maps under 128 pixels (layer2's 8x8 but for layer2.0.conv1, layer3's
    # 4x4, layer4's 2x2) take the products; the 16 3x3 convolutions, the 7x7 stem and the
    # 1x1 ones on 16x16 maps (layer1's 7, layer2.0.conv1) keep torch's backward.
    main = [used for n, used in calls if n == 3]
    assert main.count(True) == 3 + 7 + 12 + 6 and main.count(False) == 16 + 1 + 7 + 1
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    (ref,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), xr)
    torch.testing.assert_close(gp.logits, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(gp.input_grads[0], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
