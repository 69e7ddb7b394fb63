"""Contract tests generated from the registry: every method, same guarantees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xaiscope as xs
from tests.conftest import SmallCNN, hook_count, rand_images
from xaiscope.methods.registry import all_methods

# methods for vision transformers only are checked in test_attention_rollout.py (they refuse
# these CNNs with a typed error, tested there too)
METHODS = [m.name for m in all_methods() if not m.needs_attention]
FAST = {"n_samples": 4, "n_steps": 4, "n_masks": 16}


def fast_params(name: str) -> dict:
    info = xs.get_method(name)
    return {k: v for k, v in FAST.items() if k in info.defaults}


@pytest.fixture(scope="module")
def small():
    net = SmallCNN()
    return net, xs.wrap(net, input_size=16)


def test_registry_is_complete():
    expected = {
        "saliency",
        "smoothgrad",
        "vargrad",
        "gradient_x_input",
        "integrated_gradients",
        "expected_gradients",
        "guided_backprop",
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
    }
    assert expected <= set(METHODS)
    assert xs.get_method("ig").name == "integrated_gradients"
    for info in all_methods():
        assert info.paper and info.summary
        assert info.fn.__module__.startswith("xaiscope.methods.")
        # one small file per method: its module docstring cites the paper
        import importlib

        doc = importlib.import_module(info.fn.__module__).__doc__ or ""
        assert any(ch.isdigit() for ch in doc), f"{info.name}: no paper year in module docstring"


@pytest.mark.parametrize("name", METHODS)
def test_shapes_dtype_finite(small, name):
    _, model = small
    images = [rand_images(1, size=20, seed=1)[0], rand_images(1, size=16, seed=2)[0]]
    e = xs.explain(model, images, method=name, seed=0, **fast_params(name))
    assert isinstance(e.maps, list) and [m.shape for m in e.maps] == [(20, 20), (16, 16)]
    same = xs.explain(model, rand_images(3, size=16), method=name, seed=0, **fast_params(name))
    assert same.maps.shape == (3, 16, 16) and same.maps.dtype == np.float32
    assert np.isfinite(same.maps).all()
    assert same.targets.shape == (3,) and same.scores.shape == (3,)
    info = xs.get_method(name)
    if info.family == "cam":
        assert same.raw.ndim == 3 and same.raw.shape[0] == 3
    else:
        assert tuple(same.raw.shape) == (3, 3, 16, 16)


@pytest.mark.parametrize("name", METHODS)
def test_seed_reproducible(small, name):
    _, model = small
    images = rand_images(2, size=16, seed=4)
    a = xs.explain(model, images, method=name, seed=7, **fast_params(name))
    b = xs.explain(model, images, method=name, seed=7, **fast_params(name))
    np.testing.assert_array_equal(a.maps, b.maps)
    if xs.get_method(name).stochastic:
        c = xs.explain(model, images, method=name, seed=8, **fast_params(name))
        assert not np.array_equal(a.maps, c.maps)


@pytest.mark.parametrize("name", METHODS)
def test_batch_equals_per_sample(small, name):
    # with a seed, random methods too: an image's draws may not depend on the other images
    _, model = small
    images = rand_images(3, size=16, seed=5)
    kw = {"seed": 7, **fast_params(name)}
    batch = xs.explain(model, images, method=name, target=[0, 3, 1], batch_size=2, **kw)
    for i in range(3):
        one = xs.explain(model, images[i], method=name, target=[0, 3, 1][i], **kw)
        np.testing.assert_allclose(batch.maps[i], one.maps[0], rtol=1e-4, atol=1e-6)


class Exploding(nn.Module):
    """Raises inside a method's pass: any forward that records gradients and, once armed,
    every forward after explain's prediction (gradient-free methods run under no_grad)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: int | None = None  # None: not armed (wrap's probe forward)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls is not None:
            self.calls += 1
        if torch.is_grad_enabled() or (self.calls or 0) > 1:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("name", METHODS)
def test_no_hooks_left_after_error(name):
    net = SmallCNN()
    boom = Exploding()
    net.features.append(boom)
    model = xs.wrap(net, input_size=16)
    boom.calls = 0
    before = hook_count(net)
    flags = [p.requires_grad for p in net.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        xs.explain(
            model,
            rand_images(2, size=16),
            method=name,
            layer="features.4",
            seed=0,
            **fast_params(name),
        )
    assert hook_count(net) == before == 0
    assert [p.requires_grad for p in net.parameters()] == flags


@pytest.mark.parametrize("name", METHODS)
def test_no_hooks_left_after_success(small, name):
    net, model = small
    xs.explain(model, rand_images(1, size=16), method=name, seed=0, **fast_params(name))
    assert hook_count(net) == 0
    assert all(p.requires_grad for p in net.parameters())


def test_real_model_every_method(effnet, chelsea):
    """Every method runs on the embedded ImageNet model and the real photo.

    Score-CAM needs one forward per distinct channel mask (about 500 at ``bn2``), so it
    runs here at ``blocks.0`` (16 channels); the other layer methods at the default layer.
    """
    deep = [m for m in METHODS if m != "scorecam"]
    results = xs.explain(
        effnet,
        chelsea,
        methods=deep,
        seed=0,
        n_samples=2,
        n_steps=4,
        n_masks=16,
        occlusion={"window": 112, "stride": 56},
    )
    if "scorecam" in METHODS:
        results.append(xs.explain(effnet, chelsea, method="scorecam", layer="blocks.0"))
    assert sorted(r.method for r in results) == sorted(METHODS)
    for r in results:
        assert r.maps.shape == (1, 300, 451)
        assert np.isfinite(r.maps).all() and float(np.abs(r.maps).max()) > 0
        assert r.target_labels == ["Egyptian cat"]
