"""Checks on a Keras model file, made before Keras reads it.

A ``.keras`` archive or a legacy ``.h5`` file may come from a stranger. Its sizes are
bounded from headers and metadata alone (a small file can declare gigabytes of arrays, or
JSON that decodes to gigabytes of Python objects), its config is read without Keras, and
the config is scanned for what would run code while loading: ``Lambda`` layers holding
Python bytecode and custom layers this process has not registered. All of it runs before
TensorFlow is imported, so a refusal does not wait for it. Limits come from
:mod:`xaiscope.settings`.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from xaiscope.errors import ModelLoadError, UnsafeModelError
from xaiscope.settings import get, inflation_ok, limit_hint

__all__ = ["check_config", "check_model_file", "read_config", "scan_config"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


#: members of a ``.keras`` zip read as JSON text, bounded by ``max_metadata_bytes``
_ARCHIVE_METADATA = ("config.json", "metadata.json")
_WEIGHTS_MEMBER = "model.weights.h5"


def check_model_file(path: Path) -> None:
    """Refuse, from headers and metadata only, a model file that would inflate past the
    limits: ``max_archive_bytes`` for the members of a ``.keras`` zip and the arrays of an
    HDF5 file (compressed chunks), ``max_metadata_bytes`` for its JSON."""
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as zf:
                _check_archive(zf, path)
                if _WEIGHTS_MEMBER in zf.namelist():
                    stored = zf.getinfo(_WEIGHTS_MEMBER).compress_size
                    with zf.open(_WEIGHTS_MEMBER) as member:
                        _check_h5(member, f"{path.name}/{_WEIGHTS_MEMBER}", stored)
        else:
            _check_h5(path, path.name, path.stat().st_size)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {path}: not a Keras model file ({_first_line(exc)})"
        ) from exc


def _check_archive(zf: zipfile.ZipFile, path: Path) -> None:
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    if total > get("max_archive_bytes"):
        raise ModelLoadError(
            f"{path.name} refused: its {len(infos)} archive member(s) inflate to {total:,} "
            f"bytes ({path.stat().st_size:,} stored); {limit_hint('max_archive_bytes')}"
        )
    for info in infos:
        if info.filename in _ARCHIVE_METADATA and info.file_size > get("max_metadata_bytes"):
            raise ModelLoadError(
                f"{path.name} refused: its {info.filename} inflates to {info.file_size:,} "
                f"bytes; {limit_hint('max_metadata_bytes')}"
            )
    stored = sum(i.compress_size for i in infos)
    if not inflation_ok(total, stored):
        raise ModelLoadError(
            f"{path.name} refused: its archive members inflate to {total:,} bytes from "
            f"{stored:,} stored; {limit_hint('max_inflation')}"
        )


def _read_member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """A JSON member read through a capped stream: zip headers can lie about sizes."""
    limit = get("max_metadata_bytes")
    parts: list[bytes] = []
    size = 0
    with zf.open(name) as member:
        while chunk := member.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ModelLoadError(
                    f"{path.name} refused: its {name} inflates past {limit:,} bytes; "
                    f"{limit_hint('max_metadata_bytes')}"
                )
            parts.append(chunk)
    return b"".join(parts)


def _check_h5(source: Any, name: str, stored: int) -> None:
    """The JSON attributes and the arrays of an HDF5 file, sized from its metadata.

    Arrays may be stored in compressed chunks, so a small file can declare gigabytes, which
    Keras reads in full before it compares shapes. Attributes are never compressed in HDF5:
    a variable-length string is at most the file's size, a fixed-length one is measured.
    """
    import h5py

    with h5py.File(source, "r") as f:
        for key in ("model_config", "training_config"):
            if key in f.attrs:
                size = f.attrs.get_id(key).get_storage_size()
                if size > get("max_metadata_bytes"):
                    raise ModelLoadError(
                        f"{name} refused: its {key} attribute takes {size:,} bytes; "
                        f"{limit_hint('max_metadata_bytes')}"
                    )
        total = 0

        def add(_: str, obj: Any) -> None:
            nonlocal total
            if isinstance(obj, h5py.Dataset):
                total += int(np.prod(obj.shape, dtype=np.float64)) * obj.dtype.itemsize

        f.visititems(add)
        if total > get("max_archive_bytes"):
            raise ModelLoadError(
                f"{name} refused: its arrays declare {total:,} bytes; "
                f"{limit_hint('max_archive_bytes')}"
            )
        if not inflation_ok(total, stored):  # compressed or never-written chunks
            raise ModelLoadError(
                f"{name} refused: its arrays declare {total:,} bytes from {stored:,} stored; "
                f"{limit_hint('max_inflation')}"
            )


def read_config(path: Path) -> Any:
    """The model config stored in a ``.keras`` archive or a legacy ``.h5`` file (sizes
    already checked by :func:`check_model_file`)."""
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as zf:
                return json.loads(_read_member(zf, "config.json", path))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ModelLoadError(
                    f"{path} holds no model config (a weights-only file?): build the model "
                    "and wrap it with xs.wrap(model) after load_weights"
                )
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            if len(raw) > get("max_metadata_bytes"):
                raise ModelLoadError(
                    f"{path.name} refused: its model_config attribute takes {len(raw):,} "
                    f"characters; {limit_hint('max_metadata_bytes')}"
                )
            return json.loads(raw)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read {path}: not a Keras model file ({_first_line(exc)})"
        ) from exc


def scan_config(config: Any) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Lambda layers holding Python bytecode, and custom objects: (name, class, module)."""
    lambdas: list[str] = []
    custom: list[tuple[str, str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls = node.get("class_name")
            cfg = node.get("config")
            if cls == "Lambda" and isinstance(cfg, dict):
                fn = cfg.get("function")
                legacy = cfg.get("function_type") == "lambda"
                modern = isinstance(fn, dict) and fn.get("class_name") == "__lambda__"
                if legacy or modern:
                    lambdas.append(str(cfg.get("name", "?")))
            module = node.get("module")
            if (
                isinstance(cls, str)
                and isinstance(module, str)
                and module
                and module.split(".")[0] not in {"keras", "builtins"}
                and cls not in {"function", "__lambda__"}
            ):
                reg = node.get("registered_name") or cls
                custom.append((str(reg), cls, module))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return lambdas, custom


def check_config(
    config: Any,
    name: str,
    keras: Any,
    *,
    trust: bool,
    custom_objects: dict[str, Any] | None,
) -> None:
    """Refuse (in safe mode) a config that would run code when ``keras`` rebuilds it.

    ``name`` is the file's name, for the messages. With ``trust=True`` the modules that
    define unregistered custom layers are imported here, so Keras finds their classes.
    """
    lambdas, custom = scan_config(config)
    if lambdas and not trust:
        raise UnsafeModelError(
            f"{name} has Lambda layer(s) with Python code ({', '.join(sorted(set(lambdas)))}) "
            "that would run when the model is loaded; refused in safe mode: pass trust=True "
            "(CLI: --trust-model) only if you trust where the file comes from"
        )
    unknown = [
        (reg, cls, mod)
        for reg, cls, mod in custom
        if keras.saving.get_registered_object(reg, custom_objects=custom_objects) is None
        and not (custom_objects and cls in custom_objects)
    ]
    if unknown:
        modules = sorted({mod for _, _, mod in unknown})
        names = ", ".join(sorted({cls for _, cls, _ in unknown}))
        if not trust:
            raise UnsafeModelError(
                f"{name} uses custom layer(s) {names} not registered in this process: import "
                f"the code that defines them first (or pass custom_objects=); trust=True (CLI: "
                f"--trust-model) lets xaiscope import {', '.join(modules)} itself"
            )
        for mod in modules:
            try:
                importlib.import_module(mod)
            except Exception as exc:
                raise ModelLoadError(
                    f"{name}: cannot import {mod} for its custom layers ({_first_line(exc)})"
                ) from exc
