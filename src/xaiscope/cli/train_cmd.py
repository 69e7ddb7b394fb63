"""``xaiscope train``: train a classifier with k-fold validation and save it to the registry.

Everything a user can get wrong (dataset path, folds, name taken, options) is checked
before the first epoch and ends in one line and exit code 2. Ctrl-C during training keeps
and saves the best epochs so far, prints the table, and exits 130.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from xaiscope.cli.common import UsageError, check_device


def add_parser(sub: Any) -> None:
    """Register ``train`` on the subcommand parser ``sub``."""
    p = sub.add_parser(
        "train",
        help="train a CNN or ViT on shapes, an image folder or CIFAR-10 (k-fold)",
        description="Train a classifier with Adam, augmentation (shifts up to 10 %, "
        "horizontal flips) and stratified k-fold validation; keep the best epoch of each "
        "fold; print accuracy, loss and F1 per fold; save the best model to the registry, "
        "from where `explain --model NAME` and xs.load_model(NAME) load it.",
        epilog="examples: xaiscope train --arch small_cnn --data shapes --epochs 10 --folds 5 | "
        "xaiscope train --arch small_cnn --data folder:muffin_vs_chihuahua/ --size 64 "
        "--folds 5 --name muffin | xaiscope train --arch cifar10_cnn --data cifar10:~/data",
    )
    p.add_argument(
        "--arch",
        default="small_cnn",
        help="small_cnn (default), cifar10_cnn, tiny_vit, or timm:NAME (new head)",
    )
    p.add_argument(
        "--data",
        default="shapes",
        help="shapes (default, synthetic), folder:PATH (one sub-folder per class), "
        "cifar10:PATH (cifar-10-python.tar.gz or cifar-10-batches-py)",
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs per fold (default 10)")
    p.add_argument(
        "--folds", type=int, default=1, help="stratified k-fold; 1 = one 80/20 split (default)"
    )
    p.add_argument("--name", default=None, help="registry name (default ARCH-DATA)")
    p.add_argument(
        "--size", type=int, default=None, help="image side in pixels (shapes 32, folders 64)"
    )
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        help="shapes: how many to generate (default 2000); folder/cifar10: a stratified subset",
    )
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, splits, init (default 0)")
    p.add_argument("--no-augment", action="store_true", help="train without shifts and flips")
    p.add_argument(
        "--pretrained", action="store_true", help="timm:NAME only: start from ImageNet weights"
    )
    p.add_argument(
        "--on-bad-image",
        choices=("skip", "error"),
        default="skip",
        help="unreadable images in a folder: skip and count them (default) or stop",
    )
    p.add_argument(
        "--models-dir",
        default=None,
        help="registry folder (default $XAISCOPE_MODELS or ~/.cache/xaiscope/models)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a model of the same name")
    p.add_argument("--no-save", action="store_true", help="do not save to the registry")
    p.add_argument(
        "--out", default=None, help="folder for accuracy.png, loss.png, curves.png, history.json"
    )
    p.add_argument("--device", default=None, help="torch device (default cuda if any, else cpu)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (1 is often fastest on a busy machine)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from xaiscope.data.datasets import from_spec
    from xaiscope.models import registry_store
    from xaiscope.train import build_arch, count_parameters, train
    from xaiscope.train.trainer import default_name

    for flag, value, low in (
        ("--epochs", args.epochs, 1),
        ("--folds", args.folds, 1),
        ("--batch-size", args.batch_size, 1),
        ("--threads", args.threads, 1),
        ("--n-images", args.n_images, 2),
        ("--size", args.size, 8),
    ):
        if value is not None and value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.out is not None:  # the curves are written after training: fail before it
        from xaiscope.cli.explain_cmd import check_out_dir

        check_out_dir(Path(args.out))
    device = check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    save = not args.no_save
    if save and args.name is not None:  # a taken name fails before the data is read
        registry_store.check_name_free(args.name, args.models_dir, overwrite=args.overwrite)

    data = from_spec(
        args.data,
        size=args.size,
        n_images=args.n_images,
        seed=args.seed,
        on_error="raise" if args.on_bad_image == "error" else "skip",
    )
    print(f"data: {data.summary()}")
    if data.skipped:
        _, why = data.skipped[0]
        print(
            f"xaiscope: warning: skipped {len(data.skipped)} unreadable image(s), e.g. {why}",
            file=sys.stderr,
        )
    name = args.name or default_name(args.arch, data.name)
    if save:
        registry_store.check_name_free(name, args.models_dir, overwrite=args.overwrite)
    params = count_parameters(build_arch(args.arch, data.num_classes, data.image_size))
    split = f"{args.folds} folds" if args.folds > 1 else "one 80/20 split"
    print(
        f"training {args.arch} ({params:,} parameters): {split}, {args.epochs} epochs, "
        f"batch {args.batch_size}, lr {args.lr:g}, seed {args.seed}, "
        f"augmentation {'off' if args.no_augment else 'on'}, {torch.get_num_threads()} thread(s)"
    )
    start = time.perf_counter()
    result = train(
        args.arch,
        data,
        epochs=args.epochs,
        folds=args.folds,
        augment=not args.no_augment,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        name=name,
        save=save,
        models_dir=args.models_dir,
        overwrite=args.overwrite,
        out=args.out,
        device=device,
        pretrained=args.pretrained,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    print()
    print(result.table())
    print()
    if result.path is not None:
        print(
            f"saved model {result.name!r} to {result.path} "
            f"(xs.load_model({result.name!r}) or `xaiscope explain --model {result.name}`)"
        )
    if args.out:
        print(f"curves and history: {args.out}/accuracy.png, loss.png, curves.png, history.json")
    print(f"time: {elapsed:.1f} s")
    if result.interrupted:
        print("xaiscope: interrupted: kept the best epochs trained so far", file=sys.stderr)
        return 130
    return 0
