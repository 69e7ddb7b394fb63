"""Map normalisation and colouring: the only place where attribution maps are rescaled.

Every function takes a raw map (any float array, un-normalised, as ``Explanation.maps``
holds it) and returns display-ready arrays. Nothing here touches pyplot.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.colors import Colormap

from xaiscope.errors import ParameterError

CmapLike = str | Colormap

#: Colour of positive and negative evidence in :func:`signed` (RGB, 0..255).
POSITIVE_RGB = np.array([0.0, 200.0, 0.0], dtype=np.float32)
NEGATIVE_RGB = np.array([220.0, 0.0, 0.0], dtype=np.float32)


def as_map(map: Any) -> np.ndarray:
    """A float32 numpy copy of ``map`` (numpy, torch tensor, nested list) with NaN/inf -> 0."""
    if hasattr(map, "detach"):  # a torch tensor, without importing torch here
        map = map.detach().float().cpu().numpy()
    arr = np.asarray(map, dtype=np.float32)
    return np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)


def as_2d(map: Any) -> np.ndarray:
    """:func:`as_map` squeezed to (H, W); raises :class:`ParameterError` for other shapes."""
    arr = as_map(map)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.size == 0:
        raise ParameterError(f"expected one (H, W) map, got an array of shape {arr.shape}")
    return arr


def normalize(map: Any, *, signed: bool = False, percentile: float = 99.5) -> np.ndarray:
    """Rescale ``map`` for display: float32 in [0, 1], or [-1, 1] when ``signed``.

    Unsigned: values are divided by their ``percentile``-th value (so a few extreme pixels
    do not wash out the rest) and clipped; zero stays zero for non-negative maps (CAMs),
    and maps with negative values are shifted so their low percentile maps to 0.
    Signed: values are divided by the ``percentile``-th value of ``|map|`` (symmetric, so
    zero stays zero and the signs keep their meaning) and clipped to [-1, 1].
    A constant map gives zeros.
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise ParameterError(f"percentile must be in (0, 100], got {percentile}")
    arr = as_map(map)
    if arr.size == 0:
        return arr
    if signed:
        mag = np.abs(arr)
        scale = float(np.percentile(mag, percentile))
        if scale <= 0.0:
            scale = float(mag.max())
        if scale <= 0.0:
            return np.zeros_like(arr)
        return np.clip(arr / scale, -1.0, 1.0).astype(np.float32)
    lo = 0.0 if float(arr.min()) >= 0.0 else float(np.percentile(arr, 100.0 - percentile))
    hi = float(np.percentile(arr, percentile))
    if hi <= lo:  # a very sparse map: fall back to the full range
        lo, hi = min(lo, float(arr.min())), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def is_signed(map: Any) -> bool:
    """Whether ``map`` holds both positive and negative evidence (IG, gradient x input)."""
    arr = as_map(map)
    return bool(arr.size) and float(arr.min()) < 0.0 < float(arr.max())


def get_cmap(cmap: CmapLike) -> Colormap:
    """A matplotlib colormap by name (or the Colormap itself)."""
    if isinstance(cmap, Colormap):
        return cmap
    import matplotlib

    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ParameterError(
            f"unknown colormap {cmap!r} (any name in matplotlib.colormaps, e.g. jet, viridis, "
            "inferno, magma, turbo)"
        ) from None


def heatmap(map: Any, cmap: CmapLike = "jet", *, percentile: float = 99.5) -> np.ndarray:
    """Colour an (H, W) map with ``cmap`` after :func:`normalize`: (H, W, 3) uint8."""
    norm = normalize(as_2d(map), percentile=percentile)
    rgba = get_cmap(cmap)(norm, bytes=True)
    return np.ascontiguousarray(rgba[..., :3], dtype=np.uint8)


def signed(map: Any, *, percentile: float = 99.5) -> np.ndarray:
    """Signed colouring of an (H, W) map: positive green, negative red, zero black; uint8."""
    norm = normalize(as_2d(map), signed=True, percentile=percentile)
    pos = np.clip(norm, 0.0, 1.0)[..., None]
    neg = np.clip(-norm, 0.0, 1.0)[..., None]
    rgb = pos * POSITIVE_RGB + neg * NEGATIVE_RGB
    return _to_u8(rgb)


def overlay(
    image_uint8: Any,
    map: Any,
    alpha: float = 0.5,
    cmap: CmapLike = "jet",
    *,
    signed: bool = False,
    percentile: float = 99.5,
) -> np.ndarray:
    """Blend a map over an image: (H, W, 3) uint8 at the image's size.

    The map is resized (bilinear) to the image when sizes differ. ``alpha`` is the heatmap's
    weight. With ``signed=True`` the map is coloured green/red and blended in proportion to
    ``|map|``, so pixels without evidence show the image unchanged.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ParameterError(f"alpha must be in [0, 1], got {alpha}")
    image = as_image(image_uint8)
    h, w = image.shape[:2]
    m = resize_map(as_2d(map), (h, w))
    base = image.astype(np.float32)
    if signed:
        norm = normalize(m, signed=True, percentile=percentile)
        colour = np.where(norm[..., None] >= 0, POSITIVE_RGB, NEGATIVE_RGB)
        weight = float(alpha) * np.abs(norm)[..., None]
        return _to_u8(base * (1.0 - weight) + colour * weight)
    heat = heatmap(m, cmap, percentile=percentile).astype(np.float32)
    return _to_u8(base * (1.0 - float(alpha)) + heat * float(alpha))


def as_image(image: Any) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image from anything :func:`xaiscope.load_image` reads."""
    if (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[-1] == 3
    ):
        return image
    from xaiscope.data.images import load_image

    return load_image(image)


#: Figures show an image with at most this many pixels on its long side. A 50-megapixel
#: photo drawn at full size costs gigabytes in matplotlib's RGBA buffers and looks the same.
DISPLAY_MAX = 2048


def display_image(image: Any) -> np.ndarray:
    """:func:`as_image`, downsampled (antialiased) to at most :data:`DISPLAY_MAX` pixels on
    the long side for figures; maps drawn over it are resized to its size."""
    img = as_image(image)
    h, w = img.shape[:2]
    scale = DISPLAY_MAX / max(h, w)
    if scale >= 1:
        return img
    from PIL import Image

    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def display_map(map: np.ndarray) -> np.ndarray:
    """An (h, w) map downsampled like :func:`display_image` when it is larger."""
    h, w = map.shape[:2]
    scale = DISPLAY_MAX / max(h, w)
    if scale >= 1:
        return map
    return resize_map(map, (max(1, round(h * scale)), max(1, round(w * scale))))


def resize_map(map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) float map to ``size`` = (H, W); a no-op when equal."""
    if tuple(map.shape) == tuple(size):
        return map
    from PIL import Image

    pil = Image.fromarray(np.ascontiguousarray(map, dtype=np.float32))  # mode "F"
    out = pil.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def _to_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)
