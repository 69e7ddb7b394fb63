"""``xaiscope evaluate``: score explanation methods with faithfulness, localization,
robustness, complexity and sanity metrics, next to a random and a centre-Gaussian map.

Images come from files (with ``--masks`` for localization) or a dataset (``--data shapes``
brings its object masks). Everything a user can get wrong (metrics, methods, options,
masks, model, output folder) is checked before anything is computed. Writes
``scores.csv``, ``scores.json``, ``scores_per_image.csv`` and PNG plots to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xaiscope.cli.common import UsageError, check_device, load_model
from xaiscope.cli.params import ParamArg, coerce, method_params, parse_param_args
from xaiscope.data.npz import read_arrays
from xaiscope.errors import MaskError, ParameterError
from xaiscope.metrics.registry import MetricInfo, all_metrics, get_metric

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_METHODS = "gradcam,saliency"
DEFAULT_OUT = "xaiscope_eval"
#: shapes images generated when --n-images is not given (an evaluation, not a training set)
DEFAULT_N_SHAPES = 100
#: the shapes seed when --data-seed is not given: not 0, the seed `xaiscope train` uses,
#: so the images are new to a model trained with the defaults
DEFAULT_DATA_SEED = 1


# ------------------------------------------------------------------ shared arguments
def add_input_arguments(p: argparse.ArgumentParser, *, default_methods: str) -> None:
    """Images, dataset, model, methods and explanation options (shared with ``compare``)."""
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help="image files or sample:NAME (or use --data)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="a dataset instead of IMAGE files: shapes (with object masks), folder:PATH, "
        "cifar10:PATH",
    )
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        help=f"images of --data: shapes generates this many (default {DEFAULT_N_SHAPES}); "
        "folders and CIFAR-10 give a stratified subset (default all)",
    )
    p.add_argument("--size", type=int, default=None, help="image side for --data (shapes: 32)")
    p.add_argument(
        "--data-seed",
        type=int,
        default=DEFAULT_DATA_SEED,
        help=f"seed of the --data images (default {DEFAULT_DATA_SEED}; training uses 0, so "
        "the default gives images the model has not seen)",
    )
    p.add_argument(
        "--model", "-m", default=DEFAULT_MODEL, help=f"model spec (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--method",
        default=default_methods,
        help=f"comma-separated method names (default: {default_methods}); see `xaiscope methods`",
    )
    p.add_argument(
        "--target",
        default="top1",
        help="top1 (default), a class index or label, or true (the dataset's labels)",
    )
    p.add_argument("--layer", default=None, help="layer for CAM methods (default: the model's)")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, e.g. n_steps=16 or integrated_gradients.baseline=blur",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random methods and metrics")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow a model file to run code while loading (only for files you trust)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand on ``sub``."""
    names = ", ".join(m.name for m in all_metrics())
    p: argparse.ArgumentParser = sub.add_parser(
        "evaluate",
        help="score explanation methods (deletion, pointing game, sanity checks, ...)",
        description="Explain images with each method, then score the maps with each metric, "
        "next to the same score for a random map and a centre-Gaussian map. Writes "
        "scores.csv, scores.json (with curves), scores_per_image.csv, scores.png, and "
        "curves.png / sanity.png when those metrics ran.",
        epilog="examples: xaiscope evaluate --model shapes_cnn --data shapes --method "
        "gradcam,saliency | xaiscope evaluate cat.jpg --metrics deletion,insertion "
        "--option step=0.05 | xaiscope evaluate a.png b.png --masks masks.npy "
        "--metrics pointing_game,relevance_mass",
    )
    add_input_arguments(p, default_methods=DEFAULT_METHODS)
    p.add_argument(
        "--metrics",
        default=None,
        help=f"comma-separated metrics (default: every metric the inputs allow): {names}",
    )
    p.add_argument(
        "--list-metrics",
        action="store_true",
        help="list the metrics (direction, needs, options, paper) and exit",
    )
    p.add_argument(
        "--masks",
        default=None,
        help="ground-truth masks for IMAGE files: an .npy or .npz holding an (N, H, W) array "
        "at the images' sizes (nonzero = object)",
    )
    p.add_argument(
        "--option",
        "-O",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metric option, e.g. step=0.05 or deletion.fill=blur (repeatable); see "
        "docs/metrics.md",
    )
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the random and Gaussian reference scores (about 3x faster)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="forward chunk size for metrics")
    p.add_argument(
        "--out", "-o", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------ inputs
class Inputs:
    """The images of a run: arrays, display ids, optional masks and labels."""

    def __init__(
        self,
        arrays: list[np.ndarray],
        ids: list[str],
        masks: Any = None,
        labels: np.ndarray | None = None,
        source: str = "",
    ) -> None:
        self.arrays = arrays
        self.ids = ids
        self.masks = masks
        self.labels = labels
        self.source = source


def load_inputs(args: argparse.Namespace) -> Inputs:
    """Images from IMAGE files or from ``--data`` (never both)."""
    for flag, value, low in (("--n-images", args.n_images, 1), ("--size", args.size, 8)):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if args.data is not None:
        if args.images:
            raise UsageError("give IMAGE files or --data, not both")
        from xaiscope.data.datasets import from_spec

        spec = str(args.data)
        n = args.n_images
        if n is None and (spec == "shapes" or spec.startswith("shapes:")):
            n = int(spec.split(":", 1)[1]) if spec[7:].isdigit() else DEFAULT_N_SHAPES
        data = from_spec(spec, size=args.size, n_images=n, seed=args.data_seed)
        ids = [f"{data.name}_{i}" for i in range(len(data))]
        return Inputs(list(data.images), ids, data.masks, data.labels, data.summary())
    if args.n_images is not None or args.size is not None:
        raise UsageError("--n-images and --size apply to --data only")
    from xaiscope.cli.explain_cmd import load_images

    items = load_images(args.images)
    return Inputs([it.array for it in items], [it.image_id for it in items])


def _mask_key(names: list[str]) -> list[str]:
    return ["masks" if "masks" in names else names[0]] if names else []


def read_masks(path: str) -> np.ndarray:
    """An (N, H, W) mask array from an .npy or .npz file (key ``masks`` or the first array).

    The file may come from anyone: it is read as data only, its sizes checked before they are
    allocated (np.load would allocate whatever its header declares)."""
    p = Path(path)
    if not p.is_file():
        raise MaskError(f"--masks {path}: no such file")
    arrays = read_arrays(p, what="--masks", error=MaskError, pick=_mask_key)
    if not arrays:
        raise MaskError(f"--masks {path}: the .npz holds no array")
    return next(iter(arrays.values()))


def parse_methods(text: str) -> list[str]:
    """Registered method names from ``--method`` (UnknownMethodError lists the valid ones)."""
    from xaiscope.methods.registry import get_method

    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ParameterError("--method is empty; give method names")
    out: list[str] = []
    for name in names:
        info = get_method(name)
        if info.name not in out:
            out.append(info.name)
    return out


def explain_inputs(
    args: argparse.Namespace, model: Any, inputs: Inputs, methods: list[str]
) -> list[Any]:
    """One Explanation per method for the inputs (one target per image)."""
    import xaiscope as xs
    from xaiscope.cli.explain_cmd import check_layer, select_methods

    infos = select_methods(methods, model, args.layer)
    params: dict[str, Any] = dict(method_params(parse_param_args(args.param), infos))
    layer = check_layer(model, infos, args.layer)
    target: Any = args.target
    labels = None
    if str(target).strip().lower() == "true":
        if inputs.labels is None:
            raise ParameterError("--target true needs --data (a dataset with labels)")
        labels = [int(v) for v in inputs.labels]
    exps = xs.explain(
        model,
        inputs.arrays,
        methods=methods,
        target=target,
        layer=layer,
        labels=labels,
        seed=args.seed,
        progress=False if args.quiet else None,
        **params,
    )
    assert isinstance(exps, list)
    if len(exps) != len(methods):
        raise ParameterError(
            f"--target {args.target}: evaluate and compare take one target per image "
            "(top1, a class, or true)"
        )
    return exps


def metric_options(args: Sequence[ParamArg], infos: Sequence[MetricInfo]) -> dict[str, Any]:
    """Typed options per metric from ``--option key=value`` / ``metric.key=value``."""
    per: dict[str, dict[str, Any]] = {i.name: {} for i in infos}
    for arg in args:
        if arg.method is not None:
            info = get_metric(arg.method)
            if info.name not in per:
                raise ParameterError(
                    f"--option {arg.display}: metric {info.name} is not selected "
                    f"(selected: {', '.join(per)})"
                )
            owners = [info]
        else:
            owners = [i for i in infos if arg.key in i.defaults]
        owners = [i for i in owners if arg.key in i.defaults]
        if not owners:
            valid = "; ".join(f"{i.name}: {', '.join(i.defaults) or 'none'}" for i in infos)
            raise ParameterError(f"unknown option {arg.key!r}; valid options: {valid}")
        for info in owners:
            default = info.defaults[arg.key]
            annotation = str(info.fn.__annotations__.get(arg.key, ""))
            where = f"--option {arg.display} ({info.name})"
            # fractions-or-counts (step=0.05 or step=100): whole numbers are counts
            if "int" in annotation and arg.text.strip().lstrip("-").isdigit():
                value: Any = int(arg.text)
            else:
                value = coerce(arg.text, default, where)
            per[info.name][arg.key] = value
    for info in infos:
        info.check_params(per[info.name])
    return {name: values for name, values in per.items() if values}


def check_out(out: Path) -> None:
    from xaiscope.cli.explain_cmd import check_out_dir

    check_out_dir(out)


def say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)


