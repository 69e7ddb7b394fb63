"""The app's logic without a browser: uploads checked by content, models loaded safely,
runs equal to the API, downloads that round-trip, one run at a time per model."""

from __future__ import annotations

import gc
import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import xaiscope as xs
from tests.app.uploads import bomb_png, not_an_image, pickle_payload, png, torch_zip_payload
from xaiscope.app import logic, streamlit_command
from xaiscope.app.logic import UploadError


# --- images --------------------------------------------------------------------------------
def test_image_upload_decoded_by_content(chelsea: np.ndarray) -> None:
    # a PNG named .jpg is still read: the name does not decide the decoder
    out = logic.read_image_upload("cat.jpg", png(chelsea))
    assert np.array_equal(out, chelsea)


@pytest.mark.parametrize(
    ("data", "words"),
    [(not_an_image(), "not an image"), (bomb_png(), "decompression bomb")],
    ids=["text renamed .png", "decompression bomb"],
)
def test_bad_image_uploads_refused_with_one_line(data: bytes, words: str) -> None:
    with pytest.raises(xs.ImageLoadError) as info:
        logic.read_image_upload("photo.png", data)
    message = str(info.value)
    assert words in message and "'photo.png'" in message and "\n" not in message


def test_upload_size_limit() -> None:
    with pytest.raises(UploadError, match="over the upload limit of 0.001 MB"):
        logic.read_image_upload("big.png", b"\x89PNG" + b"\x00" * 2000, max_mb=0.001)


# --- model files ---------------------------------------------------------------------------
def _scripted_bytes() -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())), buf)
    return buf.getvalue()


def test_sniff_model_by_content() -> None:
    ts = _scripted_bytes()
    for name in ("net.pt", "net.keras"):
        with pytest.raises(UploadError, match="TorchScript, which is code"):
            logic.sniff_model(name, ts)
    ckpt = io.BytesIO()
    torch.save({"xaiscope_arch": "timm:resnet18", "state_dict": {}}, ckpt)
    assert logic.sniff_model("net.pt", ckpt.getvalue()) == ".pt"
    with pytest.raises(UploadError, match="PyTorch archive, not what its name"):
        logic.sniff_model("net.keras", ckpt.getvalue())
    keras_like = io.BytesIO()
    with zipfile.ZipFile(keras_like, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"")
    assert logic.sniff_model("m.keras", keras_like.getvalue()) == ".keras"
    h5 = b"\x89HDF\r\n\x1a\n" + b"\x00" * 32
    assert logic.sniff_model("m.h5", h5) == ".h5"
    with pytest.raises(UploadError, match="HDF5"):
        logic.sniff_model("m.pt", h5)
    with pytest.raises(UploadError, match="not a model file"):
        logic.sniff_model("m.onnx", b"\x08garbage that is not protobuf")
    with pytest.raises(UploadError, match="not a model file name"):
        logic.sniff_model("m.txt", ts)


def test_onnx_upload_recognised() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    data = helper.make_model(graph).SerializeToString()
    assert onnx.load_model_from_string(data) is not None
    assert logic.sniff_model("m.onnx", data) == ".onnx"


def test_pickle_payloads_never_run(tmp_path: Path) -> None:
    files = logic.SessionFiles()
    try:
        marker = tmp_path / "pwned"
        with pytest.raises(UploadError, match="plain Python pickle"):
            logic.model_choice_for_upload(files, "evil.pt", pickle_payload(marker), 10)
        # the same payload inside a torch.save archive gets through the sniffing, and the
        # loader (weights_only=True) refuses it
        choice = logic.model_choice_for_upload(files, "evil.pt", torch_zip_payload(marker), 10)
        with pytest.raises(xs.ModelLoadError) as info:
            logic.load_model_safely(choice)
        assert "evil.pt" in str(info.value) and str(files.path) not in str(info.value)
        assert not marker.exists()
    finally:
        files.cleanup()


def test_uploaded_torchscript_model_refused() -> None:
    # TorchScript is code (tests/app/test_app_security.py shows a file that writes one)
    files = logic.SessionFiles()
    try:
        with pytest.raises(UploadError, match="the app does not load TorchScript"):
            logic.model_choice_for_upload(files, "tiny.pt", _scripted_bytes(), 10)
        assert not any(files.path.iterdir())
    finally:
        files.cleanup()


def test_uploaded_xaiscope_checkpoint_loads(tmp_path: Path) -> None:
    from xaiscope.models.loaders import save_checkpoint

    model = xs.load_model("timm:resnet18", num_classes=3, labels=["a", "b", "c"])
    path = save_checkpoint(model, tmp_path / "ckpt.pt", "timm:resnet18")
    files = logic.SessionFiles()
    try:
        choice = logic.model_choice_for_upload(files, "ckpt.pt", path.read_bytes(), 200)
        loaded = logic.load_model_safely(choice)
        assert loaded.labels == ["a", "b", "c"]
        x = torch.rand(1, 3, 64, 64)
        torch.testing.assert_close(loaded.module(x), model.module(x))
    finally:
        files.cleanup()


def test_session_folder_removed_on_cleanup_and_garbage_collection() -> None:
    files = logic.SessionFiles()
    path = files.write("a.png", b"x")
    assert path.exists() and path.parent == files.path and path.name != "a.png"
    files.cleanup()
    assert not files.path.exists()
    other = logic.SessionFiles()
    folder = other.path
    other.write("b.pt", b"y")
    del other
    gc.collect()
    assert not folder.exists()


