"""Against implementations no one here wrote (Captum, pytorch-grad-cam), on the real model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaiscope as xs

captum_attr = pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def setup(effnet, chelsea):
    x = effnet.preprocess(chelsea)
    target = int(effnet.forward(x).argmax())
    return effnet, chelsea, x, target


@pytest.mark.parametrize(
    "rule",
    ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"],
)
def test_integrated_gradients_equals_captum(setup, rule):
    model, image, x, target = setup
    # Captum runs the 16 steps as one batch: so do we, because float32 kernels round
    # differently per batch size and on this ReLU6 net that alone moves IG by ~1e-3
    e = xs.explain(
        model, image, method="integrated_gradients", rule=rule, n_steps=16, batch_size=16
    )
    baseline = model.normalize(torch.zeros_like(x))
    ref, delta = captum_attr.IntegratedGradients(model.module).attribute(
        x,
        baselines=baseline,
        target=target,
        n_steps=16,
        method=rule,
        return_convergence_delta=True,
    )
    rel = float((e.raw - ref).norm() / ref.norm())
    assert rel < 1e-3
    assert e.delta[0] == pytest.approx(float(delta[0]), rel=1e-3, abs=1e-3)


def test_integrated_gradients_completeness_128_trapezoid(setup):
    model, image, _, _ = setup
    e = xs.explain(model, image, method="ig", rule="riemann_trapezoid", n_steps=128, batch_size=64)
    gap = abs(float(e.delta[0])) / abs(float(e.scores[0] - e.extras["baseline_score"][0]))
    assert gap < 0.03


def test_gradcam_equals_captum_layergradcam(setup):
    model, image, x, target = setup
    layer = model.default_layer
    assert layer == "bn2"
    e = xs.explain(model, image, method="gradcam")
    ref = captum_attr.LayerGradCam(model.module, model.module.bn2).attribute(
        x, target=target, relu_attributions=True
    )
    torch.testing.assert_close(e.raw, ref[:, 0], rtol=1e-4, atol=1e-6)


def test_saliency_ranks_like_max_abs_gradient(setup):
    model, image, x, target = setup
    e = xs.explain(model, image, method="saliency")
    ref = captum_attr.Saliency(model.module).attribute(x.clone(), target=target, abs=True)
    torch.testing.assert_close(e.raw, ref)
    # the map is max over channels of |gradient|, resized bilinearly to the photo
    expected = torch.nn.functional.interpolate(
        ref.amax(1, keepdim=True), size=image.shape[:2], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(e.maps[0], expected, rtol=1e-5, atol=1e-8)
    from scipy.stats import spearmanr

    assert spearmanr(e.maps[0].ravel(), expected.ravel()).statistic > 0.999


def test_gradient_x_input_equals_captum(setup):
    model, image, x, target = setup
    e = xs.explain(model, image, method="gradient_x_input")
    ref = captum_attr.InputXGradient(model.module).attribute(x.clone(), target=target)
    torch.testing.assert_close(e.raw, ref, rtol=1e-5, atol=1e-7)


def test_guided_backprop_equals_captum_on_relu_model():
    from tests.conftest import SmallCNN, rand_images

    net = SmallCNN()
    model = xs.wrap(net, input_size=16)
    images = rand_images(2, size=16)
    e = xs.explain(model, images, method="guided_backprop", target=1)
    x = model.preprocess(images)
    ref = captum_attr.GuidedBackprop(net).attribute(x, target=1)
    torch.testing.assert_close(e.raw, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("method", "peer"),
    [
        ("gradcam", "GradCAM"),
        ("gradcam++", "GradCAMPlusPlus"),
        ("xgradcam", "XGradCAM"),
        ("layercam", "LayerCAM"),
        ("hirescam", "HiResCAM"),
    ],
)
def test_cams_equal_pytorch_grad_cam(method, peer):
    """Same raw map as pytorch-grad-cam's own get_cam_image, before its scaling."""
    gradcam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tests.conftest import SmallCNN, rand_images

    net = SmallCNN()
    model = xs.wrap(net, input_size=16)
    images = rand_images(2, size=16, seed=3)
    x = model.preprocess(images)
    e = xs.explain(model, images, method=method, target=2, layer="features.5")
    cam = getattr(gradcam, peer)(model=net, target_layers=[net.features[5]])
    try:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(2)] * 2)  # fills activations
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        ref = cam.get_cam_image(
            x, net.features[5], [ClassifierOutputTarget(2)] * 2, acts, grads, False
        )
    finally:
        cam.activations_and_grads.release()
    np.testing.assert_allclose(e.raw.numpy(), np.maximum(ref, 0), rtol=1e-4, atol=1e-6)
