"""Known answers on hand-built linear, ReLU and CAM models for every gradient method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.conftest import CamNet, LinearNet, ReluNet, identity_wrap, model_input, rand_images

TARGET = 1


@pytest.fixture()
def linear():
    net = LinearNet()
    return net, identity_wrap(net)


@pytest.fixture()
def images():
    return rand_images(2)


def weight_image(net: LinearNet, c: int) -> torch.Tensor:
    return net.fc.weight[c].detach().view(1, 3, 8, 8)


def test_saliency_is_abs_weight(linear, images):
    net, model = linear
    e = xs.explain(model, images, method="saliency", target=TARGET)
    w = weight_image(net, TARGET)
    torch.testing.assert_close(e.raw, w.abs().expand(2, -1, -1, -1))
    np.testing.assert_allclose(e.maps, w.abs().amax(1).expand(2, -1, -1).numpy(), rtol=1e-6)
    signed = xs.explain(model, images, method="saliency", target=TARGET, abs=False)
    torch.testing.assert_close(signed.raw, w.expand(2, -1, -1, -1))


def test_gradient_x_input(linear, images):
    net, model = linear
    e = xs.explain(model, images, method="gradient_x_input", target=TARGET)
    x = model_input(images)
    torch.testing.assert_close(e.raw, x * weight_image(net, TARGET))
    np.testing.assert_allclose(e.maps, (x * weight_image(net, TARGET)).sum(1).numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"]
)
@pytest.mark.parametrize("baseline", ["black", "white", 0.3])
def test_integrated_gradients_linear_is_exact(linear, images, rule, baseline):
    net, model = linear
    e = xs.explain(
        model, images, method="ig", target=TARGET, rule=rule, n_steps=7, baseline=baseline
    )
    x = model_input(images)
    level = {"black": 0.0, "white": 1.0}.get(baseline, baseline)
    expected = (x - level) * weight_image(net, TARGET)
    torch.testing.assert_close(e.raw, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(e.delta).max() < 1e-3


def test_integrated_gradients_trapezoid_matches_captum_convention(linear, images):
    net, model = linear
    n = 10
    e = xs.explain(model, images, method="ig", target=TARGET, rule="riemann_trapezoid", n_steps=n)
    expected = model_input(images) * weight_image(net, TARGET) * (n - 1) / n
    torch.testing.assert_close(e.raw, expected, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_array_baseline(linear, images):
    net, model = linear
    base = rand_images(1, seed=9)[0]
    e = xs.explain(model, images, method="ig", target=TARGET, baseline=base, n_steps=5)
    expected = (model_input(images) - model_input(base[None])) * weight_image(net, TARGET)
    torch.testing.assert_close(e.raw, expected, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_relu_net_completeness():
    net = ReluNet()
    model = identity_wrap(net)
    images = rand_images(2, seed=4)
    # gray baseline: half the pixels start below, half above it, so paths cross ReLU kinks
    e = xs.explain(model, images, method="ig", target=0, baseline=0.5, n_steps=512)
    x = model_input(images)
    w = net.w[0].detach().view(1, 3, 8, 8)
    # (x - b) * w * fraction of the path where the unit is on = w * (relu(x) - relu(b))
    # for b >= 0 every unit is on along the whole path
    expected = w * (x - 0.5)
    torch.testing.assert_close(e.raw, expected, rtol=1e-3, atol=1e-4)
    shifted = identity_wrap(net)
    e2 = xs.explain(shifted, images, method="ig", target=0, n_steps=256)
    assert np.all(np.abs(e2.delta) < 1e-2 * np.abs(e2.scores).max())


def test_smoothgrad_and_vargrad_on_linear(linear, images):
    net, model = linear
    sg = xs.explain(model, images, method="smoothgrad", target=TARGET, n_samples=6, seed=0)
    torch.testing.assert_close(sg.raw, weight_image(net, TARGET).abs().expand(2, -1, -1, -1))
    vg = xs.explain(model, images, method="vargrad", target=TARGET, n_samples=6, seed=0)
    assert float(vg.raw.abs().max()) < 1e-8


def test_smoothgrad_noise_matters_on_relu_net():
    net = ReluNet()
    model = identity_wrap(net)
    images = rand_images(1, seed=5)
    x = model_input(images)
    sg = xs.explain(
        model, images, method="smoothgrad", target=0, n_samples=400, stdev=0.2, seed=1, abs=False
    )
    w = net.w[0].detach().view(1, 3, 8, 8)
    # E[w 1(x + e > 0)] = w * Phi(x / sigma)
    phi = 0.5 * (1 + torch.erf(x / (0.2 * 2**0.5)))
    torch.testing.assert_close(sg.raw, w * phi, atol=0.15 * float(w.abs().max()), rtol=0)


def test_expected_gradients_single_reference_is_ig_expectation(linear, images):
    net, model = linear
    ref = rand_images(1, seed=11)
    e = xs.explain(
        model,
        images,
        method="expected_gradients",
        target=TARGET,
        references=ref,
        n_samples=5,
        seed=0,
    )
    expected = (model_input(images) - model_input(ref)) * weight_image(net, TARGET)
    torch.testing.assert_close(e.raw, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(e.delta).max() < 1e-3


def test_guided_backprop_relu_net():
    net = ReluNet()
    model = identity_wrap(net)
    images = rand_images(2, seed=6)
    x = model_input(images)
    e = xs.explain(model, images, method="guided_backprop", target=2)
    w = net.w[2].detach().view(1, 3, 8, 8)
    # plain gradient w * 1(x > 0); guided keeps only positive gradients at the ReLU
    expected = w.clamp(min=0) * (x > 0)
    torch.testing.assert_close(e.raw, expected.expand_as(x))
    plain = xs.explain(model, images, method="saliency", target=2, abs=False)
    torch.testing.assert_close(plain.raw, (w * (x > 0)).expand_as(x))


def cam_reference(net: CamNet, x: torch.Tensor, c: int) -> dict[str, torch.Tensor]:
    """Closed forms of the gradient CAMs at the ReLU output of CamNet."""
    a = net.relu(net.conv(x)).detach()  # (N, k, h, w)
    h, w = a.shape[-2:]
    g = (net.fc.weight[c].detach() / (h * w)).view(1, -1, 1, 1).expand_as(a)
    grad_cam = torch.relu((g.mean((2, 3))[..., None, None] * a).sum(1))
    g2, g3 = g**2, g**3
    alpha = g2 / (2 * g2 + a.sum((2, 3), keepdim=True) * g3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    pp = torch.relu(((alpha * g.clamp(min=0)).sum((2, 3))[..., None, None] * a).sum(1))
    xw = (a * g).sum((2, 3)) / (a.sum((2, 3)) + 1e-7)
    return {
        "gradcam": grad_cam,
        "gradcam++": pp,
        "xgradcam": torch.relu((xw[..., None, None] * a).sum(1)),
        "layercam": torch.relu((g.clamp(min=0) * a).sum(1)),
        "hirescam": torch.relu((g * a).sum(1)),
    }


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
def test_cams_closed_form(method):
    net = CamNet()
    model = identity_wrap(net)
    images = rand_images(3, seed=7)
    for c in range(3):
        e = xs.explain(model, images, method=method, target=c, layer="relu")
        ref = cam_reference(net, model_input(images), c)[method]
        torch.testing.assert_close(e.raw, ref, rtol=1e-4, atol=1e-6)
        assert e.maps.shape == (3, 8, 8)


def test_gradcam_is_cam_over_hw_after_gap():
    """After GAP + linear, Grad-CAM equals CAM (Zhou et al. 2016) scaled by 1/(h w)."""
    net = CamNet()
    model = identity_wrap(net)
    images = rand_images(2, seed=8)
    a = net.relu(net.conv(model_input(images))).detach()
    cam = torch.einsum("k,nkhw->nhw", net.fc.weight[0].detach(), a).clamp(min=0) / 64
    e = xs.explain(model, images, method="gradcam", target=0, layer="relu")
    torch.testing.assert_close(e.raw, cam, rtol=1e-4, atol=1e-6)
