"""Keras models: files in safe mode, keras.applications, wrap, layers, backends, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.conftest import SmallCNN, rand_images
from tests.keras_support import keras_or_skip, keras_small_cnn, randomize_bn, rel_err

keras = keras_or_skip()
layers = keras.layers
ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def twins():
    net = randomize_bn(SmallCNN())
    return net, keras_small_cnn(net)


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


# ------------------------------------------------------------------------------ files
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_file_round_trip_gives_the_same_maps(twins, tmp_path, suffix):
    _, km = twins
    path = tmp_path / f"small{suffix}"
    km.save(path)
    live = xs.wrap(km, mean=MEAN, std=STD)
    loaded = xs.load_model(path, mean=MEAN, std=STD)
    assert loaded.framework == "keras" and loaded.name == path.name
    assert loaded.layers() == live.layers() and loaded.default_layer == "relu2"
    images = rand_images(2, size=16, seed=2)
    for method in ("saliency", "gradcam"):
        a = xs.explain(live, images, method=method)
        b = xs.explain(loaded, images, method=method)
        assert rel_err(b.raw, a.raw) < 1e-6


def _lambda_model(marker: Path):
    # the function runs whenever the layer is called, including when Keras rebuilds the
    # graph while loading the file: the marker file shows whether loading ran it
    fn = eval(f"lambda t: (open({str(marker)!r}, 'w').write('ran'), t)[1]")  # noqa: S307
    inp = keras.Input((8, 8, 3))
    x = layers.Lambda(fn, name="sneaky")(inp)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(2)(x))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_refused_without_trust(tmp_path, suffix):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / f"lambda{suffix}"
    _lambda_model(marker).save(path)
    marker.unlink()
    with pytest.raises(xs.UnsafeModelError) as info:
        xs.load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and "trust=True" in msg and "--trust-model" in msg
    assert "sneaky" in msg
    assert not marker.exists()
    model = xs.load_model(path, trust=True, input_size=8)
    assert marker.exists() and model.num_classes == 2


def test_unknown_custom_layer_refused_and_module_imported_only_with_trust(tmp_path):
    mod = tmp_path / "xs_custom_layers_mod.py"
    marker = tmp_path / "imported.txt"
    mod.write_text(
        textwrap.dedent(
            f"""
            import keras
            open({str(marker)!r}, "w").write("imported")

            @keras.saving.register_keras_serializable(package="xs_test")
            class Doubler(keras.layers.Layer):
                def call(self, x):
                    return 2.0 * x
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import xs_custom_layers_mod

        inp = keras.Input((8, 8, 3))
        x = xs_custom_layers_mod.Doubler(name="double")(inp)
        x = layers.GlobalAveragePooling2D()(x)
        path = tmp_path / "custom.keras"
        keras.Model(inp, layers.Dense(2)(x)).save(path)
        # a fresh process knows nothing of the class: forget it here
        keras.saving.get_custom_objects().pop("xs_test>Doubler")
        del sys.modules["xs_custom_layers_mod"]
        marker.unlink()
        with pytest.raises(xs.UnsafeModelError, match=r"Doubler.*--trust-model") as info:
            xs.load_model(path)
        assert "\n" not in str(info.value) and not marker.exists()
        model = xs.load_model(path, trust=True)
        assert marker.exists() and model.layers()[0] == "double"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("xs_custom_layers_mod", None)
        keras.saving.get_custom_objects().pop("xs_test>Doubler", None)


