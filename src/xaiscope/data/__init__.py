"""Image loading, bundled sample photos, and datasets (``xaiscope.data.datasets``)."""

from __future__ import annotations

from xaiscope.data import datasets
from xaiscope.data.dataset import ImageDataset
from xaiscope.data.images import image_id, load_image, sample_images

__all__ = ["ImageDataset", "datasets", "image_id", "load_image", "sample_images"]
