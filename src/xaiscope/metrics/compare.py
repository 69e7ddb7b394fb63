"""``xs.compare``: how far explanation methods agree on the same images.

For every pair of methods and every image: Spearman rank correlation, Pearson correlation,
top-k intersection and SSIM of the two maps (see :mod:`xaiscope.metrics.similarity`),
averaged over the images. The result also draws histograms of the normalised attributions
above a threshold and a scatter-plot matrix of the methods' pixel values, the two views
used to compare integrated gradients, LIME, Grad-CAM and the like side by side.

"Normalised" means each map divided by its largest absolute value, so values lie in
[-1, 1] (in [0, 1] for non-negative maps such as CAMs) whatever a method's scale.

Maps must be finite numbers: empty maps, maps of strings or objects, and maps with NaN or
inf are refused (:class:`~xaiscope.errors.ParameterError`), never turned into numbers. A
constant map has no ordering, so none of the four statistics is defined for it: for every
pair that involves it, that image's values are missing (None in ``rows``, null in JSON,
empty in CSV, NaN in :meth:`Comparison.matrix`), the pair's means are taken over the other
images (missing when none is left), and :attr:`Comparison.warnings` says which map is
constant. They are never reported as 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xaiscope.errors import ExplanationMismatchError, ParameterError
from xaiscope.explanation import Explanation
from xaiscope.metrics.explainers import as_map_list
from xaiscope.metrics.similarity import pearson, spearman, ssim, top_k_intersection
from xaiscope.metrics.sparseness import gini
from xaiscope.metrics.table import ScoreTable

STATISTICS = ("spearman", "pearson", "top_k_intersection", "ssim")
#: Default share of normalised attribution above which values enter the histograms.
THRESHOLD = 0.2


def normalized(m: np.ndarray) -> np.ndarray:
    """``m / max|m|`` (zeros stay zeros)."""
    peak = float(np.nanmax(np.abs(m))) if m.size else 0.0
    return m / peak if peak > 0 else np.zeros_like(m)


class Comparison(ScoreTable):
    """The table :func:`compare` returns: one row per pair of methods.

    Columns: ``method_a``, ``method_b``, then ``spearman``, ``pearson``,
    ``top_k_intersection`` and ``ssim`` (means over the images where they are defined) and
    ``n_images``; per-image values in ``<statistic>_scores`` (CSV/JSON), None where a map is
    constant. ``warnings`` lists those maps (``"image 0: saliency's map is constant ..."``).
    ``names`` lists the methods, ``maps`` their (H_i, W_i) maps per image. :meth:`matrix`
    gives one statistic as a method x method array, :meth:`summary` one row per method.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        names: list[str],
        maps: dict[str, list[np.ndarray]],
        *,
        k: float | int,
        threshold: float,
        absolute: bool,
        seed: int,
        warnings: Sequence[str] = (),
    ) -> None:
        hidden = [f"{s}_scores" for s in STATISTICS]
        cols = ["method_a", "method_b", *STATISTICS, "n_images", *hidden]
        super().__init__(rows, cols, hidden=hidden)
        self.names = names
        self.maps = maps
        self.k = k
        self.threshold = threshold
        self.absolute = absolute
        self.seed = seed
        #: why some statistics are missing (constant maps); empty when every one is defined
        self.warnings = list(warnings)

    def matrix(self, statistic: str = "spearman") -> np.ndarray:
        """(M, M) symmetric array of ``statistic`` between methods (1 on the diagonal)."""
        if statistic not in STATISTICS:
            raise ParameterError(f"statistic must be one of {', '.join(STATISTICS)}")
        index = {n: i for i, n in enumerate(self.names)}
        out = np.eye(len(self.names))
        for r in self.rows:
            a, b = index[r["method_a"]], index[r["method_b"]]
            v = r[statistic]
            out[a, b] = out[b, a] = np.nan if v is None else v
        return out

    def summary(self) -> ScoreTable:
        """Per method: the share of normalised attribution above the threshold, the mean
        |normalised| value, sparseness (Gini) and the mean Spearman with the other methods."""
        spear = self.matrix("spearman")
        rows = []
        for j, name in enumerate(self.names):
            values = np.concatenate([normalized(m).ravel() for m in self.maps[name]])
            others = np.delete(spear[j], j)
            rows.append(
                {
                    "method": name,
                    "share_above_threshold": float((np.abs(values) > self.threshold).mean()),
                    "mean_abs": float(np.abs(values).mean()),
                    "negative_share": float((values < 0).mean()),
                    "sparseness": _mean_defined([gini(m) for m in self.maps[name]]),
                    "mean_spearman_with_others": _mean_defined(list(others)),
                }
            )
        return ScoreTable(rows, title=f"threshold {self.threshold:g} of max |attribution|")

    def per_image(self) -> ScoreTable:
        """Long format: one row per (pair, image) with the four statistics."""
        rows = []
        for r in self.rows:
            for i in range(len(r["spearman_scores"])):
                rows.append(
                    {
                        "method_a": r["method_a"],
                        "method_b": r["method_b"],
                        "image": i,
                        **{s: r[f"{s}_scores"][i] for s in STATISTICS},
                    }
                )
        return ScoreTable(rows)

    def to_json(self, path: Any = None, **extra: Any) -> str:
        meta = {
            "methods": self.names,
            "k": self.k,
            "threshold": self.threshold,
            "absolute": self.absolute,
            "summary": self.summary().rows,
            "warnings": self.warnings,
        }
        return super().to_json(path, **{**meta, **extra})

    def plot_histograms(self, threshold: float | None = None, bins: int = 40) -> Any:
        """Histograms of each method's normalised attributions with |value| > ``threshold``."""
        from xaiscope.metrics.plots import plot_histograms

        t = self.threshold if threshold is None else threshold
        return plot_histograms({n: self.maps[n] for n in self.names}, t, bins)

    def plot_scatter(self, max_points: int = 3000) -> Any:
        """Scatter-plot matrix of the methods' normalised pixel values (histograms on the
        diagonal, Spearman in each panel)."""
        from xaiscope.metrics.plots import plot_scatter_matrix

        return plot_scatter_matrix(
            {n: self.maps[n] for n in self.names}, self.matrix("spearman"), max_points, self.seed
        )

    def plot_matrix(self, statistic: str = "spearman") -> Any:
        """Heatmap of one agreement statistic between every pair of methods."""
        from xaiscope.metrics.plots import plot_matrix

        return plot_matrix(self.names, self.matrix(statistic), statistic)