# --- runs ----------------------------------------------------------------------------------
def test_run_equals_the_api(effnet: xs.Model, chelsea: np.ndarray) -> None:
    request = logic.RunRequest(
        images=(("chelsea", chelsea),),
        methods=("gradcam", "saliency", "occlusion"),
        params={"occlusion": {"window": 64, "stride": 64}},
        targets="top2",
    )
    seen: list[float] = []
    result = logic.run(effnet, request, lambda f, _t: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0
    # 3 steps (predictions, the shared gradcam+saliency pass, occlusion); occlusion's chunks
    # move the bar within its step, not only at 1/3 and 2/3
    assert any(abs(f * 3 - round(f * 3)) > 1e-6 for f in seen)
    (res,) = result.images
    assert not res.errors
    assert [label for label, _ in res.top5][0] == effnet.predict(chelsea).labels[0][0]
    probs = [p for _, p in res.top5]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # 3 methods x 2 classes, each equal to xs.explain with the same settings
    assert sorted((e.method, int(e.targets[0])) for e in res.explanations) == sorted(
        (m, int(t)) for m in request.methods for t in effnet.predict(chelsea, top_k=2).indices[0]
    )
    occ = [e for e in res.explanations if e.method == "occlusion"]
    ref = xs.explain(effnet, chelsea, "occlusion", target="top2", window=64, stride=64, seed=0)
    ref_maps = {int(e.targets[0]): e.map(0) for e in ([ref] if not isinstance(ref, list) else ref)}
    for e in occ:
        np.testing.assert_allclose(e.map(0), ref_maps[int(e.targets[0])], rtol=1e-5, atol=1e-6)


def test_run_records_a_failing_method_and_runs_the_others(
    effnet: xs.Model, chelsea: np.ndarray
) -> None:
    request = logic.RunRequest(
        images=(("chelsea", chelsea),),
        methods=("gradcam", "integrated_gradients"),
        params={"integrated_gradients": {"rule": "bogus"}},
        targets=(285, 281),
        activation_layer="blocks.2",
        metrics=("sparseness",),
    )
    (res,) = logic.run(effnet, request).images
    assert len(res.errors) == 1 and "integrated_gradients" in res.errors[0]
    assert "bogus" in res.errors[0]
    assert sorted(int(e.targets[0]) for e in res.explanations) == [281, 285]
    assert res.activations is not None and res.activations.layer == "blocks.2"
    assert {(r["method"], r["metric"]) for r in res.metrics} == {("gradcam", "sparseness")}


def test_downloads_round_trip(effnet: xs.Model, chelsea: np.ndarray) -> None:
    request = logic.RunRequest(images=(("cat 1", chelsea),), methods=("gradcam", "saliency"))
    result = logic.run(effnet, request)
    with np.load(io.BytesIO(logic.maps_npz(result))) as npz:
        for exp in result.images[0].explanations:
            key = logic.map_key("cat 1", exp)
            np.testing.assert_array_equal(npz[key], exp.map(0))
            assert int(npz[f"{key}/target"][0]) == int(exp.targets[0])
    with zipfile.ZipFile(io.BytesIO(logic.overlays_zip(result, alpha=0.3))) as zf:
        names = zf.namelist()
        assert len(names) == 2 and all(n.startswith("cat 1/") for n in names)
        im = Image.open(io.BytesIO(zf.read(names[0])))
        assert im.size == (chelsea.shape[1], chelsea.shape[0])


def test_report_built_from_the_same_request(effnet: xs.Model, chelsea: np.ndarray) -> None:
    request = logic.RunRequest(
        images=(("chelsea", chelsea),), methods=("gradcam",), targets="top2", report=True
    )
    result = logic.run(effnet, request)
    assert result.report_html is not None and result.report_html.startswith("<!DOCTYPE html>")
    assert "gradcam" in result.report_html and "chelsea" in result.report_html


# --- jobs ----------------------------------------------------------------------------------
def test_jobs_on_one_model_never_overlap(effnet: xs.Model, chelsea: np.ndarray) -> None:
    request = logic.RunRequest(images=(("c", chelsea),), methods=("gradcam",))
    lock = logic.model_lock(effnet)
    with lock:  # another session's run holds the model
        job = logic.Job(effnet, request)
        time.sleep(0.2)
        assert not job.done and "waiting" in job.text
    assert job.wait(120)
    assert job.error is None and job.result is not None
    assert len(job.result.images[0].explanations) == 1
    assert not lock.locked()
    assert all(t.name != "xaiscope-app-job" for t in threading.enumerate())


def test_job_reports_errors_as_one_line(effnet: xs.Model, chelsea: np.ndarray) -> None:
    request = logic.RunRequest(images=(("c", chelsea),), methods=("gradcam",), layer="nope")
    job = logic.Job(effnet, request)
    assert job.wait(120)
    assert job.result is not None
    (line,) = job.result.images[0].errors
    assert "nope" in line and "\n" not in line


# --- launching -----------------------------------------------------------------------------
def test_streamlit_command_is_safe_by_default() -> None:
    cmd = streamlit_command(port=8600, max_upload_mb=2.5)
    opts = dict(zip(cmd[5::2], cmd[6::2]))
    assert opts["--server.enableXsrfProtection"] == "true"
    assert opts["--server.maxUploadSize"] == "3"
    assert opts["--client.showErrorDetails"] == "none"
    assert opts["--server.port"] == "8600"
    assert opts["--browser.gatherUsageStats"] == "false"
