"""Any import order of tensorflow, keras, torch, torchvision, timm and xaiscope works (issue 18).

TensorFlow loads LLVM into the global symbol namespace; torchvision and timm import
torch._dynamo and so triton's libtriton, whose LLVM then binds to TensorFlow's and crashes
(SIGSEGV). ``_xaiscope_native`` loads libtriton with RTLD_DEEPBIND, from ``xaiscope_native.pth``
at start-up and from ``import xaiscope``. Only a fresh interpreter shows the crash, so each order
runs in its own subprocess.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import _xaiscope_native as native

REPO = Path(__file__).resolve().parents[1]
LINUX_DEEPBIND = sys.platform.startswith("linux") and bool(getattr(os, "RTLD_DEEPBIND", 0))

# After the imports (in the order given), Grad-CAM on the embedded model, plus whatever the
# order's extra step needs; a crash shows as a negative return code (-11 for SIGSEGV).
SCRIPT = """
import importlib, sys
for name in {order!r}:
    importlib.import_module(name)
import numpy as np
import xaiscope as xs

rng = np.random.default_rng(0)
image = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
exp = xs.explain(xs.load_model("efficientnet_lite0"), image, method="gradcam")
maps = np.asarray(exp.maps)
assert maps.shape[0] == 1 and maps.size > 1 and np.isfinite(maps).all(), maps
{extra}
print("IMPORT-ORDER-OK", [m for m in {order!r} if m not in sys.modules])
"""

TIMM_MODEL = """
tm = xs.load_model("timm:resnet18", pretrained=False, num_classes=3)
maps = np.asarray(xs.explain(tm, image, method="gradcam").maps)
assert np.isfinite(maps).all() and maps.size > 1, maps
"""

KERAS_MODEL = """
import keras
inp = keras.Input((32, 32, 3))
x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
x = keras.layers.GlobalAveragePooling2D()(x)
km = xs.wrap(keras.Model(inp, keras.layers.Dense(3)(x)), labels=["a", "b", "c"])
maps = np.asarray(xs.explain(km, image, method="gradcam").maps)
assert np.isfinite(maps).all() and maps.size > 1, maps
"""

# One interpreter per order, because the crash depends on what was loaded first.
ORDERS = [
    ("tensorflow", "torchvision", "xaiscope"),
    ("tensorflow", "timm", "xaiscope"),
    ("keras", "torchvision", "xaiscope"),
    ("torch", "tensorflow", "torchvision", "xaiscope"),
    ("xaiscope", "tensorflow", "torchvision"),
    ("tensorflow", "keras", "torch", "torchvision", "timm", "xaiscope"),
]


def _start(order: tuple[str, ...], extra: str = "", **env: str) -> subprocess.Popen[str]:
    code = SCRIPT.format(order=list(order), extra=textwrap.dedent(extra))
    # Without XAISCOPE_DEEPBIND from the caller: an opt-out there would switch off what is tested.
    inherited = {k: v for k, v in os.environ.items() if k != "XAISCOPE_DEEPBIND"}
    proc_env = {**inherited, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=proc_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"return code {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    assert "IMPORT-ORDER-OK []" in proc.stdout, proc.stdout[-2000:]


def _extra(order: tuple[str, ...]) -> str:
    return KERAS_MODEL if order[0] == "keras" else ""


TF_FIRST_THEN_MODELS = ("tensorflow", "xaiscope")


@pytest.fixture(scope="module")
def started() -> Iterator[dict[tuple[str, ...], subprocess.Popen[str]]]:
    """Every order's interpreter, started at once: each spends most of its time importing
    TensorFlow on one core, so running them side by side halves the wait on two cores."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    procs = {order: _start(order, _extra(order)) for order in ORDERS}
    procs[TF_FIRST_THEN_MODELS] = _start(TF_FIRST_THEN_MODELS, TIMM_MODEL + KERAS_MODEL)
    yield procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finished(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("order", ORDERS, ids=lambda order: "-".join(order))
def test_import_order_then_gradcam(
    started: dict[tuple[str, ...], subprocess.Popen[str]], order: tuple[str, ...]
) -> None:
    _check(_finished(started[order]))


@pytest.mark.slow
def test_tensorflow_first_then_timm_model(
    started: dict[tuple[str, ...], subprocess.Popen[str]],
) -> None:
    """import tensorflow as tf first (as Keras users write it), then a timm model and Keras."""
    _check(_finished(started[TF_FIRST_THEN_MODELS]))


# ---- the finder itself, in this process ----------------------------------------------------


def _extension_spec_name() -> str:
    """A standard-library module that is a shared library, to stand in for libtriton."""
    for name in ("_testbuffer", "_testcapi", "_ctypes_test", "xxlimited", "_json", "_csv"):
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None and type(spec.loader) is importlib.machinery.ExtensionFileLoader:
            return name
    pytest.skip("no standard-library extension module found as a shared library")


@pytest.mark.parametrize("name", ["json", "triton", "triton._C", "triton._C.libproton", "x"])
def test_finder_ignores_other_modules(name: str) -> None:
    finder = native._DeepBindFinder(getattr(os, "RTLD_DEEPBIND", 8))
    assert finder.find_spec(name, None) is None


@pytest.mark.skipif(not LINUX_DEEPBIND, reason="RTLD_DEEPBIND is Linux-only")
@pytest.mark.parametrize("fail", [False, True])
def test_loader_deepbinds_and_restores_flags(monkeypatch: pytest.MonkeyPatch, fail: bool) -> None:
    name = _extension_spec_name()
    monkeypatch.setattr(native, "TARGET", name)
    finder = native._DeepBindFinder(os.RTLD_DEEPBIND)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    seen: list[int] = []

    def fake_create_module(self: object, spec: object) -> object:
        seen.append(sys.getdlopenflags())
        if fail:
            raise ImportError("dlopen failed")
        return None

    monkeypatch.setattr(
        importlib.machinery.ExtensionFileLoader, "create_module", fake_create_module
    )
    before = sys.getdlopenflags()
    spec = finder.find_spec(name, None)
    assert spec is not None and spec.name == name
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    if fail:
        with pytest.raises(ImportError, match="dlopen failed"):
            spec.loader.create_module(spec)
    else:
        spec.loader.create_module(spec)
    assert seen == [before | os.RTLD_DEEPBIND]
    assert sys.getdlopenflags() == before
    assert native._DeepBindFinder(os.RTLD_DEEPBIND).find_spec("json", None) is None


def _without_finder() -> list[object]:
    return [f for f in sys.meta_path if not getattr(f, "_xaiscope_deepbind_finder", False)]


def test_install_is_idempotent_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "meta_path", _without_finder())
    monkeypatch.delitem(sys.modules, native.TARGET, raising=False)
    monkeypatch.delenv("XAISCOPE_DEEPBIND", raising=False)
    assert native.install() is LINUX_DEEPBIND
    assert native.install() is LINUX_DEEPBIND
    markers = [f for f in sys.meta_path if getattr(f, "_xaiscope_deepbind_finder", False)]
    assert len(markers) == (1 if LINUX_DEEPBIND else 0)
    assert native.installed() is LINUX_DEEPBIND


