"""The synthetic ``shapes`` set: reproducible, masks that are the object, nothing else informative.

Whether a network can learn it, and cannot without the object, is in
``tests/train/test_learnable.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

import xaiscope as xs
from xaiscope.data.dataset import channel_stats
from xaiscope.data.shapes import SHAPE_CLASSES


@pytest.fixture(scope="module")
def small() -> xs.ImageDataset:
    return xs.datasets.shapes(60, 32, seed=3)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Grow (N, H, W) masks by one pixel in the 8-neighbourhood."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]
    out = np.zeros_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= padded[:, dy : dy + h, dx : dx + w]
    return out


def test_arrays_labels_and_masks(small: xs.ImageDataset) -> None:
    assert small.images.shape == (60, 32, 32, 3) and small.images.dtype == np.uint8
    assert small.masks is not None and small.masks.shape == (60, 32, 32)
    assert small.masks.dtype == bool
    assert small.classes == list(SHAPE_CLASSES) == ["circle", "square", "triangle", "cross", "star"]
    # balanced classes, shuffled order
    assert small.class_counts() == dict.fromkeys(SHAPE_CLASSES, 12)
    assert small.labels[:10].tolist() != sorted(small.labels[:10].tolist())
    # every object is visible and covers a sizeable, but not dominant, part of the image
    area = small.masks.mean(axis=(1, 2))
    assert area.min() > 0.04 and area.max() < 0.5
    # images use the whole range (noise, contrast) rather than a flat colour
    assert small.images.reshape(60, -1).std(axis=1).min() > 10
    mean, std = channel_stats(small.images)
    assert small.mean == mean and small.std == std


def test_same_seed_same_bytes_other_seed_differs(small: xs.ImageDataset) -> None:
    again = xs.datasets.shapes(60, 32, seed=3)
    np.testing.assert_array_equal(again.images, small.images)
    np.testing.assert_array_equal(again.masks, small.masks)
    np.testing.assert_array_equal(again.labels, small.labels)
    other = xs.datasets.shapes(60, 32, seed=4)
    assert not np.array_equal(other.images, small.images)


@pytest.mark.parametrize("size", [48, 224])
def test_any_size(size: int) -> None:
    data = xs.datasets.shapes(5, size, seed=0)
    assert data.images.shape == (5, size, size, 3) and data.image_size == (size, size)
    assert data.masks is not None and data.masks.shape == (5, size, size)
    # the object keeps its relative scale at every size
    assert 0.04 < data.masks.mean() < 0.5


def test_without_object_differs_only_under_the_object(small: xs.ImageDataset) -> None:
    empty = xs.datasets.shapes(60, 32, seed=3, with_object=False)
    assert small.masks is not None and empty.masks is not None
    np.testing.assert_array_equal(empty.labels, small.labels)
    np.testing.assert_array_equal(empty.masks, small.masks)
    # antialiased edges (partly covered pixels, thin star tips) reach past the 50 % mask
    outside = ~_dilate(_dilate(small.masks))
    a = small.images.astype(int)
    b = empty.images.astype(int)
    np.testing.assert_array_equal(a[outside], b[outside])
    # inside, the object stands out from what it covers (colour distance >= 0.5 by design)
    diff = np.abs(a - b).sum(-1)
    per_image = [diff[i][small.masks[i]].mean() for i in range(60)]
    assert min(per_image) > 60


def test_object_colour_does_not_depend_on_class(small: xs.ImageDataset) -> None:
    # mean object colour per image, then per class: all classes draw from one distribution
    data = xs.datasets.shapes(500, 32, seed=5)
    assert data.masks is not None
    colours = np.stack([data.images[i][data.masks[i]].mean(0) for i in range(500)]) / 255
    per_class = np.stack([colours[data.labels == c].mean(0) for c in range(5)])
    # 100 images per class, per-image colour std ~0.29: class means within 4 standard errors
    assert np.abs(per_class - colours.mean(0)).max() < 4 * 0.29 / np.sqrt(100)
    # equal-area scaling: object size does not give the class away either
    area = data.masks.mean(axis=(1, 2))
    by_class = [area[data.labels == c].mean() for c in range(5)]
    assert max(by_class) / min(by_class) < 1.25


def test_class_subset() -> None:
    data = xs.datasets.shapes(10, 32, classes=["star", "circle"], seed=0)
    assert data.classes == ["star", "circle"] and set(data.labels.tolist()) == {0, 1}
    assert xs.datasets.shapes(9, 32, classes=3).classes == ["circle", "square", "triangle"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "positive number"),
        ({"size": 16}, "32 to 224"),
        ({"size": 300}, "32 to 224"),
        ({"classes": ["circle", "blob"]}, "unknown class"),
        ({"classes": 1}, "2 to 5"),
        ({"distractors": (3, 1)}, "distractors"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    args = {"n": 4, "size": 32, **kwargs}
    with pytest.raises(xs.DatasetError, match=match) as info:
        xs.datasets.shapes(**args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_subset_sample_resize(small: xs.ImageDataset) -> None:
    sub = small.sample(20, seed=1)
    assert len(sub) == 20 and sorted(sub.class_counts().values()) == [4] * 5
    assert sub.mean == small.mean  # a subset keeps the parent's normalisation
    big = small.subset(range(3)).resized(64)
    assert big.images.shape == (3, 64, 64, 3) and big.masks is not None
    # the resized mask still marks the object: it covers the same fraction of the image
    np.testing.assert_allclose(
        big.masks.mean(axis=(1, 2)), small.masks[:3].mean(axis=(1, 2)), atol=0.03
    )
