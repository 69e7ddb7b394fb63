"""Image loading and bundled sample photos."""

from __future__ import annotations

from xaiscope.data.images import image_id, load_image, sample_images

__all__ = ["image_id", "load_image", "sample_images"]
