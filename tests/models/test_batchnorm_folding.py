"""Batch-norm folding of forward-only passes: same function, original module untouched,
refused where the fold would not be exact, invalidated when the weights change."""

from __future__ import annotations

import torch
from torch import nn

import xaiscope as xs
from xaiscope.models.batchnorm_folding import (
    ChannelsLastInput,
    conv_bn_pairs,
    fold_batchnorm,
    inference_copy,
)


def _randomize_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(m.num_features, generator=g))
                    m.bias.copy_(torch.randn(m.num_features, generator=g))
    return net.eval()


class ConvBnNet(nn.Module):
    """Plain, depthwise, bias-free and non-affine conv -> BN pairs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.b2 = nn.BatchNorm2d(8, affine=False)
        self.c3 = nn.Conv2d(8, 6, 1, bias=False)
        self.b3 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = self.b3(self.c3(x))
        return self.fc(x.mean((2, 3)))


class SharedConvNet(nn.Module):
    """The conv output feeds the BN and a skip connection: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        return self.fc((self.bn(a) + a).mean((2, 3)))


class StdConv(nn.Conv2d):
    """Weight-standardised convolution: a scaled weight is standardised away again."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (
            self.weight.std((1, 2, 3), keepdim=True) + 1e-5
        )
        return nn.functional.conv2d(x, w, self.bias, padding=1)


class StdConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = StdConv(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _hooks(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in net.modules())


def test_fold_is_the_same_function_and_leaves_the_original_alone():
    torch.manual_seed(0)
    net = _randomize_bn(ConvBnNet())
    x = torch.randn(5, 3, 12, 12)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert conv_bn_pairs(net, x[:1]) == [("c1", "b1"), ("c2", "b2"), ("c3", "b3")]
    folded = fold_batchnorm(net, x[:1])
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-5)
    # the user's module is neither changed nor left with hooks
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(net.b1, nn.BatchNorm2d) and _hooks(net) == 0


def test_embedded_model_folds_timm_batchnormact(effnet, chelsea):
    x = effnet.preprocess(chelsea)
    folded = fold_batchnorm(effnet.module, x)
    assert folded is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    # BatchNormAct2d keeps its activation: still ReLU6 after every folded pair
    assert sum(isinstance(m, nn.ReLU6) for m in folded.modules()) == sum(
        isinstance(m, nn.ReLU6) for m in effnet.module.modules()
    )
    with torch.no_grad():
        ref = effnet.module(x)
        torch.testing.assert_close(folded(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    assert _hooks(effnet.module) == 0


def test_refused_where_the_fold_would_not_be_exact():
    x = torch.randn(2, 3, 8, 8)
    assert fold_batchnorm(_randomize_bn(SharedConvNet()), x) is None
    assert fold_batchnorm(_randomize_bn(StdConvNet()), x) is None
    hooked = _randomize_bn(ConvBnNet())
    handle = hooked.c2.register_forward_hook(lambda *a: None)
    try:
        assert fold_batchnorm(hooked, x) is None  # a user's hook would not run on a copy
    finally:
        handle.remove()
    assert fold_batchnorm(nn.Sequential(nn.Flatten(), nn.Linear(192, 2)).eval(), x) is None


def test_model_forward_uses_the_fold_and_follows_weight_changes():
    net = _randomize_bn(ConvBnNet())
    model = xs.wrap(net, input_size=12)
    x = torch.randn(3, 3, 12, 12)
    out = model.forward(x)
    assert model._folded is not None
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
        net.b3.running_mean += 1.0  # an in-place update (as an optimizer step would do)
        torch.testing.assert_close(model.forward(x), net(x), rtol=1e-5, atol=1e-5)
        net.c1.weight.mul_(2.0)
        torch.testing.assert_close(model.forward(x), net(x), rtol=1e-5, atol=1e-5)
    model.fold_batchnorm = False
    with torch.no_grad():
        assert torch.equal(model.forward(x), net(x))


def test_gradient_passes_use_the_original_module():
    net = _randomize_bn(ConvBnNet())
    model = xs.wrap(net, input_size=12)
    x = torch.randn(2, 3, 12, 12)
    model.forward(x)  # builds the folded copy
    gp = model.grad_pass(x, torch.tensor([1, 3]), layer="b2")
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    (g,) = torch.autograd.grad(out.gather(1, torch.tensor([[1], [3]])).sum(), xr)
    assert gp.input_grads is not None
    # the original network's forward, bit for bit (the folded one rounds differently)
    assert torch.equal(gp.logits, out.detach())
    # batch norms back-propagate by one multiply: the same gradient up to rounding
    torch.testing.assert_close(gp.input_grads[0], g, rtol=1e-5, atol=1e-7)
    # and the replacement forwards are gone again
    assert not any("forward" in vars(m) for m in net.modules())


def test_light_batchnorm_backward_on_the_embedded_model(effnet, chelsea):
    x = effnet.preprocess(chelsea).repeat(2, 1, 1, 1)
    x[1] += 0.1 * torch.randn(x[1].shape, generator=torch.Generator().manual_seed(0))
    gp = effnet.grad_pass(x, torch.tensor([285, 281]), layer="bn2")
    xr = x.clone().requires_grad_(True)
    acts: list[torch.Tensor] = []
    handle = effnet.module.bn2.register_forward_hook(lambda _m, _i, o: acts.append(o))
    try:
        out = effnet.module(xr)
    finally:
        handle.remove()
    score = out[0, 285] + out[1, 281]
    g, ga = torch.autograd.grad(score, [xr, acts[0]])
    # the original network's forward: bit for bit in its own layout, up to an ulp where
    # channels-last was found to give the same gradients (one thread)
    torch.testing.assert_close(gp.logits, out.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gp.activation, acts[0].detach(), rtol=1e-6, atol=1e-7)
    assert gp.input_grads is not None and gp.layer_grads is not None
    torch.testing.assert_close(gp.layer_grads[0], ga, rtol=1e-5, atol=1e-8)
    scale = float(g.abs().max())
    torch.testing.assert_close(gp.input_grads[0], g, rtol=0, atol=1e-5 * scale)
    assert not any("forward" in vars(m) for m in effnet.module.modules())


def test_light_batchnorm_is_undone_after_an_error():
    net = _randomize_bn(ConvBnNet())
    model = xs.wrap(net, input_size=12)
    try:
        model.grad_pass(torch.randn(2, 3, 12, 12), torch.tensor([0, 99]))
    except Exception:
        pass
    else:  # pragma: no cover
        raise AssertionError("target 99 of 4 classes should fail")
    assert not any("forward" in vars(m) for m in net.modules())
    assert _hooks(net) == 0


class ViewNet(nn.Module):
    """The classic tutorial flatten: ``x.view`` needs an NCHW-contiguous tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).view(x.shape[0], -1))


