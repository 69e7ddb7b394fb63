"""Max pools in gradient passes run channels-last: bit-identical logits and input gradients
(ties among zeros after a ReLU included), hooks still called, nothing left patched."""

from __future__ import annotations

import torch
from torch import nn

import xaiscope as xs
from xaiscope.models import torch_model


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),  # overlapping windows: gradients of shared maxima add up
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 5),
    ).eval()
    with torch.no_grad():  # most units off: many pool windows hold only zeros
        net[0].bias.fill_(-0.6)
    return net


def test_gradients_bit_identical_and_used(monkeypatch):
    net = _net()
    x = torch.randn(3, 3, 23, 23)
    model = xs.wrap(net, input_size=23)
    calls = []
    real = torch_model._ChannelsLastMaxPool.apply

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(torch_model._ChannelsLastMaxPool, "apply", counting)
    targets = torch.tensor([0, 2, 4])
    gp = model.grad_pass(x, targets)
    assert len(calls) >= 2
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    (ref,) = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), xr)
    # many pool windows hold only zeros (ReLU): the same element must win the tie
    assert torch.equal(gp.logits, out.detach())
    assert torch.equal(gp.input_grads[0], ref)
    assert not any("forward" in vars(m) for m in net.modules())


def test_pool_hook_and_layer_gradients_unchanged():
    net = _net()
    x = torch.randn(2, 3, 20, 20)
    model = xs.wrap(net, input_size=20)
    seen = []
    handle = net[2].register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        gp = model.grad_pass(x, torch.tensor([1, 3]), layer="2")
    finally:
        handle.remove()
    assert seen and seen[-1] == (2, 8, 10, 10)
    xr = x.clone().requires_grad_(True)
    acts = {}
    h = net[2].register_forward_hook(lambda _m, _i, out: acts.setdefault("a", out))
    try:
        out = net(xr)
    finally:
        h.remove()
    (ref,) = torch.autograd.grad(out.gather(1, torch.tensor([[1], [3]])).sum(), acts["a"])
    assert torch.equal(gp.activation, acts["a"].detach())
    assert torch.equal(gp.layer_grads[0], ref)


def test_pool_error_leaves_nothing_patched():
    net = _net()
    model = xs.wrap(net, input_size=20)
    try:
        model.grad_pass(torch.randn(2, 3, 20, 20), torch.tensor([0, 99]))
    except Exception:
        pass
    else:  # pragma: no cover - the out-of-range target must fail
        raise AssertionError("expected an error")
    assert not any("forward" in vars(m) for m in net.modules())
