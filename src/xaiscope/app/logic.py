"""What the web app does, without Streamlit: check uploads, load models, run explanations
in a background job, and build the downloads.

Kept apart from the page script (:mod:`xaiscope.app.page`) so that it can be tested and
reused without a browser. Nothing here prints or raises a traceback at the user: every
failure is a :class:`~xaiscope.errors.XaiscopeError` (or an :class:`UploadError`) whose
message is one line meant for the page.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tempfile
import threading
import time
import weakref
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xaiscope.batching import progress_listener
from xaiscope.cli.common import reason
from xaiscope.errors import ImageLoadError, ParameterError, XaiscopeError
from xaiscope.models.file_checks import is_torchscript

#: Default limit on one uploaded file, in megabytes (``xaiscope app --max-upload-mb``).
DEFAULT_MAX_UPLOAD_MB = 200
#: Image files offered from the start-up folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Model file types an upload may be, by what its bytes are (the name must agree).
MODEL_SUFFIXES = (".pt", ".pth", ".keras", ".h5", ".onnx")
#: Methods the app preselects: fast and familiar.
DEFAULT_METHODS = ("gradcam",)

# torch.save before 1.6 wrote a pickle that starts with this pickled magic number
_LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_HDF5 = b"\x89HDF\r\n\x1a\n"
_ZIP = b"PK\x03\x04"

#: Why an uploaded TorchScript file is refused (after the file's name).
TORCHSCRIPT_REFUSED = (
    "the file is TorchScript, which is code that runs when it loads; the app does not load "
    "TorchScript. Upload an xaiscope checkpoint (xaiscope.models.save_checkpoint) instead, "
    "or use the command line with --trust-model on a file you trust"
)
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
CHECKPOINT_ARCH_PREFIXES = ("timm:", "torchvision:")
# a zoo model name: no path separator and no further scheme (timm reads "hf-hub:" and
# "local-dir:" names, which fetch or read files)
_ZOO_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_PATH_SUFFIXES = frozenset((*MODEL_SUFFIXES, ".ts", ".hdf5", ".pkl", ".bin", ".safetensors"))


class UploadError(XaiscopeError):
    """An uploaded file is refused: too large, not what its name says, or unsafe."""


# ---------------------------------------------------------------------------- uploads
class SessionFiles:
    """A private temporary folder for one browser session's uploads.

    Removed when the session's state is garbage-collected (the browser tab closed and the
    session expired), at :meth:`cleanup`, or when the server process exits.
    """

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="xaiscope-app-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def write(self, name: str, data: bytes) -> Path:
        """Store ``data`` as ``<sha256 of data><suffix of name>`` (never the uploaded name)."""
        digest = hashlib.sha256(data).hexdigest()
        suffix = Path(name).suffix.lower()
        target = self.path / f"{digest}{suffix}"
        if not target.exists():
            tmp = target.with_suffix(target.suffix + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return target

    def cleanup(self) -> None:
        self._finalizer()

    @property
    def alive(self) -> bool:
        return self._finalizer.alive


def check_size(data: bytes, name: str, max_mb: float) -> None:
    if len(data) > max_mb * 1024 * 1024:
        raise UploadError(
            f"{name}: {len(data) / 1024 / 1024:.1f} MB is over the upload limit of "
            f"{max_mb:g} MB (xaiscope app --max-upload-mb)"
        )


def read_image_upload(name: str, data: bytes, max_mb: float = DEFAULT_MAX_UPLOAD_MB) -> np.ndarray:
    """Decode an uploaded image by its content (Pillow, decompression-bomb guard on);
    the file name is only used in messages. (H, W, 3) uint8.

    Uploads come from strangers: the pixel limit is ``app_max_image_pixels``, passed to this
    call only (sessions run in threads; the process-wide ``max_image_pixels`` is untouched).
    """
    from xaiscope.data.images import load_image

    check_size(data, name, max_mb)
    try:
        return load_image(data, pixel_limit="app_max_image_pixels")
    except ImageLoadError as exc:
        # load_image calls bytes "<bytes>": the upload's own name is more useful
        raise ImageLoadError(str(exc).replace("<bytes>", repr(name))) from exc


def sniff_model(name: str, data: bytes) -> str:
    """The model file type of ``data`` (one of :data:`MODEL_SUFFIXES`), from its bytes.

    The uploaded name must agree with the content. A plain pickle and TorchScript are
    refused before any loader sees them: unpickling and ``torch.jit.load`` can run code.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise UploadError(
            f"{name}: not a model file name; upload one of {', '.join(MODEL_SUFFIXES)}"
        )
    # before the header checks: torch.jit.load finds a zip anywhere in a file (a legacy
    # torch header followed by a TorchScript archive loads as TorchScript)
    if is_torchscript(data):
        raise UploadError(f"{name}: {TORCHSCRIPT_REFUSED}")
    head = data[:16]
    if head.startswith(_ZIP):
        kind = _zip_kind(data)
        if kind == "keras" and suffix == ".keras":
            return ".keras"
        if kind == "torch" and suffix in (".pt", ".pth"):
            return suffix
        what = {"keras": "a Keras .keras archive", "torch": "a PyTorch archive"}.get(
            kind, "a zip archive that is neither a PyTorch nor a Keras model"
        )
        raise UploadError(f"{name}: the file is {what}, not what its name ({suffix}) says")
    if head.startswith(_HDF5):
        if suffix == ".h5":
            return ".h5"
        raise UploadError(f"{name}: the file is HDF5 (a Keras .h5 model), not {suffix}")
    if head.startswith(_LEGACY_TORCH):
        if suffix in (".pt", ".pth"):
            return suffix
        raise UploadError(f"{name}: the file is a legacy PyTorch file, not {suffix}")
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        raise UploadError(
            f"{name}: the file is a plain Python pickle; refused because unpickling can run "
            "code. Save the model as an xaiscope checkpoint (xaiscope.models.save_checkpoint)"
        )
    if suffix == ".onnx":
        from xaiscope.models.onnx_model import is_onnx_model_bytes

        if is_onnx_model_bytes(data):
            return ".onnx"
    raise UploadError(
        f"{name}: the content is not a model file ({', '.join(MODEL_SUFFIXES)}): "
        f"it starts with {head[:8]!r}"
    )


