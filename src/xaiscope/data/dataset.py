"""The in-memory image classification dataset every loader returns: :class:`ImageDataset`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xaiscope.errors import DatasetError

#: Per-channel statistics (R, G, B).
Stats = tuple[float, float, float]


@dataclass
class ImageDataset:
    """Images, integer labels and class names, held in memory.

    Shapes: ``images`` (N, H, W, 3) uint8 RGB, all the same size; ``labels`` (N,) int64 in
    ``range(len(classes))``; ``masks`` (N, H, W) bool ground-truth object masks or None.
    ``mean``/``std`` are per-channel statistics of the pixels scaled to [0, 1] (computed from
    the images when not given); training normalises with them and the trained model keeps
    them as its preprocessing. ``skipped`` lists ``(path, reason)`` for files that could not
    be read and were left out; ``source`` says how the set was made (written to the registry).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str = "dataset"
    masks: np.ndarray | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise DatasetError(
                f"dataset {self.name!r}: images must be (N, H, W, 3) uint8, "
                f"got {images.shape} {images.dtype}"
            )
        if len(images) == 0:
            raise DatasetError(f"dataset {self.name!r} has no images")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(
                f"dataset {self.name!r}: labels must be ({len(images)},) integers, "
                f"got {labels.shape} {labels.dtype}"
            )
        self.classes = [str(c) for c in self.classes]
        if labels.min() < 0 or labels.max() >= len(self.classes):
            raise DatasetError(
                f"dataset {self.name!r}: labels must lie in 0..{len(self.classes) - 1}"
            )
        if self.masks is not None:
            masks = np.asarray(self.masks, dtype=bool)
            if masks.shape != images.shape[:3]:
                raise DatasetError(
                    f"dataset {self.name!r}: masks must be {images.shape[:3]}, got {masks.shape}"
                )
            self.masks = masks
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        if self.mean is None or self.std is None:
            mean, std = channel_stats(images)
            self.mean = self.mean or mean
            self.std = self.std or std

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class, in class order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """The images at ``indices`` (same classes, same normalisation statistics)."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise DatasetError(f"empty subset of dataset {self.name!r}")
        return ImageDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=list(self.classes),
            name=self.name,
            masks=None if self.masks is None else self.masks[idx],
            mean=self.mean,
            std=self.std,
            skipped=list(self.skipped),
            source=dict(self.source),
        )

    def sample(self, n: int, seed: int = 0) -> ImageDataset:
        """A stratified random subset of ``n`` images (class proportions kept, each class >= 1)."""
        if n >= len(self):
            return self
        if n < self.num_classes:
            raise DatasetError(
                f"cannot sample {n} images from {self.num_classes} classes: "
                "need at least one per class"
            )
        rng = np.random.default_rng(seed)
        counts = np.bincount(self.labels, minlength=self.num_classes)
        share = np.maximum(1, np.floor(counts / counts.sum() * n).astype(int))
        # hand the rounding remainder to the largest classes
        for c in np.argsort(-counts):
            if share.sum() >= n:
                break
            share[c] += 1
        picks = [
            rng.choice(
                np.flatnonzero(self.labels == c), size=min(int(k), int(counts[c])), replace=False
            )
            for c, k in enumerate(share)
        ]
        out = self.subset(np.sort(np.concatenate(picks)))
        out.source = {**self.source, "sampled": n, "sample_seed": seed}
        return out

    def resized(self, size: int | tuple[int, int]) -> ImageDataset:
        """The same images resized to ``size`` (bilinear, antialiased, as models resize)."""
        hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if hw == self.image_size:
            return self
        images = resize_uint8(self.images, hw)
        masks = None
        if self.masks is not None:
            masks = (
                resize_uint8(
                    np.repeat(self.masks[..., None].astype(np.uint8) * 255, 3, axis=-1), hw
                )[..., 0]
                >= 128
            )
        return ImageDataset(
            images=images,
            labels=self.labels,
            classes=list(self.classes),
            name=self.name,
            masks=masks,
            skipped=list(self.skipped),
            source={**self.source, "resized": list(hw)},
        )

    def summary(self) -> str:
        """One line: name, size, classes with counts, normalisation statistics."""
        h, w = self.image_size
        counts = ", ".join(f"{c} {n}" for c, n in self.class_counts().items())
        mean = ", ".join(f"{v:.3f}" for v in (self.mean or ()))
        std = ", ".join(f"{v:.3f}" for v in (self.std or ()))
        skipped = f"; {len(self.skipped)} unreadable file(s) skipped" if self.skipped else ""
        return (
            f"{self.name}: {len(self)} images {h}x{w}, {self.num_classes} classes ({counts}); "
            f"mean ({mean}) std ({std}){skipped}"
        )

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, size={h}x{w}, "
            f"classes={self.classes!r}, masks={self.masks is not None})"
        )


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[Stats, Stats]:
    """Per-channel mean and standard deviation of (N, H, W, 3) uint8 images scaled to [0, 1].

    Accumulated in float64 over chunks, so large sets need no float copy of the whole array.
    A constant channel gets std 1 (normalising by 0 would give inf).
    """
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += block.sum(0)
        total_sq += (block**2).sum(0)
        count += block.shape[0]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    std = np.sqrt(var)
    std = np.where(std > 1e-6, std, 1.0)
    m = (float(mean[0]), float(mean[1]), float(mean[2]))
    return m, (float(std[0]), float(std[1]), float(std[2]))


def resize_uint8(images: np.ndarray, size: tuple[int, int], chunk: int = 256) -> np.ndarray:
    """(N, H, W, 3) uint8 resized to ``size``: bilinear with antialiasing (like model inputs)."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        t = torch.from_numpy(np.ascontiguousarray(images[start : start + chunk]))
        t = t.permute(0, 3, 1, 2).float()
        r = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = (
            r.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )
    return out
