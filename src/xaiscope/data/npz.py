"""Reading ``.npz`` archives and ``.npy`` files that may come from anyone, as data only.

numpy's own ``np.load`` allocates whatever a header declares and reads a header of any
declared length. Here the zip's table of contents and each ``.npy`` header are read by
hand and checked before a buffer is made: the file and what it unpacks to must fit
``max_archive_bytes`` and ``max_inflation``, the member count ``MAX_MEMBERS``, each header
``MAX_HEADER`` bytes, and every array's declared size must equal the bytes that hold it.
Object, structured and sub-array dtypes are refused from the header, so nothing is ever
unpickled (see docs/security.md).

:func:`read_arrays` reads a whole file; :func:`open_npz`, :func:`list_members` and
:func:`read_data` let a caller check the headers against its own expectations first.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from xaiscope.errors import XaiscopeError
from xaiscope.settings import get as settings_get
from xaiscope.settings import inflation_ok, limit_hint

#: members an archive may hold. The zip's central directory is parsed into Python objects of
#: a few hundred bytes each before anything else can be checked, so the count is bounded first.
MAX_MEMBERS = 100_000
#: numpy's own bound on a .npy header, which it checks only after reading the header
MAX_HEADER = 10_000
#: the key :func:`read_arrays` gives the array of a plain ``.npy`` file (np.savez's name for
#: an unnamed array)
NPY_KEY = "arr_0"
_CHUNK = 1 << 20
_NPY_MAGIC = b"\x93NUMPY"

ErrorType = type[XaiscopeError]
E = TypeVar("E", bound=XaiscopeError)


@dataclass(frozen=True)
class Member:
    """One array as its .npy header declares it (nothing read yet)."""

    #: the zip member's name (``maps.npy``), or the plain ``.npy`` file's name
    filename: str
    header: bytes
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]
    #: the zip member; None for a plain ``.npy`` file
    info: zipfile.ZipInfo | None = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)


def reason(exc: BaseException) -> str:
    """One line saying why ``exc`` was raised (its type name when it says nothing)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text or type(exc).__name__


def limit_error(error: type[E], what: str, name: str) -> E:
    """``error`` saying ``what`` is past limit ``name``, and how to raise it."""
    return error(f"{what}; {limit_hint(name)}")


def dtype_name(dtype: np.dtype[Any]) -> str:
    return "a structured dtype" if dtype.fields is not None else str(dtype)


def _check_file_size(fp: IO[bytes], error: ErrorType) -> int:
    size = os.fstat(fp.fileno()).st_size
    if size > settings_get("max_archive_bytes"):
        raise limit_error(error, f"the file is {size:,} bytes", "max_archive_bytes")
    return size


