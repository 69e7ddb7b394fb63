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

import functools
import io
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from xaiscope.errors import ImageLoadError, ParameterError
from xaiscope.settings import get, limit_hint

__all__ = ["ImageSource", "decoded_bytes", "image_id", "load_image", "sample_images"]

#: The settings that may bound the pixels of one image (``load_image(pixel_limit=...)``).
PIXEL_LIMITS = ("max_image_pixels", "app_max_image_pixels")


def __getattr__(name: str) -> Any:
    # MAX_PIXELS was a module constant; it now reads xs.config()["max_image_pixels"]
    if name == "MAX_PIXELS":
        return get("max_image_pixels")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


ImageSource: TypeAlias = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_INT32_MODES = frozenset({"I", "I;32", "I;32L", "I;32B", "I;32N"})


def load_image(source: ImageSource, *, pixel_limit: str = "max_image_pixels") -> np.ndarray:
    """Load ``source`` as a C-contiguous (H, W, 3) uint8 RGB array.

    ``source`` may be a path, raw encoded bytes, a binary file-like object, a PIL image, or a
    numpy array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with dtype bool, uint8,
    uint16, another integer type with values in 0..255, or float with values in [0, 1].
    Only the first frame of multi-frame files is read. Images of more pixels than the setting
    ``pixel_limit`` (``xs.config(max_image_pixels=...)``; the web app passes
    ``"app_max_image_pixels"``), or whose decoded buffer would exceed ``max_image_bytes``,
    are refused from the file header, before decoding. Raises :class:`ImageLoadError` on
    every failure.
    """
    if pixel_limit not in PIXEL_LIMITS:
        raise ParameterError(
            f"pixel_limit={pixel_limit!r}: expected one of {', '.join(PIXEL_LIMITS)}"
        )
    if isinstance(source, np.ndarray):
        return _from_array(source, pixel_limit=pixel_limit)
    if isinstance(source, Image.Image):
        pil = source  # a plain local keeps mypy's narrowing inside the lambda
        name = _one_line(getattr(pil, "filename", "") or "<PIL image>")
        return _decode_guarded(lambda: pil, name, pixel_limit=pixel_limit, owned=False)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ImageLoadError("cannot load image <bytes>: no data (empty bytes)")
        return _decode_guarded(
            lambda: Image.open(io.BytesIO(data)), "<bytes>", pixel_limit=pixel_limit
        )
    if isinstance(source, (str, os.PathLike)):
        return _load_path(Path(os.fsdecode(source)), pixel_limit)
    if hasattr(source, "read"):
        stream: IO[bytes] = source
        stream_name = getattr(stream, "name", None)
        name = _one_line(stream_name) if isinstance(stream_name, str) else "<bytes>"
        return _decode_guarded(lambda: Image.open(stream), name, pixel_limit=pixel_limit)
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

#: rows are converted in blocks of about this many pixels, so the int64/float64 arithmetic
#: that pins the rounding rules costs a few MB whatever the image size
_BLOCK_PIXELS = 1 << 16

_TRANSPOSE_ORIENTATIONS = frozenset(range(2, 9))


def _load_path(path: Path, pixel_limit: str) -> np.ndarray:
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
    return _decode_guarded(lambda: Image.open(path), name, pixel_limit=pixel_limit)


