"""Explanation methods, one file per method; importing this package fills the registry."""

from xaiscope.methods import (  # noqa: F401  (imports register the methods, in this order)
    saliency,
    gradient_x_input,
    smoothgrad,
    vargrad,
    integrated_gradients,
    expected_gradients,
    guided_backprop,
    gradcam,
    gradcam_plus_plus,
    xgradcam,
    layercam,
    hirescam,
)
from xaiscope.methods.registry import (
    MethodContext,
    MethodInfo,
    MethodOutput,
    all_methods,
    get_method,
    method_names,
    register,
)

__all__ = [
    "MethodContext",
    "MethodInfo",
    "MethodOutput",
    "all_methods",
    "get_method",
    "method_names",
    "register",
]
