"""The metric registry: one entry per evaluation metric, one small file per metric.

A metric is a function ``fn(ctx, maps, **params) -> MetricOutput`` where ``maps`` is a list
of (H_i, W_i) float arrays (one per image, at the image's resolution) and ``ctx`` a
:class:`MetricContext`. Its keyword-only parameters with defaults are its options, read
from the signature (as for methods, see :mod:`xaiscope.methods.registry`).

Each entry says what the metric needs (ground-truth masks, a model, the explanation method
to re-run, a PyTorch module to randomise) and whether a higher score is better, so
:func:`xaiscope.evaluate` can check inputs before computing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from xaiscope._keywords import keyword_defaults, merge_keywords
from xaiscope.errors import ParameterError, UnknownMetricError

if TYPE_CHECKING:
    from xaiscope.metrics.explainers import Explainer
    from xaiscope.models.base import Model

Category = Literal["faithfulness", "localization", "robustness", "complexity", "sanity"]

#: Map list: one (H_i, W_i) float array per image.
MapList = list[np.ndarray]


@dataclass
class MetricOutput:
    """A metric's result on one set of maps.

    ``scores``: (N,) one score per image (NaN where undefined). ``extra``: further per-image
    statistics, each (N,), reported as rows ``"<metric>.<name>"``. ``details``: anything
    else worth keeping (curves, per-layer values), JSON-ready lists or arrays.
    """

    scores: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricContext:
    """What a metric sees besides the maps.

    ``images``: the N user images, (H_i, W_i, 3) uint8. ``targets``: (N,) class indices the
    maps explain. ``masks``: N (H_i, W_i) bool ground-truth masks, or None. ``explainer``
    recomputes maps for other images or another model (robustness and sanity metrics);
    ``seed`` drives every random choice (tie-breaking, noise, re-initialisation).
    """

    model: Model | None
    images: list[np.ndarray]
    targets: np.ndarray
    masks: list[np.ndarray] | None = None
    explainer: Explainer | None = None
    seed: int = 0
    batch_size: int | None = None
    progress: bool | None = None
    #: shared between the real run and the baseline runs: pixels at model resolution
    cache: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def rng(self, salt: int = 0) -> np.random.Generator:
        """A numpy generator seeded from ``seed`` and ``salt`` (same inputs, same draws)."""
        return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, int(salt)])

    def require_model(self, metric: str) -> Model:
        if self.model is None:
            raise ParameterError(f"{metric} needs a model (it runs the model on changed images)")
        return self.model

    def require_masks(self, metric: str) -> list[np.ndarray]:
        if self.masks is None:
            from xaiscope.errors import MaskError

            raise MaskError(f"{metric} needs ground-truth masks: pass masks=")
        return self.masks

    def require_explainer(self, metric: str) -> Explainer:
        if self.explainer is None:
            raise ParameterError(
                f"{metric} re-runs the explanation method: pass an Explanation of a "
                "registered method, or explainer=f(model, images, targets) -> maps"
            )
        return self.explainer

    def pixels(self) -> torch.Tensor:
        """The images as the model sees them before normalisation: (N, 3, h, w) in [0, 1]."""
        if "pixels" not in self.cache:
            model = self.require_model("this metric")
            self.cache["pixels"] = model.pixels(self.images)
        return self.cache["pixels"]


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric: name, category, direction, needs, options and paper."""

    name: str
    fn: Callable[..., MetricOutput]
    category: Category
    higher_is_better: bool
    paper: str
    summary: str
    aliases: tuple[str, ...] = ()
    #: ground-truth masks (localization)
    needs_masks: bool = False
    #: runs the model on changed inputs (forward passes only)
    needs_model: bool = False
    #: re-runs the explanation method (on noisy images, on a randomised model)
    needs_method: bool = False
    #: re-initialises the layers of a PyTorch module
    needs_torch: bool = False
    #: (low, high) of the score where bounded
    bounds: tuple[float, float] | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """Options and their defaults."""
        return keyword_defaults(self.fn)

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    def needs(self) -> list[str]:
        """What the metric needs, in words (for listings and error messages)."""
        out = []
        if self.needs_masks:
            out.append("masks")
        if self.needs_model:
            out.append("model")
        if self.needs_method:
            out.append("method (re-run)")
        if self.needs_torch:
            out.append("PyTorch model")
        return out

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Reject unknown options with the list of valid ones; return defaults + params."""
        return merge_keywords(self.name, self.defaults, params, "option")


_REGISTRY: dict[str, MetricInfo] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    category: Category,
    higher_is_better: bool,
    paper: str,
    summary: str,
    aliases: tuple[str, ...] = (),
    needs_masks: bool = False,
    needs_model: bool = False,
    needs_method: bool = False,
    needs_torch: bool = False,
    bounds: tuple[float, float] | None = None,
) -> Callable[[Callable[..., MetricOutput]], Callable[..., MetricOutput]]:
    """Decorator adding a metric function to the registry."""

    def deco(fn: Callable[..., MetricOutput]) -> Callable[..., MetricOutput]:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} registered twice")
        _REGISTRY[name] = MetricInfo(
            name=name,
            fn=fn,
            category=category,
            higher_is_better=higher_is_better,
            paper=paper,
            summary=summary,
            aliases=aliases,
            needs_masks=needs_masks,
            needs_model=needs_model,
            needs_method=needs_method,
            needs_torch=needs_torch,
            bounds=bounds,
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return deco


def _load_all() -> None:
    # importing the package registers every metric file
    import xaiscope.metrics  # noqa: F401


def get_metric(name: str) -> MetricInfo:
    """The metric called ``name`` (or an alias); :class:`UnknownMetricError` lists valid ones."""
    _load_all()
    key = str(name).strip()
    for candidate in (key, key.lower(), key.lower().replace("-", "_")):
        candidate = _ALIASES.get(candidate, candidate)
        if candidate in _REGISTRY:
            return _REGISTRY[candidate]
    raise UnknownMetricError(f"unknown metric {name!r}; valid metrics: {', '.join(metric_names())}")


#: Listing order of the categories.
CATEGORIES: tuple[Category, ...] = (
    "faithfulness",
    "localization",
    "robustness",
    "complexity",
    "sanity",
)


def all_metrics() -> list[MetricInfo]:
    """Every registered metric, by category (faithfulness first, sanity last), then name."""
    _load_all()
    return sorted(_REGISTRY.values(), key=lambda m: (CATEGORIES.index(m.category), m.name))


def metric_names(*, category: str | None = None) -> list[str]:
    """Registered metric names (in :func:`all_metrics` order), optionally of one category."""
    return [m.name for m in all_metrics() if category is None or m.category == category]
