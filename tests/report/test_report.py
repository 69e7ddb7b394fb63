"""The HTML report: self-contained, every section, provenance, escaping, metrics, CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xaiscope as xs
from tests.conftest import SmallCNN, rand_images
from xaiscope.report import MetricsUnavailableError, Report, build_report, table_rows
from xaiscope.report import build as report_build
from xaiscope.report.provenance import file_sha256, model_provenance, parameters_sha256


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def test_every_image_is_an_embedded_png_of_the_stated_size(report: Report) -> None:
    html = report.to_html()
    page = parse(html)
    imgs = [a for t, a in page.tags if t == "img"]
    # per image: thumbnail + maps + top-k + 2 activation layers + attention
    assert len(imgs) == len(report.pictures()) == 2 * (1 + 1 + 1 + 2 + 1)
    for attrs in imgs:
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(png)) as im:
            im.load()
            assert im.format == "PNG"
            assert im.size == (int(attrs["width"] or 0), int(attrs["height"] or 0))
            assert im.size[0] > 10 and im.size[1] > 10
            assert np.asarray(im).std() > 0  # not a blank picture
    # nothing is fetched: no external URL in any src/href, no scripts, a strict CSP
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not value.startswith(("http:", "https:", "//", "file:")), (tag, value)
        assert tag not in ("script", "link", "iframe")
    assert "default-src 'none'" in html


def test_sections_and_provenance(report: Report, vit_model: xs.Model) -> None:
    html = report.to_html()
    for anchor in ("predictions", "maps", "metrics", "topk", "activations", "attention",
                   "provenance"):  # fmt: skip
        assert f'id="{anchor}"' in html
    prov = report.provenance
    assert prov["seed"] == 3 and prov["model"]["name"] == "tiny-vit"
    assert prov["model"]["parameters_sha256"] == parameters_sha256(vit_model)
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0] or prov["versions"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    assert {"python", "numpy", "matplotlib", "xaiscope", "timm"} <= set(prov["versions"])
    methods = {r["method"]: r for r in report.methods}
    assert list(methods) == ["gradcam", "attention_rollout", "integrated_gradients"]
    assert methods["integrated_gradients"]["params"]["n_steps"] == 8
    assert methods["attention_rollout"]["params"] == {"head_fusion": "mean", "discard_ratio": 0.5}
    assert all(r["seconds"] > 0 for r in report.methods)
    text = " ".join(parse(html).text)
    assert "n_steps" in text and "discard_ratio" in text and "tiny-vit" in text
    assert "deletion" in text  # the metrics table given
    # predictions are the model's
    pred = vit_model.predict(rand_images(1, size=32, seed=1)[0], top_k=5)
    assert [p["index"] for p in report.images[0].predictions] == pred.indices[0].tolist()


def test_user_and_model_text_is_escaped(report: Report) -> None:
    html = report.to_html()
    assert "<second>" not in html and "&lt;second&gt;.png" in html
    assert "circle <b>" not in html
    assert "square &amp; co" in html or "circle &lt;b&gt;" in html


def test_save_is_atomic_and_complete(report: Report, tmp_path: Path) -> None:
    out = report.save(tmp_path / "sub" / "r.html")
    assert out.read_text(encoding="utf-8") == report.to_html()
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]


def test_file_hash_of_a_model_file(tmp_path: Path) -> None:
    f = tmp_path / "weights.pt"
    f.write_bytes(b"some weights")
    info = model_provenance(xs.wrap(SmallCNN(), input_size=16), str(f))
    assert info["file"] == str(f)
    assert info["file_sha256"] == hashlib.sha256(b"some weights").hexdigest()
    assert file_sha256(tmp_path) != file_sha256(f)  # a folder hashes names and contents
    embedded = model_provenance(object(), "efficientnet_lite0")
    assert len(embedded["file_sha256"]) == 64 and embedded["file"].endswith(".pth")


def test_metrics_flag_without_evaluate_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(report_build, "find_evaluate", lambda: None)
    model = xs.wrap(SmallCNN(), input_size=16)
    with pytest.raises(MetricsUnavailableError, match="xs.evaluate") as info:
        build_report(model, rand_images(1, size=16), methods=["saliency"], metrics=["deletion"])
    assert "\n" not in str(info.value)


def test_metrics_through_evaluate(monkeypatch) -> None:
    calls = []

    def fake_evaluate(model, images, explanation, metrics, masks=None):
        calls.append((explanation.method, tuple(metrics)))
        return {"deletion": [0.1 * len(calls)], "insertion": [0.9]}

    monkeypatch.setattr(report_build, "find_evaluate", lambda: fake_evaluate)
    model = xs.wrap(SmallCNN(), input_size=16)
    r = build_report(
        model, rand_images(1, size=16), methods=["saliency", "gradcam"], metrics=["deletion"]
    )
    assert calls == [("saliency", ("deletion",)), ("gradcam", ("deletion",))]
    assert [row["method"] for row in r.metrics] == ["saliency", "gradcam"]
    assert r.metrics[1]["deletion"] == pytest.approx(0.2)
    assert all("metrics_seconds" in m for m in r.methods)


def test_metrics_with_the_real_evaluate() -> None:
    model = xs.wrap(SmallCNN(), input_size=16)
    images = rand_images(2, size=16, seed=4)
    r = build_report(
        model, images, methods=["saliency", "gradcam"], metrics=["deletion", "insertion"]
    )
    assert [(row["method"], row["metric"]) for row in r.metrics] == [
        ("saliency", "deletion"), ("saliency", "insertion"),
        ("gradcam", "deletion"), ("gradcam", "insertion"),
    ]  # fmt: skip
    ref = xs.evaluate(model, images, xs.explain(model, images, method="gradcam"), ["deletion"])
    assert r.metrics[2]["score"] == pytest.approx(ref.score("gradcam", "deletion"))
    assert "scores" not in r.metrics[0]  # per-image lists stay out of the page
    html = r.to_html()
    assert "insertion" in html and "random_baseline" in html
    with pytest.raises(xs.ParameterError, match="needs ground-truth masks"):
        build_report(model, images, methods=["saliency"], metrics=["pointing_game"])
    with pytest.raises(xs.XaiscopeError, match="unknown metric"):
        build_report(model, images, methods=["saliency"], metrics=["nosuch"])


def test_table_rows_forms() -> None:
    assert table_rows({"a": [1, 2], "b": [3, 4]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
    assert table_rows({"deletion": 0.5}) == [{"deletion": 0.5}]
    assert table_rows({"gradcam": {"x": 1}}) == [{"name": "gradcam", "x": 1}]
    assert table_rows([{"a": np.float32(0.5)}], method="m") == [{"method": "m", "a": 0.5}]
    pd = pytest.importorskip("pandas")
    assert table_rows(pd.DataFrame({"a": [1]})) == [{"a": 1}]
    with pytest.raises(xs.ParameterError):
        table_rows("nonsense")
    with pytest.raises(xs.ParameterError):
        table_rows({"a": [1], "b": [1, 2]})


def test_bad_sections_fail_before_any_work(monkeypatch) -> None:
    model = xs.wrap(SmallCNN(), input_size=16)
    ran = []
    import sys

    # xs.explain (the function) shadows the module's name: patch the module itself
    monkeypatch.setattr(sys.modules["xaiscope.explain"], "explain", lambda *a, **k: ran.append(1))
    img = rand_images(1, size=16)
    with pytest.raises(xs.NotSpatialError, match="'head' has no spatial output"):
        build_report(model, img, methods=["saliency"], activations=["head"])
    with pytest.raises(xs.UnsupportedModelError, match="vision transformer"):
        build_report(model, img, methods=["saliency"], attention=True)
    with pytest.raises(xs.ParameterError, match="beyond"):
        build_report(model, img, methods=["saliency"], topk=[7])
    with pytest.raises(xs.ParameterError, match="unknown parameter"):
        build_report(model, img, methods=["saliency"], params={"n_stepz": 3})
    with pytest.raises(xs.UnknownMethodError):
        build_report(model, img, methods=["nosuch"])
    assert not ran


# ---------------------------------------------------------------------------- CLI
def _run(capsys, *argv: str) -> tuple[int, str, str]:
    from xaiscope.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report_in") / "cat.png"
    Image.fromarray(xs.sample_images(["chelsea"])["chelsea"]).resize((64, 48)).save(path)
    return path


def test_cli_report_writes_one_self_contained_file(capsys, tmp_path, cat_png) -> None:
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps([{"method": "gradcam", "pointing_game": 1.0}]))
    out = tmp_path / "r.html"
    code, stdout, err = _run(
        capsys, "report", str(cat_png), "--method", "gradcam,saliency", "--topk", "1,2,5",
        "--activations", "blocks.0,bn2", "--metrics-file", str(metrics), "--seed", "5",
        "--metrics", "deletion", "--option", "step=0.25", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "r.html"]
    html = out.read_text(encoding="utf-8")
    page = parse(html)
    assert len([a for t, a in page.tags if t == "img"]) == 1 + 1 + 1 + 2
    text = " ".join(page.text)
    assert "Egyptian cat" in text or "tabby" in text
    assert "pointing_game" in text and "efficientnet_lite0" in text
    assert "deletion" in text and "random_baseline" in text  # computed by xs.evaluate
    assert "file_sha256" in text  # the embedded model's weights file is hashed
    assert "layer bn2 (spatial, 1280x7x7)" in text  # the caption of its channel grid


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--activations", "classifier"], "no spatial output"),
        (["--attention"], "vision transformer"),
        (["--topk", "0,1"], "positive"),
        (["--topk", "x"], "--topk"),
        (["--method", "attention_rollout"], "vision transformer"),
        (["--metrics-file", "missing.json"], "--metrics-file"),
        (["--param", "n_stepz=3", "--method", "ig"], "n_stepz"),
        (["--activations", "no_such_layer"], "unknown layer"),
        (["--metrics", "nosuch"], "unknown metric"),
        (["--metrics", "pointing_game"], "masks"),
        (["--metrics", "deletion", "--option", "nosuch=1"], "unknown option"),
        (["--option", "step=0.1"], "--metrics"),
    ],
)
def test_cli_report_bad_input_one_line_exit_2(capsys, tmp_path, cat_png, argv, expected) -> None:
    out = tmp_path / "r.html"
    code, stdout, err = _run(capsys, "report", str(cat_png), "--out", str(out), *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("xaiscope: error: "), err
    assert expected in lines[0]
    assert "Traceback" not in err + stdout
    assert not out.exists()


def test_cli_metrics_flag_while_evaluate_is_missing(capsys, tmp_path, cat_png, monkeypatch) -> None:
    monkeypatch.setattr(report_build, "find_evaluate", lambda: None)
    out = tmp_path / "r.html"
    code, _, err = _run(capsys, "report", str(cat_png), "--metrics", "deletion", "--out", str(out))
    assert code == 2 and "xs.evaluate" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