def _zip_kind(data: bytes) -> str:
    """``keras``, ``torch`` (a ``torch.save`` archive), ``broken`` or ``other``, from the
    zip's table of contents (nothing in it is run or unpickled)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except zipfile.BadZipFile:
        return "broken"
    if "config.json" in names and any(n.endswith(".weights.h5") for n in names):
        return "keras"
    if any(n.endswith("data.pkl") for n in names):
        return "torch"
    return "other"


# ---------------------------------------------------------------------------- models
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
    """Refuse what an uploaded file may not do even in safe mode: be TorchScript (sniffed
    at upload; checked again here on the stored file), or name an architecture that is
    not a model-zoo spec (a path there would load a file of the server)."""
    import warnings

    import torch

    from xaiscope.errors import UnsafeModelError

    path = Path(choice.spec)
    if path.suffix.lower() not in (".pt", ".pth"):
        return
    if is_torchscript(path):
        raise UnsafeModelError(f"{choice.label}: {TORCHSCRIPT_REFUSED}")
    ckpt = None
    # mmap keeps the tensors on disk (only the dict around them is read); files in the
    # legacy format cannot be mapped and are read whole
    for mmap in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            break
        except Exception:  # the loader reports an unreadable file in its words
            continue
    if isinstance(ckpt, dict) and "xaiscope_arch" in ckpt:
        arch = ckpt["xaiscope_arch"]
        ok = isinstance(arch, str) and any(
            arch.startswith(p) and _ZOO_NAME.match(arch[len(p) :]) is not None
            for p in CHECKPOINT_ARCH_PREFIXES
        )
        if not ok:
            raise UnsafeModelError(
                f"{choice.label}: the checkpoint's xaiscope_arch is not a timm:NAME or "
                "torchvision:NAME model; the app builds checkpoints on model-zoo "
                "architectures only"
            )


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


def folder_images(folder: str | os.PathLike[str] | None) -> list[Path]:
    """Image files directly in ``folder`` (sorted); empty without a folder."""
    if not folder:
        return []
    root = Path(folder)
    if not root.is_dir():
        raise ParameterError(f"image folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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


# ---------------------------------------------------------------------------- parameters
def method_param_defaults(name: str) -> dict[str, Any]:
    from xaiscope.methods.registry import get_method

    return dict(get_method(name).defaults)


def coerce_param(method: str, key: str, value: Any) -> Any:
    """A widget's value as the type of the registry default (text boxes hold strings)."""
    from xaiscope.cli.params import coerce

    default = method_param_defaults(method)[key]
    if isinstance(value, str) and not isinstance(default, str):
        return coerce(value, default, f"{method}.{key}")
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
        if value != int(value):
            raise ParameterError(f"{method}.{key} must be a whole number, not {value}")
        return int(value)
    return value


# ---------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class RunRequest:
    """One click on "Explain": everything the run needs, fixed at the click."""

    images: tuple[tuple[str, np.ndarray], ...]
    methods: tuple[str, ...]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: ``"topK"`` or class indices
    targets: str | tuple[int, ...] = "top1"
    layer: str | None = None
    metrics: tuple[str, ...] = ()
    activation_layer: str | None = None
    report: bool = False
    seed: int = 0


