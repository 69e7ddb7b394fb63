"""The page's logic through Streamlit's AppTest (no browser): defaults, a run, class
choice, uploads good and bad, parameter errors, all shown without a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")

from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.app.apptest import captions, start_app, uploader  # noqa: E402
from tests.app.uploads import bomb_png, not_an_image, pickle_payload, png  # noqa: E402
from xaiscope.app import ENV_MAX_UPLOAD_MB  # noqa: E402


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(ENV_MAX_UPLOAD_MB, "5")
    return start_app()


def test_first_page_offers_the_registry(app: AppTest) -> None:
    from xaiscope.methods import method_names

    methods = app.multiselect(key="methods")
    assert methods.value == ["gradcam"]
    # every registry method the embedded CNN supports is offered (no second list)
    assert set(methods.options) == set(method_names()) - {"attention_rollout"}
    assert app.multiselect(key="samples").value == ["chelsea"]
    assert not app.error and app.button(key="explain").disabled is False


def test_explain_shows_top5_maps_and_downloads(app: AppTest) -> None:
    app.multiselect(key="methods").set_value(["gradcam", "saliency"])
    app.slider(key="topk").set_value(2)
    app.button(key="explain").click().run()
    assert not app.exception and not app.error
    table = app.table[0].value
    assert list(table["class"])[0] == "Egyptian cat" and len(table) == 5
    shown = captions(app)
    # the photo, then 2 methods x 2 classes
    assert sorted(c for c in shown if c != "chelsea") == ["gradcam"] * 2 + ["saliency"] * 2
    assert {d.label for d in app.get("download_button")} >= {"Maps (.npz)", "Overlays (PNG, zip)"}
    assert app.button(key="explain").disabled is False  # enabled again after the run
    # moving the opacity slider redraws without running again
    app.slider(key="opacity").set_value(0.8).run()
    assert sorted(captions(app)) == sorted(shown)


def test_chosen_classes_and_signed_view(app: AppTest) -> None:
    app.radio(key="target_mode").set_value("Chosen classes").run()
    options = app.multiselect(key="classes").options
    assert len(options) == 1000 and "285: Egyptian cat" in options
    app.multiselect(key="classes").set_value(
        ["285: Egyptian cat", "1: goldfish, Carassius auratus"]
    )
    app.multiselect(key="methods").set_value(["gradient_x_input"])
    app.button(key="explain").click().run()
    assert not app.exception and not app.error
    whys = [m.value for m in app.markdown if m.value.startswith("**Why")]
    assert any("Egyptian cat" in w for w in whys) and any("goldfish" in w for w in whys)
    app.checkbox(key="signed").check().run()
    assert captions(app).count("gradient_x_input (signed)") == 2


def test_bad_parameter_is_one_line(app: AppTest) -> None:
    app.multiselect(key="methods").set_value(["integrated_gradients"]).run()
    app.number_input(key="param:integrated_gradients:n_steps").set_value(0)
    app.button(key="explain").click().run()
    assert not app.exception
    (error,) = [e.value for e in app.error]
    assert "n_steps" in error and "\n" not in error


@pytest.mark.parametrize(
    ("data", "words"),
    [(not_an_image(), "not an image"), (bomb_png(), "decompression bomb")],
    ids=["text renamed .png", "decompression bomb"],
)
def test_bad_image_upload_shows_a_message(app: AppTest, data: bytes, words: str) -> None:
    uploader(app, "image_uploads").set_value(("holiday.png", data, "image/png"))
    app.run()
    assert not app.exception
    assert any(words in e.value and "holiday.png" in e.value for e in app.error)
    # the app still works: the sample photo is explained
    app.button(key="explain").click().run()
    assert "gradcam" in captions(app)


def test_good_image_upload_is_explained(app: AppTest, photos: dict[str, np.ndarray]) -> None:
    uploader(app, "image_uploads").set_value(
        [
            ("coffee.png", png(photos["coffee"]), "image/png"),
            ("cat.png", png(photos["chelsea"]), "image/png"),
        ]
    )
    app.multiselect(key="samples").set_value([])
    app.button(key="explain").click().run()
    assert [s.value for s in app.subheader][:2] == ["coffee.png", "cat.png"]


def test_pickle_model_upload_refused(app: AppTest, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    app.radio(key="model_source").set_value("Upload a model file").run()
    uploader(app, "model_upload").set_value(
        ("model.pt", pickle_payload(marker), "application/octet-stream")
    )
    app.run()
    assert not app.exception and not marker.exists()
    assert any("plain Python pickle" in e.value for e in app.error)
