"""Superpixels and superpixel perturbations, shared by LIME and KernelSHAP.

Segmentations (computed per image on the host with scikit-image, at the model's input size):

- ``slic``: Achanta, Shaji, Smith, Lucchi, Fua, Süsstrunk (2012), "SLIC Superpixels Compared to
  State-of-the-Art Superpixel Methods", IEEE TPAMI; ``n_segments`` (about 50), compactness 10.
- ``quickshift``: Vedaldi, Soatto (2008), "Quick Shift and Kernel Methods for Mode Seeking",
  ECCV; the ``lime`` package's defaults (kernel_size 4, max_dist 200, ratio 0.2).
  ``n_segments`` is ignored: quick shift decides the number itself.
- ``grid``: a regular grid of ``n_segments`` cells (rows x cols = n_segments exactly when n has
  a factor pair near the image's aspect ratio, else about n_segments cells).

A segmentation is an int64 (H, W) array of labels 0..M-1. Perturbed images are built on the
model's device, chunk by chunk, from a binary coalition matrix (rows, M) and the segmentation:
pixel (y, x) keeps the image where its superpixel is on and takes the fill where it is off
(picked in model-input space when the preprocess is pixel-wise, so no chunk is re-normalised).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from xaiscope.errors import ParameterError, XaiscopeError
from xaiscope.methods._perturb import ImageGroups, fill_image, image_groups, scores_of
from xaiscope.methods.registry import MethodContext

SEGMENTATIONS = ("slic", "quickshift", "grid")
#: Most superpixels asked of LIME / KernelSHAP: a model input of 224 x 224 split finer than
#: this gives regions of a few pixels, and every sample carries one value per superpixel
MAX_SEGMENTS = 10_000

Segmentation = str | np.ndarray | torch.Tensor | Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- segmentations
def grid_segments(height: int, width: int, n_segments: int) -> np.ndarray:
    """A regular grid of about ``n_segments`` cells over an (height, width) image, row-major."""
    if n_segments < 1:
        raise ParameterError(f"n_segments must be >= 1, got {n_segments}")
    aspect = height / width
    pairs = [(r, n_segments // r) for r in range(1, n_segments + 1) if n_segments % r == 0]
    rows, cols = min(pairs, key=lambda rc: abs(np.log((rc[0] / rc[1]) / aspect)))
    if abs(np.log((rows / cols) / aspect)) > np.log(2.0):
        # no factor pair fits the aspect ratio (e.g. a prime count): about n cells instead
        rows = max(1, round(float(np.sqrt(n_segments * aspect))))
        cols = max(1, round(n_segments / rows))
    rows, cols = min(rows, height), min(cols, width)
    ys = np.arange(height) * rows // height
    xs = np.arange(width) * cols // width
    return (ys[:, None] * cols + xs[None, :]).astype(np.int64)


def segment(
    image: np.ndarray,
    method: str = "slic",
    *,
    n_segments: int = 50,
    compactness: float = 10.0,
    kernel_size: float = 4,
    max_dist: float = 200,
    ratio: float = 0.2,
) -> np.ndarray:
    """Superpixels of an (H, W, 3) uint8 or [0, 1] float image: int64 (H, W) labels 0..M-1."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ParameterError(f"expected an (H, W, 3) image, got shape {image.shape}")
    if n_segments < 1:
        raise ParameterError(f"n_segments must be >= 1, got {n_segments}")
    img = image.astype(np.float64) / 255.0 if image.dtype == np.uint8 else image.astype(np.float64)
    h, w = img.shape[:2]
    if method == "grid":
        return grid_segments(h, w, n_segments)
    from skimage import segmentation as sk

    if method == "slic":
        labels = sk.slic(
            img, n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=-1
        )
    elif method == "quickshift":
        # fixed rng: the segmentation must not depend on the sampling seed
        labels = sk.quickshift(
            img, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio, rng=42, channel_axis=-1
        )
    else:
        raise ParameterError(
            f"unknown segmentation {method!r}; use one of {', '.join(SEGMENTATIONS)}, "
            "an (H, W) label array or a function image -> labels"
        )
    return relabel(labels)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..M-1 (in order of their value), int64."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.reshape(np.shape(labels)).astype(np.int64)


