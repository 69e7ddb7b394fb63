"""xaiscope: explain why an image classifier predicts what it predicts.

Quick start::

    import xaiscope as xs
    model = xs.load_model("efficientnet_lite0")
    image = xs.sample_images()["chelsea"]
    exp = xs.explain(model, image, method="gradcam")
    exp.maps  # (1, 300, 451) float32
"""

# First, before anything imports torchvision or timm: installs the guard that keeps an earlier
# `import tensorflow` from crashing triton's native library (see xaiscope/_native.py).
from xaiscope import _native  # noqa: F401
from xaiscope.data import ImageDataset, datasets, load_image, sample_images
from xaiscope.errors import (
    DatasetError,
    DatasetOfflineError,
    ExplanationFileError,
    ExplanationMismatchError,
    ImageLoadError,
    MaskError,
    ModelLoadError,
    ModelRunError,
    NotSpatialError,
    OfflineError,
    ParameterError,
    RegistryError,
    TargetError,
    UnknownLayerError,
    UnknownMethodError,
    UnknownMetricError,
    UnsafeModelError,
    UnsupportedModelError,
    XaiscopeError,
)
from xaiscope.explain import explain
from xaiscope.explanation import Explanation
from xaiscope.methods import get_method, method_names
from xaiscope.metrics import Comparison, Evaluation, compare, evaluate, metric_names
from xaiscope.models import Model, load_model, wrap
from xaiscope.models.activations import Activations, AttentionMaps, activations, attention_maps
from xaiscope.settings import config
from xaiscope.train import TrainResult, train  # the function shadows the subpackage name

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # xs.viz imports matplotlib: load it on first use, not with every `import xaiscope`
    if name == "viz":
        import importlib

        return importlib.import_module("xaiscope.viz")
    raise AttributeError(f"module 'xaiscope' has no attribute {name!r}")


__all__ = [
    "Activations",
    "AttentionMaps",
    "Comparison",
    "DatasetError",
    "DatasetOfflineError",
    "Evaluation",
    "Explanation",
    "ExplanationFileError",
    "ExplanationMismatchError",
    "ImageDataset",
    "ImageLoadError",
    "MaskError",
    "Model",
    "ModelLoadError",
    "ModelRunError",
    "NotSpatialError",
    "OfflineError",
    "ParameterError",
    "RegistryError",
    "TargetError",
    "TrainResult",
    "UnknownLayerError",
    "UnknownMethodError",
    "UnknownMetricError",
    "UnsafeModelError",
    "UnsupportedModelError",
    "XaiscopeError",
    "__version__",
    "activations",
    "attention_maps",
    "compare",
    "config",
    "datasets",
    "evaluate",
    "explain",
    "get_method",
    "load_image",
    "method_names",
    "load_model",
    "metric_names",
    "sample_images",
    "train",
    "viz",
    "wrap",
]
