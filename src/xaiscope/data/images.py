"""Load any image a user can hand us into one canonical array: (H, W, 3) uint8 RGB.

Every failure (missing file, not an image, truncated data, decompression bomb, bad array)
is raised as :class:`~xaiscope.errors.ImageLoadError` with a one-line message that names the
source, so the CLI can print it without a traceback.

Normalisation rules, shared by files, PIL images and numpy arrays:

* transparency (alpha channels, palette/tRNS transparency) is composited onto WHITE;
* 16-bit integer images are scaled by the 16-bit range (65535 -> 255), never clipped;
* 32-bit integer images (mode ``I``) are scaled by the 16-bit range when all values fit in
  0..65535 (how Pillow stores 16-bit data), otherwise min-max scaled to 0..255;
* float images (mode ``F``) in [0, 1] are scaled by 255, otherwise min-max scaled to 0..255
  (a constant image outside [0, 1] becomes black); NaN/inf become 0;
* the EXIF orientation tag is applied once (the tag is then dropped, so it cannot re-apply).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from xaiscope.errors import ImageLoadError

__all__ = ["MAX_PIXELS", "ImageSource", "image_id", "load_image", "sample_images"]

#: Largest image (width * height) that will be decoded from a file, bytes or stream.
#: Same default as Pillow's ``Image.MAX_IMAGE_PIXELS``, but enforced by us as well so the guard
#: holds even if someone set ``Image.MAX_IMAGE_PIXELS = None``. ``None`` disables our check.
MAX_PIXELS: int | None = 89_478_485

ImageSource: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_INT32_MODES = frozenset({"I", "I;32", "I;32L", "I;32B", "I;32N"})


def load_image(source: ImageSource) -> np.ndarray:
    """Load ``source`` as a C-contiguous (H, W, 3) uint8 RGB array.

    ``source`` may be a path, raw encoded bytes, a binary file-like object, a PIL image, or a
    numpy array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with dtype bool, uint8,
    uint16, another integer type with values in 0..255, or float with values in [0, 1].
    Only the first frame of multi-frame files is read. Files larger than :data:`MAX_PIXELS`
    are refused. Raises :class:`ImageLoadError` on every failure.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        pil = source  # a plain local keeps mypy's narrowing inside the lambda
        name = _one_line(getattr(pil, "filename", "") or "<PIL image>")
        return _decode_guarded(lambda: pil, name, check_size=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageLoadError("cannot load image <bytes>: no data (empty bytes)")
        return _decode_guarded(lambda: Image.open(io.BytesIO(data)), "<bytes>")
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(os.fsdecode(source)))
    if hasattr(source, "read"):
        stream: IO[bytes] = source
        stream_name = getattr(stream, "name", None)
        name = _one_line(stream_name) if isinstance(stream_name, str) else "<bytes>"
        return _decode_guarded(lambda: Image.open(stream), name)
    raise ImageLoadError(
        f"cannot load image: unsupported source type {type(source).__name__} "
        "(expected a path, bytes, a file object, a PIL image or a numpy array)"
    )


def image_id(source: object) -> str:
    """Return a short filesystem-safe stem naming ``source`` in output file names.

    The file stem for paths (and for file objects or PIL images that know their file name),
    ``"image"`` for arrays, bytes and anything else. At most 64 characters of ``[A-Za-z0-9._-]``.
    """
    name: object = None
    if isinstance(source, (str, os.PathLike)):
        name = os.fsdecode(source)
    elif isinstance(source, Image.Image):
        name = getattr(source, "filename", None)
    elif not isinstance(source, (bytes, bytearray, memoryview, np.ndarray)):
        name = getattr(source, "name", None)
    if not isinstance(name, str) or not name:
        return "image"
    stem = Path(name).stem
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:64].rstrip("._-")
    return safe or "image"


# Names in display order; "chelsea" first because it is the default sample everywhere.
# Each entry is bundled inside the scikit-image wheel, so none of them needs a download.
_SAMPLES: dict[str, Callable[[Any], np.ndarray]] = {
    "chelsea": lambda d: d.chelsea(),
    "coffee": lambda d: d.coffee(),
    "astronaut": lambda d: d.astronaut(),
    "rocket": lambda d: d.rocket(),
    "motorcycle": lambda d: d.stereo_motorcycle()[0],
    "coins": lambda d: d.coins(),
    "camera": lambda d: d.camera(),
}


