"""Compute everything a report shows: predictions, maps, metrics, top-k maps, activations,
attention, and provenance. :func:`build_report` returns a :class:`Report` whose
:meth:`Report.to_html` is one self-contained HTML page (see :mod:`xaiscope.report.html`).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiscope.errors import ParameterError, XaiscopeError

#: Methods a report shows when none are named.
DEFAULT_METHODS = ("gradcam", "integrated_gradients", "saliency")
#: Channels per layer drawn in the activations section (the grid says how many exist).
REPORT_CHANNELS = 128
#: Longest side of the prediction thumbnails, in pixels.
THUMBNAIL = 256


class MetricsUnavailableError(XaiscopeError):
    """Metrics were asked for but ``xs.evaluate`` is not available in this installation."""


@dataclass
class Picture:
    """One embedded PNG: ``png`` bytes, a caption, and its pixel size (width, height)."""

    png: bytes
    caption: str
    size: tuple[int, int]


@dataclass
class ImageSection:
    """Everything shown for one input image."""

    name: str
    thumbnail: Picture
    predictions: list[dict[str, Any]]
    maps: list[Picture] = field(default_factory=list)
    topk: list[Picture] = field(default_factory=list)
    activations: list[Picture] = field(default_factory=list)
    attention: list[Picture] = field(default_factory=list)


@dataclass
class Report:
    """A computed report: sections per image, metrics rows, provenance.

    ``to_html()`` renders one self-contained page; ``save(path)`` writes it atomically.
    The pictures are plain PNG bytes, reusable elsewhere (the web app).
    """

    title: str
    images: list[ImageSection]
    methods: list[dict[str, Any]]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def pictures(self) -> list[Picture]:
        """Every picture of the report, in page order."""
        out: list[Picture] = []
        for sec in self.images:
            out += [sec.thumbnail, *sec.maps, *sec.topk, *sec.activations, *sec.attention]
        return out

    def to_html(self) -> str:
        from xaiscope.report.html import render

        return render(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the HTML page to ``path`` (parents created; never a half-written file)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_html(), encoding="utf-8")
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return out


# ------------------------------------------------------------------------ pictures
def figure_png(fig: Any, caption: str, *, dpi: int = 80) -> Picture:
    """Render a matplotlib Figure to PNG bytes and release it."""
    from xaiscope.viz import close_figure

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        close_figure(fig)
    return _picture(buf.getvalue(), caption)


def array_png(rgb: np.ndarray, caption: str, *, max_side: int | None = None) -> Picture:
    """Encode an (H, W, 3) uint8 array as PNG (shrunk to ``max_side`` if larger)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if max_side is not None and max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    elif max_side is not None and max(im.size) < max_side // 2:
        # a 32 px dataset image: show its pixels as blocks, large enough to see
        k = (max_side // 2) // max(im.size)
        im = im.resize((im.size[0] * k, im.size[1] * k), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return _picture(buf.getvalue(), caption)


def _picture(png: bytes, caption: str) -> Picture:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        size = im.size
    return Picture(png, caption, (int(size[0]), int(size[1])))


# ------------------------------------------------------------------------ metrics
def find_evaluate() -> Any:
    """``xs.evaluate`` if the metrics package provides it, else None."""
    try:
        import xaiscope.metrics as metrics_pkg
    except ImportError:
        metrics_pkg = None  # type: ignore[assignment]
    fn = getattr(metrics_pkg, "evaluate", None) if metrics_pkg is not None else None
    if fn is None:
        import xaiscope

        fn = getattr(xaiscope, "evaluate", None)
    return fn if callable(fn) else None


def check_metrics(names: Sequence[str], masks: Any) -> None:
    """Unknown metric names, and metrics that need masks when none are given, fail early
    (where the metrics package has a registry)."""
    try:
        from xaiscope.metrics import get_metric
    except ImportError:
        return
    for name in names:
        info = get_metric(name)  # UnknownMetricError listing the valid names
        if getattr(info, "needs_masks", False) and masks is None:
            raise ParameterError(
                f"metric {info.name} needs ground-truth masks (masks=), which the report "
                "was not given; pick metrics without masks (e.g. deletion, insertion)"
            )


def _call_evaluate(fn: Any, model: Any, images: Any, exp: Any, **kw: Any) -> Any:
    """``fn(model, images, exp, metrics=..., masks=...)`` plus the keywords it accepts."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(model, images, exp, metrics=kw["metrics"], masks=kw["masks"])
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(model, images, exp, **kw)
    always = {"metrics", "masks"}
    return fn(model, images, exp, **{k: v for k, v in kw.items() if k in always or k in params})


def require_evaluate() -> Any:
    """``xs.evaluate``, or :class:`MetricsUnavailableError` with what to do instead."""
    fn = find_evaluate()
    if fn is None:
        raise MetricsUnavailableError(
            "metrics need xs.evaluate (the xaiscope.metrics package), which this installation "
            "does not provide yet; pass a computed table instead (metrics_table=, or "
            "--metrics-file table.json on the command line)"
        )
    return fn


def table_rows(table: Any, **extra: Any) -> list[dict[str, Any]]:
    """Rows (dicts) from a metrics table: a pandas DataFrame, a list of dicts, a dict of
    columns (equal-length lists), a flat dict ``{metric: value}``, or an object with
    ``to_dict()`` / ``rows``. ``extra`` columns (e.g. ``method``) are put first."""
    if table is None:
        return []
    rows: list[dict[str, Any]]
    if isinstance(getattr(table, "rows", None), list):
        # xaiscope's ScoreTable/Evaluation: display columns, without the per-image lists
        hidden = set(getattr(table, "hidden", ()) or ())
        columns = [c for c in getattr(table, "columns", []) or [] if c not in hidden]
        rows = [{c: r.get(c) for c in columns} if columns else dict(r) for r in table.rows]
    elif hasattr(table, "to_dict") and hasattr(table, "columns"):  # pandas
        rows = list(table.to_dict("records"))
    elif isinstance(table, Mapping):
        values = list(table.values())
        if values and all(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            n = len(values[0])
            if any(len(v) != n for v in values):
                raise ParameterError("a metrics table given as columns needs equal-length columns")
            rows = [{str(k): table[k][i] for k in table} for i in range(n)]
        elif values and all(isinstance(v, Mapping) for v in values):
            rows = [{"name": str(k), **dict(v)} for k, v in table.items()]
        else:
            rows = [{str(k): v for k, v in table.items()}]
    elif isinstance(table, Sequence) and not isinstance(table, (str, bytes)):
        if not all(isinstance(r, Mapping) for r in table):
            raise ParameterError("a metrics table given as a list needs one dict per row")
        rows = [dict(r) for r in table]
    elif hasattr(table, "to_dict"):
        return table_rows(table.to_dict(), **extra)
    else:
        raise ParameterError(
            f"cannot read a metrics table of type {type(table).__name__}: give a DataFrame, "
            "a list of dicts or a dict"
        )
    return [{**extra, **{str(k): _plain(v) for k, v in r.items()}} for r in rows]


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist() if v.size <= 8 else f"<array {v.shape}>"
    return v


# ------------------------------------------------------------------------ build
def _method_names(methods: Sequence[str] | str | None) -> list[str]:
    from xaiscope.methods.registry import get_method

    if methods is None:
        names: list[str] = list(DEFAULT_METHODS)
    elif isinstance(methods, str):
        names = [m.strip() for m in methods.split(",") if m.strip()]
    else:
        names = list(methods)
    if not names:
        raise ParameterError("a report needs at least one method")
    out: list[str] = []
    for n in names:
        name = get_method(n).name
        if name not in out:
            out.append(name)
    return out


def _params_for(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``params`` that method ``name`` takes (per-method dicts allowed)."""
    from xaiscope.methods.registry import get_method

    info = get_method(name)
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping) and (key == info.name or key in info.aliases):
            out.update(value)
        elif key in info.defaults:
            out[key] = value
    return out


def _check_params(names: list[str], params: Mapping[str, Any]) -> None:
    from xaiscope.methods.registry import get_method

    infos = [get_method(n) for n in names]
    known = {p for i in infos for p in i.defaults} | {
        n for i in infos for n in (i.name, *i.aliases)
    }
    unknown = sorted(set(params) - known)
    if unknown:
        valid = sorted({p for i in infos for p in i.defaults})
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)} for {', '.join(names)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )


