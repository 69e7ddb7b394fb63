"""Property tests for xaiscope.data.images: every input kind and failure mode, exact pixels."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

import xaiscope as xs
from xaiscope.data import image_id, load_image, sample_images
from xaiscope.data import images as images_mod
from xaiscope.errors import ImageLoadError, XaiscopeError

WHITE = (255, 255, 255)


def _save(im: Image.Image, path: Path, **kwargs: Any) -> Path:
    im.save(path, **kwargs)
    return path


def _assert_clean_error(excinfo: pytest.ExceptionInfo[ImageLoadError], name: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    assert name in message, message
    assert isinstance(excinfo.value, XaiscopeError) and isinstance(excinfo.value, ValueError)
    return message


def _check_output(arr: np.ndarray) -> None:
    assert arr.dtype == np.uint8
    assert arr.ndim == 3 and arr.shape[2] == 3
    assert arr.flags.c_contiguous and arr.flags.writeable


def _px(arr: np.ndarray, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in arr[y, x])


# --- Pillow modes, round-tripped through real files -----------------------------------------


def test_rgb_png_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = _save(Image.fromarray(data), tmp_path / "rgb.png")
    out = load_image(path)
    _check_output(out)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(load_image(str(path)), data)


def test_mode_1(tmp_path: Path) -> None:
    im = Image.new("1", (3, 2), 0)
    im.putpixel((1, 0), 1)
    out = load_image(_save(im, tmp_path / "bilevel.png"))
    _check_output(out)
    assert out.shape == (2, 3, 3)
    assert _px(out, 1, 0) == WHITE
    assert _px(out, 0, 0) == (0, 0, 0)


def test_mode_l(tmp_path: Path) -> None:
    data = np.array([[0, 17, 128], [200, 254, 255]], dtype=np.uint8)
    path = _save(Image.fromarray(data, mode="L"), tmp_path / "gray.png")
    assert Image.open(path).mode == "L"
    out = load_image(path)
    _check_output(out)
    np.testing.assert_array_equal(out, np.repeat(data[..., None], 3, axis=2))


def test_mode_la_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("LA", (3, 1))
    im.putpixel((0, 0), (0, 0))  # fully transparent black -> white
    im.putpixel((1, 0), (0, 128))  # half transparent black -> 127
    im.putpixel((2, 0), (50, 255))  # opaque -> unchanged
    path = _save(im, tmp_path / "la.png")
    assert Image.open(path).mode == "LA"
    out = load_image(path)
    assert _px(out, 0, 0) == WHITE
    assert _px(out, 1, 0) == (127, 127, 127)
    assert _px(out, 2, 0) == (50, 50, 50)


def test_mode_rgba_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (3, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 128))
    im.putpixel((2, 0), (0, 0, 255, 255))
    path = _save(im, tmp_path / "rgba.png")
    out = load_image(path)
    _check_output(out)
    assert _px(out, 0, 0) == WHITE  # not (255, 0, 0): alpha is applied, not dropped
    assert _px(out, 1, 0) == (255, 127, 127)
    assert _px(out, 2, 0) == (0, 0, 255)


def _palette_image() -> Image.Image:
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [0] * (256 * 3 - 9))
    for x in range(3):
        im.putpixel((x, 0), x)
    return im


def test_mode_p_without_transparency(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "pal.png")
    assert Image.open(path).mode == "P"
    out = load_image(path)
    assert [_px(out, x, 0) for x in range(3)] == [(10, 20, 30), (200, 100, 50), (0, 255, 0)]


def test_mode_p_with_transparency(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "pal_trns.png", transparency=1)
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
    out = load_image(path)
    assert [_px(out, x, 0) for x in range(3)] == [(10, 20, 30), WHITE, (0, 255, 0)]


def test_mode_p_gif_with_transparency(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "pal.gif", transparency=0)
    out = load_image(path)
    assert [_px(out, x, 0) for x in range(3)] == [WHITE, (200, 100, 50), (0, 255, 0)]


def test_mode_l_with_trns_chunk(tmp_path: Path) -> None:
    data = np.array([[0, 7, 99]], dtype=np.uint8)
    path = _save(Image.fromarray(data, mode="L"), tmp_path / "gray_trns.png", transparency=7)
    out = load_image(path)
    assert [_px(out, x, 0) for x in range(3)] == [(0, 0, 0), WHITE, (99, 99, 99)]


def test_mode_cmyk_tiff_exact(tmp_path: Path) -> None:
    im = Image.new("CMYK", (4, 1))
    im.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    im.putpixel((1, 0), (0, 255, 0, 0))  # magenta
    im.putpixel((2, 0), (0, 0, 255, 0))  # yellow
    im.putpixel((3, 0), (0, 0, 0, 255))  # black
    path = _save(im, tmp_path / "cmyk.tif")
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    _check_output(out)
    assert [_px(out, x, 0) for x in range(4)] == [
        (0, 255, 255),
        (255, 0, 255),
        (255, 255, 0),
        (0, 0, 0),
    ]


def test_mode_cmyk_jpeg(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path).astype(int)
    assert np.abs(out - np.array([0, 255, 255])).max() <= 3


def test_mode_ycbcr() -> None:
    rgb = np.array([[[255, 0, 0], [0, 128, 255], [30, 200, 90]]], dtype=np.uint8)
    ycc = Image.fromarray(rgb).convert("YCbCr")
    assert ycc.mode == "YCbCr"
    out = load_image(ycc).astype(int)
    assert np.abs(out - rgb.astype(int)).max() <= 3


def test_mode_hsv() -> None:
    im = Image.new("HSV", (2, 1), (0, 255, 255))  # pure red
    im.putpixel((1, 0), (0, 0, 128))  # zero saturation -> gray
    out = load_image(im)
    assert _px(out, 0, 0) == (255, 0, 0)
    assert _px(out, 1, 0) == (128, 128, 128)


_INT16_VALUES = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
_INT16_EXPECTED = [0, 128, 255, 1]


def test_mode_i16_png_scaled_not_clipped(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_INT16_VALUES), tmp_path / "deep.png")
    assert Image.open(path).mode == "I;16"
    out = load_image(path)
    _check_output(out)
    assert out[0, :, 0].tolist() == _INT16_EXPECTED
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_mode_i16_full_ramp_keeps_contrast(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    out = load_image(_save(Image.fromarray(ramp), tmp_path / "ramp.png"))[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) == 256  # clipping to 255 would collapse almost everything
    assert (np.diff(out.ravel().astype(int)) >= 0).all()


def test_mode_i16b_tiff(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_INT16_VALUES.astype(">u2")), tmp_path / "deep_be.tif")
    assert Image.open(path).mode == "I;16B"
    assert load_image(path)[0, :, 0].tolist() == _INT16_EXPECTED


def test_mode_i32_tiff_16bit_values(tmp_path: Path) -> None:
    path = _save(Image.fromarray(_INT16_VALUES.astype(np.int32)), tmp_path / "i32.tif")
    assert Image.open(path).mode == "I"
    assert load_image(path)[0, :, 0].tolist() == _INT16_EXPECTED


def test_mode_i32_full_range() -> None:
    data = np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32)
    im = Image.fromarray(data)
    assert im.mode == "I"
    assert load_image(im)[0, :, 0].tolist() == [0, 128, 255]
    # values past 16 bits keep their contrast (min-max), not one grey level of the int32 range
    for values, expected in [
        ([0, 17500, 35000, 70000], [0, 64, 128, 255]),
        ([-1000, 0, 500, 1000], [0, 128, 191, 255]),
    ]:
        im = Image.fromarray(np.array([values], dtype=np.int32))
        assert load_image(im)[0, :, 0].tolist() == expected


def test_mode_f_unit_range(tmp_path: Path) -> None:
    data = np.array([[0.0, 0.5, 1.0, 0.25]], dtype=np.float32)
    path = _save(Image.fromarray(data), tmp_path / "float.tif")
    assert Image.open(path).mode == "F"
    assert load_image(path)[0, :, 0].tolist() == [0, 128, 255, 64]


def test_mode_f_min_max_scaled(tmp_path: Path) -> None:
    data = np.array([[10.0, 20.0, 30.0, -5.0]], dtype=np.float32)
    path = _save(Image.fromarray(data), tmp_path / "float_hdr.tif")
    # min-max over [-5, 30]: -5 -> 0, 30 -> 255
    expected = np.floor((data[0] + 5.0) / 35.0 * 255.0 + 0.5).astype(int).tolist()
    assert load_image(path)[0, :, 0].tolist() == expected


def test_mode_rgbx_and_pa() -> None:
    rgbx = Image.new("RGBX", (1, 1), (1, 2, 3, 0))
    assert _px(load_image(rgbx), 0, 0) == (1, 2, 3)
    pa = _palette_image().convert("PA")
    pa.putpixel((0, 0), (0, 0))
    assert _px(load_image(pa), 0, 0) == WHITE


# --- EXIF orientation -------------------------------------------------------------------------


def _oriented(orientation: int, path: Path, **kwargs: Any) -> Path:
    # 4 wide x 2 tall stored; the top-left 2x1 block is red, everything else blue.
    data = np.zeros((2, 4, 3), dtype=np.uint8)
    data[..., 2] = 255
    data[0, 0] = (255, 0, 0)
    im = Image.fromarray(data)
    if path.suffix == ".jpg":  # JPEG is lossy: 8x8-aligned blocks, no chroma subsampling
        im = im.resize((64, 32), Image.Resampling.NEAREST)
        kwargs = {"quality": 95, "subsampling": 0, **kwargs}
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(im, path, exif=exif, **kwargs)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_6_rotates_clockwise(tmp_path: Path, suffix: str) -> None:
    path = _oriented(6, tmp_path / f"o6{suffix}")
    out = load_image(path)
    scale = 16 if suffix == ".jpg" else 1
    assert out.shape == (4 * scale, 2 * scale, 3)  # portrait after rotation
    red = (out[..., 0] > 200) & (out[..., 2] < 60)
    ys, xs = np.nonzero(red)
    # stored top-left lands top-right after a 90 degree clockwise turn
    assert ys.max() < scale and xs.min() >= scale
    assert red.sum() == scale * scale


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_8_rotates_counter_clockwise(tmp_path: Path, suffix: str) -> None:
    path = _oriented(8, tmp_path / f"o8{suffix}")
    out = load_image(path)
    scale = 16 if suffix == ".jpg" else 1
    assert out.shape == (4 * scale, 2 * scale, 3)
    red = (out[..., 0] > 200) & (out[..., 2] < 60)
    ys, xs = np.nonzero(red)
    # stored top-left lands bottom-left after a 90 degree counter-clockwise turn
    assert ys.min() >= 3 * scale and xs.max() < scale
    assert red.sum() == scale * scale


def test_exif_orientation_applied_exactly_once(tmp_path: Path) -> None:
    path = _oriented(6, tmp_path / "once.png")
    from_path = load_image(path)
    with Image.open(path) as im:
        from_pil = load_image(im)
        already = ImageOps.exif_transpose(im)
    np.testing.assert_array_equal(from_pil, from_path)
    # an image the caller already transposed must not be turned a second time
    np.testing.assert_array_equal(load_image(already), from_path)
    np.testing.assert_array_equal(load_image(path.read_bytes()), from_path)


# --- decompression bombs -----------------------------------------------------------------------


def test_bomb_refused_by_max_pixels(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "bomb.png")
    with xs.config(max_image_pixels=100), pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    message = _assert_clean_error(excinfo, "bomb.png")
    assert "decompression bomb" in message and "too many pixels" in message
    assert "400" in message and "xs.config(max_image_pixels=...)" in message
    assert xs.config()["max_image_pixels"] == images_mod.MAX_PIXELS  # the old name reads it


def test_bomb_guard_holds_when_pillow_guard_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = io.BytesIO()
    Image.new("L", (20, 20)).save(data, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with xs.config(max_image_pixels=399), pytest.raises(ImageLoadError) as excinfo:
        load_image(data.getvalue())
    assert "decompression bomb" in _assert_clean_error(excinfo, "<bytes>")
    with xs.config(max_image_pixels=400):  # exactly at the limit is allowed
        assert load_image(data.getvalue()).shape == (20, 20, 3)


@pytest.mark.parametrize("pillow_limit", [300, 100])  # warning band, then hard error band
def test_pillow_bomb_warning_and_error_become_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pillow_limit: int
) -> None:
    path = _save(Image.new("RGB", (20, 20)), tmp_path / "pillow_bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    with xs.config(max_image_pixels=10**9), pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    message = _assert_clean_error(excinfo, "pillow_bomb.png")
    assert "decompression bomb" in message


# --- broken inputs ----------------------------------------------------------------------------


def _noise_image(size: tuple[int, int] = (128, 96)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    buf = io.BytesIO()
    _noise_image().save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"half{suffix}"
    path.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    assert "truncated" in _assert_clean_error(excinfo, f"half{suffix}")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(data[: len(data) // 2])
    _assert_clean_error(excinfo, "<bytes>")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the loader must not flip the global


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("this is not an image\nsecond line\n")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    assert "not an image" in _assert_clean_error(excinfo, "notes.txt")


def test_image_extension_with_text_content(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("hello")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    _assert_clean_error(excinfo, "fake.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(tmp_path / "nope.jpg")
    assert "not found" in _assert_clean_error(excinfo, "nope.jpg")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "a_folder.png"
    folder.mkdir()
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(folder)
    assert "directory" in _assert_clean_error(excinfo, "a_folder.png")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(path)
    assert "empty" in _assert_clean_error(excinfo, "empty.png")


@pytest.mark.parametrize("data", [b"", bytearray(), b"\x00garbage\xff" * 10])
def test_bad_bytes(data: bytes) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(data)
    _assert_clean_error(excinfo, "<bytes>")


def test_unsupported_source_type() -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(12345)  # type: ignore[arg-type]
    _assert_clean_error(excinfo, "int")


# --- bytes and streams ------------------------------------------------------------------------


def test_bytes_bytesio_and_file_object(tmp_path: Path) -> None:
    im = _noise_image((9, 6))
    path = _save(im, tmp_path / "noise.png")
    expected = np.asarray(im)
    data = path.read_bytes()
    np.testing.assert_array_equal(load_image(data), expected)
    np.testing.assert_array_equal(load_image(bytearray(data)), expected)
    np.testing.assert_array_equal(load_image(memoryview(data)), expected)
    np.testing.assert_array_equal(load_image(io.BytesIO(data)), expected)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(load_image(fh), expected)


def test_truncated_stream_names_file(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _noise_image().save(buf, "PNG")
    path = tmp_path / "cut_stream.png"
    path.write_bytes(buf.getvalue()[:200])
    with open(path, "rb") as fh, pytest.raises(ImageLoadError) as excinfo:
        load_image(fh)
    _assert_clean_error(excinfo, "cut_stream.png")


# --- numpy input ------------------------------------------------------------------------------


def test_numpy_gray_and_single_channel() -> None:
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    expected = np.repeat(gray[..., None], 3, axis=2)
    np.testing.assert_array_equal(load_image(gray), expected)
    np.testing.assert_array_equal(load_image(gray[..., None]), expected)
    np.testing.assert_array_equal(load_image(gray / 255.0), expected)


def test_numpy_rgb_uint8_is_copied() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = load_image(rgb)
    np.testing.assert_array_equal(out, rgb)
    out[0, 0, 0] = 99
    assert rgb[0, 0, 0] == 0  # caller's array untouched


def test_numpy_rgb_float_matches_uint8() -> None:
    rgb = np.random.default_rng(2).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_image(rgb.astype(np.float32) / 255.0), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.float64) / 255.0), rgb)


def test_numpy_rgba_composited_like_files(tmp_path: Path) -> None:
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 255]]], dtype=np.uint8)
    out = load_image(rgba)
    assert [_px(out, x, 0) for x in range(3)] == [WHITE, (255, 127, 127), (0, 0, 255)]
    from_file = load_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png"))
    np.testing.assert_array_equal(out, from_file)
    np.testing.assert_array_equal(load_image(rgba / 255.0), out)


def test_numpy_other_dtypes() -> None:
    mask = np.array([[True, False]])
    assert load_image(mask)[0, :, 0].tolist() == [255, 0]
    assert load_image(_INT16_VALUES)[0, :, 0].tolist() == _INT16_EXPECTED
    small_ints = np.array([[0, 7, 255]], dtype=np.int64)
    assert load_image(small_ints)[0, :, 0].tolist() == [0, 7, 255]


def test_numpy_non_contiguous_input_gives_contiguous_output() -> None:
    rgb = np.random.default_rng(3).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    view = rgb.transpose(1, 0, 2)[::2]
    out = load_image(view)
    _check_output(out)
    np.testing.assert_array_equal(out, view)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4,), dtype=np.uint8),
        np.zeros((4, 4, 2), dtype=np.uint8),
        np.zeros((3, 8, 8), dtype=np.uint8),  # channels-first
        np.zeros((1, 4, 4, 3), dtype=np.uint8),
        np.zeros((0, 4, 3), dtype=np.uint8),
        np.full((2, 2, 3), 1.5),
        np.full((2, 2), -0.1, dtype=np.float32),
        np.full((2, 2), np.nan),
        np.full((2, 2), 300, dtype=np.int32),
        np.zeros((2, 2), dtype=np.complex64),
        np.zeros((2, 2), dtype=object),
    ],
)
def test_numpy_bad_arrays(arr: np.ndarray) -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        load_image(arr)
    _assert_clean_error(excinfo, "<array>")


# --- samples and ids --------------------------------------------------------------------------


def test_sample_images_all() -> None:
    samples = sample_images()
    names = list(samples)
    assert names[0] == "chelsea"
    assert {"chelsea", "coffee", "astronaut", "rocket", "motorcycle", "coins", "camera"} <= set(
        names
    )
    for name, arr in samples.items():
        _check_output(arr)
        assert arr.shape[0] > 100 and arr.shape[1] > 100, name
    assert samples["chelsea"].shape == (300, 451, 3)
    coins = samples["coins"]  # grayscale source: three equal channels
    assert (coins[..., 0] == coins[..., 1]).all() and (coins[..., 1] == coins[..., 2]).all()


def test_sample_images_order_follows_request() -> None:
    samples = sample_images(["camera", "chelsea"])
    assert list(samples) == ["camera", "chelsea"]
    assert list(sample_images("coffee")) == ["coffee"]  # a bare str is one name
    np.testing.assert_array_equal(sample_images(["chelsea"])["chelsea"], samples["chelsea"])


def test_sample_images_unknown_name() -> None:
    with pytest.raises(ImageLoadError) as excinfo:
        sample_images(["chelsea", "no_such_cat"])
    message = _assert_clean_error(excinfo, "no_such_cat")
    assert "chelsea" in message and "astronaut" in message


@pytest.mark.parametrize(
    "source,expected",
    [
        ("/data/photos/cat.jpg", "cat"),
        (Path("dir/my photo (1).JPG"), "my_photo_1"),
        ("archive.tar.gz", "archive.tar"),
        (".hidden", "hidden"),
        ("/tmp/日本.png", "image"),
        (b"\x89PNG", "image"),
        (np.zeros((2, 2)), "image"),
        (io.BytesIO(b""), "image"),
        ("x" * 200 + ".png", "x" * 64),
    ],
)
def test_image_id(source: object, expected: str) -> None:
    assert image_id(source) == expected


def test_image_id_of_opened_file(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (2, 2)), tmp_path / "shot-01.png")
    with Image.open(path) as im:
        assert image_id(im) == "shot-01"
    with open(path, "rb") as fh:
        assert image_id(fh) == "shot-01"
