"""``xs.evaluate``: score explanations with the registered metrics, next to chance references.

Every metric is computed three times: on the explanation's maps, on uniform random maps,
and on a centre-Gaussian map (for metrics that re-run the method: with an explainer that
returns fresh noise, or always the same blob). A method is worth looking at where it beats
both references in the metric's direction.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from xaiscope.errors import (
    ExplanationMismatchError,
    MaskError,
    ParameterError,
    UnsupportedModelError,
)
from xaiscope.explanation import Explanation
from xaiscope.metrics.explainers import (
    Explainer,
    GaussianExplainer,
    RandomExplainer,
    as_map_list,
    call_explainer,
    gaussian_maps,
    method_explainer,
    random_maps,
)
from xaiscope.metrics.registry import (
    MetricContext,
    MetricInfo,
    MetricOutput,
    all_metrics,
    get_metric,
)
from xaiscope.metrics.table import ScoreTable

#: Columns shown by ``print(evaluation)``; per-image lists stay in CSV/JSON.
COLUMNS = (
    "method",
    "metric",
    "score",
    "std",
    "random_baseline",
    "gaussian_baseline",
    "better_than_random",
    "higher_is_better",
    "n_images",
)
PER_IMAGE = ("scores", "random_scores", "gaussian_scores", "category")


class Evaluation(ScoreTable):
    """The table :func:`evaluate` returns: one row per (method, metric).

    Columns: ``method``, ``metric``, ``score`` (mean over images, NaN left out), ``std``,
    ``random_baseline`` and ``gaussian_baseline`` (the same metric for a random and a
    centre-Gaussian map), ``better_than_random`` (the score beats the random reference in the
    metric's direction), ``higher_is_better``, ``n_images``; in CSV/JSON also ``scores``,
    ``random_scores``, ``gaussian_scores`` (per image) and ``category``.
    ``details[(method, metric)]`` holds curves and per-layer values for the plots:
    ``{"method": {...}, "random": {...}, "gaussian": {...}}``.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        details: dict[tuple[str, str], dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(rows, [*COLUMNS, *PER_IMAGE], title="", hidden=PER_IMAGE)
        self.details = details or {}
        self.meta = meta or {}

    def score(self, method: str, metric: str) -> float:
        """The mean score of ``method`` on ``metric`` (NaN if undefined)."""
        value = self.get(method=method, metric=metric)["score"]
        return float("nan") if value is None else float(value)

    def per_image(self) -> ScoreTable:
        """Long format: one row per (method, metric, image) with the three scores."""
        rows = []
        for r in self.rows:
            for i, s in enumerate(r["scores"]):
                rows.append(
                    {
                        "method": r["method"],
                        "metric": r["metric"],
                        "image": i,
                        "score": s,
                        "random": r["random_scores"][i] if r["random_scores"] else None,
                        "gaussian": r["gaussian_scores"][i] if r["gaussian_scores"] else None,
                    }
                )
        return ScoreTable(rows, ["method", "metric", "image", "score", "random", "gaussian"])

    def to_json(self, path: Any = None, **extra: Any) -> str:
        details = {f"{method}/{metric}": value for (method, metric), value in self.details.items()}
        return super().to_json(path, **{**self.meta, **extra, "details": details})

    def plot_scores(self) -> Any:
        """Bar chart: each metric's score per method against the two references."""
        from xaiscope.metrics.plots import plot_scores

        return plot_scores(self)

    def plot_curves(self, metric: str | None = None) -> Any:
        """Mean deletion / insertion / MoRF / LeRF curves per method, with the references."""
        from xaiscope.metrics.plots import plot_curves

        return plot_curves(self, metric)

    def plot_sanity(self) -> Any:
        """Spearman and SSIM per cascade step of the model-randomisation test."""
        from xaiscope.metrics.plots import plot_sanity

        return plot_sanity(self)


# ------------------------------------------------------------------------- inputs
def as_masks(masks: Any, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray] | None:
    """Masks as N (H_i, W_i) bool arrays matching the images; :class:`MaskError` if not."""
    if masks is None:
        return None
    try:
        items = list(masks) if not (isinstance(masks, np.ndarray) and masks.ndim == 2) else [masks]
        out = [np.asarray(m) for m in items]
    except TypeError:
        raise MaskError(
            f"masks must be an (N, H, W) array or a list, got {type(masks).__name__}"
        ) from None
    if len(out) != len(shapes):
        raise MaskError(f"got {len(out)} masks for {len(shapes)} images")
    for i, (m, hw) in enumerate(zip(out, shapes, strict=True)):
        if m.ndim == 3 and m.shape[-1] in (1, 3, 4):  # an image-like mask: any channel set
            m = np.asarray(m.any(axis=-1) if m.dtype == bool else m.max(axis=-1))
        if m.ndim != 2 or tuple(m.shape) != tuple(hw):
            raise MaskError(
                f"mask {i} has shape {tuple(m.shape)} but image {i} is {hw[0]}x{hw[1]}: "
                "masks must have the images' height and width"
            )
        if not (m.dtype == bool or np.issubdtype(m.dtype, np.number)):
            raise MaskError(f"mask {i} must be boolean or numeric, got {m.dtype}")
        out[i] = np.asarray(m.astype(bool) if m.dtype == bool else m > 0, dtype=bool)
    return out


def resolve_metrics(metrics: Any) -> list[MetricInfo] | None:
    """MetricInfos from names (a list, or one comma-separated string); None means default."""
    if metrics is None:
        return None
    names = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names = [str(n).strip() for n in names if str(n).strip()]
    if not names:
        raise ParameterError("metrics= is empty")
    out: list[MetricInfo] = []
    for name in names:
        info = get_metric(name)  # UnknownMetricError lists the valid ones
        if info not in out:
            out.append(info)
    return out


def split_params(infos: list[MetricInfo], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Give each metric the options it takes (``step=0.05`` goes to every metric with a
    ``step``); ``params`` may also hold a dict per metric: ``{"deletion": {"fill": "blur"}}``."""
    per: dict[str, dict[str, Any]] = {i.name: {} for i in infos}
    used: set[str] = set()
    for key, value in params.items():
        owner = next((i for i in infos if key == i.name or key in i.aliases), None)
        if owner is not None and isinstance(value, dict):
            per[owner.name].update(value)
            used.add(key)
            continue
        for info in infos:
            if key in info.defaults:
                per[info.name][key] = value
                used.add(key)
    unused = sorted(set(params) - used)
    if unused:
        valid = sorted({p for i in infos for p in i.defaults})
        raise ParameterError(
            f"unknown option(s) {', '.join(unused)} for {', '.join(i.name for i in infos)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    return {i.name: i.check_params(per[i.name]) for i in infos}


@dataclasses.dataclass
class _Item:
    """One explanation to score: its name, maps, targets and how to re-run it."""

    name: str
    maps: list[np.ndarray]
    targets: np.ndarray
    explainer: Explainer | None


def _items(
    explanation: Any,
    model: Any,
    images: list[np.ndarray],
    targets: Any,
    explainer: Explainer | None,
) -> list[_Item]:
    shapes = [im.shape[:2] for im in images]
    if isinstance(explanation, Mapping):
        entries = list(explanation.items())
    elif isinstance(explanation, (list, tuple)) and all(
        isinstance(e, np.ndarray) for e in explanation
    ):
        entries = [(None, list(explanation))]  # a list of maps (images of different sizes)
    elif isinstance(explanation, (list, tuple)):
        entries = [(None, e) for e in explanation]
    else:
        entries = [(None, explanation)]
    if not entries:
        raise ParameterError("no explanation given")
    items: list[_Item] = []
    for name, exp in entries:
        if isinstance(exp, Explanation):
            if len(exp) != len(images):
                raise ExplanationMismatchError(
                    f"the {exp.method} explanation has {len(exp)} maps for {len(images)} images"
                )
            try:
                maps = as_map_list(exp.maps, shapes)
            except ParameterError as exc:
                raise ExplanationMismatchError(
                    f"the {exp.method} explanation does not match the images: {exc}"
                ) from None
            run = explainer or method_explainer(exp)
            items.append(_Item(name or exp.method, maps, np.asarray(exp.targets), run))
        elif callable(exp):
            tgt = _targets(model, images, targets)
            label = name or getattr(exp, "name", None) or getattr(exp, "__name__", "explainer")
            items.append(_Item(str(label), call_explainer(exp, model, images, tgt), tgt, exp))
        elif isinstance(exp, (np.ndarray, list)):
            tgt = _targets(model, images, targets)
            items.append(_Item(name or "maps", as_map_list(exp, shapes), tgt, explainer))
        else:
            raise ParameterError(
                f"explanation must be an Explanation, a list or dict of them, maps, or an "
                f"explainer function; got {type(exp).__name__}"
            )
    seen: dict[str, int] = {}
    for item in items:  # two explanations of one method: keep their rows apart
        seen[item.name] = seen.get(item.name, 0) + 1
        if seen[item.name] > 1:
            item.name = f"{item.name}#{seen[item.name]}"
    return items


def _targets(model: Any, images: list[np.ndarray], targets: Any) -> np.ndarray:
    """Class indices for maps given without an Explanation: ``targets`` or the top-1 class."""
    import torch

    from xaiscope.explain import resolve_targets

    if model is None:
        if targets is None:
            raise ParameterError("give targets= (or a model, to explain the top-1 class)")
        return np.asarray(targets, dtype=np.int64).reshape(len(images))
    logits = model.forward(model.preprocess(images))
    spec = "top1" if targets is None else targets
    if isinstance(spec, np.ndarray):
        spec = spec.tolist()
    t: torch.Tensor = resolve_targets(model, logits, spec)
    return t[:, 0].cpu().numpy().astype(np.int64)


def _usable(info: MetricInfo, model: Any, masks: Any, items: list[_Item]) -> str | None:
    """Why ``info`` cannot run here (None when it can)."""
    if info.needs_masks and masks is None:
        return f"{info.name} needs ground-truth masks: pass masks= (e.g. a shapes dataset's)"
    if (info.needs_model or info.needs_torch) and model is None:
        return f"{info.name} needs the model"
    if info.needs_torch:
        from xaiscope.models.torch_model import TorchModel

        if not isinstance(model, TorchModel) or model.scripted:
            return (
                f"{info.name} re-initialises the layers of a PyTorch module; this "
                f"{getattr(model, 'framework', type(model).__name__)} model has none"
            )
    if info.needs_method:
        blind = [i.name for i in items if i.explainer is None]
        if blind:
            return (
                f"{info.name} re-runs the explanation method, and {', '.join(blind)} is not a "
                "registered method: pass explainer=f(model, images, targets) -> maps"
            )
    return None


def _key(info: MetricInfo, params: dict[str, Any], targets: np.ndarray) -> str:
    h = hashlib.sha1(repr((info.name, sorted(params.items(), key=str))).encode())
    h.update(np.ascontiguousarray(targets, dtype=np.int64).tobytes())
    return h.hexdigest()


def _mean(scores: np.ndarray) -> tuple[float, float, int]:
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


# ------------------------------------------------------------------------- evaluate
def evaluate(
    model: Any,
    images: Any,
    explanation: Any,
    metrics: Sequence[str] | str | None = None,
    masks: Any = None,
    *,
    explainer: Explainer | None = None,
    targets: Any = None,
    baselines: bool = True,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool | None = None,
    **params: Any,
) -> Evaluation:
    """Score explanations of ``images`` with ``metrics``; returns an :class:`Evaluation`.

    ``model``: a Model, a spec string or a framework object (None is fine for metrics that
    only read maps and masks). ``images``: as for :func:`xaiscope.explain`, or an
    :class:`~xaiscope.data.ImageDataset` (its masks are used when ``masks`` is None).
    ``explanation``: an :class:`Explanation` (or a list, or a dict name -> Explanation), an
    (N, H, W) array of maps, or an explainer ``f(model, images, targets) -> maps`` (run
    here). ``metrics``: names from :func:`xaiscope.metrics.metric_names` (default: every
    metric whose needs are met). ``masks``: (N, H, W) ground-truth masks at the images'
    size, for localization metrics. ``explainer`` re-runs the method for robustness and
    sanity metrics when the explanation's method is not registered. ``targets``: the
    classes explained by maps given without an Explanation (default: top-1).
    ``baselines=False`` skips the random and Gaussian references. ``seed`` fixes every
    random draw. Other keywords are metric options, e.g. ``step=0.05`` or
    ``deletion={"fill": "blur"}``.
    """
    from xaiscope.data.dataset import ImageDataset
    from xaiscope.explain import as_image_list, as_model

    if isinstance(images, ImageDataset):
        if masks is None:
            masks = images.masks
        images = images.images
    arrays = as_image_list(images)
    shapes = [a.shape[:2] for a in arrays]
    mask_list = as_masks(masks, shapes)
    resolved = resolve_metrics(metrics)
    if model is not None:
        model = as_model(model)
    items = _items(explanation, model, arrays, targets, explainer)

    if resolved is None:
        infos = [m for m in all_metrics() if _usable(m, model, mask_list, items) is None]
    else:
        infos = resolved
        for info in infos:
            why = _usable(info, model, mask_list, items)
            if why is not None:
                if info.needs_masks and mask_list is None:
                    raise MaskError(why)
                if info.needs_torch and model is not None and "PyTorch" in why:
                    raise UnsupportedModelError(why)
                raise ParameterError(why)
    per_params = split_params(infos, params)

    cache: dict[str, Any] = {}
    references: dict[str, tuple[MetricOutput, MetricOutput]] = {}
    rows: list[dict[str, Any]] = []
    details: dict[tuple[str, str], dict[str, Any]] = {}
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(items) * len(infos),
        desc="evaluating",
        unit="metric",
        leave=False,
        # None: a bar only on a terminal
        disable=True if progress is False else (False if progress is True else None),
    )
    try:
        for item in items:
            ctx = MetricContext(
                model=model,
                images=arrays,
                targets=item.targets,
                masks=mask_list,
                explainer=item.explainer,
                seed=seed,
                batch_size=batch_size,
                progress=False if progress is False else None,
                cache=cache,
            )
            for info in infos:
                bar.set_postfix_str(f"{item.name}: {info.name}", refresh=False)
                p = per_params[info.name]
                out = info.fn(ctx, item.maps, **p)
                ref = None
                if baselines:
                    key = _key(info, p, item.targets)
                    if key not in references:
                        references[key] = _references(info, ctx, shapes, p)
                    ref = references[key]
                rows.extend(_rows(item.name, info, out, ref))
                details[(item.name, info.name)] = {
                    "method": out.details,
                    "random": ref[0].details if ref else {},
                    "gaussian": ref[1].details if ref else {},
                }
                bar.update(1)
    finally:
        bar.close()
    meta = {
        "images": len(arrays),
        "seed": seed,
        "masks": mask_list is not None,
        "model": getattr(model, "name", None) if model is not None else None,
        "options": {k: v for k, v in per_params.items()},
    }
    return Evaluation(rows, details, meta)


def _references(
    info: MetricInfo, ctx: MetricContext, shapes: list[tuple[int, int]], params: dict[str, Any]
) -> tuple[MetricOutput, MetricOutput]:
    """The metric on uniform random maps and on the centre-Gaussian map."""
    rnd_ctx = dataclasses.replace(ctx, explainer=RandomExplainer(ctx.seed))
    rnd = info.fn(rnd_ctx, random_maps(shapes, ctx.rng(0xA11)), **params)
    gau_ctx = dataclasses.replace(ctx, explainer=GaussianExplainer())
    gau = info.fn(gau_ctx, gaussian_maps(shapes), **params)
    return rnd, gau


def _better(score: float, reference: float, higher: bool) -> bool | None:
    if not (np.isfinite(score) and np.isfinite(reference)):
        return None
    return bool(score > reference) if higher else bool(score < reference)


def _rows(
    name: str,
    info: MetricInfo,
    out: MetricOutput,
    ref: tuple[MetricOutput, MetricOutput] | None,
) -> list[dict[str, Any]]:
    def pick(o: MetricOutput, key: str) -> np.ndarray:
        return o.scores if key == "" else o.extra[key]

    rows = []
    for key in ["", *out.extra]:
        suffix = f".{key}" if key else ""
        scores = np.asarray(pick(out, key), dtype=np.float64)
        mean, std, n = _mean(scores)
        row: dict[str, Any] = {
            "method": name,
            "metric": info.name + suffix,
            "score": mean,
            "std": std,
            "random_baseline": None,
            "gaussian_baseline": None,
            "better_than_random": None,
            "higher_is_better": info.higher_is_better,
            "n_images": n,
            "scores": scores,
            "random_scores": None,
            "gaussian_scores": None,
            "category": info.category,
        }
        if ref is not None:
            rnd = np.asarray(pick(ref[0], key), dtype=np.float64)
            gau = np.asarray(pick(ref[1], key), dtype=np.float64)
            row["random_baseline"] = _mean(rnd)[0]
            row["gaussian_baseline"] = _mean(gau)[0]
            row["random_scores"], row["gaussian_scores"] = rnd, gau
            row["better_than_random"] = _better(mean, row["random_baseline"], info.higher_is_better)
        rows.append(row)
    return rows
