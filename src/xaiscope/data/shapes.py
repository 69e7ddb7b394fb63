"""``shapes``: a synthetic classification set where only the object tells the class.

Each image holds one large object of one of several shape classes (circle, square,
triangle, cross, star) at a random position, scale, rotation and colour, on a textured,
noisy background with small distractors, plus the object's ground-truth mask. It is built
so that a classifier has to look at the object to be right:

* object colour, background colours, texture, noise and the distractors are all drawn
  independently of the class, from the same distributions for every class;
* distractors are small strokes, dots and arcs, coloured like objects, never class shapes;
* shapes are scaled per class to about the same area, so the object's pixel count does not
  give the class away either (only its outline does);
* ``with_object=False`` draws the very same images without the object (same random draws),
  the control used to check that nothing outside the object predicts the label.

Everything derives from ``seed``: the same arguments give the same bytes on any machine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from xaiscope.data.dataset import ImageDataset
from xaiscope.errors import DatasetError

__all__ = ["SHAPE_CLASSES", "shapes"]

Polygon = list[tuple[float, float]]


def _regular(n: int, phase: float = 0.0) -> Polygon:
    return [
        (math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(points: int = 5, inner: float = 0.45) -> Polygon:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = -math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _cross(half_width: float = 0.34) -> Polygon:
    w = half_width
    return [
        (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
        (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
    ]  # fmt: skip


def _polygon_area(poly: Polygon) -> float:
    return 0.5 * abs(
        sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1], strict=True))
    )


def _circle() -> Polygon:
    return _regular(64)


#: Shape outlines with circumradius 1, centred on the origin.
_OUTLINES: dict[str, Callable[[], Polygon]] = {
    "circle": _circle,
    "square": lambda: _regular(4, math.pi / 4),
    "triangle": lambda: _regular(3, -math.pi / 2),
    "cross": _cross,
    "star": _star,
}

#: The class names, in label order.
SHAPE_CLASSES: tuple[str, ...] = tuple(_OUTLINES)

#: Rec. 601 luma weights: the object differs from what lies under it in brightness too.
_LUMA = np.array([0.299, 0.587, 0.114])

_AREAS = {name: _polygon_area(make()) for name, make in _OUTLINES.items()}
_MEAN_AREA = float(np.mean(list(_AREAS.values())))
#: Circumradius factor per class giving every class the same area at the same scale.
_EQUAL_AREA = {name: math.sqrt(_MEAN_AREA / a) for name, a in _AREAS.items()}


def shapes(
    n: int = 2000,
    size: int = 32,
    *,
    seed: int = 0,
    classes: Sequence[str] | int | None = None,
    distractors: tuple[int, int] = (2, 6),
    noise: tuple[float, float] = (0.02, 0.06),
    with_object: bool = True,
) -> ImageDataset:
    """Generate ``n`` images of ``size`` x ``size`` pixels (32 to 224) with their object masks.

    ``classes``: shape names from :data:`SHAPE_CLASSES` (default all five) or how many of
    them to use. Labels are balanced (counts differ by at most one) and shuffled.
    ``distractors`` is the (min, max) number of clutter items per image; ``noise`` the
    (min, max) standard deviation of the per-pixel Gaussian noise, in [0, 1] units.
    ``with_object=False`` leaves the object out of otherwise identical images (labels and
    masks unchanged), the control for "the class cannot be read off the background".

    Returns an :class:`ImageDataset` with ``images`` (n, size, size, 3) uint8, ``labels``
    (n,), and ``masks`` (n, size, size) bool: the visible pixels of the object.
    """
    names = _pick_classes(classes)
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DatasetError(f"shapes: n must be a positive number of images, got {n!r}")
    if not isinstance(size, (int, np.integer)) or not 32 <= size <= 224:
        raise DatasetError(f"shapes: size must be 32 to 224 pixels, got {size!r}")
    lo, hi = distractors
    if not 0 <= lo <= hi:
        raise DatasetError(
            f"shapes: distractors must be (min, max) with 0 <= min <= max, got {distractors}"
        )
    root = np.random.SeedSequence([int(seed), int(size), len(names)])
    label_rng, *image_seeds = (np.random.default_rng(s) for s in root.spawn(n + 1))
    labels = label_rng.permutation(np.arange(n) % len(names)).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        images[i], masks[i] = _render(
            image_seeds[i], names[labels[i]], int(size), (lo, hi), noise, with_object
        )
    return ImageDataset(
        images=images,
        labels=labels,
        classes=list(names),
        name="shapes",
        masks=masks,
        source={
            "dataset": "shapes",
            "n": int(n),
            "size": int(size),
            "seed": int(seed),
            "classes": list(names),
            "distractors": [lo, hi],
            "noise": list(noise),
            "with_object": with_object,
        },
    )


def _pick_classes(classes: Sequence[str] | int | None) -> list[str]:
    if classes is None:
        return list(SHAPE_CLASSES)
    if isinstance(classes, (int, np.integer)):
        if not 2 <= classes <= len(SHAPE_CLASSES):
            raise DatasetError(f"shapes: classes must be 2 to {len(SHAPE_CLASSES)}, got {classes}")
        return list(SHAPE_CLASSES[: int(classes)])
    names = [str(c) for c in classes]
    unknown = [c for c in names if c not in _OUTLINES]
    if unknown:
        raise DatasetError(
            f"shapes: unknown class(es) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(SHAPE_CLASSES)}"
        )
    if len(set(names)) != len(names) or len(names) < 2:
        raise DatasetError("shapes: classes must be at least two distinct shape names")
    return names


# --------------------------------------------------------------------------- rendering
def _render(
    rng: np.random.Generator,
    shape: str,
    size: int,
    distractors: tuple[int, int],
    noise: tuple[float, float],
    with_object: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) bool object mask.

    Every random draw happens whether or not the object is drawn, in the same order, so the
    image ``with_object=False`` differs from the full one only under the object.
    """
    # supersampled coverage masks give antialiased edges without a rendering library
    ss = 4 if size <= 64 else 2 if size <= 128 else 1
    canvas = _background(rng, size)

    for _ in range(int(rng.integers(distractors[0], distractors[1] + 1))):
        alpha = _distractor_alpha(rng, size, ss)
        colour = rng.uniform(0.0, 1.0, 3)
        canvas = canvas * (1 - alpha[..., None]) + colour * alpha[..., None]

    # object: circumradius 18-30 % of the side (36-60 % across), equal area for all classes
    scale = rng.uniform(0.18, 0.30) * size * _EQUAL_AREA[shape]
    aspect = rng.uniform(0.85, 1.15)
    angle = rng.uniform(0.0, 2 * math.pi)
    margin = scale * max(aspect, 1 / aspect) + 1.0
    cx = rng.uniform(margin, size - margin) if margin < size / 2 else size / 2
    cy = rng.uniform(margin, size - margin) if margin < size / 2 else size / 2
    poly = _place(_OUTLINES[shape](), cx, cy, scale, aspect, angle)
    alpha = _poly_alpha(poly, size, ss)
    mask = alpha >= 0.5
    below = canvas[mask].mean(0) if mask.any() else canvas.reshape(-1, 3).mean(0)
    # a colour that stands out from what lies under the object; the rule ignores the class
    colour = rng.uniform(0.0, 1.0, 3)
    for _ in range(50):
        if np.linalg.norm(colour - below) >= 0.5 and abs((colour - below) @ _LUMA) >= 0.2:
            break
        colour = rng.uniform(0.0, 1.0, 3)
    # slight shading across the object so it is not one flat colour
    yy, xx = _grid(size)
    theta = rng.uniform(0.0, 2 * math.pi)
    shade = 0.08 * ((xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)) / max(scale, 1.0)
    fill = np.clip(colour[None, None, :] + shade[..., None], 0.0, 1.0)
    if with_object:
        canvas = canvas * (1 - alpha[..., None]) + fill * alpha[..., None]

    sigma = rng.uniform(*noise)
    canvas = canvas + rng.normal(0.0, sigma, canvas.shape)
    image = np.clip(np.floor(canvas * 255.0 + 0.5), 0, 255).astype(np.uint8)
    return image, mask


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column coordinates, (size, size) float64 each (read-only, shared)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth two-colour field plus one random texture: (size, size, 3) floats in [0, 1]."""
    # two nearby colours: the field varies, but its edges stay softer than an object's
    c1 = rng.uniform(0.0, 1.0, 3)
    c2 = np.clip(c1 + rng.uniform(-0.3, 0.3, 3), 0.0, 1.0)
    grid = int(rng.integers(2, 6))
    coarse = rng.uniform(0.0, 1.0, (grid, grid))
    field = (
        np.asarray(
            Image.fromarray((coarse * 255).astype(np.uint8), mode="L").resize(
                (size, size), Image.Resampling.BICUBIC
            ),
            dtype=np.float64,
        )
        / 255.0
    )
    canvas = c1 * (1 - field[..., None]) + c2 * field[..., None]
    yy, xx = _grid(size)
    yy, xx = yy / size, xx / size
    kind = int(rng.integers(0, 4))
    amp = rng.uniform(0.03, 0.10)
    freq = rng.uniform(3.0, 10.0)
    phi = rng.uniform(0.0, 2 * math.pi)
    u = xx * math.cos(phi) + yy * math.sin(phi)
    v = -xx * math.sin(phi) + yy * math.cos(phi)
    phase = rng.uniform(0.0, 2 * math.pi)
    if kind == 0:  # stripes
        texture = np.sin(2 * math.pi * freq * u + phase)
    elif kind == 1:  # checks
        texture = np.sign(np.sin(2 * math.pi * freq * u + phase) * np.sin(2 * math.pi * freq * v))
    elif kind == 2:  # speckle: fine random blobs
        fine = rng.uniform(-1.0, 1.0, (max(2, size // 4), max(2, size // 4)))
        texture = (
            np.asarray(
                Image.fromarray(((fine + 1) * 127.5).astype(np.uint8), mode="L").resize(
                    (size, size), Image.Resampling.BILINEAR
                ),
                dtype=np.float64,
            )
            / 127.5
            - 1.0
        )
    else:  # plain
        texture = np.zeros((size, size))
    return np.clip(canvas + amp * texture[..., None], 0.0, 1.0)


def _place(
    poly: Polygon, cx: float, cy: float, scale: float, aspect: float, angle: float
) -> Polygon:
    ca, sa = math.cos(angle), math.sin(angle)
    out = []
    for x, y in poly:
        x, y = x * scale * aspect, y * scale / aspect
        out.append((cx + x * ca - y * sa, cy + x * sa + y * ca))
    return out


def _coverage(draw: Callable[[ImageDraw.ImageDraw, int], None], size: int, ss: int) -> np.ndarray:
    """Fraction of each pixel covered by what ``draw`` paints on a ``ss``-times finer grid."""
    hi = Image.new("L", (size * ss, size * ss), 0)
    draw(ImageDraw.Draw(hi), ss)
    lo = hi.resize((size, size), Image.Resampling.BOX) if ss > 1 else hi
    return np.asarray(lo, dtype=np.float64) / 255.0


def _poly_alpha(poly: Polygon, size: int, ss: int) -> np.ndarray:
    def paint(d: ImageDraw.ImageDraw, k: int) -> None:
        # pixel centres sit at +0.5: scale the continuous coordinates onto the fine grid
        d.polygon([(x * k, y * k) for x, y in poly], fill=255)

    return _coverage(paint, size, ss)


def _distractor_alpha(rng: np.random.Generator, size: int, ss: int) -> np.ndarray:
    """A stroke, a dot or an arc: small clutter that is never one of the class shapes."""
    kind = int(rng.integers(0, 3))
    x0, y0 = rng.uniform(0, size, 2)
    length = rng.uniform(0.12, 0.35) * size
    width = max(1.0, rng.uniform(0.025, 0.05) * size)
    angle = rng.uniform(0.0, 2 * math.pi)
    radius = rng.uniform(0.025, 0.06) * size
    span = rng.uniform(60.0, 200.0)

    def paint(d: ImageDraw.ImageDraw, k: int) -> None:
        w = max(1, round(width * k))
        if kind == 0:  # straight stroke
            x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
            d.line([(x0 * k, y0 * k), (x1 * k, y1 * k)], fill=255, width=w)
        elif kind == 1:  # small dot
            d.ellipse(
                [(x0 - radius) * k, (y0 - radius) * k, (x0 + radius) * k, (y0 + radius) * k],
                fill=255,
            )
        else:  # open arc of a circle: curved clutter, never a closed outline
            r = length / 2
            start = math.degrees(angle)
            d.arc(
                [(x0 - r) * k, (y0 - r) * k, (x0 + r) * k, (y0 + r) * k],
                start=start,
                end=start + span,
                fill=255,
                width=w,
            )

    return _coverage(paint, size, ss)
