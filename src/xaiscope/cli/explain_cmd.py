"""``xaiscope explain``: attribution maps for images, saved as panels, .npz and .json.

Everything a user can get wrong (images, model, methods, parameters, target, layer, output
folder) is checked before the first file is written; then images are explained in
batches, one :func:`xaiscope.explain` call per batch so methods share their passes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiscope.cli.common import (
    atomic_write,
    check_device,
    load_model,
    probe_writable_dir,
    safe_name,
    terminal_safe,
    write_json,
)
from xaiscope.cli.params import ParamArg, method_params, parse_param_args
from xaiscope.errors import (
    ParameterError,
    UnknownLayerError,
    UnknownMethodError,
    UnsupportedModelError,
)
from xaiscope.explanation import Explanation
from xaiscope.methods.registry import MethodInfo, all_methods, get_method
from xaiscope.models.base import Model

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_IMAGE = "chelsea"
#: The default methods: one CAM, one path method, one plain gradient (cheap and contrasting).
DEFAULT_METHODS = ("gradcam", "integrated_gradients", "saliency")
DEFAULT_OUT = "xaiscope_out"
#: Images per explain() call when --batch-size is not given.
IMAGES_PER_CALL = 8
TOP_K = 5
SAMPLE_PREFIX = "sample:"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``explain`` subcommand on ``sub`` (an argparse subparsers object)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "explain",
        help="attribution maps for images (default: a sample photo)",
        description=(
            "Explain a model's predictions on images. Writes, per image and method, "
            "a PNG panel per target (image | heatmap | overlay), an .npz with the maps "
            "(readable with xaiscope.Explanation.load) and a .json summary."
        ),
    )
    p.add_argument(
        "images",
        nargs="*",
        metavar="IMAGE",
        help=f"image files, or {SAMPLE_PREFIX}NAME for a bundled photo "
        f"(default: {SAMPLE_PREFIX}{DEFAULT_IMAGE})",
    )
    p.add_argument(
        "--model", "-m", default=DEFAULT_MODEL, help=f"model spec (default: {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--method",
        default=None,
        help=f"comma-separated method names, or 'all' (default: {','.join(DEFAULT_METHODS)}); "
        "see `xaiscope methods`",
    )
    p.add_argument(
        "--target",
        default="top1",
        help="top1, topK (e.g. top3), a class index or a class label (default: top1)",
    )
    p.add_argument("--layer", default=None, help="layer for CAM methods (default: the model's)")
    p.add_argument(
        "--out", "-o", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method parameter, e.g. n_steps=16 or integrated_gradients.baseline=blur (repeatable)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="images per explain call: methods share passes within it, and its files are "
        f"written before the next starts (default: {IMAGES_PER_CALL})",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for random methods")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow a model file to run code while loading (TorchScript .pt files, Keras "
        "Lambda layers, custom layers' modules); only for files from a source you trust",
    )
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default: 0.5)")
    p.add_argument("--cmap", default="jet", help="matplotlib colormap (default: jet)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# ------------------------------------------------------------------------------ inputs
@dataclass
class ImageItem:
    """One input image: what the user gave, its id in file names, and its pixels."""

    source: str
    image_id: str
    array: np.ndarray


def load_images(specs: Sequence[str]) -> list[ImageItem]:
    """Load every image (files or ``sample:NAME``) before anything is computed or written."""
    from xaiscope.data.images import image_id, load_image, sample_images

    items: list[ImageItem] = []
    taken: set[str] = set()  # casefolded: Cat and cat share files on macOS and Windows
    next_suffix: dict[str, int] = {}
    for spec in specs or [SAMPLE_PREFIX + DEFAULT_IMAGE]:
        if spec.startswith(SAMPLE_PREFIX) and not os.path.exists(spec):
            name = spec[len(SAMPLE_PREFIX) :]
            array = sample_images([name])[name]
            ident = safe_name(name)
        else:
            array = load_image(spec)
            ident = image_id(spec)
        # two inputs with the same stem (a/cat.png, b/cat.png) must not share output files;
        # a renamed id is taken too, so a later cat-2.png does not get b/cat.png's cat-2
        base = ident
        while ident.casefold() in taken:
            next_suffix[base] = next_suffix.get(base, 1) + 1
            ident = f"{base}-{next_suffix[base]}"
        taken.add(ident.casefold())
        items.append(ImageItem(spec, ident, array))
    return items


def parse_method_names(text: str | None) -> list[str] | None:
    """Method names from ``--method`` resolved through the registry; None means ``all``."""
    if text is None:
        registered = {m.name for m in all_methods()}
        return [name for name in DEFAULT_METHODS if name in registered]
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ParameterError("--method is empty; give method names or 'all'")
    if any(n.lower() == "all" for n in names):
        return None
    resolved: list[str] = []
    for name in names:
        try:
            info = get_method(name)
        except UnknownMethodError as exc:
            raise UnknownMethodError(f"{exc}, or all") from None
        if info.name not in resolved:
            resolved.append(info.name)
    return resolved


def usable(info: MethodInfo, model: Model, layer_known: bool) -> bool:
    """Whether ``info`` can run on ``model`` (used by ``--method all``)."""
    # a registry-level check, where a method declares one, knows best (e.g. ViT-only methods)
    check = getattr(info, "applicable", None) or getattr(info, "supports", None)
    if callable(check):
        return bool(check(model))
    if info.needs_gradients and not model.supports_gradients:
        return False
    return not (info.uses_layer and not layer_known)


def select_methods(names: list[str] | None, model: Model, layer: str | None) -> list[MethodInfo]:
    """The MethodInfos to run; errors for methods the model cannot run."""
    layer_known = layer is not None or bool(model.layers())
    if names is None:
        infos = [m for m in all_methods() if usable(m, model, layer_known)]
        if not infos:
            raise UnsupportedModelError("no registered method can run on this model")
        return infos
    infos = [get_method(n) for n in names]
    for info in infos:
        if info.needs_gradients and not model.supports_gradients:
            black_box = [m.name for m in all_methods() if not m.needs_gradients]
            raise UnsupportedModelError(
                f"{info.name} needs gradients, which this {model.framework} model does not "
                f"provide; methods that work here: {', '.join(black_box) or 'none yet'}"
            )
    return infos


def check_layer(model: Model, infos: Sequence[MethodInfo], layer: str | None) -> str | None:
    """Validate ``--layer`` (and that CAMs have a layer at all); returns the layer used."""
    if layer is not None:
        getter = getattr(model, "get_layer", None)
        if callable(getter):
            getter(layer)  # raises UnknownLayerError with close names
        elif layer not in model.layers():
            raise UnknownLayerError(f"unknown layer {layer!r}; see `xaiscope models layers`")
    if not any(info.uses_layer for info in infos):
        return None
    used = layer or model.default_layer
    if used is None:
        raise UnknownLayerError(
            "this model has no spatial layer for CAMs; give --layer "
            "(see `xaiscope models layers MODEL`)"
        )
    return used


def check_target(model: Model, spec: str, n_images: int) -> None:
    """Resolve the target on dummy scores: bad ranges and unknown labels fail here."""
    import torch

    from xaiscope.explain import resolve_targets

    classes = len(model.labels)
    resolve_targets(model, torch.zeros(n_images, classes), spec)


def check_out_dir(out: Path) -> None:
    """Fail early, before any model loading or compute, if ``out`` cannot take files."""
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out {out}: exists and is not a folder")
    probe_writable_dir(out, f"--out {out}")


# ------------------------------------------------------------------------------ output
@dataclass
class Written:
    """Files written in this run (names are never reused within a run)."""

    paths: list[Path] = field(default_factory=list)

    def unique(self, path: Path) -> Path:
        taken = set(self.paths)
        candidate, i = path, 2
        while candidate in taken:
            candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
            i += 1
        self.paths.append(candidate)
        return candidate


def _slice(exps: Sequence[Explanation], i: int) -> Explanation:
    """Image ``i`` of each target-rank Explanation, stacked: rows are that image's targets."""
    first = exps[0]
    raws = [e.raw[i : i + 1] for e in exps if e.raw is not None]
    raw = None
    if len(raws) == len(exps):
        import torch

        raw = torch.cat(raws)
    return Explanation(
        method=first.method,
        params=dict(first.params),
        targets=np.array([int(e.targets[i]) for e in exps], dtype=np.int64),
        scores=np.array([float(e.scores[i]) for e in exps], dtype=np.float32),
        maps=np.stack([np.asarray(e.map(i), dtype=np.float32) for e in exps]),
        raw=raw,
        delta=None
        if first.delta is None
        else np.array([float(e.delta[i]) for e in exps if e.delta is not None], dtype=np.float32),
        probabilities=None
        if first.probabilities is None
        else np.array(
            [float(e.probabilities[i]) for e in exps if e.probabilities is not None],
            dtype=np.float32,
        ),
        target_labels=[e.target_labels[i] if e.target_labels else str(e.targets[i]) for e in exps],
        layer=first.layer,
        model_name=first.model_name,
    )