def _decode_guarded(
    opener: Callable[[], Image.Image],
    name: str,
    *,
    pixel_limit: str,
    owned: bool = True,
) -> np.ndarray:
    """Open, check, fully decode and normalise one image, mapping every failure to
    ImageLoadError. ``owned``: we opened it, so we may change and must close it."""
    with warnings.catch_warnings():
        # Pillow's remarks on odd files (corrupt EXIF, palette transparency) would add lines
        # to the one-line contract; what matters is raised below
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        # an ICO whose entry holds a bigger PNG than its directory says: its header lied
        warnings.filterwarnings("error", message="Image was not the expected size")
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb must not load.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = opener()
            try:
                # from the header, before Image.load() makes the buffer
                _check_size(im, name, pixel_limit)
                # Decode now, inside the guard: Image.open is lazy and errors surface here.
                im.load()
                return _pil_to_rgb(im, name, owned=owned)
            finally:
                if owned:  # caller-owned images stay open
                    im.close()
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(
                f"cannot load image {name}: refused as a decompression bomb, too many pixels "
                f"({_reason(exc)}); {limit_hint(pixel_limit)}, and Pillow's own "
                f"PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS} for larger images"
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


def decoded_bytes(mode: str, width: int, height: int) -> int:
    """Bytes of the buffer Pillow allocates for a ``mode`` image: 8-bit images of 2 to 4
    bands take 4 bytes a pixel (Pillow pads them), ``I;16`` 2, ``I`` and ``F`` 4."""
    try:
        info = ImageMode.getmode(mode)
        bands, size = len(info.bands), np.dtype(info.typestr).itemsize
    except (KeyError, TypeError, ValueError):
        bands, size = 4, 1  # an unknown mode: assume the common 32-bit pixel
    per_pixel = 4 if size == 1 and bands > 1 else bands * size
    return width * height * per_pixel


def _check_size(im: Image.Image, name: str, pixel_limit: str) -> None:
    width, height = im.size
    _check_pixels(width, height, name, pixel_limit)
    nbytes = decoded_bytes(im.mode, width, height)
    if nbytes > get("max_image_bytes"):
        raise ImageLoadError(
            f"cannot load image {name}: refused, its decoded buffer is too large "
            f"({width}x{height} {im.mode} = {nbytes:,} bytes); {limit_hint('max_image_bytes')}"
        )


def _check_pixels(width: int, height: int, name: str, pixel_limit: str) -> None:
    if width * height > get(pixel_limit):
        raise ImageLoadError(
            f"cannot load image {name}: refused as a decompression bomb, too many pixels "
            f"({width}x{height} = {width * height:,} pixels); {limit_hint(pixel_limit)}"
        )


def _oriented(im: Image.Image, *, owned: bool) -> Image.Image:
    """Apply the EXIF orientation; the tag is dropped, so a second call is a no-op.

    Malformed EXIF must not cost a good image: it is then shown as stored. Pillow copies the
    whole image even when there is nothing to turn, so the tag is looked at first.
    """
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation not in _TRANSPOSE_ORIENTATIONS:
            return im
        if owned:  # in place: the stored copy is freed as soon as it is turned
            ImageOps.exif_transpose(im, in_place=True)
            return im
        turned = ImageOps.exif_transpose(im)
    except Exception:
        return im
    return turned if turned is not None else im


def _pil_to_rgb(im: Image.Image, name: str, *, owned: bool = False) -> np.ndarray:
    im = _oriented(im, owned=owned)
    width, height = im.size
    mode = im.mode
    trns = im.info.get("transparency")

    def rows(r0: int, r1: int, convert: str | None = None) -> np.ndarray:
        part = im.crop((0, r0, width, r1))
        return np.asarray(part.convert(convert) if convert else part)

    block: Callable[[int, int], np.ndarray]
    if mode == "RGB" and trns is None:
        block = rows
    elif mode in ("1", "L") and trns is None:
        block = functools.partial(rows, convert="L")
    elif mode in _ALPHA_MODES or (trns is not None and mode in ("1", "L", "P", "RGB")):
        block = functools.partial(rows, convert="RGBA")
    elif mode == "La":  # premultiplied L+alpha: Pillow cannot convert it, so un-premultiply here

        def block(r0: int, r1: int) -> np.ndarray:
            la = rows(r0, r1).astype(np.float64)
            alpha = la[..., 1]
            gray = np.divide(la[..., 0] * 255.0, alpha, out=np.zeros_like(alpha), where=alpha > 0)
            return _composite(np.clip(gray, 0, 255)[..., None], alpha)

    elif mode in _INT16_MODES or mode in _INT32_MODES or mode == "F":
        block = _deep_gray_blocks(rows, height, width, mode, trns)
    else:
        # CMYK, YCbCr, HSV, P without transparency, RGBX, ...: Pillow knows the colour maths.
        try:
            im.crop((0, 0, 1, 1)).convert("RGB")
        except ValueError as exc:
            raise ImageLoadError(
                f"cannot load image {name}: unsupported image mode {mode!r} ({_reason(exc)})"
            ) from None
        block = functools.partial(rows, convert="RGB")
    return _by_blocks(height, width, block)


def _deep_gray_blocks(
    rows: Callable[[int, int], np.ndarray], height: int, width: int, mode: str, trns: Any
) -> Callable[[int, int], np.ndarray]:
    """Blocks of 16-bit, 32-bit or float gray rows as 0..255 values; a first pass over the
    rows finds the range where the scaling rule needs it."""
    spans = _row_spans(height, width)
    if mode == "F":
        lo, hi, any_finite = np.inf, -np.inf, False
        for r0, r1 in spans:
            raw = rows(r0, r1)
            finite = np.isfinite(raw)
            if finite.any():
                any_finite = True
                lo = min(lo, float(raw[finite].min()))
                hi = max(hi, float(raw[finite].max()))

        def block(r0: int, r1: int) -> np.ndarray:
            values = rows(r0, r1).astype(np.float64)
            if not any_finite:
                return np.zeros(values.shape, dtype=np.uint8)
            return _float_to_u8(values, lo, hi)

        return block
    lo_i, span = 0, 65535
    if mode in _INT32_MODES:
        found = [(int(b.min()), int(b.max())) for b in (rows(r0, r1) for r0, r1 in spans)]
        vmin, vmax = min(f[0] for f in found), max(f[1] for f in found)
        if vmin < 0 or vmax > 65535:
            # the full int32 range would squeeze any real content into one grey level
            lo_i, span = vmin, max(vmax - vmin, 1)

    def int_block(r0: int, r1: int) -> np.ndarray:
        raw = rows(r0, r1)
        gray = _int_to_u8(raw, lo_i, span)
        if isinstance(trns, (int, float)):
            return _composite(gray[..., None], np.where(raw == trns, 0, 255))
        return gray

    return int_block


def _int_to_u8(raw: np.ndarray, lo: int = 0, span: int = 65535) -> np.ndarray:
    """Scale integer samples to 0..255 as uint8: ``lo`` maps to 0 and ``lo + span`` to 255
    (the 16-bit range by default; never clips)."""
    # Integer round-half-up: 65535 -> 255, 32768 -> 128, 0 -> 0. 16-bit samples fit uint32
    # (65535 * 510 + 65535 < 2**32), a quarter of the memory and time of int64.
    wide = np.uint32 if lo == 0 and span == 65535 else np.int64  # the 16-bit rule: 0..65535
    values: np.ndarray[Any, np.dtype[np.integer[Any]]] = raw.astype(wide)
    if lo:
        values -= lo
    values *= 255 * 2
    values += span
    values //= 2 * span
    return values.astype(np.uint8)


def _float_to_u8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Floats whose finite range is [lo, hi]: scaled by 255 when in [0, 1], otherwise
    min-max scaled (constant -> 0); NaN and infinity become 0."""
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        scaled = clean * 255.0
    elif hi > lo:
        scaled = np.where(finite, (clean - lo) * (255.0 / (hi - lo)), 0.0)
    else:
        scaled = np.zeros_like(clean)
    return _round_u8(scaled)


def _row_spans(height: int, width: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_PIXELS // max(width, 1))
    return [(r, min(height, r + step)) for r in range(0, height, step)]


def _by_blocks(height: int, width: int, block: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """The (H, W, 3) uint8 result, filled block of rows by block: ``block(r0, r1)`` gives
    0..255 values of shape (rows, W) gray, (rows, W, 1), (rows, W, 3) or (rows, W, 4) RGBA
    (composited onto white), in any dtype (rounded half up)."""
    out = np.empty((height, width, 3), dtype=np.uint8)
    for r0, r1 in _row_spans(height, width):
        values = _rgb_u8(block(r0, r1))
        if values.shape[-1] == 1:
            # one channel at a time: a broadcasting (..., 1) -> (..., 3) copy is 10x slower
            for c in range(3):
                out[r0:r1, :, c] = values[..., 0]
        else:
            out[r0:r1] = values
    return out


def _rgb_u8(values: np.ndarray) -> np.ndarray:
    if values.ndim == 2:
        values = values[..., None]
    elif values.shape[-1] == 4:
        values = _composite(values[..., :3], values[..., 3])
    return values if values.dtype == np.uint8 else _round_u8(values.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# numpy input and helpers


def _from_array(
    arr: np.ndarray, name: str = "<array>", pixel_limit: str = "max_image_pixels"
) -> np.ndarray:
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
    height, width = int(arr.shape[0]), int(arr.shape[1])
    # the array exists already; the limit bounds the result and the conversion's buffers
    _check_pixels(width, height, name, pixel_limit)
    spans = _row_spans(height, width)
    block: Callable[[int, int], np.ndarray]
    if arr.dtype == np.bool_:

        def block(r0: int, r1: int) -> np.ndarray:
            return arr[r0:r1].astype(np.uint8) * np.uint8(255)

    elif arr.dtype == np.uint8:

        def block(r0: int, r1: int) -> np.ndarray:
            return arr[r0:r1]

    elif arr.dtype == np.uint16:

        def block(r0: int, r1: int) -> np.ndarray:
            return _int_to_u8(arr[r0:r1])

    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ImageLoadError(
                f"{prefix}: {arr.dtype} array values [{lo}, {hi}] are outside 0..255 "
                "(pass uint8, uint16, or floats in [0, 1])"
            )

        def block(r0: int, r1: int) -> np.ndarray:
            return arr[r0:r1].astype(np.uint8)

    elif np.issubdtype(arr.dtype, np.floating):
        if not all(np.isfinite(arr[r0:r1]).all() for r0, r1 in spans):
            raise ImageLoadError(f"{prefix}: float array contains NaN or infinity")
        flo, fhi = float(arr.min()), float(arr.max())
        if flo < 0.0 or fhi > 1.0:
            raise ImageLoadError(
                f"{prefix}: float array values [{flo:g}, {fhi:g}] are outside [0, 1] "
                "(scale to [0, 1] or pass uint8)"
            )

        def block(r0: int, r1: int) -> np.ndarray:
            return arr[r0:r1].astype(np.float64) * 255.0

    else:
        raise ImageLoadError(f"{prefix}: unsupported array dtype {arr.dtype}")
    return _by_blocks(height, width, block)


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``rgb`` (0..255) over white with ``alpha`` (0..255): a=0 -> white, a=255 -> rgb."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return rgb.astype(np.float64) * a + 255.0 * (1.0 - a)


def _round_u8(values: np.ndarray) -> np.ndarray:
    # Round half up (np.rint rounds half to even), then clamp float noise at the ends.
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def _reason(exc: BaseException) -> str:
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
