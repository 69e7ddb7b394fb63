"""The start-up guard against TensorFlow-then-torchvision crashes, as seen from the package.

The logic lives in the top-level ``_xaiscope_native`` module so that ``xaiscope_native.pth`` can
run it without importing this package (whose ``__init__`` imports torch). Importing this module
installs the guard, so that ``xaiscope/__init__`` can do it with a plain import that stays above
its other imports (which may pull in torchvision) without a statement between imports.
"""

from __future__ import annotations

from types import ModuleType

_impl: ModuleType | None
try:
    import _xaiscope_native as _impl
except Exception:  # the package was copied without its sibling module: stay importable
    _impl = None

__all__ = ["install", "installed"]


def install() -> bool:
    """Make ``triton._C.libtriton`` load with RTLD_DEEPBIND; see ``_xaiscope_native.install``."""
    return _impl.install() if _impl is not None else False


def installed() -> bool:
    """Whether the deep-binding finder is on ``sys.meta_path``."""
    return _impl.installed() if _impl is not None else False


install()
