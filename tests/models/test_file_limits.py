"""Model file limits (issue 18): a small file that claims huge sizes (a ``.keras`` zip bomb,
HDF5 arrays in compressed chunks, an ONNX input of 8000x8000) is refused from its headers,
with one line naming the limit and ``xs.config``, before any large buffer is made.

Memory is measured: tracemalloc where the work is Python's (zip, json), the peak RSS of a
subprocess where it is not (onnxruntime, torch).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import xaiscope as xs
from tests.hostile import MB, PEAK_SOURCE, one_line, traced
from xaiscope.errors import ModelLoadError
from xaiscope.models.keras_model import load_keras_file

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------ .keras zip bombs
def _raw_zip(path: Path, members: list[tuple[str, int, bytes, int, int]]) -> None:
    """A zip of (name, method, stored bytes, crc, declared size) members, written by hand
    so a member can be deflated once and repeated, or declare a size that is not true."""
    out, central = bytearray(), bytearray()
    for name, method, data, crc, size in members:
        raw = name.encode()
        offset = len(out)
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(data), size, len(raw), 0
        )
        out += raw + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 20, 20, 0, method, 0, 0, crc, len(data), size,
            len(raw), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += raw
    n = len(members)
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), len(out), 0)
    path.write_bytes(bytes(out))


def _spaces_deflated(size: int) -> tuple[bytes, int]:
    """Deflate ``size`` spaces in seconds: one 16 MB block, fully flushed, is repeated (a
    full flush makes each copy independent of what came before)."""
    chunk = 1 << 24
    assert size % chunk == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(b" " * chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    spaces = b" " * chunk
    for _ in range(size // chunk):
        crc = zlib.crc32(spaces, crc)
    return block * (size // chunk) + b"\x03\x00", crc


@pytest.fixture(scope="module")
def config_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reported file: a .keras zip of 1.5 MB whose config.json inflates to 1.6 GB."""
    size = 96 << 24  # 1.6 GB
    data, crc = _spaces_deflated(size)
    meta = b'{"keras_version": "3.0.0"}'
    path = tmp_path_factory.mktemp("bomb") / "bomb.keras"
    _raw_zip(
        path,
        [
            ("metadata.json", 0, meta, zlib.crc32(meta), len(meta)),
            ("config.json", 8, data, crc, size),
        ],
    )
    assert path.stat().st_size < 2 * MB
    with zipfile.ZipFile(path) as zf:  # a well-formed archive, only a large one
        assert zf.getinfo("config.json").file_size == size
        with zf.open("config.json") as f:
            assert f.read(10) == b" " * 10
    return path


def test_keras_config_bomb_refused_from_the_headers(config_bomb: Path) -> None:
    error, peak = traced(lambda: load_keras_file(config_bomb))
    assert isinstance(error, ModelLoadError)
    message = one_line(error, "bomb.keras", "config.json", "max_metadata_bytes", "xs.config(")
    assert "1,610,612,736 bytes" in message
    assert peak < 4 * MB
    # also through xs.load_model, as the CLI calls it
    with pytest.raises(ModelLoadError, match="max_metadata_bytes"):
        xs.load_model(str(config_bomb))


def test_keras_archive_total_is_bounded(config_bomb: Path) -> None:
    with xs.config(max_metadata_bytes=2 << 30, max_archive_bytes=1 << 30):
        error, peak = traced(lambda: load_keras_file(config_bomb))
    assert isinstance(error, ModelLoadError)
    one_line(error, "bomb.keras", "max_archive_bytes", "xs.config(max_archive_bytes=...)")
    assert peak < 4 * MB


def test_keras_lying_header_read_through_a_capped_stream(tmp_path: Path) -> None:
    # config.json declares 1,000 bytes but inflates to 64 MB: the reader stops at what is
    # declared and the archive is refused as corrupt, never inflated
    data, crc = _spaces_deflated(4 << 24)
    path = tmp_path / "liar.keras"
    _raw_zip(path, [("config.json", 8, data, crc, 1000)])
    error, peak = traced(lambda: load_keras_file(path))
    assert isinstance(error, ModelLoadError)
    one_line(error, "liar.keras")
    assert peak < 4 * MB


