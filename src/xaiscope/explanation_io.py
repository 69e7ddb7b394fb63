"""The saved-explanation format: how extras are stored, and reading a file from anyone.

:meth:`xaiscope.Explanation.save` writes one ``.npz``; :func:`read_explanation` reads it back
through :mod:`xaiscope.data.npz` (headers first, nothing unpickled) and checks every array
and the metadata against what ``save`` writes before any data is read.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from xaiscope.data import npz
from xaiscope.data.npz import Member, dtype_name, reason
from xaiscope.errors import ExplanationFileError
from xaiscope.settings import get as settings_get

T = TypeVar("T")

#: prefix of the ``.npz`` keys that hold array extras (``extras/segments``, ...)
EXTRAS_PREFIX = "extras/"
_TUPLE_TAG = "__tuple__"
#: the metadata may hold one JSON value per this many bytes of ``max_metadata_bytes``: a
#: value of two bytes (``{}``) decodes to a Python object of ~60, so the byte limit alone
#: would let a file make 30 times that in objects (2 M values at the 64 MB default)
JSON_BYTES_PER_VALUE = 32
#: elements of ``raw`` and of each array extra, per image, in units of ``max_image_pixels``:
#: raw is (C, H, W) at the model's input size, extras are superpixel maps and weights
PER_IMAGE_CHANNELS = 4
_NONFINITE_NOTE = re.compile(r"image (\d+): the map has NaN or inf values")
_EXTRA_KINDS = "biufc"  # bool, integers, floats, complex: fixed-size numbers only


def json_extra(value: Any) -> tuple[bool, Any]:
    """(True, encoded) when ``value`` is plain JSON data (tuples tagged to come back as
    tuples), else (False, None)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return True, value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return True, value.item()
    if isinstance(value, (list, tuple)):
        items = [json_extra(v) for v in value]
        if not all(ok for ok, _ in items):
            return False, None
        encoded = [v for _, v in items]
        return True, {_TUPLE_TAG: encoded} if isinstance(value, tuple) else encoded
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        pairs = {k: json_extra(v) for k, v in value.items()}
        if not all(ok for ok, _ in pairs.values()):
            return False, None
        return True, {k: v for k, (_, v) in pairs.items()}
    return False, None


def unjson_extra(value: Any) -> Any:
    if isinstance(value, list):
        return [unjson_extra(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {_TUPLE_TAG}:
            return tuple(unjson_extra(v) for v in value[_TUPLE_TAG])
        return {k: unjson_extra(v) for k, v in value.items()}
    return value


def array_extra(value: Any) -> tuple[np.ndarray, dict[str, str]] | None:
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


def restore_array(arr: np.ndarray, info: dict[str, str]) -> Any:
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


def _json_depth(value: Any, max_depth: int) -> int:
    """Nesting depth of decoded JSON, without recursion (stops once past ``max_depth``)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, depth)
            if depth > max_depth:
                break
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _read_meta(zf: zipfile.ZipFile, m: Member, max_depth: int) -> dict[str, Any]:
    if m.dtype != np.uint8 or len(m.shape) != 1:
        raise ExplanationFileError(f"meta must be bytes (uint8), got {m.dtype} {m.shape}")
    limit = settings_get("max_metadata_bytes")
    if m.count > limit:
        raise _limit(f"the metadata is {m.count:,} bytes", "max_metadata_bytes")
    data = npz.read_data(zf, m, error=ExplanationFileError).tobytes()
    # brackets, braces and commas bound the number of values before any is made
    values = data.count(b",") + data.count(b"[") + data.count(b"{") + 1
    if values > max(limit // JSON_BYTES_PER_VALUE, 1000):
        raise _limit(f"the metadata holds up to {values:,} JSON values", "max_metadata_bytes")
    try:
        meta = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ExplanationFileError(f"the metadata nests deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExplanationFileError(f"the metadata is not JSON: {reason(exc)}") from None
    if _json_depth(meta, max_depth) > max_depth:
        raise ExplanationFileError(f"the metadata nests deeper than {max_depth} levels")
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


def _check_array(m: Member, kinds: str, what: str, ndim: int | None = None) -> None:
    if m.dtype.kind not in kinds:
        raise ExplanationFileError(
            f"{m.filename.removesuffix('.npy')} has dtype {dtype_name(m.dtype)}: {what}"
        )
    if ndim is not None and len(m.shape) != ndim:
        raise ExplanationFileError(
            f"{m.filename.removesuffix('.npy')} has shape {m.shape}, expected {ndim}-D"
        )


def _plan(
    members: dict[str, Member], meta: dict[str, Any], max_members: int
) -> tuple[list[str], int]:
    """Check every member against what save() writes; returns the map members and the image
    count."""
    pixels = settings_get("max_image_pixels")
    ragged = bool(meta.get("ragged"))
    if ragged:
        n = meta.get("n_maps")
        if not isinstance(n, int) or not 0 < n <= max_members:
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
            raise ExplanationFileError(f"unexpected member {m.filename!r}")
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


def _file_error(path: Any, why: str) -> ExplanationFileError:
    return ExplanationFileError(" ".join(f"cannot read explanation {path}: {why}".split()))


def _limit(what: str, name: str) -> ExplanationFileError:
    return npz.limit_error(ExplanationFileError, what, name)


def read_explanation(
    path: Any, build: Callable[..., T], *, max_members: int, max_json_depth: int
) -> T:
    """``build(**fields)`` from the explanation file at ``path`` (see
    :meth:`xaiscope.Explanation.load`); any failure is one ExplanationFileError line."""
    try:
        return build(**_fields(Path(path), max_members, max_json_depth))
    except ExplanationFileError as exc:
        raise _file_error(path, str(exc)) from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, TypeError) as exc:
        # a damaged or foreign file: one clear error instead of a traceback
        raise _file_error(path, reason(exc)) from None


def _fields(path: Path, max_members: int, max_depth: int) -> dict[str, Any]:
    """The Explanation's fields from the file, every array checked before it is read."""
    error = ExplanationFileError
    with open(path, "rb") as fp, npz.open_npz(fp, error=error, max_members=max_members) as zf:
        members = npz.list_members(zf, error=error, max_members=max_members)
        if "meta" not in members:
            raise ExplanationFileError("the file has no metadata")
        meta = _read_meta(zf, members["meta"], max_depth)
        map_names, n = _plan(members, meta, max_members)
        arrays = {k: npz.read_data(zf, m, error=error) for k, m in members.items() if k != "meta"}
    flagged: set[int] = set()
    for note in meta.get("warnings") or []:
        hit = _NONFINITE_NOTE.fullmatch(note)
        if hit and len(hit.group(1)) < 10:
            flagged.add(int(hit.group(1)))
    maps: np.ndarray | list[np.ndarray] = (
        [arrays[k] for k in map_names] if meta.get("ragged") else arrays["maps"]
    )
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
        extras[name] = restore_array(arrays[EXTRAS_PREFIX + name], info)
    extras.update({k: unjson_extra(v) for k, v in (stored.get("values") or {}).items()})
    return dict(
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
