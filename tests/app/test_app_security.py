"""The app against a hostile visitor (issue 18): an uploaded TorchScript file never loads
(its ``__setstate__`` runs inside ``torch.jit.load`` and can write any file), a checkpoint
cannot name a server file as its architecture, and the "by name" field takes model names
only, answering every path alike and never naming the server's folders."""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import xaiscope as xs
from tests.hostile import CLEAN, evil_torchscript
from xaiscope.app import ENV_MODELS_DIR, logic
from xaiscope.app.logic import UploadError
from xaiscope.errors import ModelLoadError, XaiscopeError
from xaiscope.models import registry_store
from xaiscope.train import build_arch


def legacy_polyglot(torchscript: bytes) -> bytes:
    """A legacy ``torch.save`` header followed by a TorchScript archive: torch.jit.load
    finds the archive behind the header."""
    src = zipfile.ZipFile(io.BytesIO(torchscript))
    out = io.BytesIO()
    out.write(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19" + b"\x00" * 64)
    with zipfile.ZipFile(out, "a") as zf:  # "a" after other bytes: offsets stay right
        for name in src.namelist():
            zf.writestr(name, src.read(name))
    return out.getvalue()


def _jit_load(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(io.BytesIO(data))


@pytest.fixture
def files():  # type: ignore[no-untyped-def]
    session = logic.SessionFiles()
    yield session
    session.cleanup()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry folder with one small trained model, ``tiny_shapes``."""
    root = tmp_path / "server-models"
    torch.manual_seed(0)
    registry_store.save_entry(
        "tiny_shapes", build_arch("small_cnn", 5, (32, 32)), arch="small_cnn",
        labels=list(xs.datasets.SHAPE_CLASSES), input_size=(32, 32), mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25), models_dir_path=root,
    )  # fmt: skip
    return root


# --- TorchScript uploads ----------------------------------------------------------------
def test_the_payload_really_runs_code_when_loaded(tmp_path: Path) -> None:
    # the control for the tests below: without the app's checks this file writes its canary
    canary = tmp_path / "control"
    data = evil_torchscript(canary)
    _jit_load(data)
    assert canary.read_bytes() == b"AAAA"
    canary.write_bytes(CLEAN)
    _jit_load(legacy_polyglot(data))
    assert canary.read_bytes() == b"AAAA"


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.keras", "evil.onnx", "evil.h5"])
def test_torchscript_upload_refused_before_loading(
    tmp_path: Path, files: logic.SessionFiles, name: str
) -> None:
    canary = tmp_path / "canary"
    scripted = evil_torchscript(canary)
    for data in (scripted, legacy_polyglot(scripted)):
        with pytest.raises(UploadError) as info:
            logic.model_choice_for_upload(files, name, data, 10)
        assert str(info.value) == f"{name}: {logic.TORCHSCRIPT_REFUSED}"
    assert canary.read_bytes() == CLEAN
    assert not any(files.path.iterdir())  # not even stored


def test_torchscript_refused_at_load_too(tmp_path: Path, files: logic.SessionFiles) -> None:
    # defence in depth: a TorchScript file that got past the upload check still never loads
    canary = tmp_path / "canary"
    stored = files.write("model.pt", evil_torchscript(canary))
    choice = logic.ModelChoice(str(stored), f"upload:{stored.stem}", "evil.pt")
    with pytest.raises(xs.UnsafeModelError) as info:
        logic.load_model_safely(choice)
    assert "TorchScript" in str(info.value) and str(files.path) not in str(info.value)
    assert canary.read_bytes() == CLEAN


def _checkpoint(arch: object) -> bytes:
    buf = io.BytesIO()
    torch.save({"xaiscope_arch": arch, "state_dict": {}, "labels": ["a", "b"]}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "arch",
    [
        "SERVER_TORCHSCRIPT",
        "/etc/passwd",
        "../model.pt",
        "efficientnet_lite0",
        "timm:local-dir:/tmp",
        "timm:hf-hub:timm/resnet18",
        "keras:ResNet50",
        ["timm:resnet18"],
    ],
)
def test_checkpoint_naming_a_server_file_refused(
    tmp_path: Path, files: logic.SessionFiles, arch: object
) -> None:
    canary = tmp_path / "canary"
    server_file = tmp_path / "server" / "scripted.pt"
    server_file.parent.mkdir()
    server_file.write_bytes(evil_torchscript(canary))
    if arch == "SERVER_TORCHSCRIPT":
        arch = str(server_file)
    # a torch.save archive: the upload check lets it through, the load refuses it
    choice = logic.model_choice_for_upload(files, "ckpt.pt", _checkpoint(arch), 10)
    with pytest.raises(xs.UnsafeModelError) as info:
        logic.load_model_safely(choice)
    message = str(info.value)
    assert "xaiscope_arch is not a timm:NAME or torchvision:NAME" in message
    assert "ckpt.pt" in message and str(tmp_path) not in message and "\n" not in message
    assert canary.read_bytes() == CLEAN


# --- the "by name" field ----------------------------------------------------------------
def _path_texts(tmp_path: Path, registry: Path) -> list[str]:
    existing = tmp_path / "weights.pt"
    existing.write_bytes(_checkpoint("timm:resnet18"))
    return [
        "/etc/passwd",  # a file that exists
        str(tmp_path),  # a directory
        str(tmp_path / "missing.pt"),  # nothing there
        str(existing),  # a model file that would load
        str(registry),  # the registry folder
        str(registry / "tiny_shapes"),  # a registry entry's folder
        "../x.pt",
        "~/.cache/xaiscope/models/tiny_shapes",
        "model.onnx",
        "weights.pt",
        ".hidden",
        "C:\\models\\net.pt",
        "timm:hf-hub:timm/resnet18",
    ]


def test_by_name_refuses_every_path_with_one_message(tmp_path: Path, registry: Path) -> None:
    messages = set()
    for text in _path_texts(tmp_path, registry):
        with pytest.raises(ModelLoadError) as info:
            logic.model_choice_by_name(text, str(registry))
        messages.add(str(info.value))
    assert messages == {logic.NOT_A_MODEL_NAME}
    # the message names no folder of the server
    assert "/" not in logic.NOT_A_MODEL_NAME and "\n" not in logic.NOT_A_MODEL_NAME
    assert "timm:NAME" in logic.NOT_A_MODEL_NAME and "upload" in logic.NOT_A_MODEL_NAME


@pytest.mark.parametrize(
    "text", ["no_such_model", "timm:", "timm:local-dir:x", "keras:a b", "weights", "tiny shapes"]
)
def test_unknown_names_list_what_is_accepted(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    # a file of that name in the working directory must not be picked up either
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").write_bytes(_checkpoint("timm:resnet18"))
    with pytest.raises(ModelLoadError) as info:
        logic.model_choice_by_name(text, str(registry))
    message = str(info.value)
    assert message == f"unknown model name {text!r}: use {logic.ACCEPTED_NAMES}"
    assert str(registry) not in message and str(tmp_path) not in message


def test_accepted_names_load(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert logic.model_choice_by_name("  ", str(registry)) is None
    embedded = logic.model_choice_by_name("efficientnet_lite0", str(registry), pretrained=True)
    assert embedded is not None and (embedded.spec, embedded.pretrained) == (
        "efficientnet_lite0",
        False,
    )
    timm_choice = logic.model_choice_by_name("timm:resnet18", str(registry))
    assert timm_choice is not None and timm_choice.spec == "timm:resnet18"
    assert logic.load_model_safely(timm_choice).framework == "torch"
    # a registry name: loaded from the registry even when the working directory holds a
    # folder of the same name
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_shapes").mkdir()
    (tmp_path / "tiny_shapes" / "config.json").write_text("{}")
    trained = logic.model_choice_by_name("tiny_shapes", str(registry))
    assert trained is not None and trained.key.startswith("registry:")
    model = logic.load_model_safely(trained)
    assert list(model.labels) == list(xs.datasets.SHAPE_CLASSES)


def test_embedded_model_by_name_loads(effnet: xs.Model) -> None:
    choice = logic.model_choice_by_name("efficientnet_lite0")
    assert choice is not None
    assert logic.load_model_safely(choice).labels == effnet.labels


def test_registry_errors_do_not_show_the_registry_folder(registry: Path) -> None:
    choice = logic.registry_choice("tiny_shapes", str(registry))
    weights = registry / "tiny_shapes" / registry_store.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-8] + b"\x00" * 8)  # changed since saving
    with pytest.raises(XaiscopeError) as info:
        logic.load_model_safely(choice)
    assert "tiny_shapes" in str(info.value) and str(registry) not in str(info.value)
    registry_store.remove_entry("tiny_shapes", registry)
    with pytest.raises(ModelLoadError) as info:
        logic.load_model_safely(choice)
    assert "tiny_shapes" in str(info.value) and str(registry) not in str(info.value)
    assert "/" not in str(info.value)


# --- the page ---------------------------------------------------------------------------
def test_page_refuses_a_path_and_loads_nothing(
    tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("streamlit")
    from tests.app.apptest import start_app

    canary = tmp_path / "canary"
    server_file = tmp_path / "scripted.pt"
    server_file.write_bytes(evil_torchscript(canary))
    monkeypatch.setenv(ENV_MODELS_DIR, str(registry))
    at = start_app()
    at.radio(key="model_source").set_value("By name (timm:, torchvision:, keras:)").run()
    for text in (str(server_file), "/etc/passwd", str(registry / "tiny_shapes"), "../x.pt"):
        at.text_input(key="model_name").set_value(text).run()
        assert not at.exception
        assert [e.value for e in at.error] == [logic.NOT_A_MODEL_NAME]
        assert not any(c.value.startswith("Model:") for c in at.caption)  # nothing loaded
        assert "methods" not in {m.key for m in at.multiselect}
    assert canary.read_bytes() == CLEAN
    at.text_input(key="model_name").set_value("tiny_shapes").run()
    assert not at.exception and not at.error
    assert any(c.value.startswith("Model: tiny_shapes") for c in at.caption)
