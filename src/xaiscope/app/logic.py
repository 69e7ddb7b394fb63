"""What the web app does, without Streamlit: run explanations in a background job, and
build the downloads.

Kept apart from the page script (:mod:`xaiscope.app.page`) so that it can be tested and
reused without a browser. Uploads are checked in :mod:`xaiscope.app.uploads` and models
chosen and loaded in :mod:`xaiscope.app.models`. Nothing here prints or raises a traceback
at the user: every failure is a :class:`~xaiscope.errors.XaiscopeError` (or an
:class:`~xaiscope.app.uploads.UploadError`) whose message is one line meant for the page.
"""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# re-exported (``X as X``): callers and tests use logic.X for names that moved out
from xaiscope.app.models import ACCEPTED_NAMES as ACCEPTED_NAMES
from xaiscope.app.models import NOT_A_MODEL_NAME as NOT_A_MODEL_NAME
from xaiscope.app.models import ZOO_PREFIXES as ZOO_PREFIXES
from xaiscope.app.models import ModelChoice as ModelChoice
from xaiscope.app.models import load_model_safely as load_model_safely
from xaiscope.app.models import model_choice_by_name as model_choice_by_name
from xaiscope.app.models import model_choice_for_upload as model_choice_for_upload
from xaiscope.app.models import registry_choice as registry_choice
from xaiscope.app.models import registry_models as registry_models
from xaiscope.app.uploads import DEFAULT_MAX_UPLOAD_MB as DEFAULT_MAX_UPLOAD_MB
from xaiscope.app.uploads import MODEL_SUFFIXES as MODEL_SUFFIXES
from xaiscope.app.uploads import TORCHSCRIPT_REFUSED as TORCHSCRIPT_REFUSED
from xaiscope.app.uploads import SessionFiles as SessionFiles
from xaiscope.app.uploads import UploadError as UploadError
from xaiscope.app.uploads import check_size as check_size
from xaiscope.app.uploads import read_image_upload as read_image_upload
from xaiscope.app.uploads import sniff_model as sniff_model
from xaiscope.batching import progress_listener
from xaiscope.cli.common import reason
from xaiscope.errors import ParameterError, XaiscopeError

#: Image files offered from the start-up folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: Methods the app preselects: fast and familiar.
DEFAULT_METHODS = ("gradcam",)


# ---------------------------------------------------------------------------- images
def folder_images(folder: str | os.PathLike[str] | None) -> list[Path]:
    """Image files directly in ``folder`` (sorted); empty without a folder."""
    if not folder:
        return []
    root = Path(folder)
    if not root.is_dir():
        raise ParameterError(f"image folder not found: {root}")
    return sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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
