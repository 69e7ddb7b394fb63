"""Evaluation metrics, one file per metric; importing this package fills the registry.

``xs.evaluate`` scores explanations (faithfulness, localization, robustness, complexity,
sanity) next to the scores of a random and a centre-Gaussian map; ``xs.compare`` measures
how far methods agree. Every module of this package whose name does not start with ``_``
and is not a helper is a metric file with an ``@register`` function.
"""

import importlib
import pkgutil

from xaiscope.metrics.registry import (
    CATEGORIES,
    MetricContext,
    MetricInfo,
    MetricOutput,
    all_metrics,
    get_metric,
    metric_names,
    register,
)

_HELPERS = {"registry", "explainers", "similarity", "table", "evaluate", "compare", "plots"}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name not in _HELPERS:
        importlib.import_module(f"{__name__}.{_info.name}")

from xaiscope.metrics.compare import Comparison, compare  # noqa: E402
from xaiscope.metrics.evaluate import Evaluation, evaluate  # noqa: E402
from xaiscope.metrics.explainers import (  # noqa: E402
    Explainer,
    GaussianExplainer,
    RandomExplainer,
    edge_detector,
    gaussian_map,
    method_explainer,
)
from xaiscope.metrics.similarity import pearson, spearman, ssim, top_k_intersection  # noqa: E402
from xaiscope.metrics.table import ScoreTable  # noqa: E402

__all__ = [
    "CATEGORIES",
    "Comparison",
    "Evaluation",
    "Explainer",
    "GaussianExplainer",
    "MetricContext",
    "MetricInfo",
    "MetricOutput",
    "RandomExplainer",
    "ScoreTable",
    "all_metrics",
    "compare",
    "edge_detector",
    "evaluate",
    "gaussian_map",
    "get_metric",
    "method_explainer",
    "metric_names",
    "pearson",
    "register",
    "spearman",
    "ssim",
    "top_k_intersection",
]
