"""CIFAR-10 from a local archive in the real format, the restricted unpickler, and downloading."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xaiscope as xs
from xaiscope.data import cifar
from xaiscope.data.cifar import safe_unpickle

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
         b"ship", b"truck"]  # fmt: skip
PER_BATCH = 4


def _py2_pickle(obj: Any) -> bytes:
    """Protocol 2 with numpy's pre-2.0 module path, as the real (Python 2) files have it."""
    data = pickle.dumps(obj, protocol=2)
    return data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _batch(index: int) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(index)
    images = rng.integers(0, 256, (PER_BATCH, 32, 32, 3), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, PER_BATCH)]
    # the file layout: each row is the red plane, then green, then blue, row-major
    rows = images.transpose(0, 3, 1, 2).reshape(PER_BATCH, 3072)
    body = {
        b"batch_label": f"batch {index}".encode(),
        b"labels": labels,
        b"data": rows,
        b"filenames": [f"img_{index}_{i}.png".encode() for i in range(PER_BATCH)],
    }
    return _py2_pickle(body), images, labels


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz with 5 train batches, a test batch and batches.meta."""
    root = tmp_path_factory.mktemp("cifar")
    path = root / "cifar-10-python.tar.gz"
    images, labels = [], []
    with tarfile.open(path, "w:gz") as tar:
        members = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for i, name in enumerate(members):
            data, ims, labs = _batch(i)
            if name != "test_batch":
                images.append(ims)
                labels += labs
            _add(tar, f"cifar-10-batches-py/{name}", data)
        meta = {b"label_names": NAMES, b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}
        _add(tar, "cifar-10-batches-py/batches.meta", _py2_pickle(meta))
    return path, np.concatenate(images), np.array(labels)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_reads_archive_folder_and_extracted(
    archive: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, images, labels = archive
    for source in (path, path.parent):
        data = xs.datasets.cifar10(source)
        assert data.classes == [n.decode() for n in NAMES]
        assert data.images.shape == (5 * PER_BATCH, 32, 32, 3)
        np.testing.assert_array_equal(data.images, images)  # pixel layout decoded right
        np.testing.assert_array_equal(data.labels, labels)
        assert data.name == "cifar10"
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path, filter="data")
    extracted = xs.datasets.cifar10(tmp_path / "cifar-10-batches-py", split="all")
    assert len(extracted) == 6 * PER_BATCH
    np.testing.assert_array_equal(extracted.images[: 5 * PER_BATCH], images)
    assert len(xs.datasets.cifar10(tmp_path, split="test")) == PER_BATCH
    # as the command line's --data cifar10:PATH --n-images 10 --size 48 reads it
    from xaiscope.data.datasets import from_spec

    spec = from_spec(f"cifar10:{path}", n_images=10, size=48)
    assert len(spec) == 10 and spec.image_size == (48, 48) and spec.num_classes == 10


def test_restricted_unpickler_reads_plain_data() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for protocol in (2, 4, 5):
        out = safe_unpickle(pickle.dumps({"a": arr, b"b": [1, 2.5, b"x", "y"]}, protocol))
        np.testing.assert_array_equal(out["a"], arr)
        assert out["a"].dtype == np.float32 and out[b"b"] == [1, 2.5, b"x", "y"]
    # numpy's shared dtype singletons are not altered by unpickling
    assert np.dtype("u1").byteorder == "|" and np.dtype("<f4").byteorder in "=<"


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class _Evals:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("1 + 1",))


def test_malicious_pickles_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        "os.system": pickle.dumps({b"data": _RunsCode(marker)}, protocol=2),
        "eval": pickle.dumps([_Evals()]),
        "object array": pickle.dumps(np.array([1, "a"], dtype=object)),
        "subclass": pickle.dumps(np.ma.masked_array([1, 2])),
    }
    for what, data in payloads.items():
        with pytest.raises(xs.DatasetError, match="refused pickle") as info:
            safe_unpickle(data, what)
        assert "\n" not in str(info.value)
    assert not marker.exists()  # the code never ran
    with pytest.raises(xs.DatasetError, match="not a readable pickle"):
        safe_unpickle(b"\x80\x02}q\x00(X", "truncated")


def test_malicious_batch_in_archive_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good, _, _ = _batch(0)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(good)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _RunsCode(marker)}, protocol=2))
    with pytest.raises(xs.DatasetError, match=r"data_batch_3.*refused pickle"):
        xs.datasets.cifar10(tmp_path)
    assert not marker.exists()


def test_missing_and_wrong_inputs(tmp_path: Path) -> None:
    with pytest.raises(xs.DatasetError, match="does not exist"):
        xs.datasets.cifar10(tmp_path / "nowhere")
    with pytest.raises(xs.DatasetError, match="download=True"):
        xs.datasets.cifar10(tmp_path)
    not_tar = tmp_path / "cifar-10-python.tar.gz"
    not_tar.write_bytes(b"not a tar")
    with pytest.raises(xs.DatasetError, match="not a readable tar.gz"):
        xs.datasets.cifar10(not_tar)
    with pytest.raises(xs.DatasetError, match="split"):
        xs.datasets.cifar10(not_tar, split="valid")


def test_download_offline_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> socket.socket:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    start = time.perf_counter()
    with pytest.raises(xs.DatasetOfflineError, match="cannot reach www.cs.toronto.edu") as info:
        xs.datasets.cifar10(tmp_path / "data", download=True)
    assert time.perf_counter() - start < 2
    assert isinstance(info.value, xs.OfflineError) and isinstance(info.value, xs.DatasetError)
    assert not (tmp_path / "data").exists()  # nothing created before the server answered


@pytest.fixture
def server(archive: tuple[Path, np.ndarray, np.ndarray]) -> Iterator[str]:
    """A local HTTP server with the test archive at /cifar-10-python.tar.gz."""
    folder = str(archive[0].parent)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, directory=folder, **k)

        def log_message(self, *_a: Any) -> None:  # keep pytest output clean
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-python.tar.gz"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_download_checks_md5_and_reads(
    archive: tuple[Path, np.ndarray, np.ndarray], server: str, tmp_path: Path
) -> None:
    md5 = hashlib.md5(archive[0].read_bytes()).hexdigest()
    with pytest.raises(xs.DatasetError, match="MD5"):
        cifar.download_cifar10(tmp_path, url=server, md5="0" * 32)
    assert list(tmp_path.iterdir()) == []  # no partial or wrong file kept
    path = cifar.download_cifar10(tmp_path, url=server, md5=md5)
    assert path == tmp_path / "cifar-10-python.tar.gz"
    np.testing.assert_array_equal(xs.datasets.cifar10(tmp_path).images, archive[1])
    with pytest.raises(xs.DatasetError, match="HTTP 404") as info:
        cifar.download_cifar10(tmp_path / "other", url=server + ".missing", md5=md5)
    assert not isinstance(info.value, xs.OfflineError)  # the server answered: not offline
    assert not list((tmp_path / "other").iterdir())


def test_tar_bomb_member_refused_before_reading(tmp_path: Path) -> None:
    """A member that declares gigabytes (a few KB of gzip) is refused from its header."""
    import tracemalloc

    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 256 << 20

        class Zeros(io.RawIOBase):
            left = info.size

            def readable(self) -> bool:
                return True

            def readinto(self, buf: Any) -> int:
                n = min(len(buf), self.left)
                buf[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(xs.DatasetError, match="declares 268,435,456 bytes"):
            xs.datasets.cifar10(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000


def test_oversized_batch_file_and_array_shape_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good, _, _ = _batch(0)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(good)
    with open(folder / "data_batch_2", "wb") as fh:  # sparse: no disk used
        fh.truncate(cifar.MAX_MEMBER_BYTES + 1)
    with pytest.raises(xs.DatasetError, match="more than a CIFAR-10 batch"):
        xs.datasets.cifar10(tmp_path)
    # numpy rebuilds an empty (0,) array, then fills it: ask for 2**30 elements up front
    plain = pickle.dumps(np.zeros(4, np.uint8), protocol=2)
    huge = plain.replace(b"K\x00\x85", b"J\x00\x00\x00@\x85")
    with pytest.raises(xs.DatasetError, match="refused pickle: an array of shape"):
        safe_unpickle(huge)