def sample_images(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Return real photos bundled with scikit-image as {name: (H, W, 3) uint8 RGB}, offline.

    ``names=None`` returns all of them in a stable order starting with ``"chelsea"``
    (300 x 451). Grayscale samples (coins, camera) are replicated to three channels.
    Raises :class:`ImageLoadError` for an unknown name or a sample missing from the install.
    """
    if names is None:
        wanted: Sequence[str] = list(_SAMPLES)
    elif isinstance(names, str):  # a bare str is a Sequence[str] of characters
        wanted = [names]
    else:
        wanted = names
    unknown = [n for n in wanted if n not in _SAMPLES]
    if unknown:
        raise ImageLoadError(
            f"unknown sample image {', '.join(map(repr, unknown))}; "
            f"valid names: {', '.join(_SAMPLES)}"
        )
    try:
        import skimage.data as skdata
    except ImportError as exc:
        raise ImageLoadError(
            f"cannot load sample images: scikit-image is not installed ({_reason(exc)})"
        ) from exc
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        try:
            raw = _SAMPLES[name](skdata)
        except Exception as exc:  # e.g. a stripped install that would need a download
            raise ImageLoadError(
                f"cannot load sample image {name!r} from scikit-image: {_reason(exc)}"
            ) from exc
        out[name] = _from_array(np.asarray(raw), name=f"sample {name!r}")
    return out


# ---------------------------------------------------------------------------------------------
# decoding


def _load_path(path: Path) -> np.ndarray:
    name = _one_line(str(path))
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageLoadError(f"cannot load image {name}: file not found") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot load image {name}: {_reason(exc)}") from None
    if path.is_dir():
        raise ImageLoadError(f"cannot load image {name}: is a directory, not an image file")
    if st.st_size == 0:
        raise ImageLoadError(f"cannot load image {name}: file is empty")
    return _decode_guarded(lambda: Image.open(path), name)


def _decode_guarded(
    opener: Callable[[], Image.Image], name: str, *, check_size: bool = True
) -> np.ndarray:
    """Open, fully decode and normalise one image, mapping every failure to ImageLoadError."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb must not load.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = opener()
            try:
                if check_size:
                    _check_pixels(im, name)
                # Decode now, inside the guard: Image.open is lazy and errors surface here.
                im.load()
                return _pil_to_rgb(im, name)
            finally:
                if check_size:  # we opened it, so we close it; caller-owned images stay open
                    im.close()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(
                f"cannot load image {name}: refused as a decompression bomb, too many pixels "
                f"({_reason(exc)})"
            ) from None
        except UnidentifiedImageError:
            raise ImageLoadError(
                f"cannot load image {name}: not an image file (format not recognised)"
            ) from None
        except FileNotFoundError:  # removed between our stat() and Pillow's open()
            raise ImageLoadError(f"cannot load image {name}: file not found") from None
        except PermissionError:
            raise ImageLoadError(f"cannot load image {name}: permission denied") from None
        except MemoryError:
            raise ImageLoadError(f"cannot load image {name}: not enough memory to decode") from None
        except Exception as exc:  # every decoder error is a user-facing load error
            raise ImageLoadError(
                f"cannot load image {name}: truncated or corrupt image data ({_reason(exc)})"
            ) from None


def _check_pixels(im: Image.Image, name: str) -> None:
    limit = MAX_PIXELS
    width, height = im.size
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            f"cannot load image {name}: refused as a decompression bomb, too many pixels "
            f"({width}x{height} = {width * height} pixels exceeds the limit of {limit}; "
            "raise xaiscope.data.images.MAX_PIXELS to allow it)"
        )


