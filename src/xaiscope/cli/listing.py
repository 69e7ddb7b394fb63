"""``xaiscope models`` and ``xaiscope methods``: what can be loaded and what can be run."""

from __future__ import annotations

import argparse
from typing import Any

from xaiscope.cli.common import check_device, load_model, terminal_safe

DEFAULT_MODEL = "efficientnet_lite0"


def add_parsers(sub: Any) -> None:
    """Register ``models`` (with ``list`` and ``layers``) and ``methods`` on ``sub``."""
    models = sub.add_parser(
        "models",
        help="list loadable models, or a model's layers",
        description="List model specs `--model` accepts, or the layers of one model.",
    )
    models.add_argument(
        "--models-dir",
        default=None,
        help="registry of trained models (default $XAISCOPE_MODELS or ~/.cache/xaiscope/models)",
    )
    models.set_defaults(func=run_models_list)
    msub = models.add_subparsers(dest="models_command", metavar="{list,layers}")
    lst = msub.add_parser(
        "list", help="model specs --model accepts and trained models (the default)"
    )
    # SUPPRESS: without it the sub-parser's default would replace `models --models-dir X`
    lst.add_argument("--models-dir", default=argparse.SUPPRESS, help="registry folder")
    lst.set_defaults(func=run_models_list)
    layers = msub.add_parser(
        "layers",
        help="layer names usable for CAMs and activations; the default is marked",
        description="Print a model's layer names one per line; '(default)' marks the layer "
        "CAM methods use when --layer is not given.",
    )
    layers.add_argument(
        "model", nargs="?", default=DEFAULT_MODEL, help=f"model spec (default: {DEFAULT_MODEL})"
    )
    layers.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")
    layers.add_argument(
        "--trust-model",
        action="store_true",
        help="allow a model file to run code while loading (see `explain --trust-model`)",
    )
    layers.set_defaults(func=run_models_layers)

    methods = sub.add_parser(
        "methods",
        help="list explanation methods with their parameters",
        description="List the registered explanation methods: family, aliases, parameters "
        "with defaults (settable with `explain --param`), and paper.",
    )
    methods.add_argument("name", nargs="?", default=None, help="show one method only")
    methods.set_defaults(func=run_methods)


def run_models_list(args: argparse.Namespace) -> int:
    from xaiscope.models import available_models

    specs = available_models()
    width = max(len(s) for s in specs)
    for spec, about in specs.items():
        print(f"{spec:<{width}}  {about}")
    _print_registry(getattr(args, "models_dir", None))
    return 0


def _print_registry(models_dir: str | None) -> None:
    """The trained models of the registry, one line each (``xaiscope train`` adds them)."""
    from xaiscope.models import registry_store

    root = registry_store.models_dir(models_dir)
    entries = registry_store.list_entries(root)
    print()
    if not entries:
        print(f"trained models in {root}: none yet (`xaiscope train` saves them there)")
        return
    print(f"trained models in {root} (load with --model NAME):")
    width = max(len(e.name) for e in entries)
    for entry in entries:
        print(f"  {entry.name:<{width}}  {terminal_safe(entry.describe())}")


def run_models_layers(args: argparse.Namespace) -> int:
    model = load_model(args.model, check_device(args.device), trust=args.trust_model)
    names = model.layers()
    default = model.default_layer
    for name in names:
        shown = terminal_safe(name)  # layer names come from the model file
        print(f"{shown}  (default)" if name == default else shown)
    if default is not None and default not in names:
        print(f"{default}  (default)")
    return 0


def run_methods(args: argparse.Namespace) -> int:
    from xaiscope.methods.registry import all_methods, get_method

    infos = [get_method(args.name)] if args.name else all_methods()
    for n, info in enumerate(infos):
        if n:
            print()
        needs = []
        if info.uses_layer:
            needs.append("layer")
        if not info.needs_gradients:
            needs.append("black-box")
        if getattr(info, "needs_attention", False):
            needs.append("vision transformers")
        if info.stochastic:
            needs.append("random: --seed")
        extra = f"  ({', '.join(needs)})" if needs else ""
        print(f"{info.name}  [{info.family}]{extra}")
        if info.aliases:
            print(f"    aliases: {', '.join(info.aliases)}")
        params = ", ".join(f"{k}={v!r}" for k, v in info.defaults.items())
        print(f"    parameters: {params or 'none'}")
        if info.summary:
            print(f"    {info.summary}")
        if info.paper:
            print(f"    paper: {info.paper}")
    return 0