def _member_count(fp: IO[bytes], error: ErrorType) -> int | None:
    """The member count the zip's end record declares, read before zipfile parses the
    directory into objects; None where zipfile no longer has the (private) reader, and the
    count is then checked after parsing."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return None
    record = end_record(fp)
    if record is None:
        raise error("not a .npz archive (no zip directory)")
    return int(record[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)])


def open_npz(fp: IO[bytes], *, error: ErrorType, max_members: int = MAX_MEMBERS) -> zipfile.ZipFile:
    """The archive in ``fp`` (an open file), once its size and member count are in bounds."""
    # the zip directory is at most the file, and a file np.savez wrote is never much larger
    # than what it unpacks to
    _check_file_size(fp, error)
    count = _member_count(fp, error)
    if count is not None and count > max_members:
        raise error(f"{count:,} members (at most {max_members:,})")
    fp.seek(0)
    return zipfile.ZipFile(fp)


def _parse_header(
    f: IO[bytes], filename: str, size: int, error: ErrorType, *, where: str
) -> Member:
    """The .npy header at the start of ``f`` (a zip member or a file, ``size`` bytes in
    all), read without its data, its length checked before it is read (numpy reads a header
    of any declared length before its own check)."""
    magic = f.read(8)
    if len(magic) < 8 or magic[:6] != _NPY_MAGIC:
        raise error(f"{filename} is not a .npy array")
    version = (magic[6], magic[7])
    if version == (1, 0):
        size_bytes, read = 2, np.lib.format.read_array_header_1_0
    elif version == (2, 0):
        size_bytes, read = 4, np.lib.format.read_array_header_2_0
    else:
        raise error(f"{filename}: unsupported .npy version {version}")
    length_bytes = f.read(size_bytes)
    length = int.from_bytes(length_bytes, "little")
    if len(length_bytes) < size_bytes or length > MAX_HEADER:
        raise error(f"{filename}: bad .npy header length {length}")
    text = f.read(length)
    if len(text) < length:
        raise error(f"{filename}: truncated .npy header")
    shape, fortran, dtype = read(io.BytesIO(length_bytes + text))
    header = magic + length_bytes + text
    member = Member(filename, header, tuple(int(d) for d in shape), bool(fortran), dtype)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        # an object array is a pickle: refused from its header, never unpickled
        raise error(
            f"{filename} holds {dtype_name(dtype)} (Python objects or records), not "
            "numbers: refused"
        )
    # np.save writes the header then exactly the array's bytes: a header declaring more than
    # the file holds would make us allocate what is not there
    if len(header) + member.count * dtype.itemsize != size:
        raise error(
            f"{filename}: its header declares shape {member.shape} {dtype} "
            f"({member.count * dtype.itemsize:,} bytes) but the {where} holds "
            f"{max(size - len(header), 0):,}"
        )
    return member


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, error: ErrorType) -> Member:
    with zf.open(info) as f:
        member = _parse_header(f, info.filename, info.file_size, error, where="member")
    return dataclasses.replace(member, info=info)


def list_members(
    zf: zipfile.ZipFile, *, error: ErrorType, max_members: int = MAX_MEMBERS
) -> dict[str, Member]:
    """Every member's header by array name (the member name less ``.npy``), in archive
    order, once the archive's size, inflation and member count are in bounds."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise error(f"{len(infos):,} members (at most {max_members:,})")
    total = sum(i.file_size for i in infos)
    if total > settings_get("max_archive_bytes"):
        raise limit_error(error, f"the archive unpacks to {total:,} bytes", "max_archive_bytes")
    stored = sum(i.compress_size for i in infos)
    if not inflation_ok(total, stored):
        raise limit_error(
            error, f"the archive unpacks to {total:,} bytes from {stored:,} stored", "max_inflation"
        )
    out: dict[str, Member] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if name == info.filename or name in out:
            raise error(f"unexpected member {info.filename!r}")
        if info.flag_bits & 0x1:
            raise error(f"{info.filename} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # np.savez writes only these; other codecs (LZMA) may allocate large dictionaries
            raise error(
                f"{info.filename}: compression {info.compress_type} is not one numpy writes"
            )
        out[name] = _read_header(zf, info, error)
    return out


def _fill(f: IO[bytes], m: Member, error: ErrorType) -> np.ndarray:
    """The array after ``m``'s header in ``f``, read in chunks into one buffer of the checked
    size."""
    arr = np.empty(m.count, dtype=m.dtype)
    buf = (arr.view(np.uint8) if arr.nbytes else np.empty(0, np.uint8)).data
    if f.read(len(m.header)) != m.header:
        raise error(f"{m.filename} changed while it was read")
    pos = 0
    while pos < buf.nbytes:
        got = f.readinto(buf[pos : pos + _CHUNK])  # type: ignore[attr-defined]
        if not got:
            raise error(f"{m.filename} is truncated")
        pos += got
    if f.read(1):  # reading a zip member to the end also makes zipfile check the CRC
        raise error(f"{m.filename} has data after its array")
    return arr


def read_data(source: zipfile.ZipFile | IO[bytes], m: Member, *, error: ErrorType) -> np.ndarray:
    """The array of ``m``, from its archive or its open ``.npy`` file, in native byte order."""
    if isinstance(source, zipfile.ZipFile):
        if m.info is None:
            raise TypeError(f"{m.filename} is not a zip member")
        with source.open(m.info) as f:
            arr = _fill(f, m, error)
    else:
        source.seek(0)
        arr = _fill(source, m, error)
    arr = arr.reshape(m.shape[::-1]).transpose() if m.fortran else arr.reshape(m.shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def npy_member(fp: IO[bytes], *, error: ErrorType, filename: str = "") -> Member:
    """The header of the plain ``.npy`` file open in ``fp``, once its size is in bounds."""
    size = _check_file_size(fp, error)
    fp.seek(0)
    name = filename or str(getattr(fp, "name", "the .npy file"))
    return _parse_header(fp, name, size, error, where="file")


def read_arrays(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: ErrorType,
    pick: Callable[[list[str]], list[str]] | None = None,
    max_members: int = MAX_MEMBERS,
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` or ``.npy`` file at ``path`` by name (a ``.npy`` file's
    under :data:`NPY_KEY`), every size checked before it is read.

    ``pick`` chooses, from the names in file order, those to read (all by default). Any
    failure raises ``error`` with one line: ``cannot read {what} {path}: why``.
    """
    try:
        with open(path, "rb") as fp:
            if fp.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
                member = npy_member(fp, error=error, filename=Path(path).name)
                names = [NPY_KEY] if pick is None else pick([NPY_KEY])
                return {NPY_KEY: read_data(fp, member, error=error)} if names else {}
            fp.seek(0)
            if fp.read(2) != b"PK":
                raise error("not a .npy array or .npz archive")
            fp.seek(0)
            with open_npz(fp, error=error, max_members=max_members) as zf:
                members = list_members(zf, error=error, max_members=max_members)
                names = list(members) if pick is None else pick(list(members))
                return {k: read_data(zf, members[k], error=error) for k in names}
    except error as exc:
        raise error(" ".join(f"cannot read {what} {path}: {exc}".split())) from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, TypeError) as exc:
        # a damaged or foreign file: one clear error instead of a traceback
        raise error(" ".join(f"cannot read {what} {path}: {reason(exc)}".split())) from None
