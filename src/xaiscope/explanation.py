"""The :class:`Explanation` returned by :func:`xaiscope.explain`."""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope.errors import ExplanationFileError
from xaiscope.settings import get as settings_get
from xaiscope.settings import inflation_ok, limit_hint

Maps = np.ndarray | list[np.ndarray]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"<array shape={tuple(value.shape)}>"
    return repr(value)


#: prefix of the ``.npz`` keys that hold array extras (``extras/segments``, ...)
EXTRAS_PREFIX = "extras/"
_TUPLE_TAG = "__tuple__"


def _json_extra(value: Any) -> tuple[bool, Any]:
    """(True, encoded) when ``value`` is plain JSON data (tuples tagged to come back as
    tuples), else (False, None)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return True, value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return True, value.item()
    if isinstance(value, (list, tuple)):
        items = [_json_extra(v) for v in value]
        if not all(ok for ok, _ in items):
            return False, None
        encoded = [v for _, v in items]
        return True, {_TUPLE_TAG: encoded} if isinstance(value, tuple) else encoded
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        pairs = {k: _json_extra(v) for k, v in value.items()}
        if not all(ok for ok, _ in pairs.values()):
            return False, None
        return True, {k: v for k, (_, v) in pairs.items()}
    return False, None


def _unjson_extra(value: Any) -> Any:
    if isinstance(value, list):
        return [_unjson_extra(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TUPLE_TAG}:
            return tuple(_unjson_extra(v) for v in value[_TUPLE_TAG])
        return {k: _unjson_extra(v) for k, v in value.items()}
    return value


def _array_extra(value: Any) -> tuple[np.ndarray, dict[str, str]] | None:
    """A tensor or array extra as a numpy array plus how to restore it; None when it cannot
    be stored without pickling (object arrays, tensors numpy cannot hold)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().resolve_conj().resolve_neg()
        if t.layout != torch.strided:
            t = t.to_dense()
        info = {"type": "tensor", "dtype": str(t.dtype).removeprefix("torch.")}
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16: stored widened, cast back
            t = t.float()
        try:
            return t.numpy(), info
        except (TypeError, RuntimeError):  # quantized, complex32, ...
            return None
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        return value, {"type": "ndarray"}
    return None


def _restore_array(arr: np.ndarray, info: dict[str, str]) -> Any:
    kind = info.get("type")
    if kind == "ndarray":
        return arr
    # looked up in the module's own names: getattr would import lazy submodules by name
    dtype = vars(torch).get(info.get("dtype", ""))
    if kind != "tensor" or not isinstance(dtype, torch.dtype):
        raise ExplanationFileError(
            f"an extra is stored as {str(kind)[:40]!r} of {str(info.get('dtype'))[:40]!r}, "
            "not a torch dtype or numpy array"
        )
    t = torch.from_numpy(arr)
    return t.to(dtype) if dtype != t.dtype else t


