"""``xs.activations``: any layer of torch and Keras models, early to late, tokens on grids."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.conftest import SmallCNN, hook_count, rand_images
from xaiscope import viz
from xaiscope.models.activations import pick_layers, spatial_layers


@pytest.fixture(scope="module")
def cnn() -> tuple[SmallCNN, xs.Model]:
    net = SmallCNN()
    return net, xs.wrap(net, input_size=16)


def test_early_middle_late_layers_have_different_numbers_and_sizes(cnn) -> None:
    net, model = cnn
    images = rand_images(2, size=16, seed=1)
    acts = xs.activations(model, images, ["features.0", "features.3", "features.5"])
    assert list(acts) == ["features.0", "features.3", "features.5"]
    assert [(a.channels, a.size) for a in acts.values()] == [
        (8, (16, 16)),  # early: few maps, full resolution
        (8, (8, 8)),  # after pooling
        (16, (8, 8)),  # late: more maps, coarser
    ]
    x = model.preprocess(images)
    with torch.no_grad():
        conv0 = net.features[0](x)
    np.testing.assert_allclose(acts["features.0"].maps, conv0.numpy(), rtol=1e-5, atol=1e-6)
    assert acts["features.0"].kind == "spatial" and len(acts["features.0"]) == 2
    assert hook_count(net) == 0


def test_default_layer_vector_layer_and_errors(cnn) -> None:
    _, model = cnn
    img = rand_images(1, size=16)[0]
    a = xs.activations(model, img)
    assert a.layer == model.default_layer and a.maps.shape == (1, 16, 8, 8)
    head = xs.activations(model, img, "head")
    assert head.kind == "vector" and head.maps is None and head.values.shape == (1, 5)
    with pytest.raises(xs.NotSpatialError, match="'head' has no spatial output"):
        viz.activation_grid(head)
    with pytest.raises(xs.UnknownLayerError, match="did you mean"):
        xs.activations(model, img, "featurs.0")
    black_box = xs.wrap(lambda x: np.ones((len(x), 3)), labels=["a", "b", "c"], input_size=16)
    with pytest.raises(xs.XaiscopeError):
        xs.activations(black_box, img, "x")


def test_spatial_layers_and_pick_layers(cnn) -> None:
    net, model = cnn
    infos = spatial_layers(model)
    names = [i.name for i in infos]
    assert names[0] == "features.0" and "head" not in names and "pool" not in names
    assert infos[0].shape == (8, 16, 16)
    assert "head" in [i.name for i in spatial_layers(model, all_layers=True)]
    picked = pick_layers(model, 3)
    assert len(picked) == 3 and picked[0] == "features.0" and picked[-1] == names[-1]
    assert hook_count(net) == 0


def test_vit_tokens_become_maps_on_the_patch_grid() -> None:
    import timm

    torch.manual_seed(0)
    net = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
    ).eval()
    model = xs.wrap(net, input_size=32)
    a = xs.activations(model, rand_images(1, size=32), "blocks.0")
    assert a.kind == "tokens" and a.values.shape == (1, 18, 192)
    assert a.maps.shape == (1, 192, 4, 4) and a.prefix.shape == (1, 2, 192)
    # patch token k sits at row k // 4, column k % 4
    np.testing.assert_array_equal(a.maps[0, :, 1, 2], a.values[0, 2 + 1 * 4 + 2])
    fig = viz.activation_grid(a)
    assert "192 channels of 4x4" in fig.texts[0].get_text()
    # attention internals (N, heads, T, d) are not offered as feature maps
    names = [i.name for i in spatial_layers(model)]
    assert not any(".attn." in n for n in names) and "blocks.1.norm1" in names


def test_keras_activations_match_torch() -> None:
    from tests.keras_support import SMALL_CNN_LAYERS, keras_or_skip, keras_small_cnn

    keras_or_skip()
    net = SmallCNN()
    torch_model = xs.wrap(net, input_size=16)
    # the same input as the torch twin: ImageNet normalisation
    model = xs.wrap(keras_small_cnn(net), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    images = rand_images(2, size=16, seed=2)
    for torch_layer in ("features.0", "features.5"):
        got = xs.activations(model, images, SMALL_CNN_LAYERS[torch_layer])
        ref = xs.activations(torch_model, images, torch_layer)
        assert got.kind == "spatial" and got.maps.shape == ref.maps.shape  # channels-first
        np.testing.assert_allclose(got.maps, ref.maps, rtol=1e-4, atol=1e-5)
    names = [i.name for i in spatial_layers(model)]
    assert names[:2] == ["conv1", "bn1"] and "head" not in names
    assert spatial_layers(model)[0].shape == (8, 16, 16)
    with pytest.raises(xs.NotSpatialError):
        viz.activation_grid(xs.activations(model, images, "head"))
    # attention is read from PyTorch transformers only
    with pytest.raises(xs.UnsupportedModelError, match="vision transformer"):
        xs.explain(model, images, method="attention_rollout")
