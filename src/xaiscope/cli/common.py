"""Small helpers shared by the CLI commands: errors, safe file names, atomic writes, models."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xaiscope.errors import ModelLoadError, ParameterError, XaiscopeError
from xaiscope.models.base import Model


class UsageError(XaiscopeError):
    """Bad command-line syntax (argparse errors, bad option values)."""


def one_line(text: str) -> str:
    """Collapse whitespace and escape control characters, so a message prints as exactly one
    line and text from a file (a label, a layer name) cannot move the cursor or recolour
    the terminal."""
    return terminal_safe(" ".join(str(text).split()))


def terminal_safe(text: str) -> str:
    """``text`` with control and format characters (newlines, escape sequences, bidi
    overrides) shown as ``\\n``, ``\\x1b``, ``\\u202e``: one line, printed as written."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1] if ch != "\\" else ch)
    return "".join(out)


def reason(exc: BaseException) -> str:
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def safe_name(text: str, max_len: int = 60) -> str:
    """A filesystem-safe file name part: 'tabby, tabby cat' -> 'tabby_tabby_cat'."""
    safe = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("._-")[:max_len].rstrip("._-")
    return safe or "x"


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` then rename ``tmp`` to ``path``: a crash never leaves half a file.

    The temporary name keeps ``path``'s suffix, because some writers (np.savez) add theirs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def probe_writable_dir(folder: Path, what: str) -> None:
    """Raise :class:`ParameterError` (``what: ...``) unless files can be created in ``folder``.

    ``os.access`` is not enough: root passes it on /proc, read-only mounts and immutable
    folders, and the write then fails only after all the compute. So the folder is really
    created and a temporary file is created and removed in it. Folders made only for the
    probe are removed again, so input rejected later still leaves nothing behind.
    """
    made: list[Path] = []  # deepest first
    try:
        missing = folder
        while not missing.exists() and missing != missing.parent:
            made.append(missing)
            missing = missing.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".xaiscope-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise ParameterError(
            f"{what}: cannot create files there ({exc.strerror or reason(exc)})"
        ) from None
    finally:
        for path in made:
            with contextlib.suppress(OSError):  # not empty: someone else uses it now
                path.rmdir()


def _strict(value: Any) -> Any:
    # NaN/inf are not JSON: write null so every JSON parser reads the file
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented, strict JSON (non-finite numbers as null), atomically."""
    text = json.dumps(_strict(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_device(text: str | None) -> str | None:
    """Validate a ``--device`` value early, with a clear message when it cannot be used."""
    if text is None:
        return None
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise ParameterError(f"bad --device {text!r}: {one_line(str(exc))}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"--device {text}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ParameterError(f"--device {text}: MPS is not available on this machine")
    return text


def load_model(spec: str, device: str | None = None, trust: bool = False) -> Model:
    """Load a model for the CLI; any failure becomes one :class:`ModelLoadError` line.

    ``trust`` (``--trust-model``) lets a model file run code while loading (Keras Lambda
    layers, custom layers' modules). Models are cached per process (keyed on the file's
    mtime for paths), so repeated in-process calls of :func:`xaiscope.cli.main` load each
    model once.
    """
    try:
        mtime = Path(spec).stat().st_mtime if Path(spec).exists() else None
    except OSError:
        mtime = None
    return _load_cached(spec, device, mtime, trust)


@functools.lru_cache(maxsize=2)
def _load_cached(spec: str, device: str | None, _mtime: float | None, trust: bool) -> Model:
    from xaiscope.models import load_model as _load

    kw: dict[str, Any] = {} if device is None else {"device": device}
    if trust:
        kw["trust"] = True
    try:
        return _load(spec, **kw)
    except XaiscopeError:
        raise
    except Exception as exc:  # a user-given spec or file: never a traceback
        raise ModelLoadError(f"cannot load model {spec!r}: {reason(exc)}") from exc