# ------------------------------------------------------------------ command
def run(args: argparse.Namespace) -> int:
    """Validate, explain, evaluate, write the tables and plots."""
    from xaiscope.metrics.evaluate import as_masks, evaluate, resolve_metrics

    if args.list_metrics:
        print(metrics_listing())
        return 0
    # ---- validate: cheapest checks first, nothing written yet
    resolved = resolve_metrics(args.metrics) if args.metrics is not None else None
    methods = parse_methods(args.method)
    option_args = parse_param_args(args.option)
    out = Path(args.out)
    check_out(out)
    device = check_device(args.device)
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    inputs = load_inputs(args)
    masks = inputs.masks
    if args.masks is not None:
        if args.data is not None:
            raise UsageError("--masks is for IMAGE files; --data brings its own masks")
        masks = read_masks(args.masks)
    shapes = [a.shape[:2] for a in inputs.arrays]
    masks = as_masks(masks, shapes)
    model = load_model(args.model, device, trust=args.trust_model)

    # the metrics to run: as asked, or every one the inputs allow (decided by evaluate())
    infos = resolved if resolved is not None else all_metrics()
    if resolved is None:
        infos = [i for i in infos if not (i.needs_masks and masks is None) and _torch_ok(i, model)]
    else:
        for info in infos:  # fail before explaining anything
            if info.needs_masks and masks is None:
                raise MaskError(
                    f"{info.name} needs ground-truth masks: use --data shapes or --masks FILE"
                )
            if not _torch_ok(info, model):
                from xaiscope.errors import UnsupportedModelError

                raise UnsupportedModelError(
                    f"{info.name} re-initialises the layers of a PyTorch module; this "
                    f"{model.framework} model has none"
                )
    options = metric_options(option_args, infos)

    if inputs.source:
        say(f"data: {inputs.source}")
    say(
        f"explaining {len(inputs.arrays)} image(s) with {', '.join(methods)}; "
        f"metrics: {', '.join(i.name for i in infos)}"
    )
    exps = explain_inputs(args, model, inputs, methods)
    result = evaluate(
        model,
        inputs.arrays,
        {e.method: e for e in exps},
        metrics=[i.name for i in infos],
        masks=masks,
        baselines=not args.no_baselines,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=False if args.quiet else None,
        **options,
    )
    written = write_evaluation(result, out, inputs.ids)
    say(str(result))
    say(f"wrote {', '.join(p.name for p in written)} in {out}")
    return 0


