"""``xaiscope compare``: how far explanation methods agree on the same images.

Either explains images (files or ``--data``) with several methods, or reads saved
explanations (``--explanations a.npz b.npz``, or ``.npz`` files in place of the images, as
written by ``xaiscope explain`` or ``Explanation.save``, e.g. integrated gradients from two
implementations). Saved files may come from anyone: ``Explanation.load`` checks them
before use, and a file it refuses ends the command with one line and exit code 2. Writes
``agreement.csv`` / ``.json`` (Spearman, Pearson, top-k intersection and SSIM per pair of
methods), ``agreement_per_image.csv``, ``summary.csv`` and the plots ``histograms.png``,
``scatter.png`` and ``agreement.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from xaiscope.cli.common import UsageError, atomic_write, check_device, load_model
from xaiscope.cli.evaluate_cmd import (
    add_input_arguments,
    check_out,
    explain_inputs,
    load_inputs,
    parse_methods,
    say,
)
from xaiscope.errors import ExplanationFileError

DEFAULT_METHODS = "gradcam,gradcam++,scorecam,saliency"
DEFAULT_OUT = "xaiscope_compare"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the ``compare`` subcommand on ``sub``."""
    p: argparse.ArgumentParser = sub.add_parser(
        "compare",
        help="agreement between methods: correlations, top-k overlap, SSIM, plots",
        description="Compare explanation methods on the same images: Spearman, Pearson, "
        "top-k intersection and SSIM between every pair, histograms of normalised "
        "attributions above a threshold, and a scatter-plot matrix.",
        epilog="examples: xaiscope compare cat.jpg --method gradcam,gradcam++,scorecam,"
        "saliency | xaiscope compare --model shapes_cnn --data shapes --n-images 50 | "
        "xaiscope compare --explanations ig_ours.npz ig_captum.npz lime.npz",
    )
    add_input_arguments(p, default_methods=DEFAULT_METHODS)
    p.add_argument(
        "--explanations",
        nargs="+",
        default=None,
        metavar="NPZ",
        help="compare saved explanations (.npz from `xaiscope explain` or "
        "Explanation.save) instead of computing them; named by file",
    )
    p.add_argument(
        "--k",
        type=float,
        default=0.1,
        help="top-k share of pixels for the intersection (default 0.1; a whole number >= 1 "
        "is a pixel count)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.2,
        help="normalised attribution above which values enter the histograms (default 0.2)",
    )
    p.add_argument(
        "--absolute",
        action="store_true",
        help="compare |maps| (signed methods such as integrated gradients against CAMs)",
    )
    p.add_argument(
        "--out", "-o", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})"
    )
    p.set_defaults(func=run)
    return p


def _load_saved(paths: list[str]) -> dict[str, Any]:
    from xaiscope.cli.common import safe_name
    from xaiscope.explanation import Explanation

    out: dict[str, Any] = {}
    for path in paths:
        if not Path(path).is_file():
            raise ExplanationFileError(f"cannot read explanation {path}: no such file")
        name = safe_name(Path(path).stem)
        while name in out:
            name += "_"
        out[name] = Explanation.load(path)
    return out


def run(args: argparse.Namespace) -> int:
    from xaiscope.metrics.compare import compare

    k: float | int = int(args.k) if args.k >= 1 and float(args.k).is_integer() else args.k
    if not args.k > 0:
        raise UsageError(f"--k must be positive, got {args.k}")
    if not 0 <= args.threshold < 1:
        raise UsageError(f"--threshold must be in [0, 1), got {args.threshold}")
    out = Path(args.out)
    check_out(out)
    saved = [i for i in args.images if str(i).lower().endswith(".npz")]
    if saved and not args.explanations:
        # `xaiscope compare a.npz b.npz` means the saved explanations, not images to explain
        if len(saved) != len(args.images):
            raise UsageError("give saved explanations (.npz) or images to explain, not both")
        args.explanations, args.images = saved, []
    if args.explanations:
        if args.images or args.data:
            raise UsageError("give --explanations or images to explain, not both")
        exps: dict[str, Any] = _load_saved(args.explanations)
        ids = [f"image_{i}" for i in range(len(next(iter(exps.values()))))]
    else:
        methods = parse_methods(args.method)
        if len(methods) < 2:
            raise UsageError("--method: compare needs at least two methods")
        device = check_device(args.device)
        inputs = load_inputs(args)
        model = load_model(args.model, device, trust=args.trust_model)
        if inputs.source:
            say(f"data: {inputs.source}")
        say(f"explaining {len(inputs.arrays)} image(s) with {', '.join(methods)}")
        exps = {e.method: e for e in explain_inputs(args, model, inputs, methods)}
        ids = inputs.ids
    result = compare(exps, k=k, threshold=args.threshold, absolute=args.absolute, seed=args.seed)
    written = write_comparison(result, out, ids)
    say(str(result))
    say("")
    say(str(result.summary()))
    for note in result.warnings:
        say(f"warning: {note}")
    say(f"wrote {', '.join(p.name for p in written)} in {out}")
    return 0


def write_comparison(result: Any, out: Path, image_ids: list[str]) -> list[Path]:
    """The tables (CSV, JSON) and the three plots; returns the paths."""
    from xaiscope.viz import save_figure

    out.mkdir(parents=True, exist_ok=True)
    per_image = result.per_image()
    for row in per_image.rows:
        row["image_id"] = image_ids[row["image"]] if row["image"] < len(image_ids) else None
    summary = result.summary()
    paths = [
        atomic_write(out / "agreement.csv", lambda tmp: result.to_csv(tmp)),
        atomic_write(out / "agreement.json", lambda tmp: result.to_json(tmp, images=image_ids)),
        atomic_write(out / "agreement_per_image.csv", lambda tmp: per_image.to_csv(tmp)),
        atomic_write(out / "summary.csv", lambda tmp: summary.to_csv(tmp)),
    ]
    paths.append(save_figure(result.plot_histograms(), out / "histograms.png"))
    paths.append(save_figure(result.plot_scatter(), out / "scatter.png"))
    paths.append(save_figure(result.plot_matrix("spearman"), out / "agreement.png"))
    return paths
