"""The Streamlit page of ``xaiscope app``.

Run by ``streamlit run`` (through :func:`xaiscope.app.launch`), never imported by the
package. Options arrive in environment variables set by the launcher
(:data:`xaiscope.app.ENV_IMAGES`, :data:`~xaiscope.app.ENV_MAX_UPLOAD_MB`,
:data:`~xaiscope.app.ENV_MODELS_DIR`). All computing is in :mod:`xaiscope.app.logic`,
:mod:`~xaiscope.app.models` and :mod:`~xaiscope.app.uploads`; this file only lays out
widgets and results. Every error is shown as one line in the page.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")

import streamlit as st  # noqa: E402

from xaiscope.app import ENV_IMAGES, ENV_MAX_UPLOAD_MB, ENV_MODELS_DIR, logic  # noqa: E402
from xaiscope.app.models import (  # noqa: E402
    ACCEPTED_NAMES,
    ModelChoice,
    load_model_safely,
    model_choice_by_name,
    model_choice_for_upload,
    registry_choice,
    registry_models,
)
from xaiscope.app.uploads import (  # noqa: E402
    DEFAULT_MAX_UPLOAD_MB,
    MODEL_SUFFIXES,
    SessionFiles,
    read_image_upload,
)
from xaiscope.cli.common import reason  # noqa: E402
from xaiscope.errors import XaiscopeError  # noqa: E402

MODEL_SOURCES = (
    "Embedded default (EfficientNet-Lite0, ImageNet)",
    "Trained model (registry)",
    "By name (timm:, torchvision:, keras:)",
    "Upload a model file",
)
#: Most maps shown side by side in one row.
PER_ROW = 4


def _state() -> Any:
    ss = st.session_state
    if "files" not in ss:
        ss.files = SessionFiles()
    ss.setdefault("job", None)
    ss.setdefault("result", None)
    ss.setdefault("run_error", None)
    return ss


def _max_upload_mb() -> float:
    try:
        return float(os.environ.get(ENV_MAX_UPLOAD_MB, DEFAULT_MAX_UPLOAD_MB))
    except ValueError:
        return float(DEFAULT_MAX_UPLOAD_MB)


@st.cache_resource(max_entries=4, show_spinner=False)
def _cached_model(key: str, _choice: ModelChoice) -> Any:
    return load_model_safely(_choice)


@st.cache_resource(show_spinner=False)
def _samples() -> dict[str, Any]:
    import xaiscope as xs

    return xs.sample_images()


# ---------------------------------------------------------------------------- sidebar
def _model_choice(ss: Any) -> ModelChoice | None:
    st.sidebar.header("Model")
    source = st.sidebar.radio("Model source", MODEL_SOURCES, key="model_source")
    if source == MODEL_SOURCES[0]:
        return ModelChoice("efficientnet_lite0", "efficientnet_lite0", "EfficientNet-Lite0")
    if source == MODEL_SOURCES[1]:
        models_dir = os.environ.get(ENV_MODELS_DIR) or None
        names = registry_models(models_dir)
        if not names:
            st.sidebar.info("No trained models yet: `xaiscope train` adds them.")
            return None
        name = st.sidebar.selectbox("Trained model", names, key="registry_model")
        return registry_choice(str(name), models_dir)
    if source == MODEL_SOURCES[2]:
        text = st.sidebar.text_input(
            "Model name",
            "timm:resnet50",
            key="model_name",
            help=f"{ACCEPTED_NAMES}; files are uploaded, never named",
        )
        pretrained = st.sidebar.checkbox(
            "pretrained weights (downloads, needs internet)", value=False, key="pretrained"
        )
        models_dir = os.environ.get(ENV_MODELS_DIR) or None
        return model_choice_by_name(text, models_dir, pretrained=pretrained)
    upload = st.sidebar.file_uploader(
        "Model file (.pt xaiscope checkpoint, .keras, .h5, .onnx; not TorchScript)",
        type=[s.lstrip(".") for s in MODEL_SUFFIXES],
        key="model_upload",
    )
    if upload is None:
        return None
    return model_choice_for_upload(ss.files, upload.name, upload.getvalue(), _max_upload_mb())


def _images(ss: Any) -> tuple[list[tuple[str, Any]], list[str]]:
    """The chosen images, and one line per upload that was refused."""
    import xaiscope as xs

    st.sidebar.header("Images")
    samples = _samples()
    chosen = st.sidebar.multiselect(
        "Sample photos", sorted(samples), default=["chelsea"], key="samples"
    )
    images = [(name, samples[name]) for name in chosen]
    refused: list[str] = []
    folder = os.environ.get(ENV_IMAGES)
    if folder:
        try:
            files = logic.folder_images(folder)
        except XaiscopeError as exc:
            refused.append(str(exc))
            files = []
        picked = st.sidebar.multiselect(
            f"From {folder}", [p.name for p in files], key="folder_images"
        )
        by_name = {p.name: p for p in files}
        for name in picked:
            try:
                images.append((name, xs.load_image(by_name[name])))
            except XaiscopeError as exc:
                refused.append(str(exc))
    uploads = st.sidebar.file_uploader(
        "Upload images",
        type=[s.lstrip(".") for s in logic.IMAGE_SUFFIXES],
        accept_multiple_files=True,
        key="image_uploads",
    )
    for up in uploads or []:
        try:
            images.append((up.name, read_image_upload(up.name, up.getvalue(), _max_upload_mb())))
        except XaiscopeError as exc:
            refused.append(str(exc))
    return images, refused


def _method_widgets(model: Any) -> tuple[list[str], dict[str, dict[str, Any]], list[str]]:
    """Methods (from the registry, those the model supports), their parameters, errors."""
    from xaiscope.methods.registry import get_method, method_names

    st.sidebar.header("Methods")
    names = [n for n in method_names() if get_method(n).applicable(model)]
    default = [m for m in logic.DEFAULT_METHODS if m in names] or names[:1]
    methods = st.sidebar.multiselect("Methods", names, default=default, key="methods")
    params: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    with st.sidebar.expander("Method parameters"):
        for method in methods:
            defaults = logic.method_param_defaults(method)
            if not defaults:
                continue
            st.markdown(f"**{method}**")
            chosen: dict[str, Any] = {}
            for key, default in defaults.items():
                value = _param_widget(method, key, default)
                try:
                    coerced = logic.coerce_param(method, key, value)
                except XaiscopeError as exc:
                    errors.append(str(exc))
                    continue
                if coerced != default:
                    chosen[key] = coerced
            if chosen:
                params[method] = chosen
    return methods, params, errors


def _param_widget(method: str, key: str, default: Any) -> Any:
    wkey = f"param:{method}:{key}"
    label = f"{method}.{key}"
    if isinstance(default, bool):
        return st.checkbox(label, value=default, key=wkey)
    if isinstance(default, int):
        return st.number_input(label, value=default, step=1, key=wkey)
    if isinstance(default, float):
        return st.number_input(label, value=default, format="%g", key=wkey)
    text = st.text_input(
        label, value="none" if default is None else str(default), key=wkey, help="none = default"
    )
    if default is None and text.strip().lower() in ("", "none"):
        return None
    return text


def _targets(model: Any) -> str | tuple[int, ...]:
    st.sidebar.header("Classes")
    mode = st.sidebar.radio("Explain", ("Top-k predictions", "Chosen classes"), key="target_mode")
    if mode == "Top-k predictions":
        k = st.sidebar.slider("k", 1, 5, 1, key="topk")
        return f"top{k}"
    labels = list(model.labels)
    options = [f"{i}: {name}" for i, name in enumerate(labels)]
    picked = st.sidebar.multiselect("Classes (type to search)", options, key="classes")
    if not picked:
        return "top1"
    return tuple(int(p.split(":", 1)[0]) for p in picked)


def _layers(model: Any, methods: list[str]) -> tuple[str | None, str | None, tuple[str, ...], bool]:
    from xaiscope.methods.registry import get_method
    from xaiscope.metrics.registry import get_metric, metric_names

    layer: str | None = None
    activation_layer: str | None = None
    try:
        layers = list(model.layers())
    except XaiscopeError:
        layers = []
    default_layer = getattr(model, "default_layer", None) if layers else None
    if layers and any(get_method(m).uses_layer for m in methods):
        index = layers.index(default_layer) if default_layer in layers else len(layers) - 1
        layer = st.sidebar.selectbox("CAM layer", layers, index=index, key="layer")
    st.sidebar.header("More")
    if layers:
        picked = st.sidebar.selectbox(
            "Activations of layer", ["(none)", *layers], index=0, key="activation_layer"
        )
        activation_layer = None if picked == "(none)" else str(picked)
    # localization metrics need ground-truth masks, which the app does not have
    usable = [m for m in metric_names() if not get_metric(m).needs_masks]
    metrics = st.sidebar.multiselect("Metrics", usable, key="metrics")
    report = st.sidebar.checkbox("HTML report (computes the maps again)", key="report")
    return layer, activation_layer, tuple(metrics), report


# ---------------------------------------------------------------------------- results
def _show_result(result: logic.RunResult) -> None:
    from xaiscope.viz.colors import is_signed, overlay

    st.caption(f"computed in {result.seconds:.1f} s")
    c1, c2, c3 = st.columns(3)
    opacity = c1.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
    signed_view = c2.checkbox("Signed view (green +, red -) where a method has signs", key="signed")
    cmap = c3.selectbox("Colour map", ("jet", "inferno", "viridis", "turbo"), key="cmap")
    for line in result.errors:
        st.error(line)
    for res in result.images:
        st.subheader(res.name)
        left, right = st.columns([1, 2])
        left.image(res.image, caption=res.name, width="stretch")
        right.markdown("**Top-5 predictions**")
        right.table([{"class": label, "probability": f"{p:.1%}"} for label, p in res.top5])
        for line in res.errors:
            st.error(line)
        by_class: dict[str, list[Any]] = {}
        for exp in res.explanations:
            by_class.setdefault(logic.class_label(exp), []).append(exp)
        for label, exps in by_class.items():
            prob = exps[0].probabilities[0] if exps[0].probabilities is not None else None
            st.markdown(f"**Why {label}**" + (f" (p = {prob:.1%})" if prob is not None else ""))
            for start in range(0, len(exps), PER_ROW):
                cols = st.columns(PER_ROW)
                for col, exp in zip(cols, exps[start : start + PER_ROW]):
                    m = exp.map(0)
                    use_signed = signed_view and is_signed(m)
                    rgb = overlay(res.image, m, alpha=opacity, cmap=cmap, signed=use_signed)
                    col.image(rgb, caption=f"{exp.method}{' (signed)' if use_signed else ''}")
                    for warning in exp.warnings:
                        col.warning(warning)
        if res.activations is not None:
            _show_activations(res.activations)
        if res.metrics:
            st.markdown("**Metrics**")
            st.dataframe(res.metrics, hide_index=True)
    st.subheader("Downloads")
    d1, d2, d3 = st.columns(3)
    d1.download_button(
        "Maps (.npz)", logic.maps_npz(result), "xaiscope_maps.npz", key="dl_npz", on_click="ignore"
    )
    d2.download_button(
        "Overlays (PNG, zip)",
        logic.overlays_zip(result, alpha=opacity, signed=signed_view),
        "xaiscope_overlays.zip",
        key="dl_png",
        on_click="ignore",
    )
    if result.report_html is not None:
        d3.download_button(
            "HTML report",
            result.report_html,
            "xaiscope_report.html",
            "text/html",
            key="dl_html",
            on_click="ignore",
        )
    else:
        d3.caption("Tick 'HTML report' in the sidebar to build one with the next run.")


def _show_activations(acts: Any) -> None:
    import matplotlib.pyplot as plt

    from xaiscope import viz

    st.markdown(f"**Activations of {acts.layer}**")
    fig = viz.activation_grid(acts, max_channels=64)
    try:
        st.pyplot(fig)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------- page
def _wait_for(ss: Any) -> None:
    """Show the running job's progress until it ends, then keep its result."""
    job = ss.job
    bar = st.progress(job.fraction, text=job.text)
    while not job.wait(0.25):
        bar.progress(job.fraction, text=job.text)
    ss.job = None
    ss.result = job.result
    ss.run_error = job.error
    st.rerun()


