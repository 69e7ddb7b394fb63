"""Load triton's native library with RTLD_DEEPBIND so an earlier TensorFlow import cannot crash it.

TensorFlow loads its own LLVM into the global symbol namespace. torchvision and timm import
torch._dynamo, which imports ``triton._C.libtriton``; that library's LLVM references then bind to
TensorFlow's copy and the process dies with a segmentation fault. RTLD_DEEPBIND makes libtriton
prefer its own symbols. Only that one module is loaded this way, and the dlopen flags are put back
straight after.

This module lives outside the ``xaiscope`` package because ``xaiscope_native.pth`` imports it at
every interpreter start-up, and ``xaiscope/__init__`` imports torch: that is too slow for a .pth
and too late for orders where torchvision is imported before xaiscope. So it imports nothing
beyond ``sys`` and ``os`` (both already loaded at start-up) until triton is actually imported.
``xaiscope._native`` re-exports :func:`install`.

Set ``XAISCOPE_DEEPBIND=0`` to switch it off (for instance under AddressSanitizer, which refuses
RTLD_DEEPBIND).
"""

import os
import sys

# typing is not loaded at start-up in a plain interpreter and costs milliseconds; this module
# runs from a .pth in every interpreter, so its names are for type checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec
    from typing import Any

__all__ = ["TARGET", "install", "installed"]

TARGET = "triton._C.libtriton"

# Found on sys.meta_path by attribute rather than by class, so that a second copy of this module
# (imported from another path) still sees the first one's finder.
_MARKER = "_xaiscope_deepbind_finder"


class _DeepBindFinder:
    """A meta-path finder that only answers for TARGET and defers every other name."""

    _xaiscope_deepbind_finder = True

    def __init__(self, flag: int) -> None:
        self._flag = flag
        self._busy = False

    def find_spec(
        self, fullname: str, path: "Any" = None, target: "Any" = None
    ) -> "ModuleSpec | None":
        if fullname != TARGET or self._busy:
            return None
        try:
            return self._deepbind_spec(fullname, path, target)
        except Exception:
            # Never break an import: let the normal machinery load it the usual way.
            return None

    def _deepbind_spec(self, fullname: str, path: "Any", target: "Any") -> "ModuleSpec | None":
        from importlib.machinery import ExtensionFileLoader

        self._busy = True
        try:
            spec = None
            for finder in sys.meta_path:
                if getattr(finder, _MARKER, False):
                    continue
                find_spec = getattr(finder, "find_spec", None)
                if find_spec is not None:
                    spec = find_spec(fullname, path, target)
                    if spec is not None:
                        break
        finally:
            self._busy = False
        if spec is None or type(spec.loader) is not ExtensionFileLoader:
            # Not a plain shared library (or not there at all): nothing to rebind.
            return None
        flag = self._flag

        class _DeepBindLoader(ExtensionFileLoader):
            def create_module(self, spec: "ModuleSpec") -> "Any":
                old = sys.getdlopenflags()
                sys.setdlopenflags(old | flag)
                try:
                    return super().create_module(spec)
                finally:
                    sys.setdlopenflags(old)

        spec.loader = _DeepBindLoader(spec.loader.name, spec.loader.path)
        return spec


def installed() -> bool:
    """Whether a deep-binding finder is on ``sys.meta_path``."""
    return any(getattr(finder, _MARKER, False) for finder in sys.meta_path)


def install() -> bool:
    """Make the next load of ``triton._C.libtriton`` use RTLD_DEEPBIND.

    Idempotent and never raises. A no-op (returns False) off Linux, where the C library has no
    RTLD_DEEPBIND, when ``XAISCOPE_DEEPBIND=0``, and when libtriton is already loaded (too late to
    change how it was bound). Without triton the finder stays on sys.meta_path but never acts.
    """
    try:
        flag = getattr(os, "RTLD_DEEPBIND", 0)
        if not flag or not sys.platform.startswith("linux"):
            return False
        if os.environ.get("XAISCOPE_DEEPBIND", "1").strip().lower() in ("0", "false", "no", "off"):
            return False
        if installed():
            return True
        if TARGET in sys.modules:
            return False
        # First, so that no other finder has loaded the library before this one is asked.
        sys.meta_path.insert(0, _DeepBindFinder(flag))
        return True
    except Exception:
        return False
