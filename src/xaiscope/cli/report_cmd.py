"""``xaiscope report``: one self-contained HTML page of a model's explanations.

Everything a user can get wrong (images, model, methods, parameters, target, layer, ranks,
the metrics table, the output file) is checked before anything is computed; the page is
written atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from xaiscope.cli.common import UsageError, check_device, load_model, probe_writable_dir
from xaiscope.cli.explain_cmd import (
    DEFAULT_MODEL,
    SAMPLE_PREFIX,
    check_layer,
    check_target,
    load_images,
    parse_method_names,
    select_methods,
)
from xaiscope.cli.params import ParamArg, method_params, parse_param_args
from xaiscope.errors import ParameterError

DEFAULT_OUT = "xaiscope_report.html"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``report`` subcommand on ``sub`` (an argparse subparsers object)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="one self-contained HTML report (predictions, maps, metrics, provenance)",
        description=(
            "Write one HTML file (images embedded, viewable offline) with the predictions, "
            "each method's maps side by side, optionally metrics, the maps of other "
            "top-k classes, activations and ViT attention, and provenance: model file "
            "hash, method parameters, library versions, seed and run time per method."
        ),
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help=f"image files, or {SAMPLE_PREFIX}NAME (default: {SAMPLE_PREFIX}chelsea)",
    )
    p.add_argument(
        "--model", "-m", default=DEFAULT_MODEL, help=f"model spec (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--method",
        default=None,
        help="comma-separated method names, or 'all' (default: gradcam,integrated_gradients,"
        "saliency)",
    )
    p.add_argument("--target", default="top1", help="top1, topK, a class index or label")
    p.add_argument("--layer", default=None, help="layer for CAM methods (default: the model's)")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, e.g. n_steps=16 or integrated_gradients.baseline=blur",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random methods (default: 0)")
    p.add_argument(
        "--topk",
        default=None,
        metavar="RANKS",
        help="also show the maps of the classes ranked RANKS, e.g. 1,2,5,10 (first method)",
    )
    p.add_argument(
        "--activations",
        default=None,
        metavar="LAYERS",
        help="also show every channel of these layers (comma-separated), or 'auto' for an "
        "early, a middle and a late layer",
    )
    p.add_argument(
        "--attention",
        action="store_true",
        help="also show a vision transformer's attention per layer and head",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric names computed with xs.evaluate (e.g. deletion,insertion)",
    )
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metric option, e.g. step=0.1 or deletion.fill=blur (repeatable); see "
        "`xaiscope evaluate --list`",
    )
    p.add_argument(
        "--metrics-file",
        default=None,
        metavar="JSON",
        help="a metrics table computed elsewhere (JSON: a list of rows or a dict), shown as is",
    )
    p.add_argument("--title", default=None, help="page title")
    p.add_argument("--out", "-o", default=DEFAULT_OUT, help=f"HTML file (default: {DEFAULT_OUT})")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow a model file to run code while loading (TorchScript, Keras Lambda layers)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    p.set_defaults(func=run)
    return p


def parse_ranks(text: str | None) -> list[int] | None:
    """``"1,2,5,10"`` -> [1, 2, 5, 10]; None stays None."""
    if text is None:
        return None
    try:
        ranks = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(
            f"--topk takes comma-separated ranks like 1,2,5,10, got {text!r}"
        ) from None
    if not ranks or ranks[0] < 1:
        raise UsageError(f"--topk ranks must be positive integers (1 = top class), got {text!r}")
    return ranks


def read_metrics_file(path: str | None) -> Any:
    """The JSON metrics table of ``--metrics-file`` (checked to be a table)."""
    if path is None:
        return None
    from xaiscope.report import table_rows

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ParameterError(f"--metrics-file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ParameterError(
            f"--metrics-file {path}: not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from None
    table_rows(data)  # raises ParameterError for a non-table
    return data


def check_out_file(out: Path) -> None:
    """Fail early if the report file cannot be written."""
    if out.exists() and out.is_dir():
        raise ParameterError(f"--out {out}: is a folder; give a file name such as report.html")
    probe_writable_dir(out.parent if str(out.parent) else Path("."), f"--out {out}")


def run(args: argparse.Namespace) -> int:
    """Validate everything, compute the report, write the HTML file."""
    from xaiscope.report import build_report, require_evaluate

    names = parse_method_names(args.method)
    param_args: list[ParamArg] = parse_param_args(args.param)
    ranks = parse_ranks(args.topk)
    metrics = [m.strip() for m in (args.metrics or "").split(",") if m.strip()] or None
    if args.metrics is not None and not metrics:
        raise UsageError("--metrics is empty; give metric names, e.g. deletion,insertion")
    options: dict[str, Any] = {}
    if metrics:
        from xaiscope.report.build import check_metrics

        require_evaluate()  # before any work: exit 2 where xs.evaluate is missing
        check_metrics(metrics, None)  # unknown names, metrics that need masks
        from xaiscope.cli.evaluate_cmd import metric_options
        from xaiscope.metrics import get_metric

        options = metric_options(parse_param_args(args.option), [get_metric(m) for m in metrics])
    elif args.option:
        raise UsageError("--option sets metric options: give --metrics too")
    table = read_metrics_file(args.metrics_file)
    out = Path(args.out)
    check_out_file(out)
    device = check_device(args.device)
    items = load_images(args.images)
    model = load_model(args.model, device, trust=args.trust_model)
    infos = select_methods(names, model, args.layer)
    for info in infos:
        if info.needs_attention:
            from xaiscope.models.vit import require_transformer

            require_transformer(model, info.name)
    params: dict[str, Any] = dict(method_params(param_args, infos))
    layer = check_layer(model, infos, args.layer)
    check_target(model, args.target, len(items))
    if ranks is not None and ranks[0] > model.num_classes:
        raise ParameterError(f"--topk {args.topk}: the model has {model.num_classes} classes")
    activations: Any = args.activations
    if activations is not None and activations != "auto":
        layers = [s.strip() for s in activations.split(",") if s.strip()]
        if not layers:
            raise UsageError("--activations is empty; give layer names or 'auto'")
        from xaiscope.report.build import check_activation_layers

        check_activation_layers(model, layers)
        activations = layers
    if args.attention:
        from xaiscope.models.vit import require_transformer

        require_transformer(model, "--attention")

    if not args.quiet:
        print(
            f"report: {len(items)} image(s), {len(infos)} method(s) on {args.model}",
            file=sys.stderr,
        )
    report = build_report(
        model,
        [it.array for it in items],
        methods=[i.name for i in infos],
        target=args.target,
        layer=layer,
        params=params,
        seed=args.seed,
        topk=[r for r in ranks if r <= model.num_classes] if ranks else None,
        activations=activations,
        attention=args.attention,
        metrics=metrics,
        metrics_table=table,
        metric_options=options,
        image_names=[it.source for it in items],
        model_spec=args.model,
        title=args.title,
        progress=not args.quiet,
    )
    path = report.save(out)
    if not args.quiet:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
