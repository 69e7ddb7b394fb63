"""Keras 3 adapter: a ``keras.Model`` seen through the :class:`Model` primitives.

PyTorch stays the compute engine; this adapter runs the Keras model and hands tensors
across at the boundary. With the TensorFlow backend, tensors cross between TF and torch by
DLPack (no copy on the CPU), gradients come from ``tf.GradientTape`` inside ``tf.function``
graphs traced once per (layer, target count, guided) with a fixed input signature; with the
torch backend of Keras the model already computes on torch tensors and torch autograd is used.

Layout: Keras image models are channels-last (N, H, W, C); the engine is (N, C, H, W). Inputs
are transposed on the way in, and input gradients, layer activations and layer gradients on
the way out, so ``Explanation.raw`` is (N, C, H, W) and CAM raw maps (N, h, w) as for torch.

Scores: a final softmax (a ``Softmax``/``Activation('softmax')`` layer, or the softmax
activation of the last ``Dense``) is left out by default (``logits=True``, as tf-keras-vis's
``ReplaceToLinear``), so attributions are taken on the pre-softmax logits like for torch
models; ``predict`` still gives the softmax probabilities. ``logits=False`` keeps the
softmax: attributions are then on probabilities.

Layers are the Keras layer names of the model's graph (functional or sequential models).
Subclassed models without a graph give no layers: only pixel gradient methods and the
black-box methods run on them. Layers inside a nested model (a ``keras.applications`` base
inside a functional model) are reached only through the nested model's own output.

tensorflow and keras are imported lazily, only by this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope.errors import (
    ModelLoadError,
    OfflineError,
    ParameterError,
    TargetError,
    UnknownLayerError,
    UnsafeModelError,
    UnsupportedModelError,
    XaiscopeError,
)
from xaiscope.models.base import GradPass, Model, layer_suggestions
from xaiscope.models.keras_files import _first_line, check_config, check_model_file, read_config
from xaiscope.settings import get, limit_hint

_UNSET: Any = object()

#: Keras layer classes whose output is a pooled summary, never the default CAM layer.
POOL_LAYERS = frozenset(
    {
        "MaxPooling2D",
        "AveragePooling2D",
        "GlobalAveragePooling2D",
        "GlobalMaxPooling2D",
        "MaxPool2D",
        "AvgPool2D",
    }
)
#: Layers that pass their input through at inference (a pooled input stays pooled).
PASS_THROUGH_LAYERS = frozenset(
    {
        "Dropout",
        "SpatialDropout2D",
        "GaussianNoise",
        "GaussianDropout",
        "AlphaDropout",
        "ActivityRegularization",
        "Identity",
    }
)
#: Layers never offered for CAMs or activations.
SKIPPED_LAYERS = frozenset({"InputLayer", "Dropout", "Flatten", "Identity"})

#: Preprocessing of keras.applications, per application module: how ``preprocess_input``
#: maps RGB pixels in [0, 255]. "caffe": RGB -> BGR, minus the ImageNet BGR mean;
#: "tf": x / 127.5 - 1; "torch": x / 255, ImageNet mean/std; "raw": pixels as they are
#: (the model rescales inside). Checked against preprocess_input itself in the tests.
APPLICATION_MODES = {
    "vgg16": "caffe",
    "vgg19": "caffe",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "mobilenet_v3": "raw",
    "xception": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "nasnet": "tf",
    "densenet": "torch",
    "efficientnet": "raw",
    "efficientnet_v2": "raw",
    "convnext": "raw",
    "regnet": "raw",
}
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PREPROCESS_MODES = ("unit", "raw", "caffe", "tf", "torch")

#: Bytes of alignment TensorFlow requires of a buffer it takes over by DLPack (Eigen's).
TF_ALIGNMENT = 64

#: Where keras.applications downloads its weights from.
KERAS_WEIGHTS_HOST = "storage.googleapis.com"


# ---------------------------------------------------------------------------- imports
def import_keras() -> Any:
    """``keras`` (3.x), or a one-line :class:`ModelLoadError` naming the extra to install."""
    # TensorFlow's C++ start-up chatter is not the user's business
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _load_triton_first()
    try:
        import keras
    except ImportError as exc:
        raise ModelLoadError(
            f"Keras models need keras 3 and a backend ({exc.name or exc} is missing): "
            "pip install 'xaiscope[keras]'"
        ) from exc
    major = int(str(keras.__version__).split(".")[0])
    if major < 3:
        raise ModelLoadError(
            f"Keras models need keras >= 3 (found {keras.__version__}): "
            "pip install 'xaiscope[keras]'"
        )
    return keras


def _require_keras() -> None:
    """The install hint of :func:`import_keras`, without importing Keras (and TensorFlow)."""
    import importlib.util

    try:
        found = importlib.util.find_spec("keras") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ModelLoadError(
            "Keras models need keras 3 and a backend: pip install 'xaiscope[keras]'"
        )


def _load_triton_first() -> None:
    """Import triton (torch's GPU compiler) before TensorFlow, if it is installed.

    With TensorFlow's libraries loaded first, loading triton's native library crashes the
    process (a segmentation fault, seen with TensorFlow 2.21 and triton 3.8); torchvision
    and timm import it through ``torch._dynamo``. Loaded in this order both work.
    """
    import sys

    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        with contextlib.suppress(Exception):
            import triton  # noqa: F401


def _tf() -> Any:
    import tensorflow as tf

    return tf


def is_keras_object(obj: Any) -> bool:
    """Whether ``obj`` is a Keras (or tf.keras) model or layer, without importing Keras."""
    roots = {c.__module__.split(".")[0] for c in type(obj).__mro__}
    return bool(roots & {"keras", "tf_keras"}) or ("tensorflow" in roots and hasattr(obj, "layers"))


# -------------------------------------------------------------------------- the model
class KerasModel(Model):
    """A Keras 3 image classifier (TensorFlow or torch backend) with its preprocessing.

    ``preprocess``: a callable from a (N, 3, H, W) [0, 1] torch batch at ``input_size`` to
    the model input (N, C, H, W), or one of the modes ``"unit"`` (pixels in [0, 1], the
    default, then ``mean``/``std``), ``"raw"`` (pixels in [0, 255]), ``"caffe"``, ``"tf"``,
    ``"torch"`` (the ``keras.applications`` modes). ``input_size`` is read from the model's
    input when static. ``logits``: leave out a final softmax (see the module docstring).
    """

    framework = "keras"

    def __init__(
        self,
        model: Any,
        *,
        labels: Sequence[str] | None = None,
        input_size: tuple[int, int] | int | None = None,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        preprocess: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        logits: bool = True,
        name: str | None = None,
        device: str | torch.device | None = None,
        outputs_probabilities: bool | None = None,
    ) -> None:
        keras = import_keras()
        if not isinstance(model, keras.Model):
            raise ModelLoadError(
                f"expected a keras.Model (Keras 3), got a {type(model).__name__}"
                + (
                    " from tf_keras (Keras 2): save it as .keras with Keras 3"
                    if type(model).__module__.startswith("tf_keras")
                    else ""
                )
            )
        self.backend = str(keras.backend.backend())
        if self.backend not in ("tensorflow", "torch"):
            raise ModelLoadError(
                f"Keras backend {self.backend!r} is not supported: set KERAS_BACKEND to "
                "'tensorflow' or 'torch' before Keras is imported"
            )
        self.keras_model = model
        self.name = name or getattr(model, "name", None) or type(model).__name__
        self._setup_device(device)
        self._setup_input(input_size)
        self._setup_preprocess(preprocess, mean, std)
        self._net, self.logits_stripped = self._logits_graph(logits)
        self._fns: dict[Any, Any] = {}
        self._layer_models: dict[Any, Any] = {}
        self._default_layer: Any = _UNSET
        self._check_declared_outputs()
        probe = torch.rand(2, 3, *self.input_size, generator=torch.Generator().manual_seed(0))
        probe[0] = 0.0
        try:
            scores = self.forward(self.normalize(probe.to(self.device)))
        except XaiscopeError as exc:
            raise ModelLoadError(f"cannot run {self.name}: {exc}") from exc
        except Exception as exc:
            raise ModelLoadError(f"cannot run {self.name}: {_first_line(exc)}") from exc
        classes = int(scores.shape[1])
        if classes > get("max_labels"):
            raise ModelLoadError(
                f"{self.name} refused: it has {classes:,} outputs; {limit_hint('max_labels')}"
            )
        if labels is not None and len(labels) != classes:
            raise ModelLoadError(
                f"{len(labels)} labels given but {self.name} has {classes} outputs"
            )
        self.labels = list(labels) if labels is not None else [str(i) for i in range(classes)]
        if outputs_probabilities is None:
            from xaiscope.models.callable_model import looks_like_probabilities

            outputs_probabilities = not self.logits_stripped and (
                self.has_final_softmax or looks_like_probabilities(scores.cpu().numpy())
            )
        self.outputs_probabilities = bool(outputs_probabilities)

    # -------------------------------------------------------------------- set-up
    def _setup_device(self, device: str | torch.device | None) -> None:
        if self.backend == "torch":
            from keras.src.backend.torch.core import get_device

            self.device = torch.device(get_device())
        else:
            gpus = _tf().config.list_logical_devices("GPU")
            self.device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
        if device is not None and torch.device(device).type != self.device.type:
            raise ModelLoadError(
                f"this Keras model runs on {self.device.type} (Keras places it); "
                f"device={str(device)!r} cannot be honoured"
            )

    def _setup_input(self, input_size: tuple[int, int] | int | None) -> None:
        keras = import_keras()
        m = self.keras_model
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        if not _has_graph(m) and isinstance(m, keras.Sequential) and input_size is not None:
            with contextlib.suppress(Exception):
                m.build((None, *input_size, 3))
        self.has_graph = _has_graph(m)
        shape: tuple[Any, ...] | None = None
        if self.has_graph:
            if len(m.inputs) != 1:
                raise ModelLoadError(
                    f"{self.name} takes {len(m.inputs)} inputs; xaiscope needs a single image "
                    "input (wrap a predict function with xs.wrap otherwise)"
                )
            shape = tuple(m.inputs[0].shape)
            if len(shape) != 4:
                raise ModelLoadError(
                    f"{self.name} takes input of shape {shape}; expected an image batch "
                    "(N, H, W, C) or (N, C, H, W)"
                )
            self._input_dtype = str(m.inputs[0].dtype)
        else:
            self._input_dtype = "float32"
        # channels-first models (data_format="channels_first") have 1 or 3 in dimension 1
        self.channels_last = not (
            shape is not None and shape[1] in (1, 3) and shape[3] not in (1, 3)
        )
        static = None
        if shape is not None:
            hw = shape[1:3] if self.channels_last else shape[2:4]
            c = shape[3] if self.channels_last else shape[1]
            self.channels = int(c) if c is not None else 3
            if all(isinstance(d, int) and d > 0 for d in hw):
                static = (int(hw[0]), int(hw[1]))
        else:
            self.channels = 3
        if input_size is not None:
            input_size = (int(input_size[0]), int(input_size[1]))
            if static is not None and input_size != static:
                raise ModelLoadError(
                    f"{self.name} takes {static[0]}x{static[1]} images, not input_size={input_size}"
                )
        self.input_size = static or input_size or (224, 224)
        h, w = self.input_size
        if h * w > get("max_input_pixels"):
            # checked before the probe batch of two images of this size is made
            raise ModelLoadError(
                f"{self.name} refused: its input of {h}x{w} = {h * w:,} pixels is too large; "
                f"{limit_hint('max_input_pixels')}"
            )
        if self.channels not in (1, 3):
            raise ModelLoadError(
                f"{self.name} takes {self.channels}-channel images; give preprocess= mapping "
                "(N, 3, H, W) RGB to its input"
            )

    def _check_declared_outputs(self) -> None:
        """Refuse a graph whose static output declares more classes than ``max_labels``,
        before the probe pass would make that output."""
        if not self.has_graph:
            return
        classes = 0
        with contextlib.suppress(Exception):  # symbolic shapes vary between backends
            dims = [int(d) for d in tuple(self.keras_model.outputs[0].shape)[1:] if d]
            classes = int(np.prod(dims, dtype=np.float64)) if dims else 0
        if classes > get("max_labels"):
            raise ModelLoadError(
                f"{self.name} refused: its output declares {classes:,} values per image; "
                f"{limit_hint('max_labels')}"
            )

    def _setup_preprocess(
        self,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | str | None,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.preprocess_mode = "unit"
        self._user_preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None
        if isinstance(preprocess, str):
            if preprocess not in PREPROCESS_MODES:
                raise ParameterError(
                    f"preprocess={preprocess!r}: use a callable or one of "
                    f"{', '.join(PREPROCESS_MODES)}"
                )
            self.preprocess_mode = preprocess
        elif preprocess is not None:
            self._user_preprocess = preprocess
        if self.preprocess_mode == "caffe":
            mean, std = tuple(m / 255.0 for m in CAFFE_MEAN_BGR), (1 / 255.0,) * 3
        elif self.preprocess_mode == "tf":
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        elif self.preprocess_mode == "torch":
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif self.preprocess_mode == "raw":
            mean, std = (0.0, 0.0, 0.0), (1 / 255.0,) * 3
        c = self.channels
        self.mean = torch.tensor(list(mean)[:c], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std)[:c], dtype=torch.float32).view(1, -1, 1, 1)
        self.mean, self.std = self.mean.to(self.device), self.std.to(self.device)

    def _logits_graph(self, logits: bool) -> tuple[Any, bool]:
        """The model to run: the user's, or a view of it that stops before a final softmax."""
        keras = import_keras()
        m = self.keras_model
        self.has_final_softmax = False
        if not self.has_graph or len(m.outputs) != 1:
            return m, False
        out = m.outputs[0]
        layer = out._keras_history.operation
        kind = type(layer).__name__
        act = getattr(layer, "activation", None)
        if kind == "Softmax" or (kind == "Activation" and _is_softmax(act)):
            self.has_final_softmax = True
            if not logits:
                return m, False
            pre = _single_input(layer)
            if pre is None:
                return m, False
            return keras.Model(m.inputs, pre, name=f"{m.name}_logits"), True
        if _is_softmax(act) and hasattr(layer, "call"):
            self.has_final_softmax = True
            if not logits:
                return m, False
            pre = _single_input(layer)
            if pre is None:
                return m, False
            # the layer's own variables, called without its activation: no weights copied
            linear = _without_activation_layer()(layer, name=f"{layer.name}_logits")
            return keras.Model(m.inputs, linear(pre), name=f"{m.name}_logits"), True
        return m, False

    # -------------------------------------------------------------- conversions
    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map a (N, 3, H, W) batch in [0, 1] at ``input_size`` to the model input (N, C, H, W).

        In "caffe" mode the channels come out in BGR order, as ``preprocess_input`` gives them.
        """
        if self._user_preprocess is not None:
            return self._user_preprocess(x01)
        if self.channels == 1:
            x01 = x01.mean(dim=1, keepdim=True)
        elif self.preprocess_mode == "caffe":
            x01 = x01.flip(1)
        return (x01 - self.mean.to(x01.device)) / self.std.to(x01.device)

    def _nchw_to_model(self, x: torch.Tensor) -> Any:
        """(N, C, H, W) torch -> the backend's tensor in the model's layout."""
        x = x.detach().to(self.device, torch.float32)
        if self.channels_last and x.ndim == 4:
            x = x.permute(0, 2, 3, 1)
        return self._to_backend(x.contiguous())

    def _to_backend(self, t: torch.Tensor) -> Any:
        if self.backend == "torch":
            return t
        tf = _tf()
        if t.data_ptr() % TF_ALIGNMENT:
            # TensorFlow aborts the process (not an exception) on a misaligned buffer, e.g.
            # a slice that starts inside a torch allocation: give it a fresh one
            t = t.clone()
        try:
            return tf.experimental.dlpack.from_dlpack(torch.utils.dlpack.to_dlpack(t))
        except Exception:  # an unusual device or dtype: copy through the host
            return tf.convert_to_tensor(t.detach().cpu().numpy())

    def _to_torch(self, t: Any) -> torch.Tensor:
        """A backend tensor as a float32 torch tensor on ``device`` (DLPack: no copy)."""
        if isinstance(t, torch.Tensor):
            out = t.detach()
        else:
            tf = _tf()
            if t.dtype != tf.float32:
                t = tf.cast(t, tf.float32)
            try:
                out = torch.utils.dlpack.from_dlpack(tf.experimental.dlpack.to_dlpack(t))
            except Exception:
                out = torch.from_numpy(np.asarray(t))
        return out.to(self.device, torch.float32)

    def _layer_to_engine(self, t: Any) -> torch.Tensor:
        """A layer's tensor (N, h, w, c) -> (N, c, h, w), contiguous; other ranks as they are."""
        out = self._to_torch(t)
        if self.channels_last and out.ndim == 4:
            out = out.permute(0, 3, 1, 2)
        return out.contiguous()

    def _engine_to_layer(self, t: torch.Tensor) -> Any:
        t = t.detach().to(self.device, torch.float32)
        if self.channels_last and t.ndim == 4:
            t = t.permute(0, 2, 3, 1)
        return self._to_backend(t.contiguous())

    # ------------------------------------------------------------------- forward
    @property
    def supports_gradients(self) -> bool:
        return True

    def _function(self, key: Any, build: Callable[[], Any]) -> Any:
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = build()
        return fn

    def _input_spec(self) -> Any:
        tf = _tf()
        h, w = self.input_size
        shape = [None, h, w, self.channels] if self.channels_last else [None, self.channels, h, w]
        return tf.TensorSpec(shape, tf.float32)

    def _call(self, net: Any, x: Any) -> Any:
        if self._input_dtype not in ("float32", "None") and self.backend == "tensorflow":
            x = _tf().cast(x, self._input_dtype)
        return net(x, training=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, classes) for a preprocessed (N, C, H, W) batch, float32 on ``device``."""
        if x.ndim != 4:
            raise XaiscopeError(f"expected a (N, C, H, W) batch, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return torch.zeros(0, len(getattr(self, "labels", [])), device=self.device)
        xb = self._nchw_to_model(x)
        if self.backend == "torch":
            with torch.no_grad():
                out = self._call(self._net, xb)
        else:
            if self.has_graph:
                tf = _tf()
                net = self._net
                fn = self._function(
                    "forward",
                    lambda: tf.function(
                        lambda t: self._call(net, t), input_signature=[self._input_spec()]
                    ),
                )
                out = fn(xb)
            else:
                out = self._call(self._net, xb)
        scores = self._to_torch(_single_output(out))
        if scores.ndim != 2:
            raise TargetError(f"model output must be (N, classes), got {tuple(scores.shape)}")
        return scores

    # -------------------------------------------------------------------- layers
    def _require_graph(self, what: str) -> None:
        if not self.has_graph:
            raise UnsupportedModelError(
                f"{what} needs the model's layer graph, which this subclassed Keras model "
                "does not have (build it as a functional or sequential model); pixel "
                "gradient methods and black-box methods work on it"
            )

    def layers(self) -> list[str]:
        if not self.has_graph:
            return []
        return [
            layer.name
            for layer in self.keras_model.layers
            if type(layer).__name__ not in SKIPPED_LAYERS and _has_output(layer)
        ]

    def get_layer(self, name: str) -> Any:
        """The Keras layer called ``name``; :class:`UnknownLayerError` with close names if none."""
        self._require_graph(f"layer {name!r}")
        names = [layer.name for layer in self.keras_model.layers]
        if name not in names:
            close = layer_suggestions(name, names)
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise UnknownLayerError(
                f"unknown layer {name!r} in {self.name}{hint} "
                "(list them with `xaiscope models layers MODEL`)"
            )
        layer = self.keras_model.get_layer(name)
        if not _has_output(layer):
            raise UnknownLayerError(
                f"layer {name!r} is called more than once in {self.name} (a shared layer); "
                "pick a layer with a single output"
            )
        return layer

    @property
    def default_layer(self) -> str | None:
        if self._default_layer is _UNSET:
            self._default_layer = self._find_default_layer()
        return self._default_layer  # type: ignore[no-any-return,unused-ignore]

    def _find_default_layer(self) -> str | None:
        """The last layer, in graph order, whose output is a spatial map with h, w > 1.

        Pooling outputs (and dropout-like layers passing them on) are summaries, not the
        feature map, as for torch models: VGG16 gives ``block5_conv3``, ResNet50
        ``conv5_block3_out``, MobileNetV2 ``out_relu``.
        """
        if not self.has_graph:
            return None
        pooled: set[int] = set()
        best = None
        for layer in self.keras_model.layers:
            kind = type(layer).__name__
            if not _has_output(layer) or kind == "InputLayer":
                continue
            out = layer.output
            if not hasattr(out, "shape"):
                continue
            src = _single_input(layer)
            if kind in POOL_LAYERS or (
                kind in PASS_THROUGH_LAYERS and src is not None and id(src) in pooled
            ):
                pooled.add(id(out))
                continue
            shape = tuple(out.shape)
            if len(shape) != 4:
                continue
            h, w = (shape[1], shape[2]) if self.channels_last else (shape[2], shape[3])
            if (h is None or h > 1) and (w is None or w > 1) and kind not in SKIPPED_LAYERS:
                best = layer.name
        return best

    def _layer_model(self, layer: str, with_logits: bool) -> Any:
        """A model from the input to the output of ``layer`` (and the logits)."""
        key = (layer, with_logits)
        sub = self._layer_models.get(key)
        if sub is None:
            keras = import_keras()
            out = self.get_layer(layer).output
            outputs = [out, self._net.outputs[0]] if with_logits else out
            sub = self._layer_models[key] = keras.Model(self.keras_model.inputs, outputs)
        return sub

    def activations(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Output of ``layer`` for a preprocessed batch, (N, c, h, w) (or as the layer gives)."""
        self._require_graph(f"reading the activations of layer {layer!r}")
        sub = self._layer_model(layer, with_logits=False)
        xb = self._nchw_to_model(x)
        if self.backend == "torch":
            with torch.no_grad():
                out = self._call(sub, xb)
        else:
            tf = _tf()
            fn = self._function(
                ("activations", layer),
                lambda: tf.function(
                    lambda t: self._call(sub, t), input_signature=[self._input_spec()]
                ),
            )
            out = fn(xb)
        return self._layer_to_engine(out)

    def _suffix(self, layer: str) -> tuple[Any, Any | None, int]:
        """(suffix model: [layer output, side tensors] -> logits, side model or None, #side).

        Side tensors are what the layers after ``layer`` read that does not depend on it
        (a skip connection around it); the side model computes them from the input.
        """
        key = ("suffix", layer)
        cached = self._layer_models.get(key)
        if cached is not None:
            return cached  # type: ignore[no-any-return,unused-ignore]
        keras = import_keras()
        target = self.get_layer(layer).output
        logits = self._net.outputs[0]
        inputs = {id(t) for t in self.keras_model.inputs}
        memo: dict[int, bool] = {}

        def depends(t: Any) -> bool:
            if id(t) == id(target):
                return True
            if id(t) in memo:
                return memo[id(t)]
            memo[id(t)] = False  # (a graph has no cycles; this only guards the recursion)
            ins = _node_inputs(t)
            memo[id(t)] = any(depends(i) for i in ins)
            return memo[id(t)]

        if not depends(logits):
            result: tuple[Any, Any | None, int] = (None, None, 0)
            self._layer_models[key] = result
            return result
        side: list[Any] = []
        seen: set[int] = set()
        stack = [logits]
        while stack:
            t = stack.pop()
            if id(t) in seen or id(t) == id(target):
                continue
            seen.add(id(t))
            if not depends(t):
                side.append(t)
                continue
            stack.extend(_node_inputs(t))
        try:
            suffix = keras.Model([target, *side], logits)
            side_model = keras.Model(self.keras_model.inputs, side) if side else None
        except Exception as exc:
            raise UnsupportedModelError(
                f"cannot cut {self.name} after layer {layer!r} ({_first_line(exc)}); "
                "Ablation-CAM needs a layer whose output feeds the rest of the graph"
            ) from exc
        del inputs
        result = (suffix, side_model, len(side))
        self._layer_models[key] = result
        return result

    def forward_from_layer(
        self, x: torch.Tensor, layer: str, activation: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B, classes) with the output of ``layer`` replaced by ``activation`` (B, ...).

        ``x`` is one preprocessed image (1, C, H, W); ``activation`` is in the engine's layout
        ((B, c, h, w) for spatial layers). Only the layers after ``layer`` run at batch B, in
        a sub-model cut from the graph; tensors that bypass ``layer`` (skip connections) are
        computed from ``x`` once and repeated over the B rows.
        """
        self._require_graph(f"replacing the output of layer {layer!r}")
        if x.shape[0] != 1:
            raise ParameterError(
                f"forward_from_layer takes one image (1, C, H, W), got {tuple(x.shape)}"
            )
        n = activation.shape[0]
        suffix, side_model, n_side = self._suffix(layer)
        if suffix is None:  # the output does not read the layer: it ignores the change
            return self.forward(x).expand(n, -1).clone()
        want = tuple(self._layer_model(layer, False).outputs[0].shape[1:])
        act = self._engine_to_layer(activation)
        if tuple(d for d in act.shape[1:]) != tuple(
            d if d is not None else a for d, a in zip(want, act.shape[1:], strict=False)
        ):
            raise ParameterError(
                f"activation of shape {tuple(activation.shape)} does not fit layer {layer!r}"
            )
        side: list[Any] = []
        if side_model is not None:
            xb = self._nchw_to_model(x)
            vals = self._call(side_model, xb)
            vals = vals if isinstance(vals, (list, tuple)) else [vals]
            side = [self._repeat(v, n) for v in vals]
        if self.backend == "torch":
            with torch.no_grad():
                out = suffix([act, *side], training=False)
        else:
            out = suffix([act, *side], training=False)
        scores = self._to_torch(_single_output(out))
        if scores.ndim != 2 or scores.shape[0] != n:
            raise TargetError(
                f"replacing layer {layer!r} by a batch of {n} gave an output of shape "
                f"{tuple(scores.shape)}; expected ({n}, classes)"
            )
        return scores

    def _repeat(self, v: Any, n: int) -> Any:
        if self.backend == "torch":
            return v.detach().expand(n, *v.shape[1:])
        tf = _tf()
        return tf.repeat(v, n, axis=0)

    # ----------------------------------------------------------------- gradients
    def _target_sets(self, targets: torch.Tensor, n: int) -> torch.Tensor:
        """(K, N, classes) float weights from (K, N)/(N,) indices or (K, N, classes) weights."""
        classes = len(self.labels)
        weighted = targets.is_floating_point()
        if targets.ndim == (2 if weighted else 1):
            targets = targets[None]
        if targets.shape[1] != n:
            raise TargetError(f"expected {n} targets per set, got {targets.shape[1]}")
        if weighted:
            return targets.to(self.device, torch.float32)
        idx = targets.to(self.device).long()
        if bool(((idx < 0) | (idx >= classes)).any()):
            raise TargetError(f"target class out of range: the model has {classes} classes")
        w = torch.zeros(*idx.shape, classes, device=self.device)
        return w.scatter_(2, idx[..., None], 1.0)

    @contextlib.contextmanager
    def _guided(self, enabled: bool) -> Iterator[None]:
        """Rectify gradients at every ReLU/ReLU6 while active (Springenberg et al. 2015).

        The activations of the layers (``Conv2D(activation="relu")``, ``Activation``,
        ``ReLU``) are swapped for ones whose output passes through a gate with identity
        forward and ``max(grad, 0)`` backward, and restored in ``finally``.
        """
        if not enabled:
            yield
            return
        self._require_graph("guided backpropagation")
        gate = _guided_gate(self.backend)
        keras = import_keras()
        relus = (keras.activations.relu, keras.activations.relu6)
        swapped: list[tuple[Any, str, Any, bool]] = []
        try:
            for layer in _all_layers(self.keras_model):
                act = getattr(layer, "activation", None)
                if act is not None and any(act is r for r in relus):
                    swapped.append((layer, "activation", act, True))
                    layer.activation = _gated(act, gate)
                elif type(layer).__name__ == "ReLU":
                    had = "call" in layer.__dict__
                    swapped.append((layer, "call", layer.__dict__.get("call"), had))
                    layer.call = _gated(layer.call, gate)
            yield
        finally:
            for layer, attr, old, had in reversed(swapped):
                if attr == "activation":
                    layer.activation = old
                elif had:
                    layer.call = old
                else:
                    del layer.__dict__["call"]

    def grad_pass(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        *,
        layer: str | None = None,
        need_input: bool = True,
        guided: bool = False,
    ) -> GradPass:
        select = targets if callable(targets) and not isinstance(targets, torch.Tensor) else None
        n = x.shape[0]
        weights = None
        if select is None:
            assert isinstance(targets, torch.Tensor)
            weights = self._target_sets(targets, n)
        if layer is not None:
            self.get_layer(layer)
        if not need_input and layer is None:
            logits = self.forward(x)
            if select is not None:
                targets = select(logits)
            return GradPass(logits=logits, targets=targets)  # type: ignore[arg-type]
        if self.backend == "torch":
            return self._grad_torch(x, targets, select, weights, layer, need_input, guided)
        if select is None and self.has_graph:
            return self._grad_tf_graph(x, targets, weights, layer, need_input, guided)  # type: ignore[arg-type]
        return self._grad_tf_eager(x, targets, select, weights, layer, need_input, guided)

    def _result(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        in_grads: torch.Tensor | None,
        act: torch.Tensor | None,
        lay_grads: torch.Tensor | None,
    ) -> GradPass:
        if logits.ndim != 2:
            raise TargetError(f"model output must be (N, classes), got {tuple(logits.shape)}")
        return GradPass(
            logits=logits,
            targets=targets,
            input_grads=in_grads,
            activation=act,
            layer_grads=lay_grads,
        )

    def _stack_input_grads(self, grads: Any) -> torch.Tensor:
        """(K, N, H, W, C) -> (K, N, C, H, W) on the engine side."""
        g = self._to_torch(grads)
        if self.channels_last:
            g = g.permute(0, 1, 4, 2, 3)
        return g.contiguous()

    def _stack_layer_grads(self, grads: Any) -> torch.Tensor:
        g = self._to_torch(grads)
        if self.channels_last and g.ndim == 5:
            g = g.permute(0, 1, 4, 2, 3)
        return g.contiguous()

    def _grad_tf_graph(
        self,
        x: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        layer: str | None,
        need_input: bool,
        guided: bool,
    ) -> GradPass:
        tf = _tf()
        k = int(weights.shape[0])
        key = ("grad", layer, need_input, guided, k)
        sub = self._layer_model(layer, True) if layer is not None else self._net
        classes = len(self.labels)

        def build() -> Any:
            def fn(xt: Any, w: Any) -> Any:
                with tf.GradientTape(persistent=k > 1, watch_accessed_variables=False) as tape:
                    tape.watch(xt)
                    out = self._call(sub, xt)
                    if layer is not None:
                        a, logits = out[0], out[1]
                    else:
                        a, logits = None, _single_output(out)
                    logits = tf.cast(logits, tf.float32)
                    scores = [tf.reduce_sum(logits * w[i]) for i in range(k)]
                sources = ([xt] if need_input else []) + ([a] if a is not None else [])
                grads = [
                    tape.gradient(s, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                    for s in scores
                ]
                result = [logits]
                if need_input:
                    result.append(tf.stack([g[0] for g in grads]))
                if a is not None:
                    result.append(a)
                    result.append(tf.stack([g[-1] for g in grads]))
                return result

            spec_w = tf.TensorSpec([k, None, classes], tf.float32)
            return tf.function(fn, input_signature=[self._input_spec(), spec_w])

        fn = self._function(key, build)
        xb = self._nchw_to_model(x)
        with self._guided(guided):
            outs = fn(xb, self._to_backend(weights.contiguous()))
        logits = self._to_torch(outs[0])
        in_grads = self._stack_input_grads(outs[1]) if need_input else None
        act = lay = None
        if layer is not None:
            act = self._layer_to_engine(outs[-2])
            lay = self._stack_layer_grads(outs[-1])
        return self._result(logits, targets, in_grads, act, lay)

    def _grad_tf_eager(
        self,
        x: torch.Tensor,
        targets: Any,
        select: Callable[[torch.Tensor], torch.Tensor] | None,
        weights: torch.Tensor | None,
        layer: str | None,
        need_input: bool,
        guided: bool,
    ) -> GradPass:
        """Eager tape: targets picked from this very forward's logits (top-k) need it."""
        tf = _tf()
        sub = self._layer_model(layer, True) if layer is not None else self._net
        xb = self._nchw_to_model(x)
        with (
            self._guided(guided),
            tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape,
        ):
            tape.watch(xb)
            out = self._call(sub, xb)
            if layer is not None:
                a, logits_t = out[0], out[1]
            else:
                a, logits_t = None, _single_output(out)
            logits_t = tf.cast(logits_t, tf.float32)
        logits = self._to_torch(logits_t)
        if logits.ndim != 2:
            raise TargetError(f"model output must be (N, classes), got {tuple(logits.shape)}")
        if select is not None:
            targets = select(logits)
            weights = self._target_sets(targets, x.shape[0])
        assert weights is not None
        sources = ([xb] if need_input else []) + ([a] if a is not None else [])
        in_grads, lay_grads = [], []
        for k in range(weights.shape[0]):
            grads = tape.gradient(
                logits_t,
                sources,
                output_gradients=self._to_backend(weights[k].contiguous()),
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            if need_input:
                in_grads.append(grads[0])
            if a is not None:
                lay_grads.append(grads[-1])
        del tape
        return self._result(
            logits,
            targets,
            self._stack_input_grads(tf.stack(in_grads)) if in_grads else None,
            self._layer_to_engine(a) if a is not None else None,
            self._stack_layer_grads(tf.stack(lay_grads)) if lay_grads else None,
        )

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        """torch backend: no autograd records for the weights during a gradient pass."""
        params = []
        for v in self.keras_model.weights:
            p = getattr(v, "value", None)
            if isinstance(p, torch.Tensor) and p.requires_grad:
                params.append(p)
        try:
            for p in params:
                p.requires_grad_(False)
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def _grad_torch(
        self,
        x: torch.Tensor,
        targets: Any,
        select: Callable[[torch.Tensor], torch.Tensor] | None,
        weights: torch.Tensor | None,
        layer: str | None,
        need_input: bool,
        guided: bool,
    ) -> GradPass:
        sub = self._layer_model(layer, True) if layer is not None else self._net
        xb = self._nchw_to_model(x).detach().requires_grad_(True)
        with self._frozen(), self._guided(guided), torch.enable_grad():
            out = self._call(sub, xb)
            if layer is not None:
                a, logits_t = out[0], out[1]
            else:
                a, logits_t = None, _single_output(out)
            logits_t = logits_t.float()
            logits = logits_t.detach().to(self.device)
            if logits.ndim != 2:
                raise TargetError(f"model output must be (N, classes), got {tuple(logits.shape)}")
            if select is not None:
                targets = select(logits)
                weights = self._target_sets(targets, x.shape[0])
            assert weights is not None
            sources = ([xb] if need_input else []) + ([a] if a is not None else [])
            in_grads, lay_grads = [], []
            k_sets = weights.shape[0]
            for k in range(k_sets):
                score = (logits_t * weights[k].to(logits_t.device)).sum()
                grads = torch.autograd.grad(
                    score, sources, retain_graph=k < k_sets - 1, allow_unused=True
                )
                grads = tuple(
                    torch.zeros_like(t) if g is None else g
                    for g, t in zip(grads, sources, strict=True)
                )
                if need_input:
                    in_grads.append(grads[0])
                if a is not None:
                    lay_grads.append(grads[-1])
        return self._result(
            logits,
            targets,
            self._stack_input_grads(torch.stack(in_grads)) if in_grads else None,
            self._layer_to_engine(a) if a is not None else None,
            self._stack_layer_grads(torch.stack(lay_grads)) if lay_grads else None,
        )


# ----------------------------------------------------------------- graph helpers
def _has_graph(m: Any) -> bool:
    try:
        return bool(m.inputs) and bool(m.outputs)
    except (AttributeError, ValueError):
        return False


def _has_output(layer: Any) -> bool:
    try:
        layer.output  # noqa: B018 - raises for layers never called, or called twice
    except (AttributeError, ValueError, RuntimeError):
        return False
    return True


def _node_inputs(t: Any) -> list[Any]:
    """The KerasTensors the node that produced ``t`` read (empty for model inputs)."""
    hist = getattr(t, "_keras_history", None)
    if hist is None:
        return []
    op, node_index = hist[0], hist[1]
    node = op._inbound_nodes[node_index]
    return list(node.input_tensors)


def _single_input(layer: Any) -> Any | None:
    try:
        ins = layer._inbound_nodes[0].input_tensors
    except (AttributeError, IndexError):
        return None
    return ins[0] if len(ins) == 1 else None


def _single_output(out: Any) -> Any:
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        if len(out) != 1:
            raise TargetError(f"the model has {len(out)} outputs; xaiscope needs one")
        out = out[0]
    return out


def _all_layers(m: Any) -> Iterator[Any]:
    """Every layer of ``m``, nested models included."""
    for layer in getattr(m, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _is_softmax(act: Any) -> bool:
    if act is None:
        return False
    keras = import_keras()
    return act is keras.activations.softmax or getattr(act, "__name__", "") == "softmax"


@functools.lru_cache(maxsize=1)
def _without_activation_layer() -> Any:
    keras = import_keras()

    base: Any = keras.layers.Layer

    class WithoutActivation(base):  # type: ignore[misc,unused-ignore]
        """Calls ``inner`` (a Dense or Conv layer, its own variables) with a linear activation."""

        def __init__(self, inner: Any, **kw: Any) -> None:
            super().__init__(**kw)
            self.inner = inner

        def call(self, x: Any) -> Any:
            saved = self.inner.activation
            self.inner.activation = keras.activations.linear
            try:
                return self.inner.call(x)
            finally:
                self.inner.activation = saved

        def compute_output_shape(self, shape: Any) -> Any:
            return self.inner.compute_output_shape(shape)

    return WithoutActivation


def _guided_gate(backend: str) -> Callable[[Any], Any]:
    """Identity forward, max(grad, 0) backward, for the backend's tensors."""
    if backend == "torch":
        from xaiscope.models.torch_model import _GuidedGate

        return _GuidedGate.apply  # type: ignore[no-any-return,unused-ignore]
    tf = _tf()

    @tf.custom_gradient  # type: ignore[misc,unused-ignore]
    def gate(y: Any) -> Any:
        def grad(dy: Any) -> Any:
            return tf.nn.relu(dy)

        return tf.identity(y), grad

    return gate  # type: ignore[no-any-return,unused-ignore]


def _gated(fn: Callable[..., Any], gate: Callable[[Any], Any]) -> Callable[..., Any]:
    def run(*args: Any, **kw: Any) -> Any:
        return gate(fn(*args, **kw))

    return run


# --------------------------------------------------------------------------- loading
def load_keras_file(
    path: str | os.PathLike[str],
    *,
    trust: bool = False,
    custom_objects: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    **kw: Any,
) -> KerasModel:
    """``xs.load_model("m.keras" / "m.h5")``: a Keras 3 model file, in safe mode.

    Safe mode (the default) refuses, with one :class:`UnsafeModelError` line, a file that
    would run code while loading: a ``Lambda`` layer holding Python bytecode (run when the
    graph is rebuilt), or a custom layer whose class is not registered in this process
    (loading it would mean importing the module the file names). ``trust=True``
    (CLI ``--trust-model``) allows both. Other keywords go to :class:`KerasModel`.
    """
    _require_keras()  # a missing extra is the first thing to fix, whatever the file
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}")
    # sizes and config first: a refusal must not wait for TensorFlow to import
    check_model_file(p)
    config = read_config(p)
    keras = import_keras()
    check_config(config, p.name, keras, trust=trust, custom_objects=custom_objects)
    try:
        m = keras.saving.load_model(
            str(p), custom_objects=custom_objects, compile=False, safe_mode=not trust
        )
    except Exception as exc:
        text = _first_line(exc)
        if "safe_mode" in str(exc) or "arbitrary code" in str(exc):
            raise UnsafeModelError(
                f"{p.name} would run code when loaded ({text}); pass trust=True "
                "(CLI: --trust-model) only if you trust where the file comes from"
            ) from exc
        raise ModelLoadError(f"cannot load {p}: {text}") from exc
    return _make(m, name=p.name, device=device, **kw)


def _make(m: Any, **kw: Any) -> KerasModel:
    import inspect

    valid = [
        q.name
        for q in inspect.signature(KerasModel.__init__).parameters.values()
        if q.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ModelLoadError(
            f"unknown option(s) for a Keras model: {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return KerasModel(m, **kw)


def application_names() -> list[str]:
    """Names ``keras:NAME`` accepts: the model builders of ``keras.applications``."""
    keras = import_keras()
    apps = keras.applications
    return sorted(n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n, None)))


def application_mode(builder: Any) -> str:
    """The preprocessing mode of a keras.applications builder (see APPLICATION_MODES)."""
    module = getattr(builder, "__module__", "").rsplit(".", 1)[-1]
    mode = APPLICATION_MODES.get(module)
    if mode is None:
        raise ModelLoadError(
            f"no known preprocessing for keras.applications module {module!r}; wrap the "
            "model with xs.wrap(model, preprocess=...)"
        )
    return mode


def _weights_cached(name: str) -> bool:
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    key = name.lower()
    return home.is_dir() and any(key in f.name.lower().replace("_", "") for f in home.iterdir())


def _check_weights_reachable(name: str, timeout: float = 3.0) -> None:
    """Fail in seconds with one :class:`OfflineError` line when the weights host is down."""
    if _weights_cached(name):
        return
    try:
        socket.create_connection((KERAS_WEIGHTS_HOST, 443), timeout=timeout).close()
    except OSError as exc:
        raise OfflineError(
            f"could not download pretrained weights for keras:{name} (offline?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        ) from exc


def load_keras_application(
    name: str,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    logits: bool = True,
) -> KerasModel:
    """``keras:NAME``: a ``keras.applications`` classifier with its own preprocessing.

    ``pretrained=True`` downloads the ImageNet weights (online only; offline: one
    :class:`OfflineError` line); the default builds random weights, as for timm/torchvision.
    ``input_size`` (random weights only) builds the model for another image size.
    """
    keras = import_keras()
    names = application_names()
    if name not in names:
        close = layer_suggestions(name, names, n=3)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise ModelLoadError(f"keras.applications has no model {name!r}{hint}")
    builder = getattr(keras.applications, name)
    mode = application_mode(builder)
    kw: dict[str, Any] = {"weights": "imagenet" if pretrained else None}
    if num_classes is not None:
        if pretrained and num_classes != 1000:
            raise ModelLoadError("num_classes other than 1000 needs pretrained=False")
        kw["classes"] = int(num_classes)
    if input_size is not None:
        if pretrained:
            raise ModelLoadError("input_size needs pretrained=False (ImageNet weights fix it)")
        size = (input_size, input_size) if isinstance(input_size, int) else input_size
        kw["input_shape"] = (int(size[0]), int(size[1]), 3)
    if pretrained:
        _check_weights_reachable(name)
    try:
        m = builder(**kw)
    except (OSError, ConnectionError) as exc:
        if pretrained:
            raise OfflineError(
                f"could not download pretrained weights for keras:{name} (offline?): "
                f"{_first_line(exc)}"
            ) from exc
        raise ModelLoadError(f"cannot build keras:{name}: {_first_line(exc)}") from exc
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot build keras:{name}: {_first_line(exc)}") from exc
    except Exception as exc:
        if pretrained:
            raise OfflineError(
                f"could not download pretrained weights for keras:{name} (offline?): "
                f"{_first_line(exc)}"
            ) from exc
        raise
    classes = int(num_classes or 1000)
    if labels is None and classes == 1000:
        from xaiscope.models.loaders import imagenet_labels

        labels = list(imagenet_labels())
    return KerasModel(
        m, labels=labels, preprocess=mode, name=f"keras:{name}", device=device, logits=logits
    )
