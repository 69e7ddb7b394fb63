"""``Explanation.load`` on files from strangers: hostile archives are refused with one typed
line, quickly, without unpickling, and without allocating what their headers declare.

Each hostile file is built by hand (zipfile + .npy headers) from a genuine saved
explanation, so that exactly one thing is wrong with it.
"""

from __future__ import annotations

import io
import json
import time
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.hostile import MB, Canary, npy_header
from xaiscope.cli.main import main
from xaiscope.explanation import MAX_JSON_DEPTH


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=allow_pickle)
    return buf.getvalue()


def _meta(meta: dict[str, Any]) -> bytes:
    return _npy(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def _genuine() -> xs.Explanation:
    rng = np.random.default_rng(0)
    return xs.Explanation(
        method="saliency",
        params={"abs": True},
        targets=np.array([3, 7]),
        scores=np.array([1.5, -0.25], dtype=np.float32),
        maps=rng.random((2, 4, 5), dtype=np.float32),
        raw=torch.from_numpy(rng.random((2, 3, 8, 8), dtype=np.float32)),
        probabilities=np.array([0.5, 0.125], dtype=np.float32),
        target_labels=["cat", "dog"],
        model_name="tiny",
        extras={"segments": torch.arange(16).view(1, 4, 4), "window": (3, 4)},
        warnings=["image 1: something to note"],
    )


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tampered(tmp_path: Path, name: str, **changes: bytes | None) -> Path:
    """A genuine file with members replaced (``None`` removes one); ``meta`` as JSON dict
    changes go through ``meta_update``."""
    members = _members(_genuine().save(tmp_path / "genuine.npz"))
    for key, data in changes.items():
        member = key.replace("__", "/") + ".npy"
        if data is None:
            members.pop(member, None)
        else:
            members[member] = data
    return _write(tmp_path / name, members)


def _meta_of(tmp_path: Path) -> dict[str, Any]:
    data = _members(_genuine().save(tmp_path / "genuine.npz"))["meta.npy"]
    arr = np.lib.format.read_array(io.BytesIO(data))
    return json.loads(arr.tobytes().decode())


def _zip_bomb_meta(tmp_path: Path) -> Path:
    """100 MB of spaces as the metadata, deflated to ~100 kB."""
    members = _members(_genuine().save(tmp_path / "genuine.npz"))
    del members["meta.npy"]
    path = _write(tmp_path / "bomb.npz", members)
    size = 100 * MB
    with (
        zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as zf,
        zf.open("meta.npy", "w") as f,
    ):
        f.write(npy_header((size,), np.uint8))
        block = b" " * MB
        for _ in range(size // MB):
            f.write(block)
    assert path.stat().st_size < 2 * MB
    return path


def _huge_header(tmp_path: Path) -> Path:
    tiny_data = npy_header((100_000, 100_000, 100_000), np.float32) + b"\0" * 64
    return _tampered(tmp_path, "huge.npz", maps=tiny_data)


def _pickled_maps(tmp_path: Path) -> Path:
    canary = tmp_path / "canary.txt"
    objects = np.empty((2, 4, 5), dtype=object)
    objects[...] = 0.0
    objects[0, 0, 0] = Canary(canary)
    return _tampered(tmp_path, "pickle.npz", maps=_npy(objects, allow_pickle=True))


def _nested_meta(tmp_path: Path) -> Path:
    return _tampered(
        tmp_path, "nested.npz", meta=_npy(np.frombuffer(b"[" * 100_000, dtype=np.uint8))
    )


def _meta_too_deep_but_parsable(tmp_path: Path) -> Path:
    meta = _meta_of(tmp_path)
    deep: Any = 0
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = [deep]
    meta["params"] = {"deep": deep}
    return _tampered(tmp_path, "deep.npz", meta=_meta(meta))


def _maps_like(tmp_path: Path, name: str, maps: np.ndarray) -> Path:
    return _tampered(tmp_path, name, maps=_npy(maps))


def _nan_raw(tmp_path: Path) -> Path:
    raw = np.zeros((2, 3, 8, 8), np.float32)
    raw[1, 0, 0, 0] = np.nan
    return _tampered(tmp_path, "nanraw.npz", raw=_npy(raw))


def _object_extra(tmp_path: Path) -> Path:
    return _tampered(
        tmp_path,
        "extra.npz",
        extras__segments=_npy(np.array(["a", "b"], dtype=object), allow_pickle=True),
    )


def _meta_not_object(tmp_path: Path) -> Path:
    return _tampered(tmp_path, "list.npz", meta=_meta([1, 2]))  # type: ignore[arg-type]


def _meta_wrong_types(tmp_path: Path) -> Path:
    meta = _meta_of(tmp_path)
    meta["warnings"] = [{"not": "a string"}]
    return _tampered(tmp_path, "types.npz", meta=_meta(meta))


def _torch_dtype_name(tmp_path: Path) -> Path:
    # a dtype name that getattr(torch, ...) would resolve by importing a submodule
    meta = _meta_of(tmp_path)
    meta["extras"]["arrays"]["segments"]["dtype"] = "onnx"
    return _tampered(tmp_path, "dtype.npz", meta=_meta(meta))


def _header_length_bomb(tmp_path: Path) -> Path:
    # a version 2.0 header may declare 4 GB; numpy would read it all before its own check
    bomb = b"\x93NUMPY\x02\x00" + (0xFFFFFFFF).to_bytes(4, "little") + b" " * 1000
    return _tampered(tmp_path, "hbomb.npz", scores=bomb)


def _lzma_member(tmp_path: Path) -> Path:
    members = _members(_genuine().save(tmp_path / "genuine.npz"))
    path = tmp_path / "lzma.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data, compress_type=zipfile.ZIP_LZMA)
    return path


def _bad_crc(tmp_path: Path) -> Path:
    members = _members(_genuine().save(tmp_path / "genuine.npz"))
    path = tmp_path / "crc.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    raw = bytearray(path.read_bytes())
    start = raw.index(members["scores.npy"])
    raw[start + len(members["scores.npy"]) - 1] ^= 0xFF  # the last byte of the scores
    path.write_bytes(bytes(raw))
    return path


HOSTILE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nested metadata (100000 levels)": (_nested_meta, "nests deeper than 64"),
    "metadata nested 69 levels": (_meta_too_deep_but_parsable, "nests deeper than 64"),
    "metadata zip bomb (100 MB)": (_zip_bomb_meta, "max_inflation"),
    "header declares 4e15 bytes": (_huge_header, "declares shape (100000, 100000, 100000)"),
    "pickled object maps": (_pickled_maps, "Python objects"),
    "string maps": (lambda p: _maps_like(p, "str.npz", np.full((2, 4, 5), "0.5")), "floats"),
    "complex maps": (
        lambda p: _maps_like(p, "complex.npz", np.zeros((2, 4, 5), np.complex64)),
        "floats",
    ),
    "structured maps": (
        lambda p: _maps_like(p, "rec.npz", np.zeros((2, 4, 5), dtype=[("a", "f4")])),
        "structured",
    ),
    "all-NaN maps": (
        lambda p: _maps_like(p, "nan.npz", np.full((2, 4, 5), np.nan, np.float32)),
        "NaN or inf",
    ),
    "inf maps": (
        lambda p: _maps_like(p, "inf.npz", np.full((2, 4, 5), np.inf, np.float32)),
        "NaN or inf",
    ),
    "NaN in raw": (_nan_raw, "raw of image 1 has NaN"),
    "targets length": (
        lambda p: _tampered(p, "targets.npz", targets=_npy(np.array([1, 2, 3]))),
        "targets has 3 entries for 2 maps",
    ),
    "float targets": (
        lambda p: _tampered(p, "ftargets.npz", targets=_npy(np.array([1.0, 2.0]))),
        "targets must be integers",
    ),
    "negative target": (
        lambda p: _tampered(p, "neg.npz", targets=_npy(np.array([1, -2]))),
        "must be class indices",
    ),
    "object extra": (_object_extra, "Python objects"),
    "undeclared member": (
        lambda p: _tampered(p, "extra_member.npz", surprise=_npy(np.zeros(3))),
        "unexpected member",
    ),
    "no scores": (lambda p: _tampered(p, "noscores.npz", scores=None), "has no scores"),
    "metadata not an object": (_meta_not_object, "not a JSON object"),
    "metadata of wrong types": (_meta_wrong_types, "list of strings"),
    "torch dtype by name": (_torch_dtype_name, "not a torch dtype"),
    "4 GB header length": (_header_length_bomb, "bad .npy header length 4294967295"),
    "LZMA member": (_lzma_member, "compression 14"),
    "bad CRC": (_bad_crc, "Bad CRC-32"),
    "not a zip": (
        lambda p: (p / "junk.npz", (p / "junk.npz").write_bytes(b"PK junk"))[0],
        "cannot read explanation",
    ),
}


def _one_line(text: str) -> None:
    assert "\n" not in text.strip() and "Traceback" not in text


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_file_is_refused_fast_and_small(case: str, tmp_path: Path) -> None:
    build, expected = HOSTILE[case]
    path = build(tmp_path)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(xs.ExplanationFileError) as info:
            xs.Explanation.load(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert expected in message, message
    assert message.startswith(f"cannot read explanation {path}")
    _one_line(message)
    assert elapsed < 2.0, f"{case}: {elapsed:.2f} s"
    assert peak < 50 * MB, f"{case}: peak {peak / MB:.0f} MB"
    assert not (tmp_path / "canary.txt").exists()


@pytest.mark.parametrize("case", ["nested metadata (100000 levels)", "pickled object maps"])
def test_hostile_file_through_the_cli(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = HOSTILE[case][0](tmp_path)
    good = _genuine().save(tmp_path / "good.npz")
    for argv in (
        ["compare", str(bad), str(good), "--out", str(tmp_path / "out"), "-q"],
        ["compare", "--explanations", str(good), str(bad), "--out", str(tmp_path / "o2")],
    ):
        code = main(argv)
        captured = capsys.readouterr()
        assert code == 2, captured.err
        assert captured.err.startswith("xaiscope: error: cannot read explanation")
        assert captured.err.count("\n") == 1
        assert "Traceback" not in captured.err and "unexpected" not in captured.err
    assert not (tmp_path / "canary.txt").exists()


def test_the_canary_would_have_run(tmp_path: Path) -> None:
    # the pickle test means something only if unpickling that file does write the canary
    path = _pickled_maps(tmp_path)
    with np.load(path, allow_pickle=True) as data:
        data["maps"]
    assert (tmp_path / "canary.txt").exists()


def test_archive_size_is_bounded_before_reading(tmp_path: Path) -> None:
    path = _genuine().save(tmp_path / "genuine.npz")
    with (
        xs.config(max_archive_bytes=1000),
        pytest.raises(xs.ExplanationFileError, match="max_archive_bytes"),
    ):
        xs.Explanation.load(path)
    with (
        xs.config(max_image_pixels=19),  # the maps are 4x5
        pytest.raises(xs.ExplanationFileError, match="max_image_pixels"),
    ):
        xs.Explanation.load(path)
    with xs.config(max_labels=5), pytest.raises(xs.ExplanationFileError, match="max_labels"):
        xs.Explanation.load(path)  # target 7
    assert len(xs.Explanation.load(path)) == 2


def test_member_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xaiscope import explanation

    path = _genuine().save(tmp_path / "genuine.npz")  # 7 members
    monkeypatch.setattr(explanation, "MAX_MEMBERS", 6)
    with pytest.raises(xs.ExplanationFileError, match="7 members"):
        xs.Explanation.load(path)


def test_genuine_file_round_trips(tmp_path: Path) -> None:
    e = _genuine()
    back = xs.Explanation.load(e.save(tmp_path / "genuine.npz"))
    assert back.method == e.method and back.params == e.params
    assert back.target_labels == e.target_labels and back.warnings == e.warnings
    assert back.model_name == e.model_name
    np.testing.assert_array_equal(back.maps, e.maps)
    np.testing.assert_array_equal(back.targets, e.targets)
    np.testing.assert_array_equal(back.scores, e.scores)
    np.testing.assert_array_equal(back.probabilities, e.probabilities)
    assert back.raw is not None and e.raw is not None
    torch.testing.assert_close(back.raw, e.raw)
    assert back.extras["window"] == (3, 4)
    assert torch.equal(back.extras["segments"], e.extras["segments"])
    assert back.extras["segments"].dtype == torch.int64


def test_fortran_and_big_endian_arrays_still_load(tmp_path: Path) -> None:
    e = _genuine()
    maps = np.asfortranarray(np.asarray(e.maps).astype(">f4"))
    path = _tampered(tmp_path, "layouts.npz", maps=_npy(maps))
    back = xs.Explanation.load(path)
    np.testing.assert_array_equal(back.maps, e.maps)
    assert back.maps.dtype.isnative


def test_nan_map_flagged_at_explain_time_still_loads(tmp_path: Path) -> None:
    # explain() keeps a NaN map and flags it; the saved file keeps both, so it loads, and
    # compare refuses the map instead of reporting numbers
    e = _genuine()
    e.maps[1, 0, 0] = np.nan
    e.warnings = ["image 1: the map has NaN or inf values"]
    back = xs.Explanation.load(e.save(tmp_path / "flagged.npz"))
    assert np.isnan(back.maps[1, 0, 0]) and back.warnings == e.warnings
    with pytest.raises(xs.ParameterError, match="NaN or inf"):
        xs.compare([back, _genuine()])
    # the same map without the flag is refused
    e.warnings = []
    with pytest.raises(xs.ExplanationFileError, match="the map of image 1 has NaN"):
        xs.Explanation.load(e.save(tmp_path / "unflagged.npz"))


def test_inflation_is_bounded(tmp_path: Path) -> None:
    """A compressed member of 80 MB of zeros (a small file): refused by the ratio of
    unpacked to stored bytes, before anything is inflated; allowed when it is raised."""
    path = _genuine().save(tmp_path / "genuine.npz")
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        with dst.open("extras/zeros.npy", "w") as member:
            np.lib.format.write_array(member, np.zeros(20_000_000, np.float32))
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(xs.ExplanationFileError, match="max_inflation"):
        xs.Explanation.load(bomb)
    with (
        xs.config(max_inflation=10**6),
        pytest.raises(xs.ExplanationFileError, match="zeros") as info,
    ):
        xs.Explanation.load(bomb)  # past the ratio: refused as a member the metadata lacks
    assert "max_inflation" not in str(info.value)


def test_metadata_bomb_past_the_inflation_limit_meets_the_metadata_limit(tmp_path: Path) -> None:
    path = _zip_bomb_meta(tmp_path)
    with (
        xs.config(max_inflation=10**6),
        pytest.raises(xs.ExplanationFileError, match="max_metadata_bytes"),
    ):
        xs.Explanation.load(path)
