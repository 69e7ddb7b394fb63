"""The model registry: trained models saved by name, listed by ``xaiscope models``, loaded
by ``xs.load_model(NAME)`` and ``xaiscope explain --model NAME``.

Layout: ``<models dir>/<name>/config.json`` (labels, architecture, input size,
preprocessing mean/std, training summary and history; plain JSON) and
``<name>/weights.pt`` (a ``torch.save``'d state dict of tensors only, read back with
``torch.load(weights_only=True)``, whose SHA-256 the config records). Neither file needs
the standard unpickler to load.

The models directory is, in order: the ``models_dir`` argument (``--models-dir``), the
``XAISCOPE_MODELS`` environment variable, ``$XDG_CACHE_HOME/xaiscope/models``, or
``~/.cache/xaiscope/models``. Entries are written to a temporary folder and renamed into
place, so a crash or Ctrl-C never leaves half an entry, and an existing entry is replaced
only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xaiscope.errors import ModelLoadError, ParameterError, RegistryError
from xaiscope.models.file_checks import (
    build_fitting,
    check_input_size,
    check_labels,
    check_normalisation,
    check_pickle_size,
    torch_load_reason,
)
from xaiscope.settings import get, limit_hint

if TYPE_CHECKING:
    from xaiscope.models.torch_model import TorchModel

__all__ = [
    "ENV_VAR",
    "FORMAT",
    "RegistryEntry",
    "check_name_free",
    "find_entry",
    "is_entry_dir",
    "list_entries",
    "load_entry",
    "models_dir",
    "remove_entry",
    "save_entry",
]

ENV_VAR = "XAISCOPE_MODELS"
FORMAT = "xaiscope-model"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "weights.pt"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def models_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The registry folder: ``path``, else ``$XAISCOPE_MODELS``, else the user's cache."""
    if path is not None and os.fspath(path):
        return Path(os.fspath(path)).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "xaiscope" / "models"