@dataclass
class Explanation:
    """One method's maps for one target per image.

    ``maps``: float32 (N, H, W) at the original image resolution (a list of (H_i, W_i)
    arrays when sizes differ), un-normalised. ``raw``: the method's native tensor,
    (N, C, H, W) in model-input space for pixel methods, (N, h, w) for CAMs.
    ``targets`` (N,) class indices, ``scores`` (N,) the model's score (logit) for them,
    ``probabilities`` (N,) their softmax probability, ``delta`` (N,) the completeness gap
    of path methods (sum of attributions minus f(x) - f(baseline)), else None.
    """

    method: str
    params: dict[str, Any]
    targets: np.ndarray
    scores: np.ndarray
    maps: Maps
    raw: torch.Tensor | None = None
    delta: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    target_labels: list[str] = field(default_factory=list)
    layer: str | None = None
    model_name: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    #: why a map may not be trusted (e.g. "image 0: the map is constant"); empty when fine
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        shape = (
            tuple(self.maps.shape)
            if isinstance(self.maps, np.ndarray)
            else f"{len(self.maps)} maps of different sizes"
        )
        return (
            f"Explanation(method={self.method!r}, maps={shape}, "
            f"targets={self.target_labels or self.targets.tolist()})"
        )

    def map(self, i: int = 0) -> np.ndarray:
        """The (H_i, W_i) map of image ``i``."""
        return self.maps[i]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: method, parameters, targets, labels, scores, delta."""
        return {
            "method": self.method,
            "params": _jsonable(self.params),
            "layer": self.layer,
            "model": self.model_name,
            "targets": [int(t) for t in self.targets],
            "target_labels": list(self.target_labels),
            "scores": [float(s) for s in self.scores],
            "probabilities": None
            if self.probabilities is None
            else [float(p) for p in self.probabilities],
            "delta": None if self.delta is None else [float(d) for d in self.delta],
            "map_shapes": [list(m.shape) for m in self.maps],
            "warnings": list(self.warnings),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write maps, raw output, extras and metadata to one ``.npz`` file (suffix added if
        missing).

        Tensor and array ``extras`` go to ``extras/<name>`` arrays (tensors come back as CPU
        tensors of the same dtype), plain JSON data (numbers, strings, lists, tuples, dicts)
        to the metadata; anything else (objects, lists of tensors) is skipped. Nothing is
        pickled.
        """
        out = Path(path)
        if out.suffix != ".npz":
            out = out.with_suffix(out.suffix + ".npz") if out.suffix else out.with_suffix(".npz")
        arrays: dict[str, np.ndarray] = {
            "targets": np.asarray(self.targets, dtype=np.int64),
            "scores": np.asarray(self.scores, dtype=np.float32),
        }
        if isinstance(self.maps, np.ndarray):
            arrays["maps"] = self.maps
        else:
            for i, m in enumerate(self.maps):
                arrays[f"maps_{i}"] = m
        if self.raw is not None:
            arrays["raw"] = self.raw.detach().float().cpu().numpy()
        if self.delta is not None:
            arrays["delta"] = np.asarray(self.delta, dtype=np.float32)
        if self.probabilities is not None:
            arrays["probabilities"] = np.asarray(self.probabilities, dtype=np.float32)
        extra_arrays: dict[str, dict[str, str]] = {}
        extra_values: dict[str, Any] = {}
        for name, value in self.extras.items():
            stored = _array_extra(value)
            if stored is not None:
                arrays[EXTRAS_PREFIX + str(name)], extra_arrays[str(name)] = stored
                continue
            ok, encoded = _json_extra(value)
            if ok:
                extra_values[str(name)] = encoded
        meta = self.to_dict()
        meta["n_maps"] = len(self.maps)
        meta["ragged"] = not isinstance(self.maps, np.ndarray)
        meta["extras"] = {"arrays": extra_arrays, "values": extra_values}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read an explanation written by :meth:`save`.

        The file may come from anyone, so it is read as data only and checked before
        anything large is made: nothing is unpickled (object, string, structured dtypes are
        refused from the array headers, before their data is read), the archive's declared
        size must fit ``max_archive_bytes``, every array's header must match the bytes its
        member holds, each map must fit ``max_image_pixels``, the metadata must fit
        ``max_metadata_bytes`` and nest at most 64 levels, and the arrays must agree (one
        target, score and map per image). Maps, ``raw`` and scores must be finite, except
        where the saved warnings flag the image's map as NaN or inf (as :func:`explain`
        does). Anything else raises :class:`~xaiscope.errors.ExplanationFileError` with one
        line.
        """
        try:
            return _load(cls, Path(path))
        except ExplanationFileError as exc:
            raise _file_error(path, str(exc)) from None
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, TypeError) as exc:
            # a damaged or foreign file: one clear error instead of a traceback
            raise _file_error(path, _reason(exc)) from None

    def plot(
        self, images: Any = None, *, ax: Any = None, alpha: float = 0.5, cmap: str = "jet"
    ) -> Any:
        """Plot each map (overlaid on ``images`` when given); returns the matplotlib figure."""
        from xaiscope.viz import plot_explanation

        return plot_explanation(self, images, ax=ax, alpha=alpha, cmap=cmap)


# --- reading a saved explanation that may come from anyone -------------------------------

#: members a file written by save() holds: maps (or maps_<i>), targets, scores, raw, delta,
#: probabilities, meta and extras/<name>. The zip's central directory is parsed into Python
#: objects of a few hundred bytes each before anything else can be checked, so the count is
#: bounded first.
MAX_MEMBERS = 100_000
#: nesting of the metadata JSON; save() writes under 10 levels
MAX_JSON_DEPTH = 64
#: the metadata may hold one JSON value per this many bytes of ``max_metadata_bytes``: a
#: value of two bytes (``{}``) decodes to a Python object of ~60, so the byte limit alone
#: would let a file make 30 times that in objects (2 M values at the 64 MB default)
JSON_BYTES_PER_VALUE = 32
#: elements of ``raw`` and of each array extra, per image, in units of ``max_image_pixels``:
#: raw is (C, H, W) at the model's input size, extras are superpixel maps and weights
PER_IMAGE_CHANNELS = 4
#: numpy's own bound on a .npy header, which it checks only after reading the header
_MAX_HEADER = 10_000
_CHUNK = 1 << 20
_NONFINITE_NOTE = re.compile(r"image (\d+): the map has NaN or inf values")
_EXTRA_KINDS = "biufc"  # bool, integers, floats, complex: fixed-size numbers only


@dataclass(frozen=True)
class _Member:
    """One array of the archive as its .npy header declares it (nothing read yet)."""

    info: zipfile.ZipInfo
    header: bytes
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]

    @property
    def count(self) -> int:
        return math.prod(self.shape)


def _file_error(path: Any, why: str) -> ExplanationFileError:
    return ExplanationFileError(" ".join(f"cannot read explanation {path}: {why}".split()))


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text or type(exc).__name__


def _limit(what: str, name: str) -> ExplanationFileError:
    return ExplanationFileError(f"{what}; {limit_hint(name)}")


def _member_count(fp: Any) -> int | None:
    """The member count the zip's end record declares, read before zipfile parses the
    directory into objects; None where zipfile no longer has the (private) reader, and the
    count is then checked after parsing."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return None
    record = end_record(fp)
    if record is None:
        raise ExplanationFileError("not a .npz archive (no zip directory)")
    return int(record[getattr(zipfile, "_ECD_ENTRIES_TOTAL", 4)])