@dataclass
class ImageResult:
    name: str
    image: np.ndarray
    top5: list[tuple[str, float]]
    explanations: list[Any] = field(default_factory=list)
    activations: Any = None
    metrics: Any = None
    errors: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    request: RunRequest
    images: list[ImageResult]
    report_html: str | None = None
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def _groups(methods: Sequence[str]) -> list[list[str]]:
    """Methods that share passes (the gradient CAMs) run in one call; others one by one."""
    from xaiscope.methods.registry import get_method

    shared = [m for m in methods if get_method(m).shared]
    rest = [[m] for m in methods if not get_method(m).shared]
    return ([shared] if shared else []) + rest


def _within_step(
    say: Callable[[float, str], None], step: int, steps: int, text: str
) -> Callable[[int, int, str | None], None]:
    """Batched work inside step ``step`` moves the bar towards the next step (never back:
    a step may run several batched loops, one per target rank)."""
    reached = [0.0]

    def listener(done: int, total: int, _desc: str | None) -> None:
        reached[0] = max(reached[0], min(done / max(total, 1), 0.99))
        say((step + reached[0]) / steps, text)

    return listener


def top5(model: Any, image: np.ndarray) -> list[tuple[str, float]]:
    pred = model.predict(image, top_k=5)
    return [(str(lab), float(p)) for lab, p in zip(pred.labels[0], pred.probs[0])]


def run(
    model: Any,
    request: RunRequest,
    progress: Callable[[float, str], None] | None = None,
    model_spec: str | None = None,
) -> RunResult:
    """Compute everything ``request`` asks for on ``model``, image by image.

    ``progress(fraction, text)`` is called before each step. A failing method or metric is
    recorded as one line in the image's ``errors`` and the others still run.
    """
    import xaiscope as xs

    started = time.perf_counter()
    say = progress or (lambda _f, _t: None)
    groups = _groups(request.methods)
    steps_per_image = 1 + len(groups) + bool(request.metrics) + bool(request.activation_layer)
    total = steps_per_image * len(request.images) + (1 if request.report else 0)
    # a list of targets means one per image: chosen classes run one call each
    specs = [request.targets] if isinstance(request.targets, str) else list(request.targets)
    done = 0
    results: list[ImageResult] = []
    for name, image in request.images:
        say(done / total, f"{name}: predictions")
        res = ImageResult(name=name, image=image, top5=top5(model, image))
        done += 1
        for group in groups:
            say(done / total, f"{name}: {', '.join(group)}")
            params: dict[str, Any] = {m: request.params[m] for m in group if request.params.get(m)}
            within = _within_step(say, done, total, f"{name}: {', '.join(group)}")
            for spec in specs:
                try:
                    with progress_listener(within):
                        out = xs.explain(
                            model,
                            image,
                            methods=list(group),
                            targets=spec,
                            layer=request.layer,
                            seed=request.seed,
                            progress=False,
                            **params,
                        )
                except XaiscopeError as exc:
                    res.errors.append(f"{', '.join(group)}: {exc}")
                    break
                res.explanations.extend(out if isinstance(out, list) else [out])
            done += 1
        if request.activation_layer:
            say(done / total, f"{name}: activations of {request.activation_layer}")
            try:
                res.activations = xs.activations(model, image, request.activation_layer)
            except XaiscopeError as exc:
                res.errors.append(f"activations: {exc}")
            done += 1
        if request.metrics:
            say(done / total, f"{name}: metrics")
            try:
                if res.explanations:
                    res.metrics = _evaluate(model, image, res.explanations, request)
            except XaiscopeError as exc:
                res.errors.append(f"metrics: {exc}")
            done += 1
        results.append(res)
    report_html = None
    errors: list[str] = []
    if request.report:
        say(done / total, "HTML report")
        try:
            report_html = build_report_html(model, request, model_spec)
        except XaiscopeError as exc:
            errors.append(f"report: {exc}")
    say(1.0, "done")
    return RunResult(
        request=request,
        images=results,
        report_html=report_html,
        seconds=time.perf_counter() - started,
        errors=errors,
    )


def _evaluate(model: Any, image: np.ndarray, exps: list[Any], request: RunRequest) -> Any:
    """One table for all methods: rows (method @ class, metric)."""
    import xaiscope as xs

    rows: list[dict[str, Any]] = []
    for exp in exps:
        table = xs.evaluate(
            model, image, exp, metrics=list(request.metrics), seed=request.seed, progress=False
        )
        for row in table.rows:
            rows.append(
                {
                    "method": row["method"],
                    "class": class_label(exp),
                    "metric": row["metric"],
                    "score": row["score"],
                    "random baseline": row["random_baseline"],
                    "better than random": row["better_than_random"],
                    "higher is better": row["higher_is_better"],
                }
            )
    return rows


def build_report_html(model: Any, request: RunRequest, model_spec: str | None) -> str:
    """The HTML report (:mod:`xaiscope.report`) of the same images, methods and targets."""
    from xaiscope.report import build_report

    target: Any = request.targets
    if isinstance(target, tuple):
        # the report explains one class per image: the first chosen
        target = target[0]
    if isinstance(target, str) and target.startswith("top") and target != "top1":
        # the report shows the top-1 maps and the other ranks in its top-k section
        k = int(target[3:])
        topk: list[int] | None = list(range(1, k + 1))
        target = "top1"
    else:
        topk = None
    rep = build_report(
        model,
        [img for _, img in request.images],
        methods=list(request.methods),
        target=target,
        layer=request.layer,
        params=request.params,
        seed=request.seed,
        topk=topk,
        topk_methods=list(request.methods)[:1] if topk else None,
        activations=[request.activation_layer] if request.activation_layer else None,
        metrics=list(request.metrics) or None,
        image_names=[n for n, _ in request.images],
        model_spec=model_spec,
    )
    return str(rep.to_html())


# ---------------------------------------------------------------------------- downloads
def class_label(exp: Any) -> str:
    """The name of the class a one-image explanation explains (its index without labels)."""
    return exp.target_labels[0] if exp.target_labels else str(int(exp.targets[0]))


def map_key(image_name: str, exp: Any) -> str:
    return f"{image_name}/{exp.method}/{class_label(exp)}"


def maps_npz(result: RunResult) -> bytes:
    """Every map of the run (float32, image size, un-normalised), keyed
    ``image/method/class``, plus the targets and scores."""
    arrays: dict[str, Any] = {}
    for res in result.images:
        for exp in res.explanations:
            key = map_key(res.name, exp)
            arrays[key] = np.asarray(exp.map(0), dtype=np.float32)
            arrays[f"{key}/target"] = np.asarray(exp.targets[:1])
            arrays[f"{key}/score"] = np.asarray(exp.scores[:1])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def overlay_png(
    image: np.ndarray, exp: Any, *, alpha: float = 0.5, signed: bool = False, cmap: str = "jet"
) -> bytes:
    from xaiscope.viz.colors import overlay

    return png_bytes(overlay(image, exp.map(0), alpha=alpha, cmap=cmap, signed=signed))


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def overlays_zip(result: RunResult, *, alpha: float = 0.5, signed: bool = False) -> bytes:
    """One PNG overlay per map, in a zip (``image/method/class.png``)."""
    from xaiscope.viz.colors import is_signed

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for res in result.images:
            for exp in res.explanations:
                use_signed = signed and is_signed(exp.map(0))
                data = overlay_png(res.image, exp, alpha=alpha, signed=use_signed)
                zf.writestr(_safe_member(map_key(res.name, exp)) + ".png", data)
    return buf.getvalue()


def _safe_member(key: str) -> str:
    keep = "-_.() "
    return "/".join(
        "".join(c if c.isalnum() or c in keep else "_" for c in part) or "_"
        for part in key.split("/")
    )


# ---------------------------------------------------------------------------- jobs
_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.Lock:
    """One lock per model object: a cached model is shared by every browser session, and
    two runs at once would see each other's hooks."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(model), threading.Lock())


class Job:
    """A run in a background thread: the page polls it, so reruns of the page (a slider
    moved, a second click) neither interrupt it nor start a second one."""

    def __init__(self, model: Any, request: RunRequest, model_spec: str | None = None) -> None:
        self.request = request
        self.fraction = 0.0
        self.text = "starting"
        self.result: RunResult | None = None
        self.error: str | None = None
        self._thread = threading.Thread(
            target=self._work, args=(model, model_spec), name="xaiscope-app-job", daemon=True
        )
        self._thread.start()

    def _progress(self, fraction: float, text: str) -> None:
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        self.text = text

    def _work(self, model: Any, model_spec: str | None) -> None:
        try:
            lock = model_lock(model)
            if not lock.acquire(blocking=False):
                self.text = "waiting for another session's run on this model"
                lock.acquire()
            try:
                self.result = run(model, self.request, self._progress, model_spec)
            finally:
                lock.release()
        except XaiscopeError as exc:
            self.error = str(exc)
        except Exception as exc:  # shown as one line in the page, never a traceback
            self.error = f"unexpected {reason(exc)}"

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done