def metrics_listing() -> str:
    """One block per metric: name, category, direction, needs, options, paper."""
    lines = []
    for m in all_metrics():
        aliases = f" ({', '.join(m.aliases)})" if m.aliases else ""
        needs = ", ".join(m.needs()) or "maps only"
        options = ", ".join(f"{k}={v!r}" for k, v in m.defaults.items()) or "none"
        lines += [
            f"{m.name}{aliases}  [{m.category}, {m.direction}]",
            f"    {m.summary}",
            f"    needs: {needs}; options: {options}",
            f"    {m.paper}",
        ]
    return "\n".join(lines)


def _torch_ok(info: MetricInfo, model: Any) -> bool:
    if not info.needs_torch:
        return True
    from xaiscope.models.torch_model import TorchModel

    return isinstance(model, TorchModel) and not model.scripted


def write_evaluation(result: Any, out: Path, image_ids: list[str]) -> list[Path]:
    """scores.csv, scores.json, scores_per_image.csv and the plots; returns the paths."""
    from xaiscope.cli.common import atomic_write
    from xaiscope.viz import save_figure

    out.mkdir(parents=True, exist_ok=True)
    paths = [
        atomic_write(out / "scores.csv", lambda tmp: result.to_csv(tmp)),
        atomic_write(out / "scores.json", lambda tmp: result.to_json(tmp, images=image_ids)),
    ]
    per_image = result.per_image()
    for row in per_image.rows:
        row["image_id"] = image_ids[row["image"]]
    paths.append(atomic_write(out / "scores_per_image.csv", lambda tmp: per_image.to_csv(tmp)))
    metrics = {r["metric"] for r in result.rows}
    figures = [("scores.png", result.plot_scores)]
    if metrics & {"deletion", "insertion", "morf", "lerf"}:
        figures.append(("curves.png", result.plot_curves))
    if "sanity_model_randomization" in metrics:
        figures.append(("sanity.png", result.plot_sanity))
    for name, draw in figures:
        paths.append(save_figure(draw(), out / name))  # save_figure closes the figure
    return paths