def test_bad_files_and_options_one_line(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    for path in (junk, tmp_path / "missing.keras"):
        with pytest.raises(xs.ModelLoadError) as info:
            xs.load_model(path)
        assert "\n" not in str(info.value)
    tiny = keras.Sequential([keras.Input((8, 8, 3)), layers.Flatten(), layers.Dense(2)])
    path = tmp_path / "tiny.keras"
    tiny.save(path)
    with pytest.raises(xs.ModelLoadError, match="unknown option.*bogus"):
        xs.load_model(path, bogus=1)
    with pytest.raises(xs.ModelLoadError, match="1 labels given"):
        xs.wrap(tiny, labels=["a"])
    with pytest.raises(xs.ParameterError, match="preprocess="):
        xs.wrap(tiny, preprocess="imagenet")


# ---------------------------------------------------------------------- applications
@pytest.mark.parametrize(
    "name, module, mode",
    [
        ("VGG16", "vgg16", "caffe"),
        ("MobileNetV2", "mobilenet_v2", "tf"),
        ("DenseNet121", "densenet", "torch"),
        ("EfficientNetB0", "efficientnet", "raw"),
    ],
)
def test_application_preprocessing_matches_preprocess_input(name, module, mode):
    from xaiscope.models.keras_model import KerasModel, application_mode

    builder = getattr(keras.applications, name)
    assert application_mode(builder) == mode
    pixels = rand_images(2, size=8, seed=1).astype(np.float32)
    expected = getattr(keras.applications, module).preprocess_input(pixels.copy())
    tiny = keras.Sequential([keras.Input((8, 8, 3)), layers.Flatten(), layers.Dense(2)])
    model = KerasModel(tiny, preprocess=mode)
    ours = model.normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255.0)
    np.testing.assert_allclose(
        ours.permute(0, 2, 3, 1).numpy(), np.asarray(expected), rtol=1e-5, atol=1e-4
    )


def test_keras_application_random_weights_and_default_layer():
    model = xs.load_model("keras:MobileNetV2", input_size=96)
    assert model.name == "keras:MobileNetV2" and model.input_size == (96, 96)
    assert model.num_classes == 1000 and model.labels[285] == "Egyptian cat"
    assert model.preprocess_mode == "tf" and model.logits_stripped
    assert model.default_layer == "out_relu"
    e = xs.explain(model, rand_images(1, size=40), method="gradcam")
    assert e.raw.shape == (1, 3, 3) and e.maps.shape == (1, 40, 40)


def test_keras_application_errors_one_line():
    with pytest.raises(xs.ModelLoadError, match="did you mean:.*VGG16"):
        xs.load_model("keras:VGG61")
    try:
        xs.load_model("keras:MobileNetV2", pretrained=True)
    except xs.OfflineError as exc:
        assert "\n" not in str(exc) and "keras:MobileNetV2" in str(exc)
    else:  # pragma: no cover - only where the machine is online
        pytest.skip("online: weights downloaded")


# ---------------------------------------------------------------------- model kinds
def test_sequential_without_input_is_built_from_input_size():
    seq = keras.Sequential(
        [layers.Conv2D(4, 3, activation="relu", name="c"), layers.Flatten(), layers.Dense(3)]
    )
    model = xs.wrap(seq, input_size=12)
    assert model.input_size == (12, 12) and model.default_layer == "c"
    e = xs.explain(model, rand_images(2, size=12), method="gradcam")
    assert e.raw.shape == (2, 10, 10)


def test_subclassed_model_pixel_methods_only():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = layers.Conv2D(4, 3, activation="relu")
            self.pool = layers.GlobalAveragePooling2D()
            self.fc = layers.Dense(3)

        def call(self, x):
            return self.fc(self.pool(self.conv(x)))

    net = Net()
    net(np.zeros((1, 12, 12, 3), np.float32))
    model = xs.wrap(net, input_size=12)
    assert model.layers() == [] and model.default_layer is None
    images = rand_images(2, size=12)
    for method in ("saliency", "integrated_gradients", "occlusion"):
        kw = {"n_steps": 4} if method == "integrated_gradients" else {}
        assert np.isfinite(xs.explain(model, images, method=method, **kw).maps).all()
    with pytest.raises(xs.UnknownLayerError):
        xs.explain(model, images, method="gradcam")
    with pytest.raises(xs.UnsupportedModelError, match="subclassed"):
        xs.explain(model, images, method="gradcam", layer="conv2d")