def _entries(explanations: Any) -> list[tuple[str, Any]]:
    if isinstance(explanations, Mapping):
        entries = [(str(k), v) for k, v in explanations.items()]
    elif isinstance(explanations, (list, tuple)):
        entries = []
        seen: dict[str, int] = {}
        for e in explanations:
            base = e.method if isinstance(e, Explanation) else "maps"
            seen[base] = seen.get(base, 0) + 1
            entries.append((base if seen[base] == 1 else f"{base}#{seen[base]}", e))
    else:
        raise ParameterError("compare takes a list or a dict of explanations")
    if len(entries) < 2:
        raise ParameterError(f"compare needs at least two explanations, got {len(entries)}")
    return entries


def _mean_defined(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is (no empty-slice warning)."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def _numeric_maps(name: str, maps: Any) -> list[np.ndarray]:
    """``maps`` as 2-D float64 arrays, refusing what would otherwise become numbers
    silently: strings (``"0.5"`` converts), objects, empty maps, NaN and inf."""
    items = [maps] if isinstance(maps, np.ndarray) and maps.ndim == 2 else maps
    try:
        kinds = [np.asarray(m).dtype for m in items]
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name}: maps must be numeric (N, H, W) arrays: {exc}") from None
    for i, dtype in enumerate(kinds):
        if dtype.kind not in "biuf":
            raise ParameterError(
                f"{name}: the map of image {i} is of dtype {dtype}, not real numbers"
            )
    out = as_map_list(items)
    if not out:
        raise ParameterError(f"{name} has no maps")
    for i, m in enumerate(out):
        if m.size == 0:
            raise ParameterError(
                f"{name}: the map of image {i} is empty ({m.shape[0]}x{m.shape[1]})"
            )
        finite = np.isfinite(m)
        if not finite.all():
            bad = int(m.size - np.count_nonzero(finite))
            what = "is all NaN or inf" if bad == m.size else f"has {bad} NaN or inf values"
            raise ParameterError(f"{name}: the map of image {i} {what}; it cannot be compared")
    return out


def _constant(m: np.ndarray) -> bool:
    # the tolerance pearson() uses: constant up to float rounding means no ordering
    peak = float(np.abs(m).max())
    return float(m.max() - m.min()) <= 1e-12 * max(1.0, peak)


