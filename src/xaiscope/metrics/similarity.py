"""Similarity of two attribution maps: Spearman, Pearson, top-k intersection, SSIM.

Used by :func:`xaiscope.compare` (agreement between methods) and by the model-randomisation
sanity check (trained vs randomised maps), following Adebayo et al. (2018), "Sanity Checks
for Saliency Maps" (NeurIPS), which compares maps by Spearman rank correlation (with and
without absolute values) and by SSIM. Each function takes two maps of the same shape
(any number of dimensions, flattened) and returns a float.

A constant map has no ordering and no variance: its Spearman and Pearson correlation with
anything is reported as 0 (no shared ordering), not NaN, so means stay defined.
"""

from __future__ import annotations

import numpy as np

from xaiscope.errors import ParameterError


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ParameterError(f"maps of different shapes: {a.shape} and {b.shape}")
    return a.ravel(), b.ravel()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the values of two maps, in [-1, 1] (0 if either is constant)."""
    x, y = _pair(a, b)
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    # relative threshold: a map that is constant up to float rounding has no ordering
    if den <= 1e-12 * max(1.0, float(np.abs(x).max(initial=0.0) * np.abs(y).max(initial=0.0))):
        return 0.0
    return float(np.clip((x * y).sum() / den, -1.0, 1.0))


def spearman(a: np.ndarray, b: np.ndarray, *, absolute: bool = False) -> float:
    """Spearman rank correlation (Pearson of average ranks; ties share their mean rank).

    ``absolute=True`` ranks ``|a|`` and ``|b|`` (Adebayo et al. report both).
    """
    from scipy.stats import rankdata

    x, y = _pair(a, b)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    return pearson(rankdata(x), rankdata(y))


def top_k_mask(a: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Boolean mask of the ``k`` largest values of ``a`` (flattened); ties broken at random
    (``rng``) so that a constant map does not select its first pixels."""
    x = np.asarray(a, dtype=np.float64).ravel()
    k = int(min(max(k, 0), x.size))
    rng = rng or np.random.default_rng(0)
    order = np.lexsort((rng.random(x.size), -x))  # by value descending, then random
    out = np.zeros(x.size, dtype=bool)
    out[order[:k]] = True
    return out


def top_k_intersection(
    a: np.ndarray,
    b: np.ndarray,
    *,
    k: float | int = 0.1,
    absolute: bool = False,
    rng: np.random.Generator | None = None,
) -> float:
    """Share of the top-k pixels of ``a`` that are also among the top-k of ``b``, in [0, 1].

    ``k``: a fraction of the pixels (float in (0, 1]) or a pixel count (int). Two independent
    random maps score k / pixels on average.
    """
    x, y = _pair(a, b)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    n = _k_pixels(k, x.size)
    rng = rng or np.random.default_rng(0)
    return float((top_k_mask(x, n, rng) & top_k_mask(y, n, rng)).sum() / n)


def _k_pixels(k: float | int, size: int) -> int:
    if isinstance(k, (bool, np.bool_)):
        raise ParameterError(f"k must be a fraction in (0, 1] or a pixel count, got {k!r}")
    if isinstance(k, (int, np.integer)):
        if k < 1:
            raise ParameterError(f"k must be at least 1 pixel, got {k}")
        return int(min(k, size))
    if not 0.0 < float(k) <= 1.0:
        raise ParameterError(f"k as a fraction must be in (0, 1], got {k}")
    return max(1, int(round(float(k) * size)))


def normalize01(a: np.ndarray) -> np.ndarray:
    """Min-max scaling to [0, 1] (a constant map becomes all zeros)."""
    x = np.asarray(a, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def ssim(a: np.ndarray, b: np.ndarray, *, absolute: bool = False) -> float:
    """Structural similarity (Wang et al. 2004) of two 2-D maps, each min-max scaled to [0, 1].

    scikit-image's ``structural_similarity`` with ``data_range=1`` and a 7x7 window (smaller
    for maps under 7 pixels a side). 1 for identical maps; scale and offset do not matter.
    """
    from skimage.metrics import structural_similarity

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2:
        raise ParameterError(f"ssim needs two 2-D maps of one shape, got {x.shape} and {y.shape}")
    if absolute:
        x, y = np.abs(x), np.abs(y)
    side = min(x.shape)
    if side < 3:
        # no window fits: fall back to the mean-squared-error similarity of the scaled maps
        return float(1.0 - np.mean((normalize01(x) - normalize01(y)) ** 2))
    win = min(7, side if side % 2 else side - 1)
    return float(
        structural_similarity(normalize01(x), normalize01(y), data_range=1.0, win_size=win)
    )
