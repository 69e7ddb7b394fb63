"""``cifar10``: the CIFAR-10 python archive, read without running code from it.

The batches of ``cifar-10-python.tar.gz`` are Python pickles, and unpickling an arbitrary
file can run arbitrary code. They are read here by a restricted unpickler that resolves
only what the real files contain: numpy arrays of plain numeric dtypes (rebuilt by our own
functions, not numpy's) inside dicts, lists, bytes, strings and numbers. Any other global
a pickle names (``os.system``, ``builtins.eval``, an object dtype, ...) is refused with a
:class:`~xaiscope.errors.DatasetError` before anything is called.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from xaiscope.data.dataset import ImageDataset
from xaiscope.errors import DatasetError, DatasetOfflineError

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "cifar10", "safe_unpickle"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST = ("test_batch",)
#: dtype kinds a batch may hold: bool, signed/unsigned integers, floats (never objects)
_SAFE_KINDS = frozenset("biuf")


# --------------------------------------------------------------------------- unpickling
def _safe_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype[Any]:
    # copy as the pickle asks: its BUILD step then sets state on a fresh dtype, never on
    # numpy's shared uint8 singleton
    dtype = np.dtype(obj, align=bool(align), copy=bool(copy))
    _check_dtype(dtype)
    return dtype


def _check_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.kind not in _SAFE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise DatasetError(f"refused pickle: array dtype {dtype} is not a plain numeric type")


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy's own _reconstruct would accept any ndarray subclass; only plain arrays here
    if subtype is not np.ndarray:
        raise DatasetError("refused pickle: only plain numpy arrays may be rebuilt")
    if np.prod(np.asarray(shape, dtype=np.float64)) > MAX_MEMBER_BYTES:
        # numpy pickles rebuild an empty array, then fill it from the pickle's own bytes
        raise DatasetError(f"refused pickle: an array of shape {shape} is not a CIFAR batch")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype))


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    # what numpy writes for pickle protocol 5
    arr = np.frombuffer(bytes(buf), dtype=_safe_dtype(dtype))
    return arr.reshape(shape, order="F" if order == "F" else "C").copy()


def _safe_encode(text: Any, encoding: str = "latin1") -> bytes:
    # how Python 3 writes bytes at pickle protocol 2: _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding != "latin1":
        raise DatasetError("refused pickle: _codecs.encode is allowed only for latin1 strings")
    return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {("_codecs", "encode"): _safe_encode}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _safe_reconstruct
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "_frombuffer")] = _safe_frombuffer
_ALLOWED[("numpy", "ndarray")] = np.ndarray
_ALLOWED[("numpy", "dtype")] = _safe_dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of :data:`_ALLOWED`; everything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refused pickle: it references {module}.{name}, which a CIFAR-10 batch "
                "never does (only numpy arrays, dicts, lists and bytes are read)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DatasetError("refused pickle: persistent references are not allowed")


def safe_unpickle(data: bytes | IO[bytes], what: str = "pickle") -> Any:
    """Unpickle ``data`` allowing only numeric numpy arrays, dicts, lists, bytes and numbers.

    Python 2 pickles (the CIFAR files) are read with ``encoding="bytes"``, so their keys are
    bytes. Raises :class:`DatasetError` on any other content or on corrupt data.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        result = _RestrictedUnpickler(stream, encoding="bytes").load()
        _check_tree(result)
    except DatasetError as exc:
        raise DatasetError(f"{what}: {exc}") from None
    except Exception as exc:  # truncated or garbage bytes
        raise DatasetError(f"{what}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    return result


def _check_tree(obj: Any, depth: int = 0) -> None:
    """Every array in the result has a plain numeric dtype, after any BUILD step ran."""
    if depth > 20:
        raise DatasetError("refused pickle: nested too deeply")
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_tree(k, depth + 1)
            _check_tree(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_tree(v, depth + 1)


# --------------------------------------------------------------------------- the dataset
def cifar10(
    root: str | os.PathLike[str],
    *,
    split: str = "train",
    download: bool = False,
    timeout: float = 10.0,
) -> ImageDataset:
    """CIFAR-10 from ``root``: (N, 32, 32, 3) uint8 images, 10 classes.

    ``root`` is the archive ``cifar-10-python.tar.gz`` itself, the extracted folder
    ``cifar-10-batches-py``, or a folder holding either. ``split``: ``"train"`` (50 000
    images), ``"test"`` (10 000) or ``"all"``. ``download=True`` fetches the archive into
    ``root`` (a folder) when it is not there, checking its MD5; offline that fails within
    seconds with :class:`~xaiscope.errors.DatasetOfflineError`. The archive is read in place,
    never extracted, and never unpickled with the standard (code-running) unpickler.
    """
    if split not in ("train", "test", "all"):
        raise DatasetError(f"cifar10: split must be 'train', 'test' or 'all', got {split!r}")
    names = {"train": _TRAIN, "test": _TEST, "all": _TRAIN + _TEST}[split]
    source = _locate(Path(os.fspath(root)), download=download, timeout=timeout)
    if source.is_dir():
        raw = {n: _read_file(source / n) for n in (*names, "batches.meta")}
    else:
        raw = _read_archive(source, (*names, "batches.meta"))
    classes = _class_names(raw.get("batches.meta"), source)
    images, labels = [], []
    for name in names:
        data, lab = _parse_batch(raw[name], f"{source}: {name}")
        images.append(data)
        labels.append(lab)
    return ImageDataset(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        classes=classes,
        name="cifar10" if split == "train" else f"cifar10-{split}",
        source={"dataset": "cifar10", "root": str(source), "split": split},
    )


def _locate(root: Path, *, download: bool, timeout: float) -> Path:
    """The archive file or the batches folder under ``root``, downloading if asked."""
    if root.is_file():
        return root
    if root.is_dir():
        if (root / "data_batch_1").is_file() or (root / "test_batch").is_file():
            return root
        for candidate in (root / FOLDER, root / ARCHIVE):
            if candidate.exists():
                return candidate
    elif not download:
        raise DatasetError(f"cifar10: {root} does not exist")
    if not download:
        raise DatasetError(
            f"cifar10: no {ARCHIVE} or {FOLDER}/ under {root} "
            "(download it from https://www.cs.toronto.edu/~kriz/cifar.html, "
            "or pass download=True where online)"
        )
    return download_cifar10(root, timeout=timeout)


def download_cifar10(
    root: str | os.PathLike[str],
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    timeout: float = 10.0,
) -> Path:
    """Download the CIFAR-10 archive into folder ``root``; returns its path.

    The server is probed first so that an offline machine fails in seconds with
    :class:`DatasetOfflineError`; the file is written to a temporary name, its MD5 checked,
    then renamed, so an interrupted download never leaves a truncated archive behind.
    """
    import hashlib
    import urllib.error
    import urllib.request

    folder = Path(os.fspath(root))
    target = folder / ARCHIVE
    if target.is_file():
        return target
    _check_reachable(url, timeout=min(timeout, 5.0))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cifar10: cannot create {folder}: {exc.strerror or exc}") from None
    part = folder / f".{ARCHIVE}.{os.getpid()}.part"
    digest = hashlib.md5(usedforsecurity=False)
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as out:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:  # the server is there but refuses
            raise DatasetError(
                f"cifar10: download from {url} failed: HTTP {exc.code} {exc.reason}"
            ) from None
        except OSError as exc:  # URLError, timeouts and resets are OSErrors
            raise DatasetOfflineError(
                f"cifar10: download from {url} failed ({type(exc).__name__}: {exc})"
            ) from None
        if digest.hexdigest() != md5:
            raise DatasetError(
                f"cifar10: downloaded file has MD5 {digest.hexdigest()}, expected {md5} "
                "(corrupt or changed download; nothing was kept)"
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return target


def _check_reachable(url: str, timeout: float) -> None:
    """Fail fast (one TCP connect) instead of after urllib's retries when offline."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        raise DatasetError(f"cifar10: bad download URL {url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise DatasetOfflineError(
            f"cifar10: cannot reach {host} to download CIFAR-10 (offline?): "
            f"{type(exc).__name__}: {exc}; put {ARCHIVE} in the folder yourself"
        ) from None


def _read_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_MEMBER_BYTES:
            raise DatasetError(
                f"cifar10: {path} is {path.stat().st_size:,} bytes, more than a CIFAR-10 "
                f"batch ({MAX_MEMBER_BYTES:,} at most)"
            )
        return path.read_bytes()
    except FileNotFoundError:
        if path.name == "batches.meta":
            return b""
        raise DatasetError(f"cifar10: {path} is missing (incomplete {FOLDER} folder)") from None
    except OSError as exc:
        raise DatasetError(f"cifar10: cannot read {path}: {exc.strerror or exc}") from None


#: A CIFAR-10 batch pickle is 31 MB and the archive holds 8 files: anything far beyond is
#: not CIFAR-10 (a tar bomb declares gigabytes in a few kilobytes of gzip)
MAX_MEMBER_BYTES = 64 << 20
MAX_MEMBERS = 1000


def _read_archive(path: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named members of the tar.gz, by base name, read in memory (never extracted)."""
    import tarfile

    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for count, member in enumerate(tar, 1):
                if count > MAX_MEMBERS:
                    raise DatasetError(
                        f"cifar10: {path} holds more than {MAX_MEMBERS} files: not the "
                        f"CIFAR-10 archive ({ARCHIVE})"
                    )
                base = member.name.rsplit("/", 1)[-1]
                if base in names and member.isfile() and member.size > MAX_MEMBER_BYTES:
                    raise DatasetError(
                        f"cifar10: {path}: {member.name} declares {member.size:,} bytes, "
                        f"more than a CIFAR-10 batch ({MAX_MEMBER_BYTES:,} at most)"
                    )
                if base in names and member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        found[base] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"cifar10: {path} is not a readable tar.gz archive ({exc})") from None
    missing = [n for n in names if n not in found and n != "batches.meta"]
    if missing:
        raise DatasetError(
            f"cifar10: {path} lacks {', '.join(missing)} (is it the python version, {ARCHIVE}?)"
        )
    return found


def _key(d: dict[Any, Any], name: str) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise KeyError(name)


def _parse_batch(data: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch dict -> (n, 32, 32, 3) uint8 images and (n,) labels."""
    batch = safe_unpickle(data, what)
    try:
        if not isinstance(batch, dict):
            raise TypeError(f"a {type(batch).__name__}, not a dict")
        pixels = np.asarray(_key(batch, "data"))
        labels = np.asarray(_key(batch, "labels"), dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{what}: not a CIFAR-10 batch ({exc})") from None
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"{what}: data must be (n, 3072) uint8, got {pixels.shape} {pixels.dtype}"
        )
    if labels.shape != (pixels.shape[0],) or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{what}: labels must be {pixels.shape[0]} integers in 0..9")
    # rows hold the red plane, then green, then blue, each 32x32 row-major
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _class_names(meta: bytes | None, source: Path) -> list[str]:
    if not meta:
        return list(CIFAR10_CLASSES)
    parsed = safe_unpickle(meta, f"{source}: batches.meta")
    try:
        names = [
            n.decode() if isinstance(n, bytes) else str(n) for n in _key(parsed, "label_names")
        ]
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return list(CIFAR10_CLASSES)
    return names if len(names) == 10 else list(CIFAR10_CLASSES)
