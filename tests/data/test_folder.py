"""``image_folder``: one sub-folder per class, any image mode, statistics, and bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xaiscope as xs


def _write(path: Path, image: Image.Image, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def _rgb(seed: int, size: tuple[int, int] = (20, 16)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """muffin/ (RGB PNG, grayscale PNG, RGBA PNG) and chihuahua/ (JPEG, palette, 16-bit)."""
    root = tmp_path / "muffin_vs_chihuahua"
    _write(root / "muffin" / "a.png", _rgb(0))
    _write(root / "muffin" / "b.png", _rgb(1).convert("L"))
    _write(root / "muffin" / "c.png", _rgb(2).convert("RGBA"))
    _write(root / "chihuahua" / "d.jpg", _rgb(3, (33, 41)), quality=95)
    _write(root / "chihuahua" / "e.png", _rgb(4).convert("P"))
    sixteen = Image.fromarray((np.arange(16 * 20).reshape(16, 20) * 200).astype(np.uint16))
    _write(root / "chihuahua" / "sub" / "f.png", sixteen)
    (root / "chihuahua" / "notes.txt").write_text("not an image, ignored\n")
    (root / ".hidden").mkdir()
    _write(root / ".hidden" / "x.png", _rgb(5))
    return root


def test_reads_classes_modes_and_statistics(folder: Path) -> None:
    data = xs.datasets.image_folder(folder, size=24)
    assert data.classes == ["chihuahua", "muffin"]  # sorted folder names; hidden ignored
    assert data.class_counts() == {"chihuahua": 3, "muffin": 3}
    assert data.images.shape == (6, 24, 24, 3) and data.images.dtype == np.uint8
    assert data.name == "muffin_vs_chihuahua" and data.skipped == []
    # the statistics are those of the loaded pixels, per channel, in [0, 1]
    pixels = data.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(data.mean, pixels.mean(0), atol=1e-9)
    np.testing.assert_allclose(data.std, pixels.std(0), atol=1e-9)
    # the grayscale image became three equal channels
    gray = data.images[data.labels == 1][1]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # an image already at the size is kept exactly
    same = xs.datasets.image_folder(folder, size=(16, 20))
    np.testing.assert_array_equal(same.images[same.labels == 1][0], np.asarray(_rgb(0)))


def test_unreadable_images_skipped_and_counted(folder: Path) -> None:
    (folder / "muffin" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "chihuahua" / "empty.jpg").write_bytes(b"")
    data = xs.datasets.image_folder(folder, size=24)
    assert len(data) == 6
    skipped = sorted(Path(p).name for p, _ in data.skipped)
    assert skipped == ["broken.png", "empty.jpg"]
    assert all("\n" not in why and why for _, why in data.skipped)
    assert data.source["skipped"] == 2 and "2 unreadable" in data.summary()


def test_unreadable_images_refused_on_request(folder: Path) -> None:
    (folder / "muffin" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(xs.DatasetError, match=r"broken\.png") as info:
        xs.datasets.image_folder(folder, on_error="raise")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("missing", "does not exist"),
        ("file", "not a folder"),
        ("empty", "no class sub-folders"),
        ("no_images", "no image files"),
        ("one_class", "only one class"),
        ("empty_class", "hold no image files"),
        ("all_unreadable", "no readable image for class"),
    ],
)
def test_bad_folders_one_clear_line(tmp_path: Path, layout: str, match: str) -> None:
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout != "missing":
        root.mkdir()
    if layout == "no_images":
        (root / "a").mkdir()
        (root / "a" / "readme.txt").write_text("x")
        (root / "b").mkdir()
    if layout in ("one_class", "empty_class", "all_unreadable"):
        _write(root / "a" / "1.png", _rgb(0))
    if layout == "empty_class":
        _write(root / "b" / "2.png", _rgb(1))
        (root / "c").mkdir()
    if layout == "all_unreadable":
        (root / "b").mkdir()
        (root / "b" / "bad.png").write_bytes(b"nope")
    with pytest.raises(xs.DatasetError, match=match) as info:
        xs.datasets.image_folder(root)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, xs.XaiscopeError)


def test_from_spec(folder: Path) -> None:
    from xaiscope.data.datasets import from_spec

    assert from_spec(f"folder:{folder}", size=16).image_size == (16, 16)
    assert from_spec(str(folder)).image_size == (64, 64)  # a bare folder path works too
    assert len(from_spec("shapes", n_images=7, size=32)) == 7
    with pytest.raises(xs.DatasetError, match="unknown dataset"):
        from_spec("mnist")
    with pytest.raises(xs.DatasetError, match="does not exist"):
        from_spec(f"folder:{folder}/nope")
