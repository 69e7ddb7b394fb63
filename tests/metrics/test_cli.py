"""``xaiscope evaluate`` and ``xaiscope compare``: files written, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xaiscope as xs
from xaiscope.cli.main import main
from xaiscope.models import registry_store
from xaiscope.train import build_arch

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with an (untrained, seeded) small_cnn for 32 px shapes: ``tiny_shapes``."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    module = build_arch("small_cnn", 5, (32, 32))
    registry_store.save_entry(
        "tiny_shapes", module, arch="small_cnn", labels=list(xs.datasets.SHAPE_CLASSES),
        input_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
        models_dir_path=root,
    )  # fmt: skip
    return root


@pytest.fixture(autouse=True)
def _registry_env(registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAISCOPE_MODELS", str(registry))


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_on_shapes_writes_scores_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    code, stdout, err = _run(
        capsys, "evaluate", "--model", "tiny_shapes", "--data", "shapes", "--n-images", 6,
        "--method", "gradcam,saliency",
        "--metrics", "deletion,pointing_game,sparseness,sanity_model_randomization",
        "--option", "step=0.1", "--option", "sanity_model_randomization.max_steps=3",
        "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0, err
    rows = _csv(out / "scores.csv")
    assert {(r["method"], r["metric"]) for r in rows} >= {
        ("gradcam", "deletion"), ("saliency", "pointing_game"), ("gradcam", "sparseness"),
        ("saliency", "sanity_model_randomization.ssim"),
    }  # fmt: skip
    assert all(r["random_baseline"] != "" for r in rows)
    data = json.loads((out / "scores.json").read_text())
    assert len(data["images"]) == 6 and data["masks"] is True
    assert len(data["details"]["gradcam/deletion"]["method"]["x"]) == 11  # step 0.1
    sanity = data["details"]["saliency/sanity_model_randomization"]["method"]
    assert len(sanity["layers"]) == 3  # max_steps
    per_image = _csv(out / "scores_per_image.csv")
    assert len(per_image) == len(rows) * 6 and per_image[0]["image_id"] == "shapes_0"
    for name in ("scores.png", "curves.png", "sanity.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert "pointing_game" in stdout and "random_baseline" in stdout


def test_evaluate_image_files_with_a_mask_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = xs.datasets.shapes(2, 32, seed=5)
    paths = []
    for i, im in enumerate(data.images):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(im).save(paths[-1])
    np.save(tmp_path / "masks.npy", data.masks)
    out = tmp_path / "eval"
    code, _, err = _run(
        capsys, "evaluate", *paths, "--model", "tiny_shapes", "--masks", tmp_path / "masks.npy",
        "--method", "gradcam", "--metrics", "pointing_game,relevance_rank", "--out", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    assert [r["metric"] for r in _csv(out / "scores.csv")] == [
        "pointing_game", "pointing_game.strict", "relevance_rank",
    ]  # fmt: skip
    assert not (out / "curves.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "delition"], "unknown metric 'delition'; valid metrics: deletion"),
        (["--metrics", "pointing_game"], "pointing_game needs ground-truth masks"),
        (["--masks", "{bad_masks}"], "mask 0 has shape (8, 8) but image 0 is 32x32"),
        (["--masks", "{missing}"], "no such file"),
        (["--option", "stepp=3"], "unknown option 'stepp'"),
        (["--option", "deletion.step=2.5"], "step as a fraction must be in (0, 1]"),
        (["--method", "gradcm"], "unknown method 'gradcm'"),
        (["--target", "top3"], "one target per image"),
    ],
)
def test_evaluate_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    image = tmp_path / "a.png"
    Image.fromarray(xs.datasets.shapes(1, 32, seed=1).images[0]).save(image)
    np.save(tmp_path / "bad.npy", np.zeros((1, 8, 8), bool))
    subst = {"{bad_masks}": str(tmp_path / "bad.npy"), "{missing}": str(tmp_path / "no.npy")}
    args = [subst.get(a, a) for a in args]
    code, stdout, err = _run(
        capsys, "evaluate", image, "--model", "tiny_shapes", "--method", "gradcam",
        "--out", tmp_path / "o", "-q", *args,
    )  # fmt: skip
    assert code == 2
    assert err.startswith("xaiscope: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_compare_computed_and_saved_explanations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    code, stdout, err = _run(
        capsys, "compare", "--model", "tiny_shapes", "--data", "shapes", "--n-images", 4,
        "--method", "gradcam,gradcam++,saliency", "--out", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    rows = _csv(out / "agreement.csv")
    assert [(r["method_a"], r["method_b"]) for r in rows] == [
        ("gradcam", "gradcam++"), ("gradcam", "saliency"), ("gradcam++", "saliency"),
    ]  # fmt: skip
    assert len(_csv(out / "agreement_per_image.csv")) == 3 * 4
    assert [r["method"] for r in _csv(out / "summary.csv")] == ["gradcam", "gradcam++", "saliency"]
    for name in ("histograms.png", "scatter.png", "agreement.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert "spearman" in stdout and "share_above_threshold" in stdout

    # saved explanations (as `xaiscope explain` writes them)
    model = xs.load_model("tiny_shapes")
    images = xs.datasets.shapes(3, 32, seed=8).images
    a = xs.explain(model, images, method="gradcam").save(tmp_path / "a.npz")
    b = xs.explain(model, images, method="layercam").save(tmp_path / "b.npz")
    code, _, err = _run(capsys, "compare", "--explanations", a, b, "--out", tmp_path / "c2", "-q")
    assert code == 0, err
    assert [(r["method_a"], r["method_b"]) for r in _csv(tmp_path / "c2" / "agreement.csv")] == [
        ("a", "b")
    ]
    # explanations of other images: one line, exit 2
    c = xs.explain(model, xs.datasets.shapes(3, 32, seed=9).images, method="gradcam",
                   target=list(np.load(a)["targets"])).save(tmp_path / "c.npz")  # fmt: skip
    code, _, err = _run(capsys, "compare", "--explanations", a, c, "--out", tmp_path / "c3")
    assert code == 2 and "different images" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "compare", "--explanations", a, "--method", "gradcam",
                        "--out", tmp_path / "c4")  # fmt: skip
    assert code == 2 and "at least two" in err  # one saved file: compare needs two


def test_list_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(capsys, "evaluate", "--list-metrics")
    assert code == 0
    for name in xs.metric_names():
        assert f"\n{name}" in f"\n{stdout}"
    assert "pointing_game  [localization, higher is better]" in stdout
    assert "needs: masks; options: tolerance=None" in stdout