def test_inference_copy_runs_channels_last_on_cpu():
    net = _randomize_bn(ConvBnNet())
    x = torch.randn(3, 3, 12, 12)
    # without the fused convolutions (tests/models/test_onednn_fusion.py)
    fast = inference_copy(net, x[:1], fuse=False)
    assert isinstance(fast, ChannelsLastInput)
    convs = [m for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())  # and folded
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-5, atol=1e-5)
    # the original is untouched: still NCHW-contiguous, still with its batch norms
    assert net.c1.weight.is_contiguous()
    assert isinstance(net.b1, nn.BatchNorm2d)
    # a conv net without batch norms still gets the channels-last copy
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    plain(x)
    assert isinstance(inference_copy(plain.eval(), x[:1], fuse=False), ChannelsLastInput)
    assert isinstance(inference_copy(plain.eval(), x[:1]), ChannelsLastInput)
    assert inference_copy(plain.eval(), x[:1], channels_last=False) is None


def test_inference_copy_falls_back_when_the_model_needs_nchw():
    net = _randomize_bn(ViewNet())
    x = torch.randn(2, 3, 8, 8)
    with_fold = inference_copy(net, x[:1])
    assert with_fold is not None and not isinstance(with_fold, ChannelsLastInput)
    with torch.no_grad():
        torch.testing.assert_close(with_fold(x), net(x), rtol=1e-5, atol=1e-5)
    model = xs.wrap(net, input_size=8)
    with torch.no_grad():
        torch.testing.assert_close(model.forward(x), net(x), rtol=1e-5, atol=1e-5)


