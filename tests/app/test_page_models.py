"""The page with every kind of model and image source (AppTest): an uploaded ONNX black box
gets the perturbation and layer methods only, a trained registry model, a timm name (and its
offline error), a start-up image folder, and the activations, metrics and report options."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("streamlit")


import xaiscope as xs  # noqa: E402
from tests.app.apptest import captions, start_app, uploader  # noqa: E402
from tests.app.uploads import not_an_image, png  # noqa: E402
from tests.conftest import SmallCNN  # noqa: E402
from xaiscope.app import ENV_IMAGES, ENV_MODELS_DIR  # noqa: E402
from xaiscope.models import registry_store  # noqa: E402
from xaiscope.train import build_arch  # noqa: E402


def test_onnx_upload_is_a_black_box(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SmallCNN().eval(),
            (torch.rand(1, 3, 16, 16),),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    at = start_app()
    at.radio(key="model_source").set_value("Upload a model file").run()
    uploader(at, "model_upload").set_value(
        ("cnn.onnx", path.read_bytes(), "application/octet-stream")
    )
    at.run()
    assert not at.exception and not at.error
    options = set(at.multiselect(key="methods").options)
    assert {"occlusion", "lime", "rise", "scorecam"} <= options
    assert not options & {"saliency", "gradcam", "integrated_gradients"}  # no gradients
    at.multiselect(key="methods").set_value(["occlusion"]).run()
    at.number_input(key="param:occlusion:window").set_value(4)
    at.number_input(key="param:occlusion:stride").set_value(4)
    at.button(key="explain").click().run()
    assert not at.exception and not at.error
    assert "occlusion" in captions(at)
    assert any("onnx" in c.value for c in at.caption)


def test_registry_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    registry_store.save_entry(
        "tiny_shapes", build_arch("small_cnn", 5, (32, 32)), arch="small_cnn",
        labels=list(xs.datasets.SHAPE_CLASSES), input_size=(32, 32), mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25), models_dir_path=tmp_path,
    )  # fmt: skip
    monkeypatch.setenv(ENV_MODELS_DIR, str(tmp_path))
    at = start_app()
    at.radio(key="model_source").set_value("Trained model (registry)").run()
    assert at.selectbox(key="registry_model").options == ["tiny_shapes"]
    at.button(key="explain").click().run()
    assert not at.exception and not at.error
    assert "gradcam" in captions(at)
    assert list(at.table[0].value["class"])[0] in xs.datasets.SHAPE_CLASSES


def test_model_by_name_and_the_offline_error() -> None:
    at = start_app()
    at.radio(key="model_source").set_value("By name (timm:, torchvision:, keras:)").run()
    at.text_input(key="model_name").set_value("timm:resnet18").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="layer").value == "layer4"
    at.checkbox(key="pretrained").check().run()
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "resnet18" in error and "\n" not in error
    at.text_input(key="model_name").set_value("timm:no_such_net").run()
    (error,) = [e.value for e in at.error]
    assert "no_such_net" in error


def test_folder_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photos: dict) -> None:
    (tmp_path / "rocket.png").write_bytes(png(photos["rocket"]))
    (tmp_path / "broken.png").write_bytes(not_an_image())
    (tmp_path / "notes.txt").write_text("not offered")
    monkeypatch.setenv(ENV_IMAGES, str(tmp_path))
    at = start_app()
    assert at.multiselect(key="folder_images").options == ["broken.png", "rocket.png"]
    at.multiselect(key="folder_images").set_value(["rocket.png", "broken.png"])
    at.multiselect(key="samples").set_value([])
    at.button(key="explain").click().run()
    assert not at.exception
    assert any("broken.png" in e.value and "not an image" in e.value for e in at.error)
    assert [s.value for s in at.subheader][0] == "rocket.png"


def test_activations_metrics_and_report() -> None:
    at = start_app()
    at.selectbox(key="activation_layer").set_value("blocks.2")
    at.multiselect(key="metrics").set_value(["sparseness"])
    at.checkbox(key="report").check()
    at.button(key="explain").click().run()
    assert not at.exception and not at.error
    assert any("Activations of blocks.2" in m.value for m in at.markdown)
    assert len(at.get("imgs")) + len(at.image) >= 2
    (table,) = at.dataframe
    assert list(table.value["metric"]) == ["sparseness"]
    assert np.isfinite(table.value["score"]).all()
    assert "HTML report" in {d.label for d in at.get("download_button")}