def _dtype_name(dtype: np.dtype[Any]) -> str:
    return "a structured dtype" if dtype.fields is not None else str(dtype)


def _read_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Member:
    """The member's .npy header, read without its data, its length checked before it is
    read (numpy reads a header of any declared length before its own check)."""
    with zf.open(info) as f:
        magic = f.read(8)
        if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
            raise ExplanationFileError(f"{info.filename} is not a .npy array")
        version = (magic[6], magic[7])
        if version == (1, 0):
            size_bytes, read = 2, np.lib.format.read_array_header_1_0
        elif version == (2, 0):
            size_bytes, read = 4, np.lib.format.read_array_header_2_0
        else:
            raise ExplanationFileError(f"{info.filename}: unsupported .npy version {version}")
        length_bytes = f.read(size_bytes)
        length = int.from_bytes(length_bytes, "little")
        if len(length_bytes) < size_bytes or length > _MAX_HEADER:
            raise ExplanationFileError(f"{info.filename}: bad .npy header length {length}")
        text = f.read(length)
    if len(text) < length:
        raise ExplanationFileError(f"{info.filename}: truncated .npy header")
    shape, fortran, dtype = read(io.BytesIO(length_bytes + text))
    header = magic + length_bytes + text
    member = _Member(info, header, tuple(int(d) for d in shape), bool(fortran), dtype)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        # an object array is a pickle: refused from its header, never unpickled
        raise ExplanationFileError(
            f"{info.filename} holds {_dtype_name(dtype)} (Python objects or records), not "
            "numbers: refused"
        )
    # np.save writes the header then exactly the array's bytes: a header declaring more than
    # the member holds would make us allocate what is not there
    if len(header) + member.count * dtype.itemsize != info.file_size:
        raise ExplanationFileError(
            f"{info.filename}: its header declares shape {member.shape} {dtype} "
            f"({member.count * dtype.itemsize:,} bytes) but the member holds "
            f"{max(info.file_size - len(header), 0):,}"
        )
    return member