def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    # exif_transpose returns a copy without the orientation tag, so a second call is a no-op.
    # Malformed EXIF must not cost a good image: it is then shown as stored.
    with contextlib.suppress(Exception):
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    trns = im.info.get("transparency")
    if mode == "RGB" and trns is None:
        return _finish(np.asarray(im))
    if mode in ("1", "L") and trns is None:
        return _finish(_gray_to_rgb(np.asarray(im.convert("L"))))
    if mode in _ALPHA_MODES or (trns is not None and mode in ("1", "L", "P", "RGB")):
        rgba = np.asarray(im.convert("RGBA"))
        return _finish(_composite(rgba[..., :3], rgba[..., 3]))
    if mode == "La":  # premultiplied L+alpha: Pillow cannot convert it, so un-premultiply here
        la = np.asarray(im).astype(np.float64)
        alpha = la[..., 1]
        gray = np.divide(la[..., 0] * 255.0, alpha, out=np.zeros_like(alpha), where=alpha > 0)
        return _finish(_composite(_gray_to_rgb(np.clip(gray, 0, 255)), alpha))
    if mode in _INT16_MODES or mode in _INT32_MODES or mode == "F":
        raw = np.asarray(im)
        if mode == "F":
            gray = _float_to_u8(raw.astype(np.float64))
        else:
            gray = _int_to_u8(raw.astype(raw.dtype.newbyteorder("=")), int32=mode in _INT32_MODES)
        rgb = _gray_to_rgb(gray)
        if isinstance(trns, (int, float)) and mode != "F":
            return _finish(_composite(rgb, np.where(raw == trns, 0, 255)))
        return _finish(rgb)
    # CMYK, YCbCr, HSV, P without transparency, RGBX, ...: Pillow knows the colour maths.
    try:
        return _finish(np.asarray(im.convert("RGB")))
    except ValueError as exc:
        raise ImageLoadError(
            f"cannot load image {name}: unsupported image mode {mode!r} ({_reason(exc)})"
        ) from None


def _int_to_u8(raw: np.ndarray, *, int32: bool) -> np.ndarray:
    """Scale integer samples to 0..255 by the 16-bit range, or min-max where 32-bit samples
    leave it (never clips)."""
    values = raw.astype(np.int64)
    lo, span = 0, 65535
    if int32 and values.size and (values.min() < 0 or values.max() > 65535):
        # the full int32 range would squeeze any real content into one grey level
        lo, hi = int(values.min()), int(values.max())
        span = max(hi - lo, 1)
    # Integer round-half-up: 65535 -> 255, 32768 -> 128, 0 -> 0.
    return ((values - lo) * 255 * 2 + span) // (2 * span)


def _float_to_u8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats are scaled by 255; anything else is min-max scaled (constant -> 0)."""
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = float(clean[finite].min()), float(clean[finite].max())
    if lo >= 0.0 and hi <= 1.0:
        scaled = clean * 255.0
    elif hi > lo:
        scaled = np.where(finite, (clean - lo) * (255.0 / (hi - lo)), 0.0)
    else:
        scaled = np.zeros_like(clean)
    return _round_u8(scaled)


# ---------------------------------------------------------------------------------------------
# numpy input and helpers


def _from_array(arr: np.ndarray, name: str = "<array>") -> np.ndarray:
    prefix = f"cannot load image {name}"
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        hint = " (channels-first? expected channels-last)" if arr.ndim == 3 else ""
        raise ImageLoadError(
            f"{prefix}: array shape {arr.shape} is not (H, W), (H, W, 1), (H, W, 3) "
            f"or (H, W, 4){hint}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageLoadError(f"{prefix}: array shape {arr.shape} is empty")
    values: np.ndarray
    if arr.dtype == np.bool_:
        values = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint8:
        values = arr
    elif arr.dtype == np.uint16:
        values = _int_to_u8(arr, int32=False)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageLoadError(
                f"{prefix}: {arr.dtype} array values [{lo}, {hi}] are outside 0..255 "
                "(pass uint8, uint16, or floats in [0, 1])"
            )
        values = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{prefix}: float array contains NaN or infinity")
        flo, fhi = float(arr.min()), float(arr.max())
        if flo < 0.0 or fhi > 1.0:
            raise ImageLoadError(
                f"{prefix}: float array values [{flo:g}, {fhi:g}] are outside [0, 1] "
                "(scale to [0, 1] or pass uint8)"
            )
        values = arr.astype(np.float64) * 255.0
    else:
        raise ImageLoadError(f"{prefix}: unsupported array dtype {arr.dtype}")
    if values.ndim == 2:
        return _finish(_gray_to_rgb(values))
    if values.shape[-1] == 4:
        return _finish(_composite(values[..., :3], values[..., 3]))
    return _finish(values)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``rgb`` (0..255) over white with ``alpha`` (0..255): a=0 -> white, a=255 -> rgb."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1.0 - a)


def _round_u8(values: np.ndarray) -> np.ndarray:
    # Round half up (np.rint rounds half to even), then clamp float noise at the ends.
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def _finish(values: np.ndarray) -> np.ndarray:
    if values.dtype != np.uint8:
        values = _round_u8(values.astype(np.float64))
    # Always a fresh, writable, C-ordered array: never a view of the caller's data or of PIL.
    return np.array(values, dtype=np.uint8, order="C", copy=True)


def _reason(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
