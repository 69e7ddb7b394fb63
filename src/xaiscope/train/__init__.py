"""Training the small classifiers that explanation studies start from: ``xs.train``.

Architectures (:func:`build_arch`): ``cifar10_cnn``, ``small_cnn``, ``tiny_vit`` and
``timm:NAME``. :func:`train` runs stratified k-fold cross-validation with augmentation,
keeps the best epoch of each fold, and saves the best model to the model registry.
"""

from xaiscope.train.archs import (
    Cifar10CNN,
    SmallCNN,
    TinyViT,
    arch_names,
    build_arch,
    count_parameters,
)
from xaiscope.train.metrics import accuracy, macro_f1
from xaiscope.train.result import FoldResult, TrainResult
from xaiscope.train.trainer import train

__all__ = [
    "Cifar10CNN",
    "FoldResult",
    "SmallCNN",
    "TinyViT",
    "TrainResult",
    "accuracy",
    "arch_names",
    "build_arch",
    "count_parameters",
    "macro_f1",
    "train",
]
