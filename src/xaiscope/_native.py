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

__all__ = ["install", "installed", "no_ldconfig_lookups"]


def install() -> bool:
    """Make ``triton._C.libtriton`` load with RTLD_DEEPBIND; see ``_xaiscope_native.install``."""
    return _impl.install() if _impl is not None else False


def installed() -> bool:
    """Whether the deep-binding finder is on ``sys.meta_path``."""
    return _impl.installed() if _impl is not None else False


#: glibc's own libraries, under the names they have had since glibc 2.3
_GLIBC_SONAMES = {"c": "libc.so.6", "dl": "libdl.so.2", "pthread": "libpthread.so.0"}


def no_ldconfig_lookups() -> bool:
    """Answer ``ctypes.util.find_library`` for glibc's own libraries without a subprocess.

    On Linux ``find_library`` runs ``/sbin/ldconfig -p`` to answer, and libraries ask for
    glibc's parts at import: the CUDA build of torch for ``dl`` (its CUDA library finder),
    trio (pulled in by timm's HTTP client) for ``pthread``. So every run started a process.
    On glibc the answers are fixed sonames, which those callers fall back to anyway. Other
    names, and other C libraries, keep the standard lookup. Returns whether it is active.
    """
    import ctypes.util
    import platform
    import sys

    current = ctypes.util.find_library
    if getattr(current, "_xaiscope_libdl", False):
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False

    def find_library(name: str) -> str | None:
        return _GLIBC_SONAMES.get(name) or current(name)

    find_library._xaiscope_libdl = True  # type: ignore[attr-defined]
    ctypes.util.find_library = find_library
    return True


install()
no_ldconfig_lookups()