def validate_name(name: str) -> str:
    """A registry name: letters, digits, '.', '_' or '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((".", ".pt")):
        raise RegistryError(
            f"bad model name {name!r}: use up to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. small_cnn-shapes)"
        )
    return name


@dataclass
class RegistryEntry:
    """One saved model: its name, folder and parsed ``config.json`` (``error`` if unreadable)."""

    name: str
    path: Path
    config: dict[str, Any]
    error: str | None = None

    @property
    def arch(self) -> str:
        return str(self.config.get("arch", "?"))

    @property
    def labels(self) -> list[str]:
        return [str(x) for x in self.config.get("labels", [])]

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.config.get("input_size", (0, 0))
        return int(h), int(w)

    def describe(self) -> str:
        """One line for listings: arch, classes, input size, best validation accuracy, date."""
        if self.error:
            return f"(unreadable: {self.error})"
        try:
            return self._describe()
        except (TypeError, ValueError, AttributeError) as exc:  # a hand-edited config
            return f"(unreadable: {type(exc).__name__}: {exc})"

    def _describe(self) -> str:
        h, w = self.input_size
        labels = self.labels
        shown = ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")
        training = self.config.get("training", {})
        acc = training.get("val_accuracy")
        acc_text = f", val acc {acc:.1%}" if isinstance(acc, (int, float)) else ""
        data = self.config.get("data", {}).get("name", "")
        on = f" on {data}" if data else ""
        created = str(self.config.get("created", ""))[:16].replace("T", " ")
        flag = ", interrupted" if training.get("interrupted") else ""
        return f"{self.arch}{on}, {len(labels)} classes ({shown}), {h}x{w}{acc_text}{flag}" + (
            f", {created}" if created else ""
        )


def is_entry_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a registry entry folder (holds an xaiscope ``config.json``)."""
    p = Path(os.fspath(path))
    return p.is_dir() and (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def _check_config_size(path: Path, name: str) -> None:
    with contextlib.suppress(OSError):
        if path.stat().st_size > get("max_metadata_bytes"):
            raise ModelLoadError(
                f"registry entry {name}: config.json is larger than allowed "
                f"({limit_hint('max_metadata_bytes')})"
            )


def _read_entry(folder: Path) -> RegistryEntry:
    try:
        if (folder / CONFIG).stat().st_size > get("max_metadata_bytes"):
            raise ValueError(f"config.json is larger than {get('max_metadata_bytes'):,} bytes")
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} config")
        return RegistryEntry(folder.name, folder, config)
    except (OSError, ValueError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return RegistryEntry(folder.name, folder, {}, error=f"{type(exc).__name__}: {first}")


def list_entries(path: str | os.PathLike[str] | None = None) -> list[RegistryEntry]:
    """Every entry of the registry, sorted by name (unreadable ones carry ``error``)."""
    root = models_dir(path)
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if (folder / CONFIG).exists():
            out.append(_read_entry(folder))
    return out


def find_entry(name: str, path: str | os.PathLike[str] | None = None) -> RegistryEntry | None:
    """The entry called ``name``, or None (also None for names that cannot be entries)."""
    if not isinstance(name, str) or not _NAME.match(name):
        return None
    folder = models_dir(path) / name
    if not (folder / CONFIG).is_file():
        return None
    return _read_entry(folder)


def check_name_free(
    name: str, path: str | os.PathLike[str] | None = None, *, overwrite: bool = False
) -> Path:
    """Raise :class:`RegistryError` if ``name`` is taken (unless ``overwrite``); its folder."""
    validate_name(name)
    folder = models_dir(path) / name
    if folder.exists() and not overwrite:
        raise RegistryError(
            f"a model called {name!r} already exists in {folder.parent}; choose another name "
            "or pass overwrite=True (--overwrite)"
        )
    return folder


def save_entry(
    name: str,
    module: nn.Module,
    *,
    arch: str,
    labels: Sequence[str],
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    arch_kwargs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    models_dir_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``module``'s weights and a JSON config as registry entry ``name``; its folder.

    ``arch`` must be rebuildable by :func:`xaiscope.train.build_arch` (a built-in name or
    ``timm:NAME``) with ``arch_kwargs``. ``extra`` (training summary, history, data) is
    stored in the config as is and must be JSON-serialisable.
    """
    folder = check_name_free(name, models_dir_path, overwrite=overwrite)
    root = folder.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegistryError(f"cannot create models folder {root}: {exc.strerror or exc}") from None
    tmp = root / f".{name}.tmp-{os.getpid()}"
    old = root / f".{name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        torch.save(state, tmp / WEIGHTS)
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name,
            "framework": "torch",
            "arch": arch,
            "arch_kwargs": dict(arch_kwargs or {}),
            "labels": [str(x) for x in labels],
            "input_size": [int(input_size[0]), int(input_size[1])],
            "mean": [float(x) for x in mean],
            "std": [float(x) for x in std],
            "weights": WEIGHTS,
            "weights_sha256": _sha256(tmp / WEIGHTS),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        text = json.dumps(_json_safe(config), indent=2, allow_nan=False) + "\n"
        (tmp / CONFIG).write_text(text, encoding="utf-8")
        if folder.exists():
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
        except OSError:
            if old.exists():  # put the previous entry back: nothing already saved is lost
                os.replace(old, folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return folder


def remove_entry(name: str, path: str | os.PathLike[str] | None = None) -> None:
    """Delete entry ``name``; :class:`RegistryError` if there is none."""
    validate_name(name)
    folder = models_dir(path) / name
    if not (folder / CONFIG).is_file():
        raise RegistryError(f"no model called {name!r} in {folder.parent}")
    shutil.rmtree(folder)


def load_entry(
    name_or_path: str | os.PathLike[str],
    *,
    models_dir_path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
) -> TorchModel:
    """Rebuild the model of a registry entry (by name, or its folder) as a ``TorchModel``.

    Raises :class:`ModelLoadError` when the entry is missing, its config unreadable, its
    weights changed since saving (SHA-256) or not fitting the architecture.
    """
    from xaiscope.models.torch_model import TorchModel as _TorchModel
    from xaiscope.train.archs import build_arch

    text = os.fspath(name_or_path)
    folder = Path(text) if is_entry_dir(text) else models_dir(models_dir_path) / text
    if not (folder / CONFIG).is_file():
        raise ModelLoadError(f"no model called {text!r} in the registry {folder.parent}")
    _check_config_size(folder / CONFIG, text)
    entry = _read_entry(folder)
    if entry.error:
        raise ModelLoadError(f"registry entry {entry.name}: unreadable config.json ({entry.error})")
    where = f"registry entry {entry.name}"
    cfg = entry.config
    weights = _weights_file(folder, cfg.get("weights", WEIGHTS), where)
    try:
        arch = cfg["arch"]
        labels = check_labels(cfg["labels"], where)
        size = check_input_size(cfg["input_size"], where)
        mean = check_normalisation(cfg["mean"], where, "mean")
        std = check_normalisation(cfg["std"], where, "std")
    except KeyError as exc:
        raise ModelLoadError(f"{where}: config.json lacks {exc}") from None
    if not isinstance(arch, str):
        raise ModelLoadError(f"{where}: arch must be a name, got {arch!r}")
    arch_kwargs = _checked_arch_kwargs(arch, cfg.get("arch_kwargs") or {}, where)
    expected = cfg.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise ModelLoadError(
            f"{where}: {weights.name} does not match the checksum in "
            "config.json (changed or corrupt since it was saved)"
        )
    check_pickle_size(weights, where)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: cannot read {weights.name} safely ({torch_load_reason(exc)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(f"{where}: {weights.name} is not a state dict")
    if len(labels) < 2:
        raise ModelLoadError(f"{where}: needs at least 2 labels, has {len(labels)}")
    try:
        module = build_fitting(
            lambda: build_arch(arch, len(labels), size, **arch_kwargs),
            state,
            where,
            weights.stat().st_size,
        )
    except ParameterError as exc:  # an architecture option out of range
        raise ModelLoadError(f"{where}: {exc}") from None
    return _TorchModel(
        module, labels=labels, input_size=size, mean=mean, std=std, device=device, name=entry.name
    )


def _weights_file(folder: Path, name: Any, where: str) -> Path:
    """The entry's weights file, which must be a plain file name inside the entry's folder:
    an entry from elsewhere must not make xaiscope read files outside it."""
    text = str(name)
    if (
        not isinstance(name, str)
        or not text
        or text != Path(text).name
        or text in (".", "..")
        or "\\" in text
    ):
        raise ModelLoadError(
            f"{where}: weights must be a file name inside the entry's folder, got {text[:80]!r}"
        )
    path = folder / text
    try:
        inside = path.resolve().parent == folder.resolve()
    except OSError:
        inside = False
    if not inside:  # a symbolic link out of the folder
        raise ModelLoadError(f"{where}: weights {text!r} points outside the entry's folder")
    if not path.is_file():
        raise ModelLoadError(f"{where}: {text} is missing")
    return path


def _checked_arch_kwargs(arch: str, given: Any, where: str) -> dict[str, Any]:
    """Only the documented options of ``arch``, with plain JSON values: a stranger's entry
    must not reach other builder arguments (timm's ``checkpoint_path`` loads any file)."""
    from xaiscope.train.archs import arch_options

    if not isinstance(given, dict):
        raise ModelLoadError(f"{where}: arch_kwargs must be a mapping")
    allowed = arch_options(arch)
    for key, value in given.items():
        if key not in allowed:
            valid = ", ".join(sorted(allowed)) or "none"
            raise ModelLoadError(
                f"{where}: option {str(key)[:40]!r} is not an option of {arch[:60]} "
                f"(allowed: {valid})"
            )
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ModelLoadError(f"{where}: option {key} must be a number or a word")
    return dict(given)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    # NaN/inf are not JSON: null keeps every parser happy
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        with contextlib.suppress(Exception):
            return _json_safe(value.item())
    return value
