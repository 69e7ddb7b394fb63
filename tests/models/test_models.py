"""Loading models: the embedded default, timm, torchvision, TorchScript, checkpoints, layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xaiscope as xs
from tests.conftest import SmallCNN, rand_images
from xaiscope.models import save_checkpoint


def test_embedded_model_offline_predicts_cat(effnet, chelsea):
    assert effnet.framework == "torch" and effnet.input_size == (224, 224)
    assert len(effnet.labels) == 1000 and effnet.labels[285] == "Egyptian cat"
    pred = effnet.predict(chelsea, top_k=5)
    assert pred.labels[0][0] in {"Egyptian cat", "tabby, tabby cat", "tiger cat"}
    assert pred.probs.shape == (1, 5) and np.all(np.diff(pred.probs[0]) <= 0)
    assert isinstance(effnet.module, nn.Module)
    assert "Egyptian cat" in str(pred)


def test_embedded_model_is_timms_architecture(effnet):
    import timm

    ref = timm.create_model("efficientnet_lite0", pretrained=False)
    assert list(ref.state_dict()) == list(effnet.module.state_dict())


def test_preprocess_shapes_and_normalisation(effnet, photos):
    imgs = [photos["chelsea"], photos["coffee"], photos["camera"]]
    x = effnet.preprocess(imgs)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    white = effnet.preprocess(np.full((10, 20, 3), 255, np.uint8))
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(white[0, :, 0, 0], expected)


def test_default_layers_found_automatically(effnet):
    assert effnet.default_layer == "bn2"
    resnet = xs.load_model("torchvision:resnet18")
    assert resnet.default_layer == "layer4"
    vgg = xs.load_model("torchvision:vgg11")
    relus = [n for n, m in vgg.module.features.named_children() if isinstance(m, nn.ReLU)]
    assert vgg.default_layer == f"features.{relus[-1]}"
    timm_resnet = xs.load_model("timm:resnet18")
    assert timm_resnet.default_layer == "layer4"
    assert "layer4" in resnet.layers() and "layer3.1.conv2" in resnet.layers()


def test_any_layer_selectable_and_unknown_layer_suggests(effnet, chelsea):
    e = xs.explain(effnet, chelsea, method="gradcam", layer="blocks.5")
    assert e.raw.shape == (1, 7, 7) and e.layer == "blocks.5"
    e = xs.explain(effnet, chelsea, method="layercam", layer="blocks.2")
    assert e.raw.shape == (1, 28, 28)
    with pytest.raises(xs.UnknownLayerError, match="did you mean: bn2"):
        xs.explain(effnet, chelsea, method="gradcam", layer="bn3")


def test_timm_and_torchvision_build_any_architecture():
    m = xs.load_model("timm:mobilenetv3_small_050", num_classes=7)
    assert len(m.labels) == 7 and m.predict(rand_images(1, 32)).indices.shape == (1, 5)
    tv = xs.load_model("torchvision:resnet18")
    assert len(tv.labels) == 1000 and tv.labels[0].startswith("tench")
    with pytest.raises(xs.ModelLoadError, match="timm has no model"):
        xs.load_model("timm:not_a_model")
    with pytest.raises(xs.ModelLoadError, match="torchvision has no"):
        xs.load_model("torchvision:not_a_model")
    with pytest.raises(xs.ModelLoadError, match="unknown model"):
        xs.load_model("nonsense")


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_pretrained_offline_fails_with_one_clear_line(spec):
    try:
        xs.load_model(spec, pretrained=True)
    except xs.OfflineError as exc:
        msg = str(exc)
        assert "\n" not in msg and "could not download" in msg and spec in msg
    else:  # pragma: no cover - only where the machine is online
        pytest.skip("online: weights downloaded")


def test_torchscript_file(tmp_path):
    net = SmallCNN()
    path = tmp_path / "small.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    with pytest.raises(xs.UnsafeModelError, match="TorchScript, which is code"):
        xs.load_model(path, input_size=16)
    model = xs.load_model(path, input_size=16, trust=True)
    images = rand_images(2, size=16)
    ref = xs.wrap(net, input_size=16)
    torch.testing.assert_close(
        model.forward(model.preprocess(images)), ref.forward(ref.preprocess(images))
    )
    a = xs.explain(model, images, method="integrated_gradients", n_steps=4)
    b = xs.explain(ref, images, method="integrated_gradients", n_steps=4)
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-7)
    assert model.default_layer is None
    with pytest.raises(xs.UnsupportedModelError, match="TorchScript"):
        xs.explain(model, images, method="gradcam", layer="features.5")


def test_checkpoint_round_trip_is_safe(tmp_path):
    model = xs.load_model("timm:resnet18", num_classes=3)
    model.labels = ["muffin", "chihuahua", "other"]
    path = save_checkpoint(model, tmp_path / "m.pth", arch="timm:resnet18")
    back = xs.load_model(path)
    assert back.labels == model.labels
    x = model.preprocess(rand_images(1, 32))
    torch.testing.assert_close(back.forward(x), model.forward(x))


def test_unsafe_pickle_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"net": SmallCNN()}, path)  # a pickled module: needs weights_only=False
    with pytest.raises(xs.ModelLoadError, match="not a safe state dict"):
        xs.load_model(path)
    plain = tmp_path / "plain.pth"
    torch.save(SmallCNN().state_dict(), plain)
    with pytest.raises(xs.ModelLoadError, match="plain state dict"):
        xs.load_model(plain)
    with pytest.raises(xs.ModelLoadError, match="not found"):
        xs.load_model(tmp_path / "missing.pt")


def test_wrap_module_with_custom_preprocess():
    net = SmallCNN()
    calls = []

    def prep(x01: torch.Tensor) -> torch.Tensor:
        calls.append(x01.shape)
        return x01 * 2 - 1

    model = xs.wrap(net, preprocess=prep, labels=list("abcde"), input_size=(16, 16))
    x = model.preprocess(rand_images(2, 20))
    assert x.shape == (2, 3, 16, 16) and float(x.min()) >= -1 and calls
    assert model.labels == list("abcde")
    with pytest.raises(xs.ModelLoadError):
        xs.wrap(object())