def _target_names(per_image: Explanation) -> list[str]:
    """File name part per target: the label, plus the index where two labels look alike."""
    names = [safe_name(lab, 40) for lab in per_image.target_labels]
    return [
        f"{n}-{int(t)}" if names.count(n) > 1 else n
        for n, t in zip(names, per_image.targets, strict=True)
    ]


def write_outputs(
    item: ImageItem,
    info: MethodInfo,
    per_image: Explanation,
    predictions: list[dict[str, Any]],
    out: Path,
    written: Written,
    *,
    alpha: float,
    cmap: str,
) -> list[Path]:
    """Write the panels, .npz and .json of one image and one method; returns the panels."""
    from xaiscope import __version__, viz

    method_part = safe_name(info.name)
    stem = f"{item.image_id}_{method_part}"
    panels: list[Path] = []
    for k, name in enumerate(_target_names(per_image)):
        label = terminal_safe(str(per_image.target_labels[k]))  # one line in the title too
        target = int(per_image.targets[k])
        prob = (
            f", p = {float(per_image.probabilities[k]):.1%}"
            if per_image.probabilities is not None
            else ""
        )
        where = f" | layer {per_image.layer}" if per_image.layer else ""
        title = (
            f"{info.name}: {label} (class {target}{prob})\n"
            f"{item.image_id} | {per_image.model_name or 'model'}{where}"
        )
        fig = viz.panel(item.array, per_image.maps[k], title=title, alpha=alpha, cmap=cmap)
        path = written.unique(out / f"{stem}_{name}.png")
        panels.append(viz.save_figure(fig, path))
    npz = written.unique(out / f"{stem}.npz")
    atomic_write(npz, lambda tmp: per_image.save(tmp))
    summary = per_image.to_dict()
    summary.update(
        {
            "image": item.source,
            "image_id": item.image_id,
            "image_size": list(item.array.shape[:2]),
            "family": info.family,
            "maps_shape": list(np.asarray(per_image.maps).shape),
            "rows": "one row of maps/targets/scores per target of this image",
            "predictions": predictions,
            "files": {"panels": [p.name for p in panels], "npz": npz.name},
            "xaiscope_version": __version__,
        }
    )
    write_json(written.unique(out / f"{stem}.json"), summary)
    return panels


