"""Shared pieces of the hostile-input tests (issue 18): a TorchScript file that writes when
it is loaded, a pickle that writes when it is unpickled, and checks of one-line errors and
traced memory."""

from __future__ import annotations

import io
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

MB = 1 << 20
#: what a canary file holds until a payload overwrites it with b"AAAA"
CLEAN = b"\x00\x00\x00\x00"


class Evil(torch.nn.Module):
    """Loading this module's TorchScript writes b"AAAA" into the file at ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))  # (N, 3) scores: a classifier once it is (trusted and) loaded

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.path = state[0]
        t = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        # reading the bytes back keeps TorchScript from dropping the write as dead code
        self.training = bool(t.fill_(65).sum() > 0) and state[1]


def evil_torchscript(canary: Path) -> bytes:
    """A TorchScript file that overwrites ``canary`` when loaded; ``canary`` starts clean."""
    canary.write_bytes(CLEAN)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch >= 2.9 deprecates torch.jit
        torch.jit.save(torch.jit.script(Evil(str(canary))), buf)
    assert canary.read_bytes() == CLEAN  # saving runs nothing
    return buf.getvalue()


class Canary:
    """Unpickling this object creates the file at ``path``: proof that a pickle ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def one_line(exc: BaseException, *names: str) -> str:
    """``exc``'s message, asserted to be one line that contains every one of ``names``."""
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    for name in names:
        assert name in message, message
    return message


def traced(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()``'s result (or the exception it raised) and the peak of traced memory."""
    tracemalloc.start()
    try:
        try:
            result: Any = fn()
        except Exception as exc:
            result = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def npy_header(shape: tuple[int, ...], dtype: Any) -> bytes:
    """A version 1.0 .npy header declaring ``shape`` and ``dtype`` (no data)."""
    d = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    text = repr({**d, "shape": shape}).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * (pad % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


#: Source of ``peak()``, for scripts run in a subprocess: the process's own high-water mark
#: of resident memory (VmHWM); ``ru_maxrss`` would start at the parent's peak, which Linux
#: copies at fork
PEAK_SOURCE = """
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
"""