def test_forward_from_layer_with_a_skip_connection():
    """The suffix after ``c2`` also reads ``c1`` (a residual add): fed from the image."""
    inp = keras.Input((10, 10, 3))
    a = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    b = layers.Conv2D(4, 3, padding="same", name="c2")(a)
    c = layers.Concatenate(name="cat")([a, layers.Add(name="add")([a, b])])
    out = layers.Dense(3)(layers.GlobalAveragePooling2D()(c))
    model = xs.wrap(keras.Model(inp, out))
    x = model.preprocess(rand_images(1, size=10))
    act = model.activations(x, "c2")
    assert act.shape == (1, 4, 10, 10)
    torch.testing.assert_close(model.forward_from_layer(x, "c2", act.clone()), model.forward(x))
    batch = torch.cat([act, torch.zeros_like(act), 2 * act])
    scores = model.forward_from_layer(x, "c2", batch)
    assert scores.shape == (3, 3)
    for i in range(3):
        one = model.forward_from_layer(x, "c2", batch[i : i + 1].clone())
        torch.testing.assert_close(scores[i : i + 1], one, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scores[0], scores[1])
    e = xs.explain(model, rand_images(2, size=10), method="ablationcam", layer="c2")
    assert e.raw.shape == (2, 10, 10)


def test_keep_softmax_attributes_probabilities(twins):
    from xaiscope.models.keras_model import KerasModel

    _, km = twins
    model = KerasModel(km, mean=MEAN, std=STD, logits=False)
    assert model.has_final_softmax and not model.logits_stripped
    assert model.outputs_probabilities
    x = model.preprocess(rand_images(2, size=16))
    np.testing.assert_allclose(model.forward(x).sum(1).numpy(), 1.0, rtol=1e-5)
    pred = model.predict(rand_images(2, size=16))
    assert np.all(pred.probs <= 1.0)


# --------------------------------------------------------------------- the study
def test_cifar10_study_replayed_on_synthetic_data(tmp_path):
    """Three conv blocks (Conv-BN x2, max pooling, dropout), dense 1024, softmax: trained
    briefly, saved as .h5 and .keras, reloaded by xaiscope, explained by integrated
    gradients (Gauss-Legendre, 50 steps, black baseline) and Grad-CAM at Block3_Layer1."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 32, 3))
    x = inp
    for block, filters in enumerate((8, 16, 32), 1):
        for i in (1, 2):
            x = layers.Conv2D(
                filters,
                3,
                padding="same",
                activation="relu",
                name=f"Conv2D_Block{block}_Layer{i}",
            )(x)
            x = layers.BatchNormalization(name=f"BatchNorm_Block{block}_Layer{i}")(x)
        x = layers.MaxPooling2D(2, name=f"MaxPool_Block{block}")(x)
        x = layers.Dropout(0.25, name=f"Dropout_Block{block}")(x)
    x = layers.Flatten(name="Flatten")(x)
    x = layers.Dense(1024, activation="relu", name="Dense_1024")(x)
    x = layers.Dropout(0.5, name="Dropout_Dense")(x)
    out = layers.Dense(10, activation="softmax", name="Output")(x)
    cnn = keras.Model(inp, out, name="cifar10_cnn")
    cnn.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 64)
    cnn.fit(images / 255.0, labels, epochs=1, batch_size=16, verbose=0)
    h5, kfile = tmp_path / "cifar.h5", tmp_path / "cifar.keras"
    cnn.save(h5)
    cnn.save(kfile)
    names = [f"class{i}" for i in range(10)]
    reference = None
    for path in (h5, kfile):
        model = xs.load_model(path, labels=names)
        assert model.input_size == (32, 32) and model.logits_stripped
        assert model.default_layer == "BatchNorm_Block3_Layer2"
        sample = images[:3]
        ig = xs.explain(
            model,
            sample,
            method="integrated_gradients",
            rule="gausslegendre",
            n_steps=50,
            baseline="black",
        )
        assert tuple(ig.raw.shape) == (3, 3, 32, 32) and ig.maps.shape == (3, 32, 32)
        gap = np.abs(ig.raw.sum(dim=(1, 2, 3)).numpy() - ig.delta)  # f(x) - f(baseline)
        assert np.all(np.abs(ig.delta) <= 0.05 * gap + 1e-3), (ig.delta, gap)
        cam = xs.explain(model, sample, method="gradcam", layer="Conv2D_Block3_Layer1")
        assert tuple(cam.raw.shape) == (3, 8, 8) and cam.maps.shape == (3, 32, 32)
        assert cam.layer == "Conv2D_Block3_Layer1" and np.isfinite(cam.maps).all()
        if reference is None:
            reference = (ig, cam)
        else:  # both files hold the same network
            assert rel_err(ig.raw, reference[0].raw) < 1e-5
            assert rel_err(cam.raw, reference[1].raw) < 1e-5
            np.testing.assert_array_equal(cam.target_labels, reference[1].target_labels)


# ------------------------------------------------------------------- backends, CLI
TORCH_BACKEND_SCRIPT = """
import sys, numpy as np, torch
import keras
assert keras.backend.backend() == "torch"
import xaiscope as xs
from tests.conftest import SmallCNN, rand_images
from tests.keras_support import keras_small_cnn, randomize_bn, rel_err
net = randomize_bn(SmallCNN())
tm = xs.wrap(net, input_size=16)
km = xs.wrap(keras_small_cnn(net), mean={mean}, std={std})
flags = [v.value.requires_grad for v in km.keras_model.weights]
images = rand_images(2, size=16, seed=3)
out = {{}}
for method in ("saliency", "integrated_gradients", "guided_backprop", "gradcam", "scorecam",
               "ablationcam", "occlusion"):
    kw = {{"n_steps": 8}} if method == "integrated_gradients" else {{}}
    layer = {{"layer": "relu2"}} if xs.get_method(method).uses_layer else {{}}
    tlayer = {{"layer": "features.5"}} if layer else {{}}
    a = xs.explain(km, images, method=method, target=[1, 4], **layer, **kw)
    b = xs.explain(tm, images, method=method, target=[1, 4], **tlayer, **kw)
    assert rel_err(a.raw, b.raw) < 1e-4, (method, rel_err(a.raw, b.raw))
    out[method] = a.raw.numpy()
