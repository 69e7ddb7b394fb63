"""Model adapters and loaders."""

from xaiscope.models.base import GradPass, Model, Prediction
from xaiscope.models.loaders import (
    DEFAULT_MODEL,
    available_models,
    imagenet_labels,
    load_model,
    save_checkpoint,
    wrap,
)
from xaiscope.models.torch_model import TorchModel

__all__ = [
    "DEFAULT_MODEL",
    "GradPass",
    "Model",
    "Prediction",
    "TorchModel",
    "available_models",
    "imagenet_labels",
    "load_model",
    "save_checkpoint",
    "wrap",
]
