"""``image_folder``: one sub-folder per class (e.g. ``muffin/`` and ``chihuahua/``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from xaiscope.data.dataset import ImageDataset, resize_uint8
from xaiscope.data.images import load_image
from xaiscope.errors import DatasetError, ImageLoadError

__all__ = ["IMAGE_EXTENSIONS", "image_folder"]

#: File name endings read as images; other files (notes, .DS_Store) are ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)


def image_folder(
    path: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] = 64,
    on_error: str = "skip",
) -> ImageDataset:
    """Read ``path/<class>/<image>`` into an :class:`ImageDataset`.

    Classes are the sub-folder names in sorted order (hidden folders are ignored); files
    are recognised by extension (:data:`IMAGE_EXTENSIONS`). Every image goes through
    :func:`xaiscope.load_image` (any mode converted to RGB, EXIF orientation applied,
    decompression bombs refused) and is resized to ``size`` (bilinear, antialiased, the
    whole image, as models resize their inputs). The per-channel mean and std of the result
    are computed and used for normalisation when training.

    ``on_error``: ``"skip"`` leaves unreadable images out and lists them in
    ``dataset.skipped`` (path, reason); ``"raise"`` stops at the first one with a
    :class:`~xaiscope.errors.DatasetError` naming it. A missing folder, no class folders,
    fewer than two classes, or a class without a readable image is a ``DatasetError``.
    """
    if on_error not in ("skip", "raise"):
        raise DatasetError(f"image_folder: on_error must be 'skip' or 'raise', got {on_error!r}")
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 8 or max(hw) > 1024:
        raise DatasetError(f"image_folder: size must be 8 to 1024 pixels, got {size!r}")
    root = Path(os.fspath(path))
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(
            f"dataset path {root} is not a folder (expected one sub-folder per class)"
        )
    try:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DatasetError(f"cannot list {root}: {exc.strerror or exc}") from None
    if not folders:
        raise DatasetError(
            f"dataset folder {root} has no class sub-folders (expected {root}/<class>/<image>)"
        )
    files = {f.name: _image_files(f) for f in folders}
    with_files = [name for name, found in files.items() if found]
    if not with_files:
        raise DatasetError(
            f"dataset folder {root} holds no image files in its sub-folders "
            f"({', '.join(files)}); extensions read: {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    if len(with_files) < 2:
        raise DatasetError(
            f"dataset folder {root} has images for only one class ({with_files[0]!r}); "
            "a classifier needs at least two class sub-folders"
        )
    empty = [name for name, found in files.items() if not found]
    if empty:
        raise DatasetError(
            f"class folder(s) {', '.join(map(repr, empty))} in {root} hold no image files; "
            "remove them or add images"
        )
    classes = list(files)
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for label, name in enumerate(classes):
        for file in files[name]:
            try:
                arr = load_image(file)
            except ImageLoadError as exc:
                if on_error == "raise":
                    raise DatasetError(
                        f"unreadable image in dataset: {exc} (use on_error='skip' to leave "
                        "such files out)"
                    ) from None
                skipped.append((str(file), str(exc)))
                continue
            if arr.shape[:2] != hw:
                arr = resize_uint8(arr[None], hw)[0]
            images.append(arr)
            labels.append(label)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    unreadable = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if unreadable:
        raise DatasetError(
            f"no readable image for class(es) {', '.join(map(repr, unreadable))} in {root} "
            f"({len(skipped)} unreadable file(s), e.g. {skipped[0][1]})"
        )
    return ImageDataset(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        classes=classes,
        name=root.resolve().name or "folder",
        skipped=skipped,
        source={
            "dataset": "image_folder",
            "path": str(root.resolve()),
            "size": list(hw),
            "skipped": len(skipped),
        },
    )


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (sub-folders included), sorted, hidden files ignored."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS:
                out.append(Path(dirpath) / f)
    return out
