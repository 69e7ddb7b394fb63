"""Explanation methods, one file per method; importing this package fills the registry."""

from xaiscope.methods import (  # noqa: F401  (importing registers each method)
    expected_gradients,
    gradcam,
    gradcam_plus_plus,
    gradient_x_input,
    guided_backprop,
    hirescam,
    integrated_gradients,
    layercam,
    saliency,
    smoothgrad,
    vargrad,
    xgradcam,
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
