"""Provenance of a report: which model (name and file hash), which libraries, when."""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

#: Distributions whose versions every report records (those installed).
PACKAGES = (
    "xaiscope",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "matplotlib",
    "Pillow",
    "scikit-image",
)
#: Recorded only when the process has imported them (a Keras model was used).
OPTIONAL = {"keras": "keras", "tensorflow": "tensorflow", "onnxruntime": "onnxruntime"}


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, or of every file of a folder (sorted relative names and bytes)."""
    p = Path(path)
    digest = hashlib.sha256()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            digest.update(str(f.relative_to(p)).encode() + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def parameters_sha256(model: Any) -> str | None:
    """SHA-256 of a torch model's state dict (names, shapes, dtypes and bytes), or None."""
    module = getattr(model, "module", None)
    state = getattr(module, "state_dict", None)
    if not callable(state):
        return None
    digest = hashlib.sha256()
    for name, t in state().items():
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}\0".encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_file(spec: str | None) -> Path | None:
    """The file (or registry folder) a model spec was loaded from, when it has one."""
    if not spec:
        return None
    if spec == "efficientnet_lite0":
        from xaiscope.models.loaders import efficientnet_lite0_weights_path

        try:
            return efficientnet_lite0_weights_path()
        except Exception:  # the embedded weights' package is a dependency; be safe anyway
            return None
    if ":" in spec and not Path(spec).exists():
        return None  # timm:/torchvision:/keras: specs build a model, no file
    p = Path(spec)
    if p.exists():
        return p
    from xaiscope.models import registry_store

    entry = registry_store.find_entry(spec)
    return entry.path if entry is not None else None


def model_provenance(model: Any, spec: str | None = None) -> dict[str, Any]:
    """Name, spec, framework, input size, classes, file and its SHA-256 (or the weights')."""
    info: dict[str, Any] = {
        "name": getattr(model, "name", None) or spec or type(model).__name__,
        "spec": spec,
        "framework": getattr(model, "framework", None),
        "input_size": list(getattr(model, "input_size", ()) or ()),
        "classes": len(getattr(model, "labels", []) or []),
    }
    path = model_file(spec)
    if path is not None:
        info["file"] = str(path)
        info["file_sha256"] = file_sha256(path)
    else:
        digest = parameters_sha256(model)
        if digest is not None:
            info["parameters_sha256"] = digest
    return info


def library_versions() -> dict[str, str]:
    """Python, platform and the versions of the libraries a report depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    for module, dist in OPTIONAL.items():
        if module in sys.modules:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
