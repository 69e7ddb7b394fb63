"""``--masks`` files from strangers: genuine ``.npy``/``.npz`` masks load; hostile ones are
refused with one MaskError line, quickly, without unpickling, and without allocating what
their headers declare."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xaiscope as xs
from tests.hostile import MB, Canary, npy_header
from xaiscope.cli.evaluate_cmd import read_masks
from xaiscope.cli.main import main
from xaiscope.errors import MaskError


def _masks() -> np.ndarray:
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:5, 3:6] = True
    masks[1, 6:, :2] = True
    return masks


def _huge_npy(tmp_path: Path) -> Path:
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_header((100_000, 100_000, 100_000), np.float32) + b"\0" * 64)
    return path


def _huge_npz(tmp_path: Path) -> Path:
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("masks.npy", npy_header((100_000, 100_000, 100_000), bool) + b"\0" * 64)
    return path


def _pickled_npy(tmp_path: Path) -> Path:
    objects = np.empty((2, 8, 8), dtype=object)
    objects[...] = False
    objects[0, 0, 0] = Canary(tmp_path / "canary.txt")
    path = tmp_path / "pickle.npy"
    np.save(path, objects, allow_pickle=True)
    return path


def _truncated_npy(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.zeros((50, 64, 64), bool))
    path = tmp_path / "cut.npy"
    path.write_bytes(buf.getvalue()[:1000])
    return path


def _truncated_npz(tmp_path: Path) -> Path:
    buf = io.BytesIO()
    np.savez(buf, masks=np.zeros((50, 64, 64), bool))
    path = tmp_path / "cut.npz"
    path.write_bytes(buf.getvalue()[:1000])
    return path


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "npy header declares 4e15 bytes": (_huge_npy, "declares shape (100000, 100000, 100000)"),
    "npz header declares 1e15 bytes": (_huge_npz, "declares shape (100000, 100000, 100000)"),
    "pickled object masks": (_pickled_npy, "Python objects"),
    "truncated .npy": (_truncated_npy, "but the file holds"),
    "truncated .npz": (_truncated_npz, "no zip directory"),
    "not an array file": (
        lambda p: (p / "junk.npy", (p / "junk.npy").write_bytes(b"junk" * 100))[0],
        "not a .npy array or .npz archive",
    ),
}


def test_genuine_npy_and_npz_masks_load(tmp_path: Path) -> None:
    masks = _masks()
    np.save(tmp_path / "m.npy", masks)
    np.savez(tmp_path / "named.npz", other=np.zeros(3), masks=masks)
    np.savez_compressed(tmp_path / "first.npz", masks)  # stored as arr_0
    for name in ("m.npy", "named.npz", "first.npz"):
        got = read_masks(str(tmp_path / name))
        assert got.dtype == masks.dtype, name
        np.testing.assert_array_equal(got, masks)
    fortran = np.asfortranarray(masks.astype(">u2"))
    np.save(tmp_path / "f.npy", fortran)
    got = read_masks(str(tmp_path / "f.npy"))
    np.testing.assert_array_equal(got, masks.astype(np.uint16))
    assert got.dtype.isnative


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_mask_file_is_refused_fast_and_small(case: str, tmp_path: Path) -> None:
    build, expected = HOSTILE[case]
    path = build(tmp_path)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(MaskError) as info:
            read_masks(str(path))
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert expected in message, message
    assert message.startswith(f"cannot read --masks {path}: ")
    assert "\n" not in message and "Traceback" not in message
    assert elapsed < 2.0, f"{case}: {elapsed:.2f} s"
    assert peak < 50 * MB, f"{case}: peak {peak / MB:.0f} MB"
    assert not (tmp_path / "canary.txt").exists()


def test_the_canary_would_have_run(tmp_path: Path) -> None:
    # the pickle case means something only if unpickling that file does write the canary
    np.load(_pickled_npy(tmp_path), allow_pickle=True)
    assert (tmp_path / "canary.txt").exists()


def test_a_limit_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", _masks())
    with xs.config(max_archive_bytes=100), pytest.raises(MaskError) as info:
        read_masks(str(tmp_path / "m.npy"))
    assert "max_archive_bytes" in str(info.value)


@pytest.mark.parametrize("case", ["npy header declares 4e15 bytes", "pickled object masks"])
def test_hostile_mask_file_through_the_cli(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(xs.datasets.shapes(1, 32, seed=1).images[0]).save(image)
    bad = HOSTILE[case][0](tmp_path)
    code = main(
        ["evaluate", str(image), "--masks", str(bad), "--method", "gradcam",
         "--metrics", "pointing_game", "--out", str(tmp_path / "o"), "-q"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"xaiscope: error: cannot read --masks {bad}: "), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "scores.csv").exists()
    assert not (tmp_path / "canary.txt").exists()