@pytest.mark.parametrize("case", ["opt-out", "other-os", "broken-meta-path", "already-loaded"])
def test_install_no_op(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    monkeypatch.setattr(sys, "meta_path", _without_finder())
    monkeypatch.delitem(sys.modules, native.TARGET, raising=False)
    if case == "opt-out":
        monkeypatch.setenv("XAISCOPE_DEEPBIND", "0")
    elif case == "other-os":
        monkeypatch.setattr(sys, "platform", "darwin")
    elif case == "broken-meta-path":
        monkeypatch.setattr(sys, "meta_path", ())  # no insert(): install must not raise
    else:
        monkeypatch.setitem(sys.modules, native.TARGET, object())
    assert native.install() is False
    assert not native.installed()


def test_xaiscope_installs_it_on_import() -> None:
    import xaiscope._native

    assert xaiscope._native.installed() is LINUX_DEEPBIND or native.TARGET in sys.modules


# ---- the start-up hook ----------------------------------------------------------------------


def _installed_from_this_checkout() -> Path:
    """site-packages of the xaiscope distribution that this checkout's tests run against."""
    from importlib import metadata

    try:
        dist = metadata.distribution("xaiscope")
    except metadata.PackageNotFoundError:
        pytest.skip("xaiscope is not installed")
    spec = importlib.util.find_spec("xaiscope")
    assert spec is not None and spec.origin is not None
    origin = Path(spec.origin).resolve()
    site_dir = Path(str(dist.locate_file(""))).resolve()
    in_checkout = origin.is_relative_to(REPO / "src")
    in_site = origin == Path(str(dist.locate_file("xaiscope/__init__.py"))).resolve()
    if not (in_checkout or in_site):
        pytest.skip(f"the xaiscope in use ({origin}) is not the installed distribution")
    if in_checkout and not any(str(f).startswith("__editable__") for f in dist.files or []):
        pytest.skip("xaiscope is installed from another location")
    return site_dir


def test_pth_is_installed_in_site_packages() -> None:
    site_dir = _installed_from_this_checkout()
    pth = site_dir / "xaiscope_native.pth"
    assert pth.is_file(), f"{pth} missing: reinstall with pip install -e '.[dev]'"
    text = pth.read_text(encoding="utf-8")
    assert text.startswith("import ") and "_xaiscope_native" in text


@pytest.mark.skipif(not LINUX_DEEPBIND, reason="RTLD_DEEPBIND is Linux-only")
def test_pth_runs_at_startup_without_importing_torch() -> None:
    _installed_from_this_checkout()
    code = (
        "import sys; print(any(getattr(f, '_xaiscope_deepbind_finder', False)"
        " for f in sys.meta_path), 'torch' in sys.modules, 'xaiscope' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "XAISCOPE_DEEPBIND"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd="/", env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"], out.stdout
