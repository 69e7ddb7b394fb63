"""``xs.compare``: agreement statistics, the same-images check, the plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

import xaiscope as xs
from tests.conftest import SmallCNN, identity_wrap, rand_images


@pytest.fixture(scope="module")
def exps() -> list[xs.Explanation]:
    model = identity_wrap(SmallCNN(classes=4), size=16)
    images = rand_images(5, size=16, seed=4)
    out = xs.explain(model, images, methods=["saliency", "gradcam", "gradient_x_input"])
    assert isinstance(out, list)
    return out


def test_pairs_statistics_and_summary(exps: list[xs.Explanation], tmp_path: Path) -> None:
    cmp = xs.compare(exps)
    assert isinstance(cmp, xs.Comparison)
    assert [(r["method_a"], r["method_b"]) for r in cmp] == [
        ("saliency", "gradcam"), ("saliency", "gradient_x_input"), ("gradcam", "gradient_x_input"),
    ]  # fmt: skip
    # Grad-CAM of this untrained net is 0 everywhere on images 0 and 3: no statistic is
    # defined there, so those are left out of its pairs' means and flagged
    assert [w.split(":")[:2] for w in cmp.warnings] == [
        ["image 0", " gradcam's map is constant (0 everywhere)"],
        ["image 3", " gradcam's map is constant (0 everywhere)"],
    ]
    for r in cmp:
        for stat in ("spearman", "pearson", "top_k_intersection", "ssim"):
            scores = r[f"{stat}_scores"]
            assert -1.0 <= r[stat] <= 1.0 and len(scores) == 5
            assert r[stat] == pytest.approx(np.mean([v for v in scores if v is not None]))
            assert (None in scores) == ("gradcam" in (r["method_a"], r["method_b"]))
    m = cmp.matrix("ssim")
    assert m.shape == (3, 3) and np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    summary = cmp.summary()
    assert [r["method"] for r in summary] == ["saliency", "gradcam", "gradient_x_input"]
    assert summary[0]["negative_share"] == 0.0  # saliency is |gradient|
    assert summary[2]["negative_share"] > 0.1  # gradient x input is signed
    assert 0.0 < summary[1]["share_above_threshold"] <= 1.0
    data = json.loads(cmp.to_json(tmp_path / "c.json"))
    assert data["methods"] == ["saliency", "gradcam", "gradient_x_input"] and data["k"] == 0.1
    assert len(cmp.per_image()) == 3 * 5
    assert "spearman" in str(cmp) and "spearman_scores" not in str(cmp)


def test_a_map_agrees_fully_with_itself_and_a_transform_of_it(
    exps: list[xs.Explanation],
) -> None:
    sal = exps[0]
    scaled = {"a": sal.maps, "b": 5.0 * sal.maps + 1.0, "flipped": -sal.maps}
    cmp = xs.compare(scaled)
    ab = cmp.get(method_a="a", method_b="b")
    assert ab["spearman"] == pytest.approx(1.0) and ab["pearson"] == pytest.approx(1.0)
    assert ab["ssim"] == pytest.approx(1.0) and ab["top_k_intersection"] == 1.0
    flip = cmp.get(method_a="a", method_b="flipped")
    assert flip["spearman"] == pytest.approx(-1.0) and flip["top_k_intersection"] < 0.2
    # with absolute values a sign flip is no difference
    same = xs.compare(scaled, absolute=True).get(method_a="a", method_b="flipped")
    assert same["spearman"] == pytest.approx(1.0) and same["top_k_intersection"] == 1.0
    # two explanations of one method are told apart by a suffix
    assert xs.compare([sal, sal]).names == ["saliency", "saliency#2"]


def test_explanations_of_different_images_are_refused(exps: list[xs.Explanation]) -> None:
    sal, cam = exps[0], exps[1]
    with pytest.raises(xs.ExplanationMismatchError, match="5 maps but"):
        xs.compare({"a": sal.maps, "b": cam.maps[:3]})
    with pytest.raises(xs.ExplanationMismatchError, match="image 0: a's map is 16x16"):
        xs.compare({"a": sal.maps, "b": cam.maps[:, :8, :8]})
    model = identity_wrap(SmallCNN(classes=4), size=16)
    other = xs.explain(model, rand_images(5, size=16, seed=99), method="gradcam",
                       target=list(sal.targets))  # fmt: skip
    with pytest.raises(xs.ExplanationMismatchError, match="different images"):
        xs.compare([sal, other])
    with pytest.raises(xs.ParameterError, match="at least two"):
        xs.compare([sal])
    with pytest.raises(xs.ParameterError, match="threshold"):
        xs.compare(exps, threshold=1.5)


def test_plots_are_figures(exps: list[xs.Explanation], tmp_path: Path) -> None:
    cmp = xs.compare(exps)
    hist = cmp.plot_histograms(threshold=0.3)
    assert isinstance(hist, Figure) and len(hist.axes) == 3
    assert "> 0.3" in hist.axes[0].get_title()
    scatter = cmp.plot_scatter(max_points=200)
    assert isinstance(scatter, Figure) and len(scatter.axes) == 9
    matrix = cmp.plot_matrix("pearson")
    assert isinstance(matrix, Figure)
    path = xs.viz.save_figure(scatter, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
