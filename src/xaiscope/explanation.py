"""The :class:`Explanation` returned by :func:`xaiscope.explain`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope.explanation_io import EXTRAS_PREFIX, array_extra, json_extra, read_explanation

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


#: members a file written by save() may hold: maps (or maps_<i>), targets, scores, raw, delta,
#: probabilities, meta and extras/<name>. The zip's central directory is parsed into Python
#: objects of a few hundred bytes each before anything else can be checked, so the count is
#: bounded first. Read at each load, so it can be changed at run time.
MAX_MEMBERS = 100_000
#: nesting of the metadata JSON; save() writes under 10 levels
MAX_JSON_DEPTH = 64


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
            stored = array_extra(value)
            if stored is not None:
                arrays[EXTRAS_PREFIX + str(name)], extra_arrays[str(name)] = stored
                continue
            ok, encoded = json_extra(value)
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
        # the limits are looked up here, at each call, so that they can be changed at run time
        return read_explanation(path, cls, max_members=MAX_MEMBERS, max_json_depth=MAX_JSON_DEPTH)

    def plot(
        self, images: Any = None, *, ax: Any = None, alpha: float = 0.5, cmap: str = "jet"
    ) -> Any:
        """Plot each map (overlaid on ``images`` when given); returns the matplotlib figure."""
        from xaiscope.viz import plot_explanation

        return plot_explanation(self, images, ax=ax, alpha=alpha, cmap=cmap)
