"""Explanation methods, one file per method; importing this package fills the registry.

Every module of this package whose name does not start with ``_`` is imported, so a new
method is one new file with an ``@register`` function: there is no second list to edit.
"""

import importlib
import pkgutil

from xaiscope.methods.registry import (
    MethodContext,
    MethodInfo,
    MethodOutput,
    all_methods,
    get_method,
    method_names,
    register,
)

_HELPERS = {"registry", "baselines"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name not in _HELPERS:
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "MethodContext",
    "MethodInfo",
    "MethodOutput",
    "all_methods",
    "get_method",
    "method_names",
    "register",
]
