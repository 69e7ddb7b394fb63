"""Typed exceptions raised by the xaiscope API.

Every error a user can cause by bad input derives from :class:`XaiscopeError`, so the
CLI can turn it into one clear line and exit code 2 without a traceback.
"""

from __future__ import annotations


class XaiscopeError(Exception):
    """Base class of every error xaiscope raises on bad input or an unusable environment."""


class ImageLoadError(XaiscopeError, ValueError):
    """An image could not be read: missing, not an image, truncated, or a decompression bomb."""


class ModelLoadError(XaiscopeError, ValueError):
    """A model spec could not be resolved or its file could not be loaded."""


class OfflineError(ModelLoadError):
    """Pretrained weights were asked for but could not be downloaded (no network)."""


class UnsafeModelError(ModelLoadError):
    """A model file would run code when loaded (TorchScript, a Keras ``Lambda`` with Python
    bytecode, or a custom layer whose module must be imported); refused unless
    ``trust=True`` (``--trust-model``)."""


class UnknownMethodError(XaiscopeError, KeyError):
    """The method name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(XaiscopeError, KeyError):
    """The layer name does not exist in the model."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TargetError(XaiscopeError, ValueError):
    """A target class is out of range, unknown, or of the wrong shape."""


class ParameterError(XaiscopeError, ValueError):
    """A method hyper-parameter is unknown or has an invalid value."""


class UnsupportedModelError(XaiscopeError, TypeError):
    """The model cannot do what the method needs (e.g. gradients of a black-box model)."""


class ModelRunError(XaiscopeError, RuntimeError):
    """The model's forward failed (its own code raised) or returned an output xaiscope cannot
    use (not a (N, classes) tensor). Out-of-memory errors are not wrapped: they keep their
    type so that batched work can retry with smaller chunks."""


class DatasetError(XaiscopeError, ValueError):
    """A dataset cannot be read or used as asked: missing or empty folder, one class,
    unreadable images (when refused), more folds than images in a class, a refused pickle."""


class DatasetOfflineError(DatasetError, OfflineError):
    """A dataset download was asked for but the server cannot be reached (no network)."""


class RegistryError(XaiscopeError, ValueError):
    """The model registry refused an operation: a bad name, or a name already taken."""


class NotSpatialError(XaiscopeError, ValueError):
    """A layer's output has no spatial layout (h, w): a vector (N, D) such as a classifier
    head, or tokens that do not form the model's patch grid. Activation grids and CAMs need
    (N, C, h, w) maps or ViT tokens."""


class UnknownMetricError(XaiscopeError, KeyError):
    """The metric name is not in the metric registry (the message lists the valid ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MaskError(XaiscopeError, ValueError):
    """Ground-truth masks are missing for a metric that needs them, or do not match the
    images (count or size)."""


class ExplanationMismatchError(XaiscopeError, ValueError):
    """Explanations that must describe the same images do not (count, map sizes, or scores
    of the same model for the same target differ)."""


class ExplanationFileError(XaiscopeError, ValueError):
    """A saved explanation (``.npz``) cannot be used: not an archive xaiscope wrote, damaged,
    or declaring arrays or metadata beyond the limits (size, dtype, nesting, NaN maps)."""
