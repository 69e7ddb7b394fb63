"""``xs.datasets``: the datasets xaiscope trains on and measures localization with.

* :func:`shapes` - synthetic shapes with ground-truth object masks, generated from a seed
  (the embedded default: no files, no download);
* :func:`image_folder` - one sub-folder per class (e.g. Muffin vs Chihuahua);
* :func:`cifar10` - the CIFAR-10 python archive, read without unpickling code.

Each returns an :class:`ImageDataset` (images (N, H, W, 3) uint8, labels, classes,
per-channel mean/std, masks where known). :func:`from_spec` turns the command line's
``--data`` strings (``shapes``, ``folder:PATH``, ``cifar10:PATH``) into one.
"""

from __future__ import annotations

import os
from pathlib import Path

from xaiscope.data.cifar import CIFAR10_CLASSES, cifar10, download_cifar10
from xaiscope.data.dataset import ImageDataset, channel_stats
from xaiscope.data.folder import IMAGE_EXTENSIONS, image_folder
from xaiscope.data.shapes import SHAPE_CLASSES, shapes
from xaiscope.errors import DatasetError

__all__ = [
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "SHAPE_CLASSES",
    "ImageDataset",
    "channel_stats",
    "cifar10",
    "download_cifar10",
    "from_spec",
    "image_folder",
    "shapes",
]


def from_spec(
    spec: str | os.PathLike[str],
    *,
    size: int | None = None,
    n_images: int | None = None,
    seed: int = 0,
    on_error: str = "skip",
    download: bool = False,
) -> ImageDataset:
    """A dataset from a short spec: ``shapes``, ``folder:PATH``, ``cifar10:PATH`` or a folder.

    ``size`` is the image side (shapes: 32 by default; folders: 64; CIFAR-10 is resized
    from 32 only when asked). ``n_images``: how many shapes to generate (default 2000), or
    a stratified random subset of that many images of a folder or CIFAR-10.
    """
    text = os.fspath(spec)
    kind, _, rest = text.partition(":")
    if text == "shapes" or kind == "shapes":
        n = n_images if n_images is not None else int(rest) if rest.isdigit() else 2000
        return shapes(n, size or 32, seed=seed)
    if kind == "cifar10" and rest:
        data = cifar10(rest, download=download)
    elif kind == "folder" and rest:
        data = image_folder(rest, size=size or 64, on_error=on_error)
    elif Path(text).is_dir():
        data = image_folder(text, size=size or 64, on_error=on_error)
    else:
        raise DatasetError(
            f"unknown dataset {text!r}: use 'shapes', 'folder:PATH' (one sub-folder per "
            "class) or 'cifar10:PATH' (cifar-10-python.tar.gz or cifar-10-batches-py)"
        )
    if n_images is not None:
        data = data.sample(n_images, seed=seed)
    if size is not None and kind == "cifar10":
        data = data.resized(size)
    return data
