"""``xs.evaluate``: inputs, the table it returns, typed errors, and what it never changes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.conftest import SmallCNN, identity_wrap, rand_images
from tests.metrics.conftest import rect_masks
from xaiscope.metrics import ScoreTable


@pytest.fixture(scope="module")
def small() -> dict:
    model = identity_wrap(SmallCNN(classes=3), size=12)
    images = rand_images(6, size=12, seed=1)
    masks = rect_masks(6, 12, seed=2)
    exp = xs.explain(model, images, method="saliency")
    return {"model": model, "images": images, "masks": masks, "exp": exp}


def test_table_rows_columns_and_writers(small: dict, tmp_path: Path) -> None:
    ev = xs.evaluate(
        small["model"], small["images"], small["exp"],
        metrics=["deletion", "pointing_game", "sparseness"], masks=small["masks"], step=0.1,
    )  # fmt: skip
    assert isinstance(ev, xs.Evaluation) and isinstance(ev, ScoreTable)
    metrics = [r["metric"] for r in ev]
    assert metrics == ["deletion", "pointing_game", "pointing_game.strict", "sparseness"]
    row = ev.get(method="saliency", metric="deletion")
    assert row["higher_is_better"] is False and row["category"] == "faithfulness"
    assert len(row["scores"]) == 6 and row["score"] == pytest.approx(np.mean(row["scores"]))
    assert len(row["random_scores"]) == 6 and len(row["gaussian_scores"]) == 6
    assert row["random_baseline"] == pytest.approx(np.mean(row["random_scores"]))
    assert ev.score("saliency", "sparseness") == ev.get(metric="sparseness")["score"]

    text = str(ev)
    assert "random_baseline" in text and "pointing_game" in text and "scores" not in text
    assert "<table>" in ev._repr_html_()
    csv_text = ev.to_csv(tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text() == csv_text
    header = csv_text.splitlines()[0].split(",")
    assert header[:3] == ["method", "metric", "score"] and "random_scores" in header
    data = json.loads(ev.to_json(tmp_path / "s.json"))
    assert data["rows"][0]["metric"] == "deletion" and data["images"] == 6
    assert len(data["details"]["saliency/deletion"]["method"]["x"]) == 11  # step 0.1
    assert ev.to_dict()["columns"][0] == "method"
    long = ev.per_image()
    assert len(long) == 4 * 6 and long[0]["image"] == 0
    pd = pytest.importorskip("pandas")
    frame = ev.to_pandas()
    assert isinstance(frame, pd.DataFrame) and frame.shape[0] == 4


def test_default_metrics_follow_what_the_inputs_allow(small: dict) -> None:
    no_masks = xs.evaluate(
        small["model"], small["images"], small["exp"], baselines=False, n_samples=2, step=0.25
    )
    names = {r["metric"] for r in no_masks}
    assert "pointing_game" not in names and "relevance_mass" not in names
    assert {"deletion", "insertion", "morf", "lerf", "max_sensitivity", "sparseness"} <= names
    assert "sanity_model_randomization.ssim" in names  # extra statistics get their own rows
    assert all(r["random_baseline"] is None for r in no_masks)
    # maps without a model: only what maps and masks allow
    only_maps = xs.evaluate(None, small["images"], small["exp"].maps, masks=small["masks"],
                            targets=[0] * 6)  # fmt: skip
    assert {r["metric"] for r in only_maps} == {
        "pointing_game", "pointing_game.strict", "energy_pointing_game", "relevance_mass",
        "relevance_rank", "sparseness", "complexity",
    }  # fmt: skip


def test_several_explanations_datasets_and_explainers() -> None:
    data = xs.datasets.shapes(4, 32, seed=3)
    model = identity_wrap(SmallCNN(classes=5), size=32)
    exps = xs.explain(model, data.images, methods=["saliency", "gradcam"])
    ev = xs.evaluate(model, data, exps, metrics=["relevance_mass"])  # masks from the dataset
    assert [r["method"] for r in ev] == ["saliency", "gradcam"]
    # the same random reference for both: computed once for the same targets
    assert ev[0]["random_scores"] == ev[1]["random_scores"]
    named = xs.evaluate(model, data, {"a": exps[0], "b": exps[0]}, metrics=["sparseness"])
    assert [r["method"] for r in named] == ["a", "b"] and named[0]["score"] == named[1]["score"]

    def constant(model: object, images: list, targets: np.ndarray) -> list:
        return [np.ones(im.shape[:2]) for im in images]

    ev = xs.evaluate(model, data, constant, metrics=["sparseness", "max_sensitivity"])
    assert ev[0]["method"] == "constant" and ev[0]["score"] == pytest.approx(0.0)
    assert ev.get(metric="max_sensitivity")["score"] == 0.0


def test_errors_are_typed_and_say_what_is_valid(small: dict) -> None:
    model, images, exp, masks = small["model"], small["images"], small["exp"], small["masks"]
    with pytest.raises(xs.UnknownMetricError, match="valid metrics: deletion, insertion"):
        xs.evaluate(model, images, exp, metrics=["delition"])
    with pytest.raises(xs.MaskError, match="needs ground-truth masks"):
        xs.evaluate(model, images, exp, metrics=["pointing_game"])
    with pytest.raises(xs.MaskError, match="mask 0 has shape \\(8, 8\\) but image 0 is 12x12"):
        xs.evaluate(model, images, exp, metrics=["pointing_game"], masks=masks[:, :8, :8])
    with pytest.raises(xs.MaskError, match="got 5 masks for 6 images"):
        xs.evaluate(model, images, exp, metrics=["pointing_game"], masks=masks[:5])
    with pytest.raises(xs.ParameterError, match="unknown option.*valid: blur_sigma, fill"):
        xs.evaluate(model, images, exp, metrics=["deletion"], stepp=0.1)
    with pytest.raises(xs.ParameterError, match="fill"):
        xs.evaluate(model, images, exp, metrics=["deletion"], fill="purple")
    with pytest.raises(xs.ParameterError, match="step as a fraction must be in"):
        xs.evaluate(model, images, exp, metrics=["deletion"], step=1.5)
    with pytest.raises(xs.ExplanationMismatchError, match="6 maps for 5 images"):
        xs.evaluate(model, images[:5], exp, metrics=["sparseness"])
    with pytest.raises(xs.ParameterError, match="not a registered method: pass explainer"):
        xs.evaluate(model, images, exp.maps, metrics=["max_sensitivity"])
    blackbox = xs.wrap(lambda batch: np.ones((len(batch), 3)), labels=["a", "b", "c"],
                       input_size=12)  # fmt: skip
    with pytest.raises(xs.UnsupportedModelError, match="PyTorch"):
        xs.evaluate(blackbox, images, exp, metrics=["sanity_model_randomization"])


def test_forward_only_metrics_run_on_black_boxes(small: dict) -> None:
    module = small["model"].module

    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return module(x).numpy()

    box = xs.wrap(predict, labels=["a", "b", "c"], input_size=12)
    ev = xs.evaluate(box, small["images"], small["exp"], metrics=["deletion"], step=0.25,
                     baselines=False)  # fmt: skip
    same = xs.evaluate(small["model"], small["images"], small["exp"], metrics=["deletion"],
                       step=0.25, baselines=False)  # fmt: skip
    # the black box sees uint8 images: close, not bit-identical
    assert ev[0]["score"] == pytest.approx(same[0]["score"], abs=0.02)


def test_sanity_check_never_touches_the_users_model_or_rng(small: dict) -> None:
    model = small["model"]
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    ev = xs.evaluate(model, small["images"], small["exp"],
                     metrics=["sanity_model_randomization"], seed=7)  # fmt: skip
    assert torch.equal(torch.rand(3), expected_next)
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    details = ev.details[("saliency", "sanity_model_randomization")]["method"]
    assert details["layers"] == ["head", "features.4", "features.1", "features.0"]
    assert len(details["spearman_abs"]) == 4 and len(details["spearman_abs"][0]) == 6
    row = ev.get(metric="sanity_model_randomization")
    assert row["scores"] == pytest.approx(details["spearman_abs"][-1])
    # the same seed gives the same randomised models
    again = xs.evaluate(model, small["images"], small["exp"],
                        metrics=["sanity_model_randomization"], seed=7)  # fmt: skip
    assert again[0]["scores"] == row["scores"]


def test_nan_scores_are_left_out_and_written_as_null(small: dict) -> None:
    zero = np.zeros((6, 12, 12))
    zero[0, 3, 3] = 1.0  # one map with signal, five all-zero maps (no Gini)
    ev = xs.evaluate(None, small["images"], zero, metrics=["sparseness"], targets=[0] * 6)
    row = ev[0]
    assert row["n_images"] == 1 and row["score"] == pytest.approx(143 / 144)
    assert row["scores"][1] is None
    assert json.loads(ev.to_json())["rows"][0]["scores"][1] is None
    assert not math.isnan(row["score"])
