"""Image size limits (issue 18): refused from the header, before any large buffer, with one
line naming the limit; what is allowed decodes with memory bounded by the image's size.

Memory is measured, not timed: tracemalloc for numpy's buffers in this process, and the peak
RSS (``VmHWM``) of a subprocess for the whole decode, Pillow's buffer included.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import xaiscope as xs
from tests.hostile import MB, PEAK_SOURCE, one_line, traced
from xaiscope.app.logic import read_image_upload
from xaiscope.cli import main
from xaiscope.data import load_image
from xaiscope.data.folder import image_folder
from xaiscope.errors import DatasetError, ImageLoadError, ParameterError

ROOT = Path(__file__).resolve().parents[2]


def _png16(path: Path, width: int, height: int, value: int = 40000) -> Path:
    # a constant 16-bit image deflates to a few hundred KB without a full-size array here
    Image.new("I;16", (width, height), value).save(path, compress_level=9)
    return path


@pytest.fixture(scope="module")
def big16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reported file: 16-bit grayscale 9000x9000 (81 M pixels), a small PNG."""
    path = _png16(tmp_path_factory.mktemp("big") / "bomb.png", 9000, 9000)
    assert path.stat().st_size < 2 * MB
    return path


def test_16bit_9000_refused_from_the_header(big16: Path) -> None:
    assert xs.config()["max_image_pixels"] == 50_000_000
    for source in (big16, big16.read_bytes(), io.BytesIO(big16.read_bytes())):
        error, peak = traced(lambda s=source: load_image(s))
        assert isinstance(error, ImageLoadError)
        message = one_line(error, "max_image_pixels", "xs.config(max_image_pixels=...)")
        assert "9000x9000 = 81,000,000 pixels" in message
        assert peak < 4 * MB  # nothing the size of the image was made
    with Image.open(big16) as lazy:  # a PIL image not yet decoded is checked before load()
        with pytest.raises(ImageLoadError, match="max_image_pixels"):
            load_image(lazy)
        assert lazy.tile  # still not decoded


_PEAK_SCRIPT = PEAK_SOURCE + textwrap.dedent(
    """
    import sys
    import xaiscope as xs
    from xaiscope.data import load_image

    xs.config(max_image_pixels=100_000_000)
    before = peak()
    out = load_image(sys.argv[1])
    after = peak()
    assert out.shape == (9000, 9000, 3) and (out == 156).all(), out[:2, :2]
    print(before, after)
    """
)


@pytest.mark.slow
def test_16bit_9000_with_the_limit_raised_peaks_under_the_budget(big16: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(big16)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split()[-2:])
    # Pillow's 16-bit buffer (162 MB) + the RGB result (243 MB) + blocks; it was 9 GB
    assert after - before < 600 * MB, (before, after)
    assert after < 2048 * MB