# ------------------------------------------------------------------------------ command
def _print(text: str) -> None:
    from tqdm import tqdm

    # keeps a live progress bar intact; lines stay lines whatever a model file put in them
    tqdm.write("\n".join(terminal_safe(line) for line in text.split("\n")), file=sys.stdout)


def _predictions_text(item: ImageItem, preds: list[dict[str, Any]]) -> str:
    h, w = item.array.shape[:2]
    lines = [f"{item.image_id} ({w}x{h}): top-{len(preds)} predictions"]
    # labels come from model files: a newline or an escape sequence must not break the table
    labels = [terminal_safe(str(p["label"])) for p in preds]
    width = max(len(label) for label in labels)
    for rank, (p, label) in enumerate(zip(preds, labels, strict=True), 1):
        lines.append(f"  {rank}. {label:<{width}}  {p['probability']:7.2%}  (class {p['index']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Validate everything, then explain image batches and write their files."""
    import xaiscope as xs

    # ---- validate: cheapest checks first, nothing written yet
    names = parse_method_names(args.method)
    param_args: list[ParamArg] = parse_param_args(args.param)
    if not 0.0 <= args.alpha <= 1.0:
        raise ParameterError(f"--alpha must be in [0, 1], got {args.alpha}")
    from xaiscope.viz import get_cmap

    get_cmap(args.cmap)
    out = Path(args.out)
    check_out_dir(out)
    device = check_device(args.device)
    items = load_images(args.images)
    model = load_model(args.model, device, trust=args.trust_model)
    infos = select_methods(names, model, args.layer)
    # per-method dicts, a form explain() accepts: {"integrated_gradients": {"n_steps": 8}}
    params: dict[str, Any] = dict(method_params(param_args, infos))
    layer = check_layer(model, infos, args.layer)
    check_target(model, args.target, len(items))
    if args.method is not None and names is not None and not args.quiet:
        for given in (n.strip() for n in str(args.method).split(",") if n.strip()):
            name = get_method(given).name
            if given.lower() != name:  # an alias or another spelling: say which method ran
                _print(f"method {given!r} runs as {name}")

    # ---- compute and write, batch by batch
    from tqdm import tqdm

    chunk = args.batch_size or IMAGES_PER_CALL
    units = len(items) * len(infos)
    written = Written()
    panels: list[Path] = []
    with tqdm(
        total=units,
        desc="explaining",
        unit="map",
        disable=args.quiet or units <= 1,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(items), chunk):
            batch = items[start : start + chunk]
            arrays = [it.array for it in batch]
            pred = model.predict(arrays, top_k=TOP_K)
            results = xs.explain(
                model,
                arrays,
                methods=[info.name for info in infos],
                target=args.target,
                layer=layer,
                seed=args.seed,
                progress=False if args.quiet else None,
                **params,
            )
            assert isinstance(results, list)
            for i, item in enumerate(batch):
                preds = [
                    {
                        "index": int(pred.indices[i][r]),
                        "label": pred.labels[i][r],
                        "probability": float(pred.probs[i][r]),
                    }
                    for r in range(len(pred.labels[i]))
                ]
                _print(_predictions_text(item, preds))
                for info in infos:
                    exps = [e for e in results if e.method == info.name]
                    new = write_outputs(
                        item,
                        info,
                        _slice(exps, i),
                        preds,
                        out,
                        written,
                        alpha=args.alpha,
                        cmap=args.cmap,
                    )
                    panels.extend(new)
                    for p in new:
                        _print(f"  wrote {p}")
                    bar.update(1)
    n_data = len(written.paths) - len(panels)
    _print(
        f"{len(panels)} panel(s) and {n_data} .npz/.json file(s) for {len(items)} image(s) "
        f"and {len(infos)} method(s) in {out}{os.sep}"
    )
    return 0
