"""Files a visitor uploads to the web app: where they are kept, how big they may be, and
what they are.

An upload comes from a stranger. Images are decoded by content under the app's own pixel
limit; a model file's type is read from its bytes (the name must agree), and files whose
loading runs code (plain pickles, TorchScript) are refused before any loader sees them.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path

import numpy as np

from xaiscope.errors import ImageLoadError, XaiscopeError
from xaiscope.models.file_checks import is_torchscript

#: Default limit on one uploaded file, in megabytes (``xaiscope app --max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 200
#: Model file types an upload may be, by what its bytes are (the name must agree).
MODEL_SUFFIXES = (".pt", ".pth", ".keras", ".h5", ".onnx")

# torch.save before 1.6 wrote a pickle that starts with this pickled magic number
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_ZIP = b"PK\x03\x04"

#: Why an uploaded TorchScript file is refused (after the file's name).
TORCHSCRIPT_REFUSED = (
    "the file is TorchScript, which is code that runs when it loads; the app does not load "
    "TorchScript. Upload an xaiscope checkpoint (xaiscope.models.save_checkpoint) instead, "
    "or use the command line with --trust-model on a file you trust"
)


class UploadError(XaiscopeError):
    """An uploaded file is refused: too large, not what its name says, or unsafe."""


class SessionFiles:
    """A private temporary folder for one browser session's uploads.

    Removed when the session's state is garbage-collected (the browser tab closed and the
    session expired), at :meth:`cleanup`, or when the server process exits.
    """

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="xaiscope-app-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def write(self, name: str, data: bytes) -> Path:
        """Store ``data`` as ``<sha256 of data><suffix of name>`` (never the uploaded name)."""
        digest = hashlib.sha256(data).hexdigest()
        suffix = Path(name).suffix.lower()
        target = self.path / f"{digest}{suffix}"
        if not target.exists():
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return target

    def cleanup(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


def check_size(data: bytes, name: str, max_mb: float) -> None:
    if len(data) > max_mb * 1024 * 1024:
        raise UploadError(
            f"{name}: {len(data) / 1024 / 1024:.1f} MB is over the upload limit of "
            f"{max_mb:g} MB (xaiscope app --max-upload-mb)"
        )


def read_image_upload(name: str, data: bytes, max_mb: float = DEFAULT_MAX_UPLOAD_MB) -> np.ndarray:
    """Decode an uploaded image by its content (Pillow, decompression-bomb guard on);
    the file name is only used in messages. (H, W, 3) uint8.

    Uploads come from strangers: the pixel limit is ``app_max_image_pixels``, passed to this
    call only (sessions run in threads; the process-wide ``max_image_pixels`` is untouched).
    """
    from xaiscope.data.images import load_image

    check_size(data, name, max_mb)
    try:
        return load_image(data, pixel_limit="app_max_image_pixels")
    except ImageLoadError as exc:
        # load_image calls bytes "<bytes>": the upload's own name is more useful
        raise ImageLoadError(str(exc).replace("<bytes>", repr(name))) from exc


def sniff_model(name: str, data: bytes) -> str:
    """The model file type of ``data`` (one of :data:`MODEL_SUFFIXES`), from its bytes.

    The uploaded name must agree with the content. A plain pickle and TorchScript are
    refused before any loader sees them: unpickling and ``torch.jit.load`` can run code.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise UploadError(
            f"{name}: not a model file name; upload one of {', '.join(MODEL_SUFFIXES)}"
        )
    # before the header checks: torch.jit.load finds a zip anywhere in a file (a legacy
    # torch header followed by a TorchScript archive loads as TorchScript)
    if is_torchscript(data):
        raise UploadError(f"{name}: {TORCHSCRIPT_REFUSED}")
    head = data[:16]
    if head.startswith(_ZIP):
        kind = _zip_kind(data)
        if kind == "keras" and suffix == ".keras":
            return ".keras"
        if kind == "torch" and suffix in (".pt", ".pth"):
            return suffix
        what = {"keras": "a Keras .keras archive", "torch": "a PyTorch archive"}.get(
            kind, "a zip archive that is neither a PyTorch nor a Keras model"
        )
        raise UploadError(f"{name}: the file is {what}, not what its name ({suffix}) says")
    if head.startswith(_HDF5):
        if suffix == ".h5":
            return ".h5"
        raise UploadError(f"{name}: the file is HDF5 (a Keras .h5 model), not {suffix}")
    if head.startswith(_LEGACY_TORCH):
        if suffix in (".pt", ".pth"):
            return suffix
        raise UploadError(f"{name}: the file is a legacy PyTorch file, not {suffix}")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        raise UploadError(
            f"{name}: the file is a plain Python pickle; refused because unpickling can run "
            "code. Save the model as an xaiscope checkpoint (xaiscope.models.save_checkpoint)"
        )
    if suffix == ".onnx":
        from xaiscope.models.onnx_model import is_onnx_model_bytes

        if is_onnx_model_bytes(data):
            return ".onnx"
    raise UploadError(
        f"{name}: the content is not a model file ({', '.join(MODEL_SUFFIXES)}): "
        f"it starts with {head[:8]!r}"
    )


def _zip_kind(data: bytes) -> str:
    """``keras``, ``torch`` (a ``torch.save`` archive), ``broken`` or ``other``, from the
    zip's table of contents (nothing in it is run or unpickled)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return "broken"
    if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
        return "keras"
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    return "other"