def segment_batch(ctx: MethodContext, segmentation: Segmentation, n_segments: int) -> torch.Tensor:
    """Segments (N, H, W) long on the model's device for every row of ``ctx.images01``.

    ``segmentation``: a name from :data:`SEGMENTATIONS`, an (H, W) or (N, H, W) label array
    at the model's input size, or a function from an (H, W, 3) [0, 1] float image to labels.
    Rows holding the same image (several targets per image) are segmented once.
    """
    n, _, h, w = ctx.images01.shape
    if isinstance(segmentation, (np.ndarray, torch.Tensor)):
        arr = np.asarray(
            segmentation.detach().cpu() if isinstance(segmentation, torch.Tensor) else segmentation
        )
        m = ctx.n_images
        if arr.ndim == 2:
            arr = np.broadcast_to(arr, (m, *arr.shape))
        if arr.shape != (m, h, w) or not np.issubdtype(arr.dtype, np.integer):
            raise ParameterError(
                f"a segmentation array must hold integer labels of shape ({h}, {w}) or "
                f"({m}, {h}, {w}) (the model's input size), got {arr.dtype} {arr.shape}"
            )
        labels = np.stack([relabel(a) for a in arr])
        return ctx.rows_of_images(torch.from_numpy(labels).to(ctx.x.device))
    fn: Callable[[np.ndarray], np.ndarray]
    if isinstance(segmentation, str):
        name = segmentation.strip().lower()
        if name not in SEGMENTATIONS:
            raise ParameterError(
                f"unknown segmentation {segmentation!r}; use one of {', '.join(SEGMENTATIONS)}, "
                "an (H, W) label array or a function image -> labels"
            )
        if name == "grid":  # the same for every image: no host work
            grid = torch.from_numpy(grid_segments(h, w, n_segments)).to(ctx.x.device)
            return grid.expand(n, h, w).contiguous()

        def fn(img: np.ndarray) -> np.ndarray:
            return segment(img, name, n_segments=n_segments)

    elif callable(segmentation):
        fn = segmentation
    else:
        raise ParameterError(f"unsupported segmentation of type {type(segmentation).__name__}")
    host = ctx.images01.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    cache: dict[bytes, np.ndarray] = {}
    out = []
    for img in host:
        key = img.tobytes()
        if key not in cache:
            labels = np.asarray(fn(img))
            if labels.shape != (h, w):
                raise ParameterError(
                    f"the segmentation function returned shape {labels.shape}, expected {(h, w)}"
                )
            cache[key] = relabel(labels)
        out.append(cache[key])
    return torch.from_numpy(np.stack(out)).to(ctx.x.device)


def segment_counts(segments: torch.Tensor) -> torch.Tensor:
    """Number of superpixels M_i of each image, (N,) long."""
    return segments.flatten(1).amax(1) + 1


# --------------------------------------------------------------------------- perturbations
def superpixel_fill(ctx: MethodContext, segments: torch.Tensor, fill: Any) -> torch.Tensor:
    """The pixel-space image that hidden superpixels take, (N, 3, H, W) in [0, 1].

    ``"mean"``: each superpixel's mean colour (the ``lime`` package's ``hide_color=None``);
    ``"image_mean"``: the image's mean colour; otherwise as :func:`fill_image` (a gray level
    in [0, 1], ``"blur"`` or an (H, W, 3) array).
    """
    if isinstance(fill, str) and fill == "mean":
        x01 = ctx.images01.float()
        n, c, h, w = x01.shape
        m = int(segments.max()) + 1
        seg = segments.reshape(n, 1, h * w).expand(n, c, h * w)
        sums = torch.zeros(n, c, m, device=x01.device).scatter_add_(2, seg, x01.reshape(n, c, -1))
        counts = torch.zeros(n, 1, m, device=x01.device).scatter_add_(
            2, seg[:, :1], torch.ones_like(x01[:, :1].reshape(n, 1, -1))
        )
        means = sums / counts.clamp(min=1)
        return means.gather(2, seg).view(n, c, h, w).to(ctx.images01.dtype)
    if isinstance(fill, str) and fill == "image_mean":
        return fill_image(ctx, "mean")
    return fill_image(ctx, fill)


def _input_space_fill(ctx: MethodContext, fill: torch.Tensor) -> torch.Tensor | None:
    """``fill`` preprocessed, when preprocessing works pixel by pixel; else None.

    A pixel-wise preprocess (mean/std normalisation, the identity of black boxes) commutes
    with choosing each pixel from the image or the fill, so perturbed inputs can be picked
    straight from ``ctx.x`` and the preprocessed fill: one pass per chunk instead of three.
    Checked once on a random pixel mask; a preprocess that mixes pixels fails the check.
    """
    x01 = ctx.images01
    fill_in = ctx.model.normalize(fill)
    if fill_in.shape != ctx.x.shape or fill_in.dtype != ctx.x.dtype:
        return None
    gen = torch.Generator(device=x01.device).manual_seed(0)
    mask = torch.rand((x01.shape[0], 1, *x01.shape[2:]), generator=gen, device=x01.device) < 0.5
    direct = ctx.model.normalize(torch.where(mask, x01, fill))
    picked = torch.where(mask, ctx.x, fill_in)
    ok = bool(torch.allclose(direct, picked, rtol=1e-5, atol=1e-5))
    return fill_in if ok else None


