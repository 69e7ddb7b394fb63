"""Contract tests over the registry on a Keras model: every method, same guarantees.

The Keras model is the twin of ``SmallCNN`` with the torch weights copied, so every method
(all randomness lives in the torch engine, seeded alike) must give the torch model's maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.conftest import SmallCNN, rand_images
from tests.keras_support import (
    SMALL_CNN_LAYERS,
    keras_or_skip,
    keras_small_cnn,
    randomize_bn,
    rel_err,
)
from xaiscope.methods.registry import all_methods

keras = keras_or_skip()

# vision-transformer methods (attention rollout) refuse Keras models: not part of this contract
METHODS = [m.name for m in all_methods() if not m.needs_attention]
FAST = {"n_samples": 8, "n_steps": 8, "n_masks": 16}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fast_params(name: str) -> dict:
    info = xs.get_method(name)
    return {k: v for k, v in FAST.items() if k in info.defaults}


@pytest.fixture(scope="module")
def twins():
    net = randomize_bn(SmallCNN())
    torch_model = xs.wrap(net, input_size=16)
    km = keras_small_cnn(net)
    return torch_model, xs.wrap(km, mean=MEAN, std=STD), km


def test_keras_model_basics(twins):
    torch_model, model, km = twins
    assert model.framework == "keras" and model.input_size == (16, 16)
    assert model.logits_stripped and not model.outputs_probabilities
    # torch names the container whose output is the last ReLU's; Keras the ReLU itself
    assert torch_model.default_layer == "features" and model.default_layer == "relu2"
    assert {"conv1", "bn1", "relu1", "pool1", "conv2", "relu2", "gap", "head"} <= set(
        model.layers()
    )
    images = rand_images(3, size=16, seed=9)
    x = model.preprocess(images)
    assert x.shape == (3, 3, 16, 16)
    torch.testing.assert_close(x, torch_model.preprocess(images))
    assert rel_err(model.forward(x), torch_model.forward(x)) < 1e-5
    pa, pb = model.predict(images, top_k=3), torch_model.predict(images, top_k=3)
    np.testing.assert_array_equal(pa.indices, pb.indices)
    np.testing.assert_allclose(pa.probs, pb.probs, rtol=1e-5)
    # the user's model still ends in its softmax
    probs = km(np.transpose(x.numpy(), (0, 2, 3, 1)), training=False)
    np.testing.assert_allclose(np.asarray(probs).sum(1), 1.0, rtol=1e-5)
    a = model.activations(x, "conv2")
    torch.testing.assert_close(a, torch_model.activations(x, "features.4"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHODS)
def test_keras_maps_equal_torch_maps(twins, name):
    """Same network, copied weights: same maps and raw outputs (relative error < 1e-4)."""
    torch_model, model, _ = twins
    images = rand_images(2, size=16, seed=3)
    kw = {"seed": 0, **fast_params(name)}
    layer = {} if not xs.get_method(name).uses_layer else {"layer": "features.5"}
    ref = xs.explain(torch_model, images, method=name, target=[1, 4], **layer, **kw)
    klayer = {} if not layer else {"layer": SMALL_CNN_LAYERS[layer["layer"]]}
    got = xs.explain(model, images, method=name, target=[1, 4], **klayer, **kw)
    assert got.maps.shape == ref.maps.shape and got.maps.dtype == np.float32
    assert tuple(got.raw.shape) == tuple(ref.raw.shape)
    assert rel_err(got.maps, ref.maps) < 1e-4, name
    assert rel_err(got.raw, ref.raw) < 1e-4, name
    np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-5, atol=1e-6)
    if ref.delta is not None:
        np.testing.assert_allclose(got.delta, ref.delta, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in METHODS if not xs.get_method(n).stochastic])
def test_keras_batch_equals_per_sample(twins, name):
    _, model, _ = twins
    images = rand_images(3, size=16, seed=5)
    batch = xs.explain(
        model, images, method=name, target=[0, 3, 1], batch_size=2, **fast_params(name)
    )
    for i in range(3):
        one = xs.explain(model, images[i], method=name, target=[0, 3, 1][i], **fast_params(name))
        np.testing.assert_allclose(batch.maps[i], one.maps[0], rtol=1e-4, atol=1e-6)


def _state(km) -> list:
    """What the adapter may touch on the user's model: activations, calls, the softmax."""
    return [
        (layer.name, getattr(layer, "activation", None), "call" in layer.__dict__)
        for layer in km.layers
    ]


def test_top3_shared_pass_and_no_leftover_state(twins):
    torch_model, model, km = twins
    before = _state(km)
    images = rand_images(2, size=16, seed=6)
    cams = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "saliency"]
    got = xs.explain(model, images, methods=cams, targets="top3")
    ref = xs.explain(torch_model, images, methods=cams, targets="top3")
    assert len(got) == len(ref) == 18
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_array_equal(g.targets, r.targets)
        assert rel_err(g.raw, r.raw) < 1e-4
    xs.explain(model, images, method="guided_backprop")
    assert _state(km) == before


def test_guided_state_restored_after_an_error(twins):
    _, model, km = twins
    before = _state(km)

    def boom(_logits):
        raise RuntimeError("boom")

    x = model.preprocess(rand_images(1, size=16))
    with pytest.raises(RuntimeError, match="boom"):
        model.grad_pass(x, boom, guided=True)
    assert _state(km) == before
