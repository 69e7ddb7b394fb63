"""Bad uploads the app must refuse, built in memory."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def not_an_image() -> bytes:
    """Text that a user renamed to ``.png``."""
    return b"name,score\nchelsea,0.9\n" * 20


def bomb_png(side: int = 100_000) -> bytes:
    """A tiny PNG whose header claims side x side pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Payload:
    """Unpickling this creates ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path) -> bytes:
    """A plain pickle that writes ``marker`` when loaded, as a user would rename to .pt."""
    return pickle.dumps(_Payload(marker), protocol=4)


def torch_zip_payload(marker: Path) -> bytes:
    """The same payload inside a ``torch.save`` zip archive."""
    import torch

    buf = io.BytesIO()
    torch.save({"state_dict": _Payload(marker)}, buf)
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
