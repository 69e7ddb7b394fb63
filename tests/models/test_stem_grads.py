"""Input gradients of strided stem convolutions by phase decomposition: equal to torch's own
backward for every kernel, stride, padding and odd size, used only where they apply, and
inside a real ResNet's gradient pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import xaiscope as xs
from xaiscope.models.stem_grads import MAX_INPUT_CHANNELS, phase_weight, stem_input_grad


def _native(grad, x, w, stride, padding):
    return torch.ops.aten.convolution_backward(
        grad, x, w, None, list(stride), list(padding), [1, 1], False, [0, 0], 1,
        [True, False, False],
    )[0]  # fmt: skip


@pytest.mark.parametrize(
    ("c_in", "size", "k", "s", "p"),
    [
        (3, 64, 7, 2, 3),  # ResNet's conv1
        (3, 64, 3, 2, 1),  # EfficientNet / MobileNet stems
        (3, 33, 7, 2, 3),  # odd size: the last row and column
        (3, 31, 3, 2, 0),  # no padding, odd size
        (1, 30, 5, 3, 2),  # stride 3, one channel
        (3, 32, 4, 4, 0),  # a patch embedding (stride = kernel)
        (4, 20, 2, 2, 0),  # kernel = stride = 2
        (3, 21, 3, 2, 2),  # padding larger than half the kernel
        (2, 18, 1, 2, 0),  # 1x1 kernel, stride 2 (most taps land nowhere)
    ],
)
def test_equals_torch_backward(c_in, size, k, s, p):
    g = torch.Generator().manual_seed(size * 10 + k)
    x = torch.randn(2, c_in, size, size + 1, generator=g)
    w = torch.randn(16, c_in, k, k, generator=g)
    y = F.conv2d(x, w, stride=s, padding=p)
    grad = torch.randn(y.shape, generator=g)
    got = stem_input_grad(grad, x, w, (s, s), (p, p), (1, 1), 1)
    assert got is not None and got.shape == x.shape and got.is_contiguous()
    ref = _native(grad, x, w, (s, s), (p, p))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_phase_weight_holds_every_tap_once():
    # each tap of the kernel lands in exactly one (phase, offset) slot
    w = torch.arange(1.0, 1 + 2 * 3 * 7 * 7).view(2, 3, 7, 7)
    wp, (oh, ow) = phase_weight(w, (2, 2), (3, 3))
    assert wp.shape == (3 * 4, 2, 4, 4) and (oh, ow) == (-1, -1)
    vals = wp[wp != 0]
    assert vals.numel() == w.numel() and torch.equal(vals.sort().values, w.flatten().sort().values)


def test_refuses_what_it_does_not_cover():
    x = torch.randn(2, 3, 16, 16)
    w = torch.randn(8, 3, 3, 3)
    grad = torch.randn(2, 8, 8, 8)
    args = ((2, 2), (1, 1), (1, 1), 1)
    assert stem_input_grad(grad, x, w, (1, 1), (1, 1), (1, 1), 1) is None  # stride 1
    assert stem_input_grad(grad, x, w, (2, 1), (1, 1), (1, 1), 1) is None  # unequal strides
    assert stem_input_grad(grad, x, w, (2, 2), (1, 1), (2, 2), 1) is None  # dilation
    assert stem_input_grad(grad, x, w, (2, 2), "same", (1, 1), 1) is None
    assert stem_input_grad(grad.double(), x.double(), w.double(), *args) is None
    cl = grad.contiguous(memory_format=torch.channels_last)
    assert stem_input_grad(cl, x, w, *args) is None
    wide = torch.randn(2, MAX_INPUT_CHANNELS + 1, 16, 16)  # not an image: native backward
    assert stem_input_grad(grad, wide, torch.randn(8, wide.shape[1], 3, 3), *args) is None
    gx = stem_input_grad(grad, x, w, *args)
    assert gx is not None and gx.shape == x.shape


def test_resnet_gradient_pass_uses_it_and_matches_autograd(monkeypatch):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=5).eval()
    model = xs.wrap(net, input_size=64)
    used: list[bool] = []

    def counting(*args):
        out = stem_input_grad(*args)
        used.append(out is not None)
        return out

    monkeypatch.setattr("xaiscope.models.torch_model.stem_input_grad", counting)
    x = torch.randn(3, 3, 64, 64)
    targets = torch.tensor([0, 3, 4])
    gp = model.grad_pass(x, targets)
    assert gp.input_grads is not None
    assert used.count(True) >= 1  # conv1 (the 3x3 convolutions see 64+ channels)
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    (ref,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), xr)
    torch.testing.assert_close(gp.logits, out.detach(), rtol=0, atol=0)
    torch.testing.assert_close(gp.input_grads[0], ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
