"""Black-box models: ONNX graphs through onnxruntime, and plain predict functions.

Torch models exported to ONNX here must give the torch model's scores, activations and
layer-replaced scores, and the same maps for the methods that need no gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import xaiscope as xs
from tests.conftest import SmallCNN, rand_images

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

SIZE = 16


def export(
    module: nn.Module,
    path: Path,
    shape: tuple[int, ...],
    *,
    dynamic: bool = True,
    dynamo: bool = False,
) -> Path:
    """Export ``module`` to ONNX, the batch dimension dynamic unless ``dynamic`` is False.

    The TorchScript-based exporter (``dynamo=False``) takes 0.1 s; the torch.export-based
    one (the default since torch 2.9, needs onnxscript) a few seconds.
    """
    kw: dict = {"dynamo": dynamo, "input_names": ["input"], "output_names": ["logits"]}
    if dynamic and dynamo:
        kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    elif dynamic:
        kw["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    x = torch.rand(*shape)
    if dynamo and dynamic:
        x = torch.rand(2, *shape[1:])  # batch 1 would be specialised
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), **kw)
    return path


def hooked_forward(module: nn.Module, sub: nn.Module, x: torch.Tensor, acts: torch.Tensor):
    """Scores of ``module`` on one image ``x`` with ``sub``'s output replaced, row by row."""
    rows = []
    for a in acts:
        handle = sub.register_forward_hook(lambda _m, _i, _o, a=a: a[None].clone())
        try:
            with torch.no_grad():
                rows.append(module(x))
        finally:
            handle.remove()
    return torch.cat(rows)


@pytest.fixture(scope="module")
def cnn() -> SmallCNN:
    return SmallCNN()


@pytest.fixture(scope="module")
def torch_cnn(cnn: SmallCNN) -> xs.Model:
    return xs.wrap(cnn, input_size=SIZE)


@pytest.fixture(scope="module", params=["torchscript", "dynamo"])
def onnx_cnn(request, cnn: SmallCNN, tmp_path_factory) -> xs.Model:
    dynamo = request.param == "dynamo"
    if dynamo:
        pytest.importorskip("onnxscript")
    path = tmp_path_factory.mktemp("onnx") / f"cnn_{request.param}.onnx"
    export(cnn, path, (1, 3, SIZE, SIZE), dynamo=dynamo)
    return xs.load_model(path, input_size=SIZE)


# ------------------------------------------------------------------------------- ONNX
def test_onnx_forward_predict_equal_torch(onnx_cnn, torch_cnn) -> None:
    images = rand_images(5, size=24, seed=1)
    assert onnx_cnn.framework == "onnx"
    assert onnx_cnn.input_size == (SIZE, SIZE)
    assert onnx_cnn.labels == [str(i) for i in range(5)]
    assert not onnx_cnn.supports_gradients and not onnx_cnn.outputs_probabilities
    x = onnx_cnn.preprocess(images)
    torch.testing.assert_close(x, torch_cnn.preprocess(images))
    torch.testing.assert_close(onnx_cnn.forward(x), torch_cnn.forward(x), atol=1e-5, rtol=1e-5)
    p_onnx, p_torch = onnx_cnn.predict(images, top_k=3), torch_cnn.predict(images, top_k=3)
    np.testing.assert_array_equal(p_onnx.indices, p_torch.indices)
    np.testing.assert_allclose(p_onnx.probs, p_torch.probs, atol=1e-5)


def test_onnx_layers_and_activations_match_torch(onnx_cnn, torch_cnn) -> None:
    x = onnx_cnn.preprocess(rand_images(3, size=SIZE, seed=2))
    layers = onnx_cnn.layers()
    default = onnx_cnn.default_layer
    assert default in layers
    # the torch default layer ("features", whose output is features.5's ReLU) is the same tensor
    assert torch_cnn.default_layer == "features"
    assert onnx_cnn.get_layer("features") == default == onnx_cnn.get_layer("features.5")
    expected = torch_cnn.activations(x, "features")
    torch.testing.assert_close(onnx_cnn.activations(x, default), expected, atol=1e-5, rtol=1e-5)
    # every listed layer is rank 4 and readable
    for name in layers:
        assert onnx_cnn.activations(x[:1], name).ndim == 4


