"""Checks on model files and what they declare, made before anything large is built.

A model file may come from a stranger. These helpers decide what kind of file it is
without running it (TorchScript is code: its ``__setstate__`` methods run inside
``torch.jit.load``), turn torch's loading errors into one line without torch's advice to
load unsafely, and bound what a file declares (labels, input size, architecture) before a
module of that size is built. Limits come from :mod:`xaiscope.settings`.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaiscope.errors import ModelLoadError, UnsafeModelError
from xaiscope.settings import get, inflation_ok, limit_hint

__all__ = [
    "ZOO_PREFIXES",
    "build_fitting",
    "check_stored",
    "check_pickle_size",
    "check_zoo_arch",
    "check_input_size",
    "check_labels",
    "check_normalisation",
    "is_torchscript",
    "refuse_torchscript",
    "torch_load_reason",
]

#: Longest class name a model file may declare (ImageNet's longest is 121 characters)
MAX_LABEL_CHARS = 1000
#: Architecture specs a checkpoint may name: built from code in installed packages, never
#: from another file (a path there could be TorchScript, or the checkpoint itself).
ZOO_PREFIXES = ("timm:", "torchvision:")
# a zoo model name: no path separator and no further scheme (timm reads "hf-hub:" and
# "local-dir:" names, which download or read files)
_ZOO_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")


def check_zoo_arch(arch: Any, where: str) -> str:
    """A checkpoint's architecture: ``timm:NAME`` or ``torchvision:NAME`` with a plain name.

    Never a path (it could be TorchScript, or the checkpoint itself: endless recursion), a
    registry entry, or a timm scheme that fetches or reads files.
    """
    ok = isinstance(arch, str) and any(
        arch.startswith(p) and _ZOO_NAME.match(arch[len(p) :]) is not None for p in ZOO_PREFIXES
    )
    if not ok:
        raise UnsafeModelError(
            f"{where}: its xaiscope_arch is not a timm:NAME or torchvision:NAME model; a "
            "checkpoint may name only a model-zoo architecture, never a file"
        )
    return str(arch)


def _archive_names(data: bytes | Path) -> list[str]:
    """Member names of a zip as Python's reader and torch's own reader see them: a file the
    two read differently (a zip behind another header) must not slip past either."""
    names: list[str] = []
    try:
        with zipfile.ZipFile(data if isinstance(data, Path) else io.BytesIO(data)) as zf:
            names += zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        pass
    try:
        source = str(data) if isinstance(data, Path) else io.BytesIO(data)
        names += list(torch._C.PyTorchFileReader(source).get_all_records())
    except Exception:  # not an archive torch can read: nothing torch.jit.load would run
        pass
    return names


def is_torchscript(data: bytes | Path) -> bool:
    """Whether ``data`` (a file or its bytes) is, or hides, a TorchScript archive
    (``torch.jit.save``), read from the archive's table of contents only: TorchScript keeps
    its Python source under ``code/`` and needs ``constants.pkl``; ``torch.save`` writes
    neither."""
    for name in _archive_names(data):
        parts = name.replace("\\", "/").split("/")
        if "code" in parts[:-1] or parts[-1] in ("constants.pkl", "bytecode.pkl", "model.json"):
            return True
    return False


def check_pickle_size(path: Path, where: str) -> None:
    """Refuse a checkpoint whose pickled part (``data.pkl``) exceeds ``max_pickle_bytes``,
    before it is unpickled (millions of labels cost minutes and gigabytes to unpickle)."""
    limit = get("max_pickle_bytes")
    try:
        with zipfile.ZipFile(path) as zf:
            sizes = [i.file_size for i in zf.infolist() if i.filename.endswith("data.pkl")]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # the legacy format: one pickle, as long as the file
    if any(size > limit for size in sizes):
        raise ModelLoadError(
            f"{where}: its pickled metadata is {max(sizes):,} bytes, more than allowed "
            f"({limit_hint('max_pickle_bytes')})"
        )


def refuse_torchscript(path: Path, display: str | None = None) -> None:
    """Raise :class:`UnsafeModelError` for a TorchScript file loaded without ``trust``."""
    name = display or path.name
    raise UnsafeModelError(
        f"{name} is TorchScript, which is code: loading it runs methods stored in the file "
        "(they can read and write files). Load it only if you trust its source: "
        "trust=True in Python, --trust-model on the command line; or save the weights as an "
        "xaiscope checkpoint (xaiscope.models.save_checkpoint), which loads without running code"
    )


def torch_load_reason(exc: BaseException) -> str:
    """The gist of a failed ``torch.load(weights_only=True)``, without torch's advice.

    torch suggests re-running with ``weights_only=False`` (or allow-listing globals), which
    runs arbitrary code from the file: never repeat that to a user of an unknown file.
    """
    text, prefix = str(exc), ""
    if "WeightsUnpickler error:" in text:
        # "Unsupported operand 122" (corrupt / not torch) or "Unsupported global: GLOBAL x"
        text, prefix = text.split("WeightsUnpickler error:", 1)[1], "safe unpickling: "
    elif isinstance(exc, EOFError) or not text.strip():
        return "the file is empty or cut short"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line]
    # keep the first sentence: the rest of torch's messages is advice
    first = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return prefix + first if first else type(exc).__name__


def check_labels(labels: Any, where: str) -> list[str]:
    """A declared label list as strings, at most ``max_labels`` of them."""
    if labels is None:
        return []
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise ModelLoadError(f"{where}: labels must be a list of names")
    limit = get("max_labels")
    if len(labels) > limit:
        raise ModelLoadError(
            f"{where}: declares {len(labels):,} labels, more than allowed "
            f"({limit_hint('max_labels')})"
        )
    if not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in labels):
        raise ModelLoadError(f"{where}: labels must be strings")
    out = [str(x) for x in labels]
    longest = max((len(x) for x in out), default=0)
    if longest > MAX_LABEL_CHARS:
        # every table, title and legend shows labels: megabyte labels stall them for minutes
        raise ModelLoadError(
            f"{where}: a label has {longest:,} characters (at most {MAX_LABEL_CHARS})"
        )
    return out


def check_input_size(size: Any, where: str) -> tuple[int, int]:
    """A declared (H, W) input size: two positive integers with H*W <= ``max_input_pixels``."""
    try:
        h, w = (int(v) for v in size)
        ok = all(isinstance(v, (int, float)) and float(v) == int(v) for v in size)
    except (TypeError, ValueError, OverflowError):
        ok, h, w = False, 0, 0
    if not ok or h < 1 or w < 1:
        raise ModelLoadError(f"{where}: input size {size!r} is not two positive integers (H, W)")
    limit = get("max_input_pixels")
    if h * w > limit:
        raise ModelLoadError(
            f"{where}: declares a {h}x{w} input, more pixels than allowed "
            f"({limit_hint('max_input_pixels')})"
        )
    return h, w


def check_normalisation(values: Any, where: str, what: str) -> list[float]:
    """Per-channel mean or std: 1 or 3 finite numbers (std positive)."""
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        out = []
    if len(out) not in (1, 3) or not all(math.isfinite(v) for v in out):
        raise ModelLoadError(f"{where}: {what} must be 1 or 3 finite numbers, got {values!r}")
    if what == "std" and any(v <= 0 for v in out):
        raise ModelLoadError(f"{where}: std must be positive, got {values!r}")
    return out


def check_stored(state: Mapping[str, torch.Tensor], stored_bytes: int, where: str) -> None:
    """Refuse weights that claim more values than the file stores.

    A saved tensor may be a view that repeats its storage (``expand`` gives stride 0) or
    many tensors may share one storage: a 52 KB file can then describe gigabytes of weights,
    which the real module allocates when they are copied in. Each tensor must be backed by
    its own values, and all of them together may not exceed ``max_inflation`` times the
    file's size (beyond 64 MiB).
    """
    total = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if nbytes > t.untyped_storage().nbytes():
            raise ModelLoadError(
                f"{where}: weight {name[:80]!r} declares {t.numel():,} values but the file "
                "stores fewer (a repeated view): not a checkpoint of real weights"
            )
        total += nbytes
    if not inflation_ok(total, stored_bytes):
        raise ModelLoadError(
            f"{where}: its weights unpack to {total:,} bytes from a file of {stored_bytes:,} "
            f"bytes; {limit_hint('max_inflation')}"
        )


def build_fitting(
    build: Callable[[], nn.Module],
    state: Mapping[str, torch.Tensor],
    where: str,
    stored_bytes: int,
) -> nn.Module:
    """Build a module for ``state`` (a state dict read from a file of ``stored_bytes``) only
    once it is known to fit.

    The weights must be stored, not implied (:func:`check_stored`), and the module is first
    built on the ``meta`` device, which allocates nothing: a file that declares a huge head
    (millions of labels) or a huge option (a width of 10**9) is refused because its weights
    do not match, before any real memory is spent on it.
    """
    check_stored(state, stored_bytes, where)
    with torch.device("meta"):
        probe = build()
    expected = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    del probe
    given = {k: tuple(v.shape) for k, v in state.items()}
    if expected != given:
        missing = sorted(set(expected) - set(given))
        extra = sorted(set(given) - set(expected))
        wrong = sorted(k for k in set(expected) & set(given) if expected[k] != given[k])
        detail = (
            f"missing {missing[0]!r}"
            if missing
            else f"unexpected {extra[0]!r}"
            if extra
            else f"{wrong[0]!r} is {given[wrong[0]]}, the architecture has {expected[wrong[0]]}"
        )
        raise ModelLoadError(f"{where}: the weights do not fit the architecture ({detail})")
    module = build()
    module.load_state_dict(dict(state))
    return module