def check_activation_layers(model: Any, layers: Sequence[str]) -> None:
    """Unknown layers and layers without a spatial output fail before any work."""
    from xaiscope.errors import NotSpatialError, UnknownLayerError
    from xaiscope.models.activations import spatial_layers

    getter = getattr(model, "get_layer", None)
    for name in layers:
        if callable(getter):
            getter(name)
        elif name not in model.layers():
            raise UnknownLayerError(f"unknown layer {name!r}; see model.layers()")
    shapes = {info.name: info for info in spatial_layers(model, all_layers=True)}
    for name in layers:
        info = shapes.get(name)
        if info is not None and not info.spatial:
            raise NotSpatialError(
                f"layer {name!r} has no spatial output (shape {info.shape} per image), so it "
                "has no activation maps to show; pick a convolution layer or a transformer "
                "block (see `xaiscope models layers`)"
            )


def build_report(
    model: Any,
    images: Any,
    *,
    methods: Sequence[str] | str | None = None,
    target: Any = "top1",
    layer: str | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    topk: Sequence[int] | None = None,
    topk_methods: Sequence[str] | None = None,
    activations: Sequence[str] | str | None = None,
    max_channels: int = REPORT_CHANNELS,
    attention: bool = False,
    metrics: Sequence[str] | None = None,
    metrics_table: Any = None,
    metric_options: Mapping[str, Any] | None = None,
    masks: Any = None,
    image_names: Sequence[str] | None = None,
    model_spec: str | None = None,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    top_predictions: int = 5,
    progress: bool = False,
) -> Report:
    """Compute a report of ``model`` on ``images``.

    ``methods`` (default gradcam, integrated_gradients, saliency) with ``params`` (method
    parameters, or per-method dicts) and ``target``/``layer``/``seed`` as in
    :func:`xaiscope.explain`; each method runs on its own so its run time is recorded.
    Optional sections: ``topk`` ranks (e.g. ``[1, 2, 5, 10]``, maps of
    ``topk_methods``, default the first method), ``activations`` (layer names or
    ``"auto"`` for an early, a middle and a late layer; the first ``max_channels``
    channels drawn), ``attention`` (a ViT's attention per layer and head), ``metrics``
    (names for ``xs.evaluate``, with ``metric_options`` such as ``{"step": 0.1}`` or
    ``{"deletion": {"fill": "blur"}}`` and ``masks`` for localization metrics;
    :class:`MetricsUnavailableError` where the metrics package lacks ``evaluate``) and/or
    ``metrics_table`` (a table computed elsewhere, shown as is).
    ``model_spec`` (the spec the model was loaded from) lets the provenance hash its file.
    """
    from xaiscope import viz
    from xaiscope.explain import as_image_list, as_model, explain
    from xaiscope.methods.registry import get_method
    from xaiscope.models.activations import activations as layer_activations
    from xaiscope.models.activations import attention_maps, pick_layers
    from xaiscope.report.provenance import library_versions, model_provenance, now_utc

    started = time.perf_counter()
    if isinstance(model, str) and model_spec is None:
        model_spec = model
    m = as_model(model)
    names = _method_names(methods)
    params = dict(params or {})
    _check_params(names, params)
    evaluate = require_evaluate() if metrics else None
    if metrics:
        check_metrics(list(metrics), masks)
    given_rows = table_rows(metrics_table)
    arrays = as_image_list(images)
    if image_names is not None and len(image_names) != len(arrays):
        raise ParameterError(f"got {len(image_names)} image names for {len(arrays)} images")
    labels = (
        list(image_names)
        if image_names is not None
        else [f"image {i + 1}" for i in range(len(arrays))]
    )
    ranks: list[int] = []
    if topk is not None:
        ranks = sorted({int(r) for r in topk})
        if not ranks or ranks[0] < 1:
            raise ParameterError(f"top-k ranks must be positive integers, got {list(topk)}")
    if isinstance(activations, str):
        layers = (
            pick_layers(m)
            if activations == "auto"
            else [s.strip() for s in activations.split(",") if s.strip()]
        )
    else:
        layers = list(activations or [])
    if layers:
        check_activation_layers(m, layers)
    if topk is not None:
        ranks = [r for r in ranks if r <= m.num_classes]
        if not ranks:
            raise ParameterError(
                f"top-k ranks {sorted(set(topk))} are all beyond the model's "
                f"{m.num_classes} classes"
            )
    if attention:
        from xaiscope.models.vit import require_transformer

        require_transformer(m, "the attention section")

    pred = m.predict(arrays, top_k=min(top_predictions, m.num_classes))
    sections = [
        ImageSection(
            name=labels[i],
            thumbnail=array_png(arrays[i], labels[i], max_side=THUMBNAIL),
            predictions=[
                {
                    "rank": r + 1,
                    "index": int(pred.indices[i][r]),
                    "label": pred.labels[i][r],
                    "probability": float(pred.probs[i][r]),
                }  # fmt: skip
                for r in range(len(pred.labels[i]))
            ],
        )
        for i in range(len(arrays))
    ]

    # ---- maps: one explain call per method, timed
    method_rows: list[dict[str, Any]] = []
    notes: list[str] = []
    per_method: dict[str, list[Any]] = {}
    for name in names:
        t0 = time.perf_counter()
        out = explain(
            m, arrays, methods=[name], target=target, layer=layer, seed=seed,
            progress=progress, **_params_for(name, params),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        exps = out if isinstance(out, list) else [out]
        per_method[name] = exps
        method_rows.append(
            {
                "method": name,
                "params": exps[0].params,
                "layer": exps[0].layer,
                "seconds": seconds,
                "targets": len(exps),
            }
        )
        # explain numbers images from 0 ("image 0: the map is constant"); the page from 1
        notes += [f"{name}: {w} (images counted from 0)" for e in exps for w in e.warnings]
    k_sets = len(next(iter(per_method.values())))
    for i, sec in enumerate(sections):
        for k in range(k_sets):
            row = [per_method[name][k] for name in names]
            rank_note = f", target {k + 1} of {k_sets}" if k_sets > 1 else ""
            fig = viz.side_by_side(arrays[i], row, index=i, alpha=alpha, cmap=cmap)
            sec.maps.append(figure_png(fig, f"{sec.name}: {', '.join(names)}{rank_note}"))

    # ---- metrics
    rows: list[dict[str, Any]] = []
    if evaluate is not None:
        for name in names:
            for e in per_method[name]:
                t0 = time.perf_counter()
                table = _call_evaluate(
                    evaluate, m, arrays, e, metrics=list(metrics or []), masks=masks,
                    seed=0 if seed is None else seed, progress=progress,
                    **dict(metric_options or {}),
                )  # fmt: skip
                rows += table_rows(table, method=name)
                for r in method_rows:
                    if r["method"] == name:
                        r["metrics_seconds"] = r.get("metrics_seconds", 0.0) + (
                            time.perf_counter() - t0
                        )
    rows += given_rows

    # ---- optional sections
    if topk is not None:
        # class-agnostic methods (attention rollout) give one map for every class
        by_class = [n for n in names if get_method(n).family != "attention"]
        chosen = _method_names(topk_methods) if topk_methods else (by_class or names)[:1]
        for i, sec in enumerate(sections):
            kw: dict[str, Any] = {}
            for name in chosen:
                kw.update(_params_for(name, params))
            fig = viz.topk_grid(m, arrays[i], chosen, ranks=ranks, layer=layer, seed=seed,
                                alpha=alpha, cmap=cmap, **kw)  # fmt: skip
            sec.topk.append(figure_png(fig, f"{sec.name}: classes ranked {ranks}"))
    for layer_name in layers:
        acts = layer_activations(m, arrays, layer_name)
        for i, sec in enumerate(sections):
            fig = viz.activation_grid(acts, index=i, max_channels=max_channels)
            shape = "x".join(str(s) for s in acts.values.shape[1:])
            sec.activations.append(
                figure_png(fig, f"{sec.name}: layer {layer_name} ({acts.kind}, {shape})")
            )
    if attention:
        att = attention_maps(m, arrays)
        for i, sec in enumerate(sections):
            fig = viz.attention_grid(att, index=i)
            sec.attention.append(
                figure_png(
                    fig, f"{sec.name}: attention, {att.num_layers} layers x {att.num_heads} heads"
                )  # fmt: skip
            )

    provenance: dict[str, Any] = {
        "model": model_provenance(m, model_spec),
        "target": str(target),
        "layer": layer or (m.default_layer if any(r["layer"] for r in method_rows) else None),
        "seed": seed,
        "images": labels,
        "versions": library_versions(),
        "created": now_utc(),
        "total_seconds": time.perf_counter() - started,
    }
    return Report(
        title=title or f"xaiscope report: {provenance['model']['name']}",
        images=sections,
        methods=method_rows,
        metrics=rows,
        provenance=provenance,
        notes=notes,
    )


def write_report(path: str | os.PathLike[str], model: Any, images: Any, **kw: Any) -> Path:
    """:func:`build_report` then :meth:`Report.save` to ``path``; returns the path."""
    return build_report(model, images, **kw).save(path)