def test_decoded_bytes_limit(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(path)
    with xs.config(max_image_bytes=20 * 20 * 4 - 1), pytest.raises(ImageLoadError) as excinfo:
        load_image(path)  # Pillow keeps RGB in 4 bytes a pixel
    one_line(excinfo.value, "rgb.png", "max_image_bytes", "xs.config(max_image_bytes=...)")
    deep = _png16(tmp_path / "deep.png", 20, 20)
    with xs.config(max_image_bytes=20 * 20 * 2):  # I;16: 2 bytes a pixel, at the limit
        assert load_image(deep).shape == (20, 20, 3)
    with xs.config(max_image_bytes=20 * 20 * 4):
        assert load_image(path)[0, 0].tolist() == [1, 2, 3]


def test_raised_limit_gives_the_same_pixels(tmp_path: Path) -> None:
    ramp = (np.arange(300 * 200, dtype=np.uint32) % 65536).astype(np.uint16).reshape(200, 300)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    expected = load_image(path)
    with xs.config(max_image_pixels=300 * 200 - 1), pytest.raises(ImageLoadError):
        load_image(path)
    with xs.config(max_image_pixels=300 * 200):
        np.testing.assert_array_equal(load_image(path), expected)
    want = ((ramp.astype(np.int64) * 510 + 65535) // 131070).astype(np.uint8)
    np.testing.assert_array_equal(expected, np.repeat(want[..., None], 3, axis=2))


def test_arrays_checked_before_conversion() -> None:
    # a broadcast view claims 400 M pixels without holding them: no result may be made
    huge = np.broadcast_to(np.float32(0.5), (20000, 20000, 4))
    error, peak = traced(lambda: load_image(huge))
    assert isinstance(error, ImageLoadError)
    one_line(error, "<array>", "max_image_pixels", "20000x20000")
    assert peak < 4 * MB
    with xs.config(max_image_pixels=99), pytest.raises(ImageLoadError):
        load_image(np.zeros((10, 10), np.uint8))
    with xs.config(max_image_pixels=100):
        assert load_image(np.zeros((10, 10), np.uint8)).shape == (10, 10, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.linspace(0, 1, 1000 * 1000 * 4, dtype=np.float32).reshape(1000, 1000, 4),
        lambda: (
            (np.arange(1000 * 1000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(1000, 1000)
        ),
        lambda: Image.fromarray(
            np.linspace(-3, 7, 1000 * 1000, dtype=np.float32).reshape(1000, 1000)
        ),
        lambda: Image.fromarray(
            (np.arange(1000 * 1000, dtype=np.int64) * 4001 - 2**31)
            .astype(np.int32)
            .reshape(1000, 1000)
        ),
        lambda: Image.new("RGBA", (1000, 1000), (10, 20, 30, 128)),
    ],
    ids=["float-rgba-array", "uint16-array", "mode-F", "mode-I", "mode-RGBA"],
)
def test_conversion_memory_is_a_small_multiple_of_the_result(make: Callable[[], Any]) -> None:
    source = make()
    out, peak = traced(lambda: load_image(source))
    assert isinstance(out, np.ndarray) and out.shape == (1000, 1000, 3)
    # the result (3 MB) plus blocks of rows; the int64/float64 full-size temporaries of
    # before took 60-100 MB here
    assert peak < out.nbytes + 16 * MB, peak


def test_app_upload_uses_the_app_limit(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("L", (6000, 6000), 7).save(buf, "PNG", compress_level=9)
    data = buf.getvalue()
    assert len(data) < 200_000
    error, peak = traced(lambda: read_image_upload("huge.png", data))
    assert isinstance(error, ImageLoadError)
    message = one_line(error, "'huge.png'", "app_max_image_pixels", "36,000,000 pixels")
    assert "XAISCOPE_APP_MAX_IMAGE_PIXELS" in message
    assert peak < 4 * MB
    # the process-wide setting is not touched: the library's own limit still applies here
    assert xs.config()["max_image_pixels"] == 50_000_000
    small = io.BytesIO()
    Image.new("RGB", (30, 20), (9, 8, 7)).save(small, "PNG")
    with xs.config(app_max_image_pixels=600):
        assert read_image_upload("ok.png", small.getvalue())[0, 0].tolist() == [9, 8, 7]
    with xs.config(app_max_image_pixels=599), pytest.raises(ImageLoadError):
        read_image_upload("ok.png", small.getvalue())
    with pytest.raises(ParameterError):
        load_image(small.getvalue(), pixel_limit="max_samples")


def test_image_folder_refuses_or_skips_a_bomb(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(tmp_path / cls / f"{i}.png")
    _png16(tmp_path / "a" / "bomb.png", 9000, 9000)
    data = image_folder(tmp_path, size=16)
    assert len(data.images) == 4
    [(path, reason)] = data.skipped
    assert path.endswith("bomb.png") and "max_image_pixels" in reason
    with pytest.raises(DatasetError) as excinfo:
        image_folder(tmp_path, size=16, on_error="raise")
    one_line(excinfo.value, "bomb.png", "max_image_pixels")


def test_cli_explain_bomb_exits_2_withone_line(
    big16: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["explain", str(big16), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "bomb.png" in lines[0] and "max_image_pixels" in lines[0]


def test_ico_whose_entry_hides_a_bigger_png_isone_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ICO directory says 256x256, the PNG inside is 3000x3000: refused as lying, with
    Pillow's warning turned into the error instead of printed as extra stderr lines."""
    import struct

    buf = io.BytesIO()
    Image.new("RGBA", (3000, 3000)).save(buf, "PNG")
    png = buf.getvalue()
    path = tmp_path / "x.ico"
    header = struct.pack("<HHH", 0, 1, 1) + struct.pack(
        "<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22
    )
    path.write_bytes(header + png)
    with pytest.raises(xs.ImageLoadError, match="not the expected size"):
        xs.load_image(path)
    code = main([str(path), "--method", "gradcam", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("xaiscope: error: "), err
