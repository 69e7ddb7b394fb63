"""Model adapters and loaders."""

from xaiscope.models.base import GradPass, Model, Prediction
from xaiscope.models.callable_model import CallableModel
from xaiscope.models.keras_model import KerasModel  # imports no Keras until used
from xaiscope.models.loaders import (
    DEFAULT_MODEL,
    available_models,
    imagenet_labels,
    load_model,
    save_checkpoint,
    wrap,
)
from xaiscope.models.onnx_model import OnnxModel
from xaiscope.models.torch_model import TorchModel

__all__ = [
    "DEFAULT_MODEL",
    "CallableModel",
    "GradPass",
    "KerasModel",
    "Model",
    "OnnxModel",
    "Prediction",
    "TorchModel",
    "available_models",
    "imagenet_labels",
    "load_model",
    "save_checkpoint",
    "wrap",
]