class LayoutSensitiveNet(nn.Module):
    """Computes something slightly different for a channels-last input, as two kernels
    that round differently would."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        if a.is_contiguous(memory_format=torch.channels_last):
            a = a * (1 + 1e-6)
        return self.fc(torch.relu(a).mean((2, 3)))


def _nchw_pass(model: xs.Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The NCHW gradient pass with torch's own convolution backward (as the probe runs it:
    the stem's phase convolution would differ by float rounding)."""
    from xaiscope.models.batchnorm_folding import module_fingerprint
    from xaiscope.models.torch_model import _NATIVE_CONV_BACKWARD

    model._grad_layout = ((module_fingerprint(model.module), torch.get_num_threads()), False)
    token = _NATIVE_CONV_BACKWARD.set(True)
    try:
        gp = model.grad_pass(x, t)
    finally:
        _NATIVE_CONV_BACKWARD.reset(token)
        model._grad_layout = None
    assert gp.input_grads is not None
    return gp.input_grads


def test_gradient_passes_go_channels_last_only_where_bit_identical(effnet, chelsea):
    x = effnet.preprocess(chelsea).repeat(2, 1, 1, 1)
    x[1] *= 0.5
    t = torch.tensor([285, 285])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        gp = effnet.grad_pass(x, t, layer="bn2")
        # the embedded model on one thread: the same kernels in both layouts, so
        # channels-last is taken...
        assert effnet._grad_layout is not None and effnet._grad_layout[1]
        assert gp.input_grads is not None and gp.input_grads.is_contiguous()
        # ...and changes nothing, bit for bit
        assert torch.equal(gp.input_grads, _nchw_pass(effnet, x, t))
    finally:
        torch.set_num_threads(threads)
    # whatever the thread count decides, the result is the module's own: bit for bit where
    # channels-last is taken; in NCHW the stem's phase convolution rounds differently
    gp = effnet.grad_pass(x, t)
    assert effnet._grad_layout is not None
    assert effnet._grad_layout[0][1] == threads
    assert gp.input_grads is not None
    channels_last = effnet._grad_layout[1]
    ref = _nchw_pass(effnet, x, t)
    if channels_last:
        assert torch.equal(gp.input_grads, ref)
    else:
        torch.testing.assert_close(gp.input_grads, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))

    # a model whose result depends on the layout keeps its own
    net = LayoutSensitiveNet().eval()
    model = xs.wrap(net, input_size=8)
    x2, t2 = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    model.grad_pass(x2[:1], t2[:1])
    assert model._grad_layout is None  # one row: not worth the two probe passes
    gp2 = model.grad_pass(x2, t2)
    assert model._grad_layout is not None and not model._grad_layout[1]
    assert gp2.input_grads is not None
    assert torch.equal(gp2.input_grads, _nchw_pass(model, x2, t2))

    # a model that needs NCHW (x.view) keeps it too, and still works
    view = xs.wrap(_randomize_bn(ViewNet()), input_size=8)
    assert view.grad_pass(torch.randn(2, 3, 8, 8), torch.tensor([0, 1])).input_grads is not None
    assert view._grad_layout is not None and not view._grad_layout[1]
    assert _hooks(view.module) == 0


def test_conv_batchnorm_backward_in_one_step():
    """Gradient passes run conv -> eval BN as one function whose backward folds the BN
    scale into the transposed convolution; layers asked for still see their own output."""
    net = _randomize_bn(ConvBnNet())
    model = xs.wrap(net, input_size=12)
    x = torch.randn(3, 3, 12, 12)
    t = torch.tensor([0, 2, 3])
    xr = x.clone().requires_grad_(True)
    acts: dict[str, torch.Tensor] = {}
    handles = [
        getattr(net, n).register_forward_hook(
            lambda _m, _i, o, n=n: acts.__setitem__(n, o.detach().clone())
        )
        for n in ("c1", "b1", "c3")
    ]
    try:
        out = net(xr)
    finally:
        for h in handles:
            h.remove()
    (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xr)
    for layer in (None, "c1", "b1", "c3"):
        gp = model.grad_pass(x, t, layer=layer)
        assert model._grad_pairs is not None and len(model._grad_pairs[1]) == 3
        assert torch.equal(gp.logits, out.detach())  # the native forward, bit for bit
        assert gp.input_grads is not None
        torch.testing.assert_close(gp.input_grads[0], g, rtol=1e-5, atol=1e-7)
        if layer is not None:
            # a hooked conv keeps its own forward: its output, not the batch norm's
            assert torch.equal(gp.activation, acts[layer])
        assert not any("forward" in vars(m) for m in net.modules())
        assert _hooks(net) == 0
    # the pairs follow the weights: a changed batch norm is picked up
    with torch.no_grad():
        net.b3.weight.mul_(2)
    model.grad_pass(x, t)
    w = model._grad_pairs[1][2][2]
    scale = net.b3.weight / torch.sqrt(net.b3.running_var + net.b3.eps)
    torch.testing.assert_close(w, net.c3.weight * scale.view(-1, 1, 1, 1))


def test_user_hooks_see_only_the_real_passes():
    """No probe forward (pairs, layout check) runs on a module that carries user hooks."""
    net = _randomize_bn(ConvBnNet())
    model = xs.wrap(net, input_size=12)
    seen: list[int] = []
    handle = net.b2.register_forward_hook(lambda _m, i, _o: seen.append(i[0].shape[0]))
    try:
        gp = model.grad_pass(torch.randn(3, 3, 12, 12), torch.tensor([0, 1, 2]))
        gp2 = model.grad_pass(torch.randn(2, 3, 12, 12), torch.tensor([0, 1]))
    finally:
        handle.remove()
    from xaiscope.models.batchnorm_folding import module_fingerprint

    assert seen == [3, 2]  # the two passes, nothing else
    assert gp.input_grads is not None and gp2.input_grads is not None
    # hooks gone: pairs
    assert model._conv_batchnorm_pairs(torch.randn(1, 3, 12, 12), module_fingerprint(net)) != []


class InplaceBetweenNet(nn.Module):
    """An in-place ReLU between the conv and its BN: the BN's input is still the conv's
    output tensor object, but no longer its values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.relu(self.conv(x))).mean((2, 3)))


class SharedBatchNormNet(nn.Module):
    """One BN module called after a conv and again after a pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv0 = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.bn(self.conv(x))
        b = self.bn(nn.functional.avg_pool2d(self.conv0(x), 3, 1, 1))
        return self.fc(torch.relu(a + b).mean((2, 3)))


def test_gradient_passes_join_only_true_conv_batchnorm_pairs():
    """Where the BN's input is not simply the conv's output, the gradient pass must still
    be the module's own function: same logits bit for bit, autograd's input gradient."""
    for cls in (InplaceBetweenNet, SharedBatchNormNet, SharedConvNet):
        net = _randomize_bn(cls())
        model = xs.wrap(net, input_size=10)
        x = torch.randn(2, 3, 10, 10)
        t = torch.tensor([0, 1])
        xr = x.clone().requires_grad_(True)
        out = net(xr)
        (g,) = torch.autograd.grad(out.gather(1, t[:, None]).sum(), xr)
        gp = model.grad_pass(x, t)
        assert torch.equal(gp.logits, out.detach()), cls.__name__
        assert gp.input_grads is not None
        torch.testing.assert_close(gp.input_grads[0], g, rtol=1e-5, atol=1e-7)
        assert model._grad_pairs is not None and model._grad_pairs[1] == [], cls.__name__
        assert not any("forward" in vars(m) for m in net.modules())
    # the hooks alone already refuse the in-place and the shared cases
    for cls in (InplaceBetweenNet, SharedBatchNormNet):
        assert conv_bn_pairs(_randomize_bn(cls()), torch.randn(1, 3, 10, 10)) == []