assert [v.value.requires_grad for v in km.keras_model.weights] == flags
assert "tensorflow" not in sys.modules
np.savez({path!r}, **out)
print("OK")
"""


def test_torch_backend_gives_the_tensorflow_maps(twins, tmp_path):
    out = tmp_path / "torch_backend.npz"
    script = TORCH_BACKEND_SCRIPT.format(mean=MEAN, std=STD, path=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=_env(KERAS_BACKEND="torch"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
    net, km = twins
    model = xs.wrap(km, mean=MEAN, std=STD)
    images = rand_images(2, size=16, seed=3)
    got = np.load(out)
    for method in got.files:
        kw = {"n_steps": 8} if method == "integrated_gradients" else {}
        layer = {"layer": "relu2"} if xs.get_method(method).uses_layer else {}
        e = xs.explain(model, images, method=method, target=[1, 4], **layer, **kw)
        assert rel_err(got[method], e.raw) < 1e-4, method


def test_import_xaiscope_needs_no_tensorflow():
    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
import xaiscope as xs
assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules)
from tests.conftest import SmallCNN, rand_images
e = xs.explain(xs.wrap(SmallCNN(), input_size=16), rand_images(1, 16), method="gradcam")
assert e.raw.ndim == 3
try:
    xs.load_model("model.keras")
except xs.ModelLoadError as exc:
    assert "pip install 'xaiscope[keras]'" in str(exc), exc
else:
    raise AssertionError("loaded a Keras file without Keras")
print("OK")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], env=_env(), capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_cli_explains_h5_like_any_model_and_trust_flag(twins, tmp_path):
    from xaiscope.cli.main import main

    _, km = twins
    path = tmp_path / "small.h5"
    km.save(path)
    img = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(rand_images(1, size=24)[0]).save(img)
    out = tmp_path / "out"
    code = main([str(img), "--model", str(path), "--method", "gradcam,saliency", "-o", str(out)])
    assert code == 0
    summary = json.loads((out / "img_gradcam.json").read_text())
    assert summary["layer"] == "relu2" and summary["maps_shape"] == [1, 24, 24]

    marker = tmp_path / "ran.txt"
    lam = tmp_path / "lambda.keras"
    _lambda_model(marker).save(lam)
    marker.unlink()
    assert main([str(img), "--model", str(lam), "-o", str(out), "--method", "saliency"]) == 2
    assert not marker.exists()
    code = main(
        [str(img), "--model", str(lam), "-o", str(out), "--method", "saliency", "--trust-model"]
    )
    assert code == 0 and marker.exists()
