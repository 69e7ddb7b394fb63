"""The model a visitor picks in the web app, and loading it in safe mode.

A model comes from the embedded default, a model-zoo name, the trained-model registry or
an upload. The "by name" field never reaches a file of the server, and every failure while
loading becomes one line that names neither the session folder nor the registry folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xaiscope.app.uploads import (
    MODEL_SUFFIXES,
    TORCHSCRIPT_REFUSED,
    SessionFiles,
    check_size,
    sniff_model,
)
from xaiscope.cli.common import reason
from xaiscope.errors import XaiscopeError
from xaiscope.models.file_checks import is_torchscript

#: What the "by name" field takes, in the messages that refuse a name.
ACCEPTED_NAMES = (
    "efficientnet_lite0, timm:NAME, torchvision:NAME, keras:NAME or the name of a trained "
    "model in the registry"
)
#: The one answer to a name that looks like a file path: the same whether or not such a
#: file exists, so that the field tells a visitor nothing about the server's files.
NOT_A_MODEL_NAME = (
    f"the model name field takes model names, not file paths: use {ACCEPTED_NAMES}; "
    "to use a model file, upload it"
)
#: Model-zoo prefixes the "by name" field accepts, and those a checkpoint may build on.
ZOO_PREFIXES = ("timm:", "torchvision:", "keras:")
# a zoo model name: no path separator and no further scheme (timm reads "hf-hub:" and
# "local-dir:" names, which fetch or read files)
_ZOO_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_PATH_SUFFIXES = frozenset((*MODEL_SUFFIXES, ".ts", ".hdf5", ".pkl", ".bin", ".safetensors"))


@dataclass(frozen=True)
class ModelChoice:
    """What the user picked: ``spec`` for :func:`xaiscope.load_model`, and a cache key
    (the spec, or the content hash of an uploaded file)."""

    spec: str
    key: str
    label: str
    pretrained: bool = False
    #: the registry folder a trained model is looked up in (None: the default)
    models_dir: str | None = None


def model_choice_for_upload(
    files: SessionFiles, name: str, data: bytes, max_mb: float
) -> ModelChoice:
    check_size(data, name, max_mb)
    suffix = sniff_model(name, data)
    path = files.write(f"model{suffix}", data)
    return ModelChoice(spec=str(path), key=f"upload:{path.stem}", label=name)


def model_choice_by_name(
    text: str, models_dir: str | None = None, *, pretrained: bool = False
) -> ModelChoice | None:
    """What the "by name" field asks for: the embedded model, a model-zoo name
    (``timm:NAME``, ``torchvision:NAME``, ``keras:NAME``) or a trained model of the registry.

    Never a path on the server: anything that looks like one gets :data:`NOT_A_MODEL_NAME`,
    whether or not such a file exists. None for an empty field.
    """
    from xaiscope.errors import ModelLoadError
    from xaiscope.models import DEFAULT_MODEL, registry_store

    text = text.strip()
    if not text:
        return None
    if _looks_like_path(text):
        raise ModelLoadError(NOT_A_MODEL_NAME)
    if text == DEFAULT_MODEL:
        # the embedded weights are its only weights: "pretrained" changes nothing
        return ModelChoice(DEFAULT_MODEL, DEFAULT_MODEL, "EfficientNet-Lite0")
    prefix = next((p for p in ZOO_PREFIXES if text.startswith(p)), None)
    if prefix is not None:
        if not _ZOO_NAME.match(text[len(prefix) :]):
            raise ModelLoadError(_unknown_name(text))
        return ModelChoice(text, f"{text}|{pretrained}", text, pretrained=pretrained)
    try:
        registry_store.validate_name(text)
    except XaiscopeError:
        raise ModelLoadError(_unknown_name(text)) from None
    if registry_store.find_entry(text, models_dir) is None:
        raise ModelLoadError(_unknown_name(text))
    return registry_choice(text, models_dir)


def _looks_like_path(text: str) -> bool:
    return (
        any(c in text for c in "/\\\x00")
        or text.startswith((".", "~"))
        or os.path.isabs(text)
        or re.match(r"^[A-Za-z]:", text) is not None  # a Windows drive
        or Path(text).suffix.lower() in _PATH_SUFFIXES
    )


def _unknown_name(text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return f"unknown model name {shown!r}: use {ACCEPTED_NAMES}"


def load_model_safely(choice: ModelChoice) -> Any:
    """Load the model of ``choice`` in safe mode (``weights_only`` torch loading, Keras safe
    mode, no Lambda layers, no TorchScript); any failure becomes one :class:`XaiscopeError`
    line that names neither the session folder nor the registry folder."""
    from xaiscope.errors import ModelLoadError, UnsafeModelError
    from xaiscope.models import load_model

    kw: dict[str, Any] = {}
    if choice.pretrained:
        kw["pretrained"] = True
    if choice.models_dir:
        kw["models_dir"] = choice.models_dir
    # never trust=True: every model here comes from a visitor
    try:
        if choice.key.startswith("registry:"):
            return _load_registry_entry(choice)
        if choice.key.startswith("upload:"):
            _check_upload(choice)
        return load_model(choice.spec, **kw)
    except UnsafeModelError as exc:
        raise UnsafeModelError(
            f"{_strip_path(str(exc), choice)} (the app loads uploaded models in safe mode only)"
        ) from exc
    except XaiscopeError as exc:
        raise type(exc)(_strip_path(str(exc), choice)) from exc
    except Exception as exc:  # a loader library's own error on a corrupt file
        message = _strip_path(f"cannot load {choice.label}: {reason(exc)}", choice)
        raise ModelLoadError(message) from exc


def _load_registry_entry(choice: ModelChoice) -> Any:
    from xaiscope.models import registry_store

    # by its folder, not its bare name: load_model would take a file or folder of that
    # name in the server's working directory first
    name = registry_store.validate_name(choice.spec)
    return registry_store.load_entry(registry_store.models_dir(choice.models_dir) / name)


def _check_upload(choice: ModelChoice) -> None:
    """Refuse TorchScript even in safe mode (sniffed at upload; checked again here on the
    stored file)."""
    from xaiscope.errors import UnsafeModelError

    path = Path(choice.spec)
    if path.suffix.lower() not in (".pt", ".pth"):
        return
    if is_torchscript(path):
        raise UnsafeModelError(f"{choice.label}: {TORCHSCRIPT_REFUSED}")
    # an architecture that is not a model-zoo spec is refused by the loader itself
    # (file_checks.check_zoo_arch), after the size checks that come before unpickling


def _strip_path(message: str, choice: ModelChoice) -> str:
    # uploads live under a hashed name in the session folder: show the user's file name
    if choice.key.startswith("upload:"):
        return message.replace(choice.spec, choice.label).replace(
            Path(choice.spec).name, choice.label
        )
    if choice.key.startswith("registry:"):
        # a visitor learns the trained model's name, never where the server keeps it
        from xaiscope.models import registry_store

        root = registry_store.models_dir(choice.models_dir)
        for folder in (root / choice.spec, (root / choice.spec).resolve()):
            message = message.replace(str(folder), choice.spec)
        for where in (root, root.resolve()):
            message = message.replace(str(where), "<models folder>")
    return message


def registry_models(models_dir: str | None = None) -> list[str]:
    from xaiscope.models import registry_store

    try:
        return [e.name for e in registry_store.list_entries(models_dir)]
    except XaiscopeError:
        return []


def registry_choice(name: str, models_dir: str | None = None) -> ModelChoice:
    """A trained model by name; its cache key changes when the entry is saved again."""
    from xaiscope.models import registry_store

    entry = registry_store.find_entry(name, models_dir)
    stamp = ""
    if entry is not None:
        stamp = ":".join(
            f"{p.stat().st_mtime_ns}" for p in sorted(entry.path.iterdir()) if p.is_file()
        )
    return ModelChoice(name, f"registry:{models_dir}:{name}:{stamp}", name, models_dir=models_dir)
