"""Train small_cnn on ``shapes`` at 32 px on the CPU and report accuracy and wall time.

The run behind the README's training numbers (the same as
``xaiscope train --arch small_cnn --data shapes --n-images 3000 --epochs 15 --threads 1``),
plus ``--control``: the same training on the same images with the object left out
(``shapes(..., with_object=False)``), which must stay at chance (20 %) if nothing but the
object tells the class.

    python bench/train_shapes.py                 # about a minute on one CPU thread
    python bench/train_shapes.py --control       # and the object-free control
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import xaiscope as xs


def _run(args: argparse.Namespace, with_object: bool) -> None:
    t0 = time.perf_counter()
    data = xs.datasets.shapes(args.n_images, args.size, seed=args.seed, with_object=with_object)
    t1 = time.perf_counter()
    reached: list[int] = []

    def watch(_fold: int, epoch: int, row: dict[str, float]) -> None:
        print(
            f"  epoch {epoch:2d}: train acc {row['train_acc']:.3f}  val acc {row['val_acc']:.3f}"
            f"  ({row['seconds']:.1f} s)",
            flush=True,
        )
        if row["val_acc"] >= 0.95 and not reached:
            reached.append(epoch)

    result = xs.train(
        "small_cnn",
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        save=False,
        progress=False,
        callback=watch,
    )
    t2 = time.perf_counter()
    kind = "with the object" if with_object else "CONTROL, object left out"
    print(
        f"small_cnn on shapes ({kind}), {args.n_images} images {args.size} px, "
        f"{args.epochs} epochs: best val acc {result.val_accuracy:.1%} "
        f"(epoch {result.folds[0].best_epoch}); first >= 95 %: "
        f"{f'epoch {reached[0]}' if reached else 'never'}; data {t1 - t0:.1f} s, "
        f"training {t2 - t1:.1f} s, total {t2 - t0:.1f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n-images", type=int, default=3000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--control", action="store_true", help="also train without the object")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s) of {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    _run(args, with_object=True)
    if args.control:
        _run(args, with_object=False)


if __name__ == "__main__":
    main()