def _read_data(zf: zipfile.ZipFile, m: _Member) -> np.ndarray:
    """The member's array, read in chunks into one buffer of the checked size."""
    arr = np.empty(m.count, dtype=m.dtype)
    buf = (arr.view(np.uint8) if arr.nbytes else np.empty(0, np.uint8)).data
    with zf.open(m.info) as f:
        if f.read(len(m.header)) != m.header:
            raise ExplanationFileError(f"{m.info.filename} changed while it was read")
        pos = 0
        while pos < buf.nbytes:
            got = f.readinto(buf[pos : pos + _CHUNK])  # type: ignore[attr-defined]
            if not got:
                raise ExplanationFileError(f"{m.info.filename} is truncated")
            pos += got
        if f.read(1):  # reading to the end also makes zipfile check the CRC
            raise ExplanationFileError(f"{m.info.filename} has data after its array")
    arr = arr.reshape(m.shape[::-1]).transpose() if m.fortran else arr.reshape(m.shape)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _members(zf: zipfile.ZipFile) -> dict[str, _Member]:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ExplanationFileError(f"{len(infos):,} members (at most {MAX_MEMBERS:,})")
    total = sum(i.file_size for i in infos)
    if total > settings_get("max_archive_bytes"):
        raise _limit(f"the archive unpacks to {total:,} bytes", "max_archive_bytes")
    stored = sum(i.compress_size for i in infos)
    if not inflation_ok(total, stored):
        raise _limit(
            f"the archive unpacks to {total:,} bytes from {stored:,} stored", "max_inflation"
        )
    out: dict[str, _Member] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        if name == info.filename or name in out:
            raise ExplanationFileError(f"unexpected member {info.filename!r}")
        if info.flag_bits & 0x1:
            raise ExplanationFileError(f"{info.filename} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # np.savez writes only these; other codecs (LZMA) may allocate large dictionaries
            raise ExplanationFileError(
                f"{info.filename}: compression {info.compress_type} is not one numpy writes"
            )
        out[name] = _read_header(zf, info)
    return out


def _json_depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion (stops once past the limit)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _read_meta(zf: zipfile.ZipFile, m: _Member) -> dict[str, Any]:
    if m.dtype != np.uint8 or len(m.shape) != 1:
        raise ExplanationFileError(f"meta must be bytes (uint8), got {m.dtype} {m.shape}")
    limit = settings_get("max_metadata_bytes")
    if m.count > limit:
        raise _limit(f"the metadata is {m.count:,} bytes", "max_metadata_bytes")
    data = _read_data(zf, m).tobytes()
    # brackets, braces and commas bound the number of values before any is made
    values = data.count(b",") + data.count(b"[") + data.count(b"{") + 1
    if values > max(limit // JSON_BYTES_PER_VALUE, 1000):
        raise _limit(f"the metadata holds up to {values:,} JSON values", "max_metadata_bytes")
    try:
        meta = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ExplanationFileError(
            f"the metadata nests deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExplanationFileError(f"the metadata is not JSON: {_reason(exc)}") from None
    if _json_depth(meta) > MAX_JSON_DEPTH:
        raise ExplanationFileError(f"the metadata nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(meta, dict):
        raise ExplanationFileError("the metadata is not a JSON object")
    _check_meta(meta)
    return meta


def _expect(meta: dict[str, Any], key: str, types: Any, what: str, required: bool = False) -> None:
    if key not in meta:
        if required:
            raise ExplanationFileError(f"the metadata has no {key!r}")
        return
    value = meta[key]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ExplanationFileError(f"the metadata's {key!r} must be {what}")


def _check_meta(meta: dict[str, Any]) -> None:
    _expect(meta, "method", (str,), "a string", required=True)
    _expect(meta, "params", (dict,), "an object", required=True)
    _expect(meta, "layer", (str, type(None)), "a string or null")
    _expect(meta, "model", (str, type(None)), "a string or null")
    _expect(meta, "ragged", (bool,), "true or false")
    _expect(meta, "n_maps", (int,), "a whole number")
    for key in ("target_labels", "warnings"):
        _expect(meta, key, (list, type(None)), "a list of strings")
        if not all(isinstance(v, str) for v in meta.get(key) or []):
            raise ExplanationFileError(f"the metadata's {key!r} must be a list of strings")
    _expect(meta, "extras", (dict, type(None)), "an object")
    stored = meta.get("extras") or {}
    for key in ("arrays", "values"):
        _expect(stored, key, (dict, type(None)), "an object")
    for name, info in (stored.get("arrays") or {}).items():
        if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
            raise ExplanationFileError(f"the metadata of extra {name!r} is not a string map")


def _check_array(m: _Member, kinds: str, what: str, ndim: int | None = None) -> None:
    if m.dtype.kind not in kinds:
        raise ExplanationFileError(
            f"{m.info.filename.removesuffix('.npy')} has dtype {_dtype_name(m.dtype)}: {what}"
        )
    if ndim is not None and len(m.shape) != ndim:
        raise ExplanationFileError(
            f"{m.info.filename.removesuffix('.npy')} has shape {m.shape}, expected {ndim}-D"
        )


def _plan(members: dict[str, _Member], meta: dict[str, Any]) -> tuple[list[str], int]:
    """Check every member against what save() writes; returns the map members and the image
    count."""
    pixels = settings_get("max_image_pixels")
    ragged = bool(meta.get("ragged"))
    if ragged:
        n = meta.get("n_maps")
        if not isinstance(n, int) or not 0 < n <= MAX_MEMBERS:
            raise ExplanationFileError(f"n_maps must be a positive count, got {n!r}")
        names = [f"maps_{i}" for i in range(n)]
        for name in names:
            if name not in members:
                raise ExplanationFileError(f"the file has no {name} (n_maps is {n})")
            _check_array(members[name], "f", "maps must be floats", ndim=2)
    else:
        if "maps" not in members:
            raise ExplanationFileError("the file has no maps")
        names = ["maps"]
        _check_array(members["maps"], "f", "maps must be floats", ndim=3)
        n = members["maps"].shape[0]
        if n == 0:
            raise ExplanationFileError("the file holds no maps")
    for name in names:
        h, w = members[name].shape[-2:]
        if h < 1 or w < 1:
            raise ExplanationFileError(f"{name} has an empty map ({h}x{w})")
        if h * w > pixels:
            raise _limit(f"{name} declares {h}x{w} maps", "max_image_pixels")
    for name, kinds, what, required in (
        ("targets", "iu", "targets must be integers", True),
        ("scores", "f", "scores must be floats", True),
        ("delta", "f", "delta must be floats", False),
        ("probabilities", "f", "probabilities must be floats", False),
    ):
        if name not in members:
            if required:
                raise ExplanationFileError(f"the file has no {name}")
            continue
        _check_array(members[name], kinds, what, ndim=1)
        if members[name].shape[0] != n:
            raise ExplanationFileError(f"{name} has {members[name].shape[0]} entries for {n} maps")
    per_image = PER_IMAGE_CHANNELS * pixels
    if "raw" in members:
        raw = members["raw"]
        _check_array(raw, "f", "raw must be floats")
        if not raw.shape or raw.shape[0] != n:
            raise ExplanationFileError(f"raw has shape {raw.shape} for {n} maps")
        if raw.count > n * per_image:
            raise _limit(f"raw declares shape {raw.shape}", "max_image_pixels")
    declared = (meta.get("extras") or {}).get("arrays") or {}
    known = {"meta", *names, "targets", "scores", "delta", "probabilities", "raw"}
    for key, m in members.items():
        if key in known:
            continue
        extra = key.removeprefix(EXTRAS_PREFIX)
        if extra == key or extra not in declared:
            raise ExplanationFileError(f"unexpected member {m.info.filename!r}")
        _check_array(m, _EXTRA_KINDS, "extras must be numbers or booleans")
        if m.count > n * per_image:
            raise _limit(f"extra {extra!r} declares shape {m.shape}", "max_image_pixels")
    missing = sorted(set(declared) - {k.removeprefix(EXTRAS_PREFIX) for k in members})
    if missing:
        raise ExplanationFileError(f"the metadata lists extra {missing[0]!r} but the file lacks it")
    return names, n


def _check_finite(name: str, values: np.ndarray, allowed: set[int], per_image: bool) -> None:
    """NaN or inf is refused unless the saved warnings flag that image's map."""
    rows = range(values.shape[0]) if per_image else [None]
    for i in rows:
        part = values if i is None else values[i]
        if i in allowed or bool(np.isfinite(part).all()):
            continue
        where = name if i is None else f"{name} of image {i}"
        raise ExplanationFileError(f"{where} has NaN or inf values")


def _load(cls: type[Explanation], path: Path) -> Explanation:
    with open(path, "rb") as fp:
        # the zip directory is at most the file, and a file np.savez wrote is never much
        # larger than what it unpacks to
        size = os.fstat(fp.fileno()).st_size
        if size > settings_get("max_archive_bytes"):
            raise _limit(f"the file is {size:,} bytes", "max_archive_bytes")
        count = _member_count(fp)
        if count is not None and count > MAX_MEMBERS:
            raise ExplanationFileError(f"{count:,} members (at most {MAX_MEMBERS:,})")
        fp.seek(0)
        with zipfile.ZipFile(fp) as zf:
            members = _members(zf)
            if "meta" not in members:
                raise ExplanationFileError("the file has no metadata")
            meta = _read_meta(zf, members["meta"])
            map_names, n = _plan(members, meta)
            arrays = {k: _read_data(zf, m) for k, m in members.items() if k != "meta"}
    flagged: set[int] = set()
    for note in meta.get("warnings") or []:
        hit = _NONFINITE_NOTE.fullmatch(note)
        if hit and len(hit.group(1)) < 10:
            flagged.add(int(hit.group(1)))
    maps: Maps = [arrays[k] for k in map_names] if meta.get("ragged") else arrays["maps"]
    for i, m in enumerate(maps):
        if i not in flagged:
            _check_finite(f"the map of image {i}", m, set(), per_image=False)
    if "raw" in arrays:
        _check_finite("raw", arrays["raw"], flagged, per_image=True)
    if "delta" in arrays:
        _check_finite("delta", arrays["delta"], flagged, per_image=True)
    _check_finite("scores", arrays["scores"], set(), per_image=True)
    targets = arrays["targets"]
    if int(targets.min()) < 0:
        raise ExplanationFileError(f"targets must be class indices, got {int(targets.min())}")
    if int(targets.max()) >= settings_get("max_labels"):
        raise _limit(f"target {int(targets.max())} is not a class index", "max_labels")
    probabilities = arrays.get("probabilities")
    if probabilities is not None and not bool(((probabilities >= 0) & (probabilities <= 1)).all()):
        raise ExplanationFileError("probabilities must lie in [0, 1]")
    stored = meta.get("extras") or {}
    extras: dict[str, Any] = {}
    for name, info in (stored.get("arrays") or {}).items():
        extras[name] = _restore_array(arrays[EXTRAS_PREFIX + name], info)
    extras.update({k: _unjson_extra(v) for k, v in (stored.get("values") or {}).items()})
    return cls(
        method=meta["method"],
        params=meta["params"],
        targets=targets,
        scores=arrays["scores"],
        maps=maps,
        raw=torch.from_numpy(arrays["raw"]) if "raw" in arrays else None,
        delta=arrays.get("delta"),
        probabilities=probabilities,
        target_labels=list(meta.get("target_labels") or []),
        layer=meta.get("layer"),
        model_name=meta.get("model"),
        extras=extras,
        warnings=list(meta.get("warnings") or []),
    )