def score_coalitions(
    ctx: MethodContext,
    coalitions: torch.Tensor,
    rows: torch.Tensor,
    segments: torch.Tensor,
    fill: torch.Tensor,
    *,
    desc: str,
) -> torch.Tensor:
    """Model scores (T,) for T coalitions of superpixels.

    ``coalitions`` (T, M_max) with 1 = superpixel kept, 0 = replaced by ``fill``;
    ``rows`` (T,) the image (row of ``ctx``) each coalition belongs to; ``segments``
    (N, H, W); ``fill`` (N, 3, H, W) pixel space. Images are built per chunk on the device.
    """
    n, _, h, w = ctx.images01.shape
    seg_flat = segments.reshape(n, h * w)
    coal = coalitions.to(device=ctx.x.device, dtype=torch.bool)
    rows = rows.to(ctx.x.device)
    fill_in = _input_space_fill(ctx, fill)
    # pick pixels in model-input space when the preprocess allows it, else in pixel space
    keep, hide = (ctx.x, fill_in) if fill_in is not None else (ctx.images01, fill)
    single = n == 1

    def build(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = coal[start:stop]
        r = rows[start:stop]
        if single:  # one image: broadcast instead of copying it per row
            mask = z[:, seg_flat[0]].view(-1, 1, h, w)
            out = torch.where(mask, keep, hide)
        else:
            mask = z.gather(1, seg_flat[r]).view(-1, 1, h, w)
            out = torch.where(mask, keep[r], hide[r])
        return (out if fill_in is not None else ctx.model.normalize(out)), ctx.targets[r]

    shared = _shared_blocks(ctx, coal, rows)
    if shared is None:
        scores = scores_of(ctx, coalitions.shape[0], build, desc=desc)
    else:
        # rows holding the same image (one per target set) drew the same coalitions:
        # score the first row's once and read every target of the image from them
        groups, pick, take = shared
        read = groups.member_targets(ctx.targets)  # (U, K)
        coal_u, rows_u = coal[pick], rows[pick]

        def build_shared(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            r = rows_u[start:stop]
            mask = coal_u[start:stop].gather(1, seg_flat[r]).view(-1, 1, h, w)
            out = torch.where(mask, keep[r], hide[r])
            model_in = out if fill_in is not None else ctx.model.normalize(out)
            return model_in, read[groups.inverse[r]]

        per_target = scores_of(ctx, int(pick.numel()), build_shared, desc=desc)  # (T_u, K)
        scores = per_target[take, groups.position[rows]]
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        imgs = sorted({int(i) for i in rows[bad.to(rows.device)].tolist()})
        raise XaiscopeError(
            f"the model's output is not finite (NaN or inf) for {int(bad.sum())} of "
            f"{scores.numel()} perturbed images (image(s) {imgs}); "
            "a surrogate cannot be fitted to it"
        )
    return scores


def _shared_blocks(
    ctx: MethodContext, coal: torch.Tensor, rows: torch.Tensor
) -> tuple[ImageGroups, torch.Tensor, torch.Tensor] | None:
    """Where rows of the same image (stacked target sets) hold identical coalition blocks:
    (groups, the coalitions of each image's first row, for every coalition the index of
    its twin among those); None when nothing is shared."""
    n = ctx.x.shape[0]
    if n < 2 or rows.numel() == 0:
        return None
    groups = image_groups(ctx.x)
    if groups.size == n:
        return None
    counts = torch.bincount(rows, minlength=n)
    offset = torch.cumsum(counts, 0) - counts
    first = groups.first[groups.inverse]  # (N,) the first row of each row's image
    if not bool((counts == counts[first]).all()):
        return None
    t = torch.arange(rows.numel(), device=rows.device)
    twin = offset[first[rows]] + (t - offset[rows])  # the same coalition of the first row
    if not torch.equal(coal, coal[twin]):
        return None
    is_first = first == torch.arange(n, device=rows.device)
    pick = is_first[rows]
    # position of each first-row coalition among the picked ones
    slot = torch.cumsum(pick.long(), 0) - 1
    return groups, pick, slot[twin]


def expand_values(values: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Per-superpixel values (N, M_max) painted onto the segmentation: (N, H, W)."""
    n, h, w = segments.shape
    return values.gather(1, segments.reshape(n, h * w)).view(n, h, w)


def degenerate_warnings(
    ctx: MethodContext,
    segments: torch.Tensor,
    fill: torch.Tensor,
    n_samples: int | None,
    *,
    name: str,
) -> list[tuple[int | None, str]]:
    """(row, message) for inputs that cannot give a meaningful map (flagged, not hidden)."""
    notes: list[tuple[int | None, str]] = []
    counts = segment_counts(segments).tolist()
    span = (ctx.images01.flatten(1).amax(1) - ctx.images01.flatten(1).amin(1)).tolist()
    changed = (ctx.images01 - fill).abs().flatten(1).amax(1).tolist()
    for i, m in enumerate(counts):
        if m == 1:
            notes.append(
                (
                    i,
                    f"the segmentation has a single superpixel, so the {name} map is "
                    "constant; use more n_segments or another segmentation",
                )
            )
        elif n_samples is not None and n_samples < m:
            notes.append(
                (
                    i,
                    f"n_samples={n_samples} is smaller than the number of superpixels ({m}): "
                    f"the {name} fit is under-determined and its weights are unreliable; "
                    f"use n_samples >= {10 * m}",
                )
            )
        if span[i] == 0:
            notes.append((i, "the image is constant: no superpixel can matter"))
        elif changed[i] == 0:
            notes.append((i, "the fill equals the image, so hiding superpixels changes nothing"))
    return notes


def flat_score_warnings(
    scores: torch.Tensor, rows: torch.Tensor, n: int, name: str
) -> list[tuple[int | None, str]]:
    """(row, message) for images whose perturbed scores are all equal: every weight is 0."""
    lo = torch.full((n,), float("inf"), device=scores.device).scatter_reduce(
        0, rows.to(scores.device), scores, "amin"
    )
    hi = torch.full((n,), float("-inf"), device=scores.device).scatter_reduce(
        0, rows.to(scores.device), scores, "amax"
    )
    flat = (hi - lo <= 1e-7 * hi.abs().clamp(min=1.0)).tolist()
    return [
        (
            i,
            f"the model's score is the same for every perturbation, so every {name} weight "
            "is 0 (constant image, or a fill equal to the image?)",
        )
        for i, f in enumerate(flat)
        if f
    ]


# --------------------------------------------------------------------------- display
def top_superpixels(explanation: Any, k: int = 5, positive: bool = True) -> np.ndarray:
    """Masks of the ``k`` superpixels with the largest positive (or most negative) weight.

    Works on LIME and KernelSHAP explanations (their ``extras`` keep the segmentation and
    the per-superpixel weights). Returns bool (N, H, W) at each image's resolution (a list
    of (H_i, W_i) arrays when the images differ in size). Only superpixels whose weight has
    the asked sign are shown, so fewer than ``k`` may be.
    """
    import torch.nn.functional as F

    extras = getattr(explanation, "extras", None) or {}
    segments = extras.get("segments")
    values = extras.get("weights", extras.get("values"))
    if segments is None or values is None:
        raise XaiscopeError(
            "top_superpixels needs a LIME or KernelSHAP explanation computed in this session "
            "(its extras hold the segmentation and the superpixel weights)"
        )
    if k < 1:
        raise ParameterError(f"k must be >= 1, got {k}")
    seg = torch.as_tensor(segments).long().cpu()
    vals = torch.as_tensor(values).double().cpu()
    signed = vals if positive else -vals
    signed = torch.where(torch.isnan(signed), torch.full_like(signed, -np.inf), signed)
    kk = min(k, signed.shape[1])
    top = signed.topk(kk, dim=1)
    chosen = torch.zeros_like(signed, dtype=torch.bool)
    chosen.scatter_(1, top.indices, top.values > 0)
    mask = chosen.gather(1, seg.flatten(1)).view(seg.shape)
    maps = explanation.maps
    sizes = [tuple(m.shape) for m in maps]
    out = []
    for i, size in enumerate(sizes):
        mi = mask[i][None, None].float()
        if tuple(mi.shape[-2:]) != size:
            mi = F.interpolate(mi, size=size, mode="nearest")
        out.append(mi[0, 0].bool().numpy())
    if isinstance(maps, np.ndarray):
        return np.stack(out)
    return out  # type: ignore[return-value]