def main() -> None:
    st.set_page_config(page_title="xaiscope", layout="wide")
    ss = _state()
    st.title("xaiscope: why does the model predict that?")
    try:
        _page(ss)
    except XaiscopeError as exc:
        st.error(str(exc))
    except Exception as exc:  # never a traceback in the page
        st.error(f"unexpected {reason(exc)}")


def _page(ss: Any) -> None:
    choice = _model_choice(ss)
    if choice is None:
        st.info("Pick or upload a model in the sidebar.")
        return
    with st.spinner(f"loading {choice.label}"):
        model = _cached_model(choice.key, choice)
    images, refused = _images(ss)
    methods, params, param_errors = _method_widgets(model)
    targets = _targets(model)
    layer, activation_layer, metrics, report = _layers(model, methods)
    running = ss.job is not None
    clicked = st.sidebar.button(
        "Running..." if running else "Explain",
        type="primary",
        disabled=running,
        key="explain",
    )
    st.caption(f"Model: {choice.label} ({model.framework}, {len(model.labels)} classes)")
    for line in refused + param_errors:
        st.error(line)
    if clicked and ss.job is None:
        if not images:
            st.error("Choose or upload at least one image.")
        elif not methods:
            st.error("Choose at least one method.")
        elif not param_errors:  # refused uploads are left out (their message stays shown)
            request = logic.RunRequest(
                images=tuple(images),
                methods=tuple(methods),
                params=params,
                targets=targets,
                layer=layer,
                metrics=metrics,
                activation_layer=activation_layer,
                report=report,
            )
            ss.job = logic.Job(model, request, model_spec=choice.spec)
            ss.result = None
            ss.run_error = None
            st.rerun()  # draws the button disabled while the job runs
    if ss.job is not None:
        _wait_for(ss)
    if ss.run_error:
        st.error(ss.run_error)
    if ss.result is not None:
        _show_result(ss.result)
    elif ss.job is None and not clicked:
        st.info("Choose images and methods in the sidebar, then press Explain.")


main()
