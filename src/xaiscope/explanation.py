"""The :class:`Explanation` returned by :func:`xaiscope.explain`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope.errors import XaiscopeError

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
    if info.get("type") != "tensor":
        return arr
    t = torch.from_numpy(arr)
    dtype = getattr(torch, info.get("dtype", ""), None)
    return t.to(dtype) if isinstance(dtype, torch.dtype) and dtype != t.dtype else t


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
        """Read an explanation written by :meth:`save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode())
                maps: Maps
                if meta.get("ragged"):
                    maps = [data[f"maps_{i}"] for i in range(meta["n_maps"])]
                else:
                    maps = data["maps"]
                raw = torch.from_numpy(data["raw"]) if "raw" in data else None
                # files written before extras were saved have no "extras" entry
                stored = meta.get("extras") or {}
                extras: dict[str, Any] = {
                    name: _restore_array(data[EXTRAS_PREFIX + name], info)
                    for name, info in (stored.get("arrays") or {}).items()
                }
                extras.update(
                    {k: _unjson_extra(v) for k, v in (stored.get("values") or {}).items()}
                )
                return cls(
                    method=meta["method"],
                    params=meta["params"],
                    targets=data["targets"],
                    scores=data["scores"],
                    maps=maps,
                    raw=raw,
                    delta=data.get("delta"),
                    probabilities=data.get("probabilities"),
                    target_labels=list(meta.get("target_labels") or []),
                    layer=meta.get("layer"),
                    model_name=meta.get("model"),
                    extras=extras,
                    warnings=list(meta.get("warnings") or []),
                )
        except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
            # a damaged or foreign file: one clear error instead of a traceback
            raise XaiscopeError(f"cannot read explanation {path}: {exc}") from exc

    def plot(
        self, images: Any = None, *, ax: Any = None, alpha: float = 0.5, cmap: str = "jet"
    ) -> Any:
        """Plot each map (overlaid on ``images`` when given); returns the matplotlib figure."""
        from xaiscope.viz import plot_explanation

        return plot_explanation(self, images, ax=ax, alpha=alpha, cmap=cmap)
