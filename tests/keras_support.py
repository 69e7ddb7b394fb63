"""Keras helpers for the tests: quiet single-threaded TensorFlow, torch -> Keras weight copies.

Import through :func:`keras_or_skip` so that test modules are skipped where TensorFlow or
Keras 3 is not installed (``import xaiscope`` and the torch tests never need them).
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from torch import nn

#: torch SmallCNN module path -> the Keras layer built from it by :func:`keras_small_cnn`
SMALL_CNN_LAYERS = {
    "features.0": "conv1",
    "features.1": "bn1",
    "features.2": "relu1",
    "features.3": "pool1",
    "features.4": "conv2",
    "features.5": "relu2",
}


def keras_or_skip() -> Any:
    """``keras`` with TensorFlow limited to one thread and no log noise, or skip the test."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from xaiscope.models.keras_model import _load_triton_first

    _load_triton_first()  # before TensorFlow: see its docstring
    keras = pytest.importorskip("keras")
    if int(keras.__version__.split(".")[0]) < 3:
        pytest.skip("Keras 3 needed")
    if keras.backend.backend() == "tensorflow":
        tf = pytest.importorskip("tensorflow")

        try:  # only possible before TensorFlow's runtime starts; later calls keep the first
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass
    return keras


def conv_kernel(w: torch.Tensor) -> Any:
    """torch (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    return w.detach().permute(2, 3, 1, 0).numpy()


def keras_small_cnn(net: nn.Module, size: int = 16, softmax: bool = True) -> Any:
    """The Keras twin of ``tests.conftest.SmallCNN`` with its weights copied.

    Functional, channels-last; the final Dense has a softmax (stripped by the adapter, so
    the scores are the torch logits) unless ``softmax`` is False.
    """
    keras = keras_or_skip()
    from keras import layers

    f = net.features
    inp = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = layers.BatchNormalization(epsilon=f[1].eps, name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(
        net.head.out_features, activation="softmax" if softmax else None, name="head"
    )(x)
    m = keras.Model(inp, out, name="small_cnn")
    m.get_layer("conv1").set_weights([conv_kernel(f[0].weight), f[0].bias.detach().numpy()])
    bn = f[1]
    m.get_layer("bn1").set_weights(
        [
            bn.weight.detach().numpy(),
            bn.bias.detach().numpy(),
            bn.running_mean.numpy(),
            bn.running_var.numpy(),
        ]
    )
    m.get_layer("conv2").set_weights([conv_kernel(f[4].weight), f[4].bias.detach().numpy()])
    m.get_layer("head").set_weights(
        [net.head.weight.detach().T.numpy(), net.head.bias.detach().numpy()]
    )
    return m


def randomize_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial batch-norm statistics, so the copy of every buffer is checked."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def rel_err(a: Any, b: Any) -> float:
    """max |a - b| / max |b| (0 when both are all zero)."""
    import numpy as np

    a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    scale = float(np.abs(b).max())
    diff = float(np.abs(a - b).max())
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale
