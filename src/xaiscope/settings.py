"""Process-wide settings: ``xs.config(**settings)``, the limits that keep untrusted input
from exhausting memory.

Every limit has a documented default, an environment variable read at import
(``XAISCOPE_<NAME>``, e.g. ``XAISCOPE_MAX_IMAGE_PIXELS=200000000``), and can be changed in
Python, for the whole process or for a ``with`` block::

    xs.config(max_image_pixels=200_000_000)          # from now on
    with xs.config(max_samples=1_000_000):           # only inside the block
        xs.explain(model, image, method="smoothgrad", n_samples=500_000)
    xs.config()                                      # the current settings, as a dict

A limit is checked before the large buffer it guards is made, and what would pass it is
refused with one line naming the limit and how to raise it (:func:`limit_hint`).
``docs/security.md`` explains why each default is what it is.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, fields, replace
from types import TracebackType
from typing import Any

from xaiscope.errors import ParameterError

__all__ = ["Limits", "config", "get", "inflation_ok", "limit_hint", "settings"]

MB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """The current limits (see the module docstring for how to change them)."""

    #: width x height of a decoded image (files, bytes, streams); Pillow's own guard is
    #: 89 M. 50 M pixels covers 48-megapixel phone photos.
    max_image_pixels: int = 50_000_000
    #: bytes of a decoded image buffer (pixels x bands x bytes per band): a 16-bit RGBA
    #: image takes 8 bytes a pixel before it is reduced to 8-bit RGB.
    max_image_bytes: int = 512 * MB
    #: image pixels in the web app, lower than the CLI's: uploads come from strangers
    app_max_image_pixels: int = 16_000_000
    #: samples, steps, masks or perturbations per image asked of one method
    #: (``n_samples``, ``n_steps``, ``n_masks``, ...): each costs one pass, so this bounds time;
    #: memory is bounded by the chunk size whatever the count
    max_samples: int = 100_000
    #: classes a model file or registry entry may declare (ImageNet-21k has 21,843)
    max_labels: int = 100_000
    #: height x width of a model input that a model file declares (ONNX, checkpoints,
    #: registry entries): 4096 x 4096
    max_input_pixels: int = 4096 * 4096
    #: total uncompressed size of an archive (a ``.keras`` zip) before it is opened
    max_archive_bytes: int = 4096 * MB
    #: size of the pickled part of a PyTorch checkpoint (``data.pkl``: names, labels and
    #: settings; the tensors are stored beside it). Safe unpickling runs in Python at about
    #: 2 MB/s, so this bounds time as much as memory.
    max_pickle_bytes: int = 8 * MB
    #: bytes an archive (a ``.keras`` zip, an HDF5 file, a saved explanation) may unpack to
    #: per byte stored, once it unpacks to more than 64 MiB: model weights compress about
    #: 1.1 : 1, a compression bomb 1000 : 1, so a 2 MB file cannot claim gigabytes
    max_inflation: int = 50
    #: size of JSON metadata read from a file (a ``.keras`` config.json, a registry
    #: config.json, a saved explanation's metadata)
    max_metadata_bytes: int = 16 * MB


_LOCK = threading.Lock()


def _from_environment() -> Limits:
    values: dict[str, Any] = {}
    for f in fields(Limits):
        text = os.environ.get(f"XAISCOPE_{f.name.upper()}", "").strip()
        if not text:
            continue
        try:
            values[f.name] = _check(f.name, int(float(text)) if "e" in text.lower() else int(text))
        except (ValueError, ParameterError):
            # a bad variable must not make `import xaiscope` fail: the default stays, and
            # xs.config() shows which value is in force
            continue
    return Limits(**values)


def _check(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(value)
        except (TypeError, ValueError, OverflowError):
            raise ParameterError(f"config {name}={value!r}: expected a positive integer") from None
        if as_int != value:
            raise ParameterError(f"config {name}={value!r}: expected a positive integer")
        value = as_int
    if value < 1:
        raise ParameterError(f"config {name}={value}: must be at least 1")
    return int(value)


_current: Limits = _from_environment()


def settings() -> Limits:
    """The limits in force now."""
    return _current


def get(name: str) -> int:
    """One limit by name (e.g. ``get("max_image_pixels")``)."""
    return int(getattr(_current, name))


def limit_hint(name: str) -> str:
    """How to raise limit ``name``, for the end of a refusal message."""
    return (
        f"the limit is {name}={get(name):,}; raise it with xs.config({name}=...) "
        f"or the environment variable XAISCOPE_{name.upper()}"
    )


def inflation_ok(unpacked: int, stored: int) -> bool:
    """Whether ``unpacked`` bytes from ``stored`` bytes are within ``max_inflation``
    (anything up to 64 MiB is fine: small archives of zeros are common)."""
    return unpacked <= 64 * MB or unpacked <= get("max_inflation") * max(stored, 1)


class _Restore:
    """Returned by :func:`config`: a context manager that restores the previous settings."""

    def __init__(self, previous: Limits) -> None:
        self._previous = previous

    def __enter__(self) -> Limits:
        return _current

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _current
        with _LOCK:
            _current = self._previous

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(_current, f.name)) for f in fields(Limits)}

    def keys(self) -> list[str]:
        return [f.name for f in fields(Limits)]

    def __getitem__(self, name: str) -> int:
        return get(name)

    def __repr__(self) -> str:
        return f"xaiscope settings {self.as_dict()}"


def config(**changes: Any) -> _Restore:
    """Change process-wide settings; with no argument, look at them.

    Returns an object that restores the settings before this call when used as a context
    manager (``with xs.config(max_samples=10**6): ...``); ``dict(...)``-like access
    (``xs.config()["max_samples"]``, ``.as_dict()``) reads the settings in force.
    Unknown names and values that are not positive integers raise :class:`ParameterError`.
    """
    global _current
    known = {f.name for f in fields(Limits)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ParameterError(
            f"unknown setting {', '.join(unknown)}; valid settings: {', '.join(sorted(known))}"
        )
    checked = {k: _check(k, v) for k, v in changes.items()}
    with _LOCK:
        previous = _current
        _current = replace(_current, **checked)
    return _Restore(previous)