def test_h5_arrays_in_compressed_chunks_are_bounded(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "arrays.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {}})
        # never written: the file stays tiny, reading it would make 6.4 GB of fill values
        f.create_dataset("w", shape=(40000, 40000), dtype="f4", chunks=True, compression="gzip")
    assert path.stat().st_size < 100_000
    error, peak = traced(lambda: load_keras_file(path))
    assert isinstance(error, ModelLoadError)
    message = one_line(error, "arrays.h5", "max_archive_bytes", "xs.config(")
    assert "6,400,000,000 bytes" in message
    assert peak < 4 * MB


def test_h5_fixed_length_model_config_is_measured(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "config.h5"
    text = json.dumps({"class_name": "Sequential", "config": {"pad": " " * 5000}})
    with h5py.File(path, "w") as f:
        f.attrs.create("model_config", np.bytes_(text))  # fixed length: sized in metadata
    with xs.config(max_metadata_bytes=4096), pytest.raises(ModelLoadError) as excinfo:
        load_keras_file(path)
    one_line(excinfo.value, "config.h5", "model_config", "max_metadata_bytes")


# ------------------------------------------------------------------------ legitimate Keras
@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_legitimate_keras_file_passes_when_the_limit_allows(tmp_path: Path, suffix: str) -> None:
    from tests.keras_support import keras_or_skip

    keras = keras_or_skip()
    layers = keras.layers
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, activation="relu")(inp)
    out = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    path = tmp_path / f"small{suffix}"
    keras.Model(inp, out).save(path)
    loaded = load_keras_file(path)
    images = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    import torch

    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    expected = loaded.forward(loaded.normalize(batch))
    with xs.config(max_metadata_bytes=100), pytest.raises(ModelLoadError) as excinfo:
        load_keras_file(path)
    one_line(excinfo.value, path.name, "max_metadata_bytes")
    with xs.config(max_input_pixels=15 * 15), pytest.raises(ModelLoadError) as excinfo:
        load_keras_file(path)
    one_line(excinfo.value, path.name, "16x16", "max_input_pixels")
    with xs.config(max_labels=2), pytest.raises(ModelLoadError) as excinfo:
        load_keras_file(path)
    one_line(excinfo.value, path.name, "max_labels")
    with xs.config(max_metadata_bytes=1 << 20, max_input_pixels=256, max_labels=3):
        again = load_keras_file(path)
    torch.testing.assert_close(again.forward(again.normalize(batch)), expected)


# ------------------------------------------------------------------------------------ ONNX
def _onnx_pool(path: Path, side: int, classes: int | None = None) -> Path:
    """GlobalAveragePool + Flatten on a static (1, 3, side, side) input; ``classes`` tiles
    the 3 means to a (1, classes) output."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
    ]
    inits = []
    width = 3
    if classes is not None:
        assert classes % 3 == 0
        inits.append(helper.make_tensor("reps", TensorProto.INT64, [2], [1, classes // 3]))
        nodes.append(helper.make_node("Tile", ["f", "reps"], ["y"]))
        width = classes
    else:
        nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


_ONNX_SCRIPT = PEAK_SOURCE + textwrap.dedent(
    """
    import sys
    import xaiscope as xs
    from xaiscope.errors import ModelLoadError

    before = peak()
    try:
        xs.load_model(sys.argv[1])
    except ModelLoadError as exc:
        message = str(exc)
    else:
        message = "loaded"
    after = peak()
    print(message)
    print(before, after)
    """
)


def test_onnx_declared_input_size_refused_before_any_buffer(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = _onnx_pool(tmp_path / "tiny.onnx", 8000)
    assert path.stat().st_size < 400
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", _ONNX_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    *_, message, sizes = done.stdout.strip().splitlines()
    before, after = map(int, sizes.split())
    assert "tiny.onnx" in message and "8000x8000 = 64,000,000 pixels" in message, message
    assert "max_input_pixels" in message and "xs.config(" in message
    assert after - before < 100 * MB, (before, after)  # it was 5.3 GB


def test_onnx_limits_let_a_legitimate_model_through(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from xaiscope.models.onnx_model import load_onnx

    path = _onnx_pool(tmp_path / "small.onnx", 64)
    model = load_onnx(path)
    assert model.input_size == (64, 64) and len(model.labels) == 3
    with xs.config(max_input_pixels=64 * 64 - 1), pytest.raises(ModelLoadError) as excinfo:
        load_onnx(path)
    one_line(excinfo.value, "small.onnx", "64x64", "max_input_pixels")
    with xs.config(max_input_pixels=64 * 64):
        assert load_onnx(path).input_size == (64, 64)


def test_onnx_declared_classes_bounded(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from xaiscope.models.onnx_model import load_onnx

    path = _onnx_pool(tmp_path / "wide.onnx", 8, classes=300_000)
    with pytest.raises(ModelLoadError) as excinfo:
        load_onnx(path)
    one_line(excinfo.value, "wide.onnx", "300,000", "max_labels", "xs.config(")
    with xs.config(max_labels=300_000):
        assert len(load_onnx(path).labels) == 300_000


def test_h5_inflation_bounded_below_the_archive_limit(tmp_path: Path) -> None:
    """400 MB of never-written arrays in a file of a few KB: under max_archive_bytes, but a
    2 MB file must not claim gigabytes, so the ratio to the stored size is bounded too."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "inflated.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {}})
        f.create_dataset("w", shape=(10000, 10000), dtype="f4", chunks=True, compression="gzip")
    error, peak = traced(lambda: load_keras_file(path))
    assert isinstance(error, ModelLoadError)
    one_line(error, "inflated.h5", "max_inflation", "xs.config(")
    assert peak < 4 * MB
    with xs.config(max_inflation=10**9):  # the ratio allowed: the next check is Keras's own
        error, _ = traced(lambda: load_keras_file(path))
    assert "max_inflation" not in str(error)