def test_onnx_forward_from_layer_matches_torch(onnx_cnn, cnn) -> None:
    x = onnx_cnn.preprocess(rand_images(1, size=SIZE, seed=3))
    layer = onnx_cnn.default_layer
    act = onnx_cnn.activations(x, layer)
    # ablate one channel per row, as Ablation-CAM does, plus a random replacement
    acts = act.repeat(act.shape[1] + 1, 1, 1, 1)
    for c in range(act.shape[1]):
        acts[c, c] = 0
    acts[-1] = torch.rand_like(act[0])
    got = onnx_cnn.forward_from_layer(x, layer, acts)
    expected = hooked_forward(cnn, cnn.features, x, acts)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # an unchanged activation gives the plain forward
    torch.testing.assert_close(
        onnx_cnn.forward_from_layer(x, layer, act), onnx_cnn.forward(x), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(xs.XaiscopeError, match="does not fit"):
        onnx_cnn.forward_from_layer(x, layer, act[:, :3])


class Residual(nn.Module):
    """A skip connection around the layer, and a head reading a tensor from before it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(8 * 4 + 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        h = self.b(self.act(self.a(s))) + s
        # x.shape[0] becomes a reshape target computed from the input (batch 1 in the side)
        p = self.pool(h).reshape(x.shape[0], -1)
        return self.head(torch.cat([p, s.mean(dim=(2, 3))], 1))


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic-batch", "static-batch"])
def test_onnx_forward_from_layer_with_skip_connections(tmp_path, dynamic) -> None:
    module = Residual().eval()
    path = export(module, tmp_path / "res.onnx", (1, 3, 12, 12), dynamic=dynamic)
    model = xs.load_model(path)
    assert model.input_size == (12, 12)
    x = model.preprocess(rand_images(1, size=12, seed=4))
    acts = torch.rand(5, 8, 12, 12)
    got = model.forward_from_layer(x, "act", acts)  # a torch module path names its output
    torch.testing.assert_close(
        got, hooked_forward(module, module.act, x, acts), atol=1e-5, rtol=1e-5
    )
    images = rand_images(3, size=12, seed=5)
    torch.testing.assert_close(
        model.forward(model.preprocess(images)),
        module(model.preprocess(images)).detach(),
        atol=1e-5,
        rtol=1e-5,
    )


def test_onnx_unknown_layer_suggests(onnx_cnn) -> None:
    layer = onnx_cnn.default_layer
    with pytest.raises(xs.UnknownLayerError, match="did you mean") as info:
        onnx_cnn.activations(onnx_cnn.preprocess(rand_images(1, SIZE)), layer + "x")
    assert layer in str(info.value)


def test_onnx_refuses_gradient_methods_naming_the_black_box_ones(onnx_cnn) -> None:
    image = rand_images(1, SIZE)[0]
    for method in ("saliency", "gradcam"):
        with pytest.raises(xs.UnsupportedModelError) as info:
            xs.explain(onnx_cnn, image, method=method)
        message = str(info.value)
        assert "black box" in message and "\n" not in message
        for name in xs.method_names(needs_gradients=False):
            assert name in message


def test_onnx_softmax_output_channels_last_and_preprocess(tmp_path, cnn) -> None:
    class SoftmaxNHWC(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = cnn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x.permute(0, 3, 1, 2)), dim=1)

    path = export(SoftmaxNHWC(), tmp_path / "nhwc.onnx", (1, SIZE, SIZE, 3))
    labels = list("abcde")
    model = xs.load_model(path, labels=labels, preprocess=lambda t: t * 0.5 - 0.25)
    assert model.channels_last and model.outputs_probabilities and model.labels == labels
    images = rand_images(2, SIZE, seed=6)
    x = model.preprocess(images)
    assert x.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(x, model.pixels(images) * 0.5 - 0.25)
    with torch.no_grad():
        expected = torch.softmax(cnn(x), dim=1)
    torch.testing.assert_close(model.forward(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.predict(images, top_k=5).probs.sum(1), np.ones(2, np.float32))


def test_onnx_load_errors(tmp_path, monkeypatch, cnn) -> None:
    with pytest.raises(xs.ModelLoadError, match="not found"):
        xs.load_model(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(xs.ModelLoadError, match="not a valid ONNX model") as info:
        xs.load_model(corrupt)
    assert "\n" not in str(info.value)
    text = tmp_path / "text.onnx"
    text.write_text("hello, not a model")
    with pytest.raises(xs.ModelLoadError):
        xs.load_model(text)
    path = export(cnn, tmp_path / "cnn.onnx", (1, 3, SIZE, SIZE))
    with pytest.raises(xs.ModelLoadError, match="takes 16x16 images"):
        xs.load_model(path, input_size=32)
    with pytest.raises(xs.ModelLoadError, match="unknown option"):
        xs.load_model(path, pretrained=True)
    with pytest.raises(xs.ModelLoadError, match="2 labels given"):
        xs.load_model(path, labels=["a", "b"])
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(xs.ModelLoadError, match=r"pip install 'xaiscope\[onnx\]'"):
        xs.load_model(path)


def test_only_the_adapter_imports_onnx() -> None:
    src = Path(xs.__file__).parent
    offenders = [
        str(p.relative_to(src))
        for p in src.rglob("*.py")
        if p.name != "onnx_model.py"
        and any(
            line.strip().startswith(("import onnx", "from onnx"))
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []


# ------------------------------------------------------------------ predict functions
def function_of(
    module: nn.Module, *, probabilities: bool, kind: str = "numpy"
) -> Callable[[np.ndarray], object]:
    """A predict function: uint8 NHWC -> the module's scores on pixels / 255."""

    def f(batch: np.ndarray) -> object:
        assert batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[-1] == 3
        with torch.no_grad():
            out = module(torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0)
            if probabilities:
                out = torch.softmax(out, dim=1)
        if kind == "tensor":
            return out
        if kind == "list":
            return out.tolist()
        return out.numpy()

    return f


@pytest.mark.parametrize("kind", ["numpy", "tensor", "list"])
def test_callable_probabilities_vs_logits(cnn, kind) -> None:
    images = rand_images(4, size=20, seed=7)
    reference = xs.wrap(cnn, input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    expected = reference.predict(images, top_k=3)
    for probabilities in (True, False):
        model = xs.wrap(function_of(cnn, probabilities=probabilities, kind=kind), input_size=SIZE)
        assert model.framework == "callable" and not model.supports_gradients
        assert model.outputs_probabilities is probabilities
        assert model.labels == [str(i) for i in range(5)] and model.layers() == []
        assert model.default_layer is None
        x = model.preprocess(images)
        torch.testing.assert_close(x, model.pixels(images))  # the black box's input: [0, 1]
        got = model.predict(images, top_k=3)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_allclose(got.probs, expected.probs, atol=1e-5)
        scores = model.forward(x)
        assert scores.dtype == torch.float32 and scores.shape == (4, 5)


def test_callable_output_keyword_overrides_detection(cnn) -> None:
    f = function_of(cnn, probabilities=True)
    assert not xs.wrap(f, input_size=SIZE, output="logits").outputs_probabilities
    assert xs.wrap(f, input_size=SIZE, outputs_probabilities=True).outputs_probabilities
    g = function_of(cnn, probabilities=False)
    assert xs.wrap(g, input_size=SIZE, output="probabilities").outputs_probabilities
    with pytest.raises(xs.ParameterError, match="output must be"):
        xs.wrap(g, input_size=SIZE, output="scores")
    with pytest.raises(xs.ModelLoadError, match="3 labels given"):
        xs.wrap(g, input_size=SIZE, labels=["a", "b", "c"])
    assert xs.wrap(g, input_size=SIZE, labels=list("abcde")).labels == list("abcde")


def test_callable_chunks_and_default_size() -> None:
    calls: list[int] = []

    def f(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        assert batch.shape[1:] == (224, 224, 3)
        return batch.reshape(len(batch), -1)[:, :2].astype(np.float32)

    model = xs.models.CallableModel(f, batch_size=3)
    assert model.input_size == (224, 224)
    calls.clear()
    out = model.forward(torch.rand(7, 3, 224, 224))
    assert calls == [3, 3, 1] and out.shape == (7, 2)


def test_callable_bad_outputs_are_clear_errors() -> None:
    def wrong_shape(batch: np.ndarray) -> np.ndarray:
        return np.zeros(len(batch))

    with pytest.raises(xs.ModelLoadError, match=r"expected \(4, classes\)"):
        xs.wrap(wrong_shape, input_size=8)

    def nan(batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 3), np.nan)

    with pytest.raises(xs.ModelLoadError, match="NaN"):
        xs.wrap(nan, input_size=8)

    def raises(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    with pytest.raises(xs.ModelLoadError, match="predict function failed.*boom"):
        xs.wrap(raises, input_size=8)

    def not_numbers(batch: np.ndarray) -> object:
        return {"cat": 1.0}

    with pytest.raises(xs.XaiscopeError, match="not an array of scores"):
        xs.wrap(not_numbers, input_size=8)

    # fine on the probe images, NaN on a later batch: an error at explain time
    def nan_later(batch: np.ndarray) -> np.ndarray:
        out = np.ones((len(batch), 3), np.float32)
        out[batch[:, 0, 0, 0] == 7] = np.nan
        return out

    model = xs.wrap(nan_later, input_size=8)
    image = np.full((8, 8, 3), 7, np.uint8)
    with pytest.raises(xs.XaiscopeError, match="NaN"):
        xs.explain(model, image, method="occlusion", window=4, stride=4)
    with pytest.raises(xs.ModelLoadError, match="preprocess"):
        xs.wrap(nan_later, preprocess=lambda t: t)


def test_callable_refuses_gradient_and_layer_methods(cnn) -> None:
    model = xs.wrap(function_of(cnn, probabilities=False), input_size=SIZE)
    image = rand_images(1, SIZE)[0]
    with pytest.raises(xs.UnsupportedModelError) as info:
        xs.explain(model, image, method="saliency")
    message = str(info.value)
    assert "black box" in message and "\n" not in message
    assert "occlusion" in message
    assert "gradcam" not in message
    with pytest.raises(xs.UnsupportedModelError):
        model.grad_pass(model.preprocess(image), torch.tensor([0]))
    with pytest.raises(xs.UnsupportedModelError):
        model.activations(model.preprocess(image), "features")
    for method in ("scorecam", "ablationcam", "eigencam"):
        # without layer=: the model has none to give, so no "give layer=" advice
        with pytest.raises(xs.UnsupportedModelError, match="has none") as info:
            xs.explain(model, image, method=method)
        usable = str(info.value).split("methods that work here:")[1]
        assert "occlusion" in usable and "scorecam" not in usable


# ------------------------------------------- methods: an export gives the torch model's maps
def _registered(name: str) -> bool:
    return name in xs.method_names()


METHOD_CASES = [
    ("occlusion", {"window": 4, "stride": 2}),
    ("rise", {"n_masks": 32, "seed": 0}),
    ("scorecam", {}),
    ("ablationcam", {}),
    ("eigencam", {}),
]


@pytest.mark.parametrize(
    ("method", "params"),
    [
        pytest.param(
            name,
            params,
            id=name,
            marks=pytest.mark.skipif(not _registered(name), reason=f"{name} not registered yet"),
        )
        for name, params in METHOD_CASES
    ],
)
def test_onnx_export_gives_the_torch_maps(onnx_cnn, torch_cnn, method, params) -> None:
    images = rand_images(2, size=SIZE, seed=8)
    layer = {"layer": "features"} if xs.get_method(method).uses_layer else {}
    ours = xs.explain(onnx_cnn, images, method=method, **layer, **params)
    theirs = xs.explain(torch_cnn, images, method=method, **layer, **params)
    np.testing.assert_array_equal(ours.targets, theirs.targets)
    scale = float(np.abs(theirs.maps).max()) or 1.0
    np.testing.assert_allclose(ours.maps, theirs.maps, atol=1e-4 * scale)


@pytest.mark.skipif(not _registered("occlusion"), reason="occlusion not registered yet")
def test_callable_occlusion_equals_torch(cnn) -> None:
    # uint8 images and a black fill are exact in uint8: the function sees the same pixels
    images = rand_images(2, size=SIZE, seed=9)
    model = xs.wrap(function_of(cnn, probabilities=False), input_size=SIZE)
    reference = xs.wrap(cnn, input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    ours = xs.explain(model, images, method="occlusion", window=4, stride=4, fill=0.0)
    theirs = xs.explain(reference, images, method="occlusion", window=4, stride=4, fill=0.0)
    np.testing.assert_allclose(ours.maps, theirs.maps, atol=1e-5)


def test_predict_function_failing_later_is_a_model_run_error() -> None:
    """A predict function that works on the probe but fails on real batches: one line,
    ModelRunError (exit 2 from the CLI), the function's own first line only."""
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("bad batch\nsecond line")
        return np.full((len(batch), 3), 1 / 3)

    model = xs.wrap(flaky, input_size=8)
    with pytest.raises(xs.ModelRunError, match="predict function failed") as info:
        xs.explain(model, np.zeros((8, 8, 3), np.uint8), method="occlusion", window=4)
    assert "\n" not in str(info.value) and "second line" not in str(info.value)