def _check_same_images(entries: list[tuple[str, Any]], maps: dict[str, list[np.ndarray]]) -> None:
    """Explanations of different images cannot be compared: counts, sizes, and the scores
    that one model gives one target must agree."""
    (first, _), *rest = entries
    for name, _ in rest:
        if len(maps[name]) != len(maps[first]):
            raise ExplanationMismatchError(
                f"{first} has {len(maps[first])} maps but {name} has {len(maps[name])}: "
                "compare explanations of the same images"
            )
        for i, (ma, mb) in enumerate(zip(maps[first], maps[name], strict=True)):
            if ma.shape != mb.shape:
                raise ExplanationMismatchError(
                    f"image {i}: {first}'s map is {ma.shape[0]}x{ma.shape[1]} but {name}'s is "
                    f"{mb.shape[0]}x{mb.shape[1]}: compare explanations of the same images"
                )
    exps: list[tuple[str, Explanation]] = [(n, e) for n, e in entries if isinstance(e, Explanation)]
    for (na, a), (nb, b) in itertools.combinations(exps, 2):
        if a.model_name is None or a.model_name != b.model_name:
            continue
        for i in range(len(a)):
            if int(a.targets[i]) != int(b.targets[i]):
                continue
            sa, sb = float(a.scores[i]), float(b.scores[i])
            if abs(sa - sb) > 1e-3 * max(1.0, abs(sa), abs(sb)):
                raise ExplanationMismatchError(
                    f"image {i}: the model scores class {int(a.targets[i])} {sa:.4g} in {na} "
                    f"but {sb:.4g} in {nb}: these explanations are of different images"
                )


def compare(
    explanations: Sequence[Any] | Mapping[str, Any],
    *,
    k: float | int = 0.1,
    threshold: float = THRESHOLD,
    absolute: bool = False,
    seed: int = 0,
) -> Comparison:
    """Agreement between explanations of the same images; returns a :class:`Comparison`.

    ``explanations``: a list of :class:`Explanation` (named by method; repeats get ``#2``)
    or a dict name -> Explanation or (N, H, W) maps. ``k``: the top-k share of pixels (or a
    pixel count) for the intersection. ``threshold``: the normalised attribution above
    which values enter the histograms and the summary. ``absolute=True`` compares
    ``|maps|`` (signed methods such as integrated gradients against unsigned CAMs).
    Raises :class:`~xaiscope.errors.ExplanationMismatchError` when the explanations are
    not of the same images, :class:`~xaiscope.errors.ParameterError` for maps that are
    empty, not real numbers, or hold NaN or inf. Constant maps are listed
    in :attr:`Comparison.warnings`, and leave those statistics missing (None).
    """
    if not 0.0 <= float(threshold) < 1.0:
        raise ParameterError(f"threshold must be in [0, 1), got {threshold}")
    entries = _entries(explanations)
    maps: dict[str, list[np.ndarray]] = {}
    for name, e in entries:
        raw = e.maps if isinstance(e, Explanation) else e
        maps[name] = _numeric_maps(name, raw)
    _check_same_images(entries, maps)
    names = [n for n, _ in entries]
    constant = {n: [_constant(np.abs(m) if absolute else m) for m in maps[n]] for n in names}
    warnings = [
        f"image {i}: {n}'s map is constant ({float(maps[n][i].flat[0]):g} everywhere): "
        "its statistics with every other map are undefined (left empty)"
        for i in range(len(maps[names[0]]))
        for n in names
        if constant[n][i]
    ]
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in itertools.combinations(names, 2):
        per: dict[str, list[float]] = {s: [] for s in STATISTICS}
        for i, (ma, mb) in enumerate(zip(maps[a], maps[b], strict=True)):
            if constant[a][i] or constant[b][i]:
                for s in STATISTICS:
                    per[s].append(float("nan"))
                continue
            per["spearman"].append(spearman(ma, mb, absolute=absolute))
            per["pearson"].append(pearson(np.abs(ma), np.abs(mb)) if absolute else pearson(ma, mb))
            per["top_k_intersection"].append(
                top_k_intersection(ma, mb, k=k, absolute=absolute, rng=rng)
            )
            per["ssim"].append(ssim(ma, mb, absolute=absolute))
        row: dict[str, Any] = {"method_a": a, "method_b": b}
        for s in STATISTICS:
            row[s] = _mean_defined(per[s])
            row[f"{s}_scores"] = per[s]
        row["n_images"] = len(maps[a])
        rows.append(row)
    return Comparison(
        rows,
        names,
        maps,
        k=k,
        threshold=float(threshold),
        absolute=absolute,
        seed=seed,
        warnings=warnings,
    )
