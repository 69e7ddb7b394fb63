"""Every metric's random-map and centre-Gaussian references against their expected values.

One evaluation of saliency on a model whose logit is the sum of one region's pixels, with
random rectangular masks: every registered metric runs, and each reference must land where
theory puts it (a new metric without an expectation here fails the test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import xaiscope as xs
from tests.metrics.conftest import rect_masks, region_model
from xaiscope.metrics.explainers import gaussian_map
from xaiscope.metrics.pointing_game import grow
from xaiscope.metrics.sparseness import gini

SIZE, N = 16, 120


@pytest.fixture(scope="module")
def setting() -> dict:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    region = np.zeros((SIZE, SIZE), dtype=bool)
    region[2:9, 3:12] = True
    model = region_model(region)
    masks = rect_masks(N, SIZE, seed=4)
    exp = xs.explain(model, images, method="saliency", target=0)
    ev = xs.evaluate(
        model, images, exp, masks=masks, seed=5,
        # logits and black fills make every curve's random reference linear: area = f(x) / 2
        score="logit", fill="black", n_samples=4, step=0.05,
    )  # fmt: skip
    logit0 = (images.astype(float) / 255 * region[None, :, :, None]).sum(axis=(1, 2, 3))
    return {"ev": ev, "masks": masks, "logit0": logit0}


def _row(setting: dict, metric: str) -> dict:
    return setting["ev"].get(method="saliency", metric=metric)


def _curve(setting: dict, row: dict) -> None:
    # each pixel leaves at a uniformly random step: E[f] falls linearly, area f(x) / 2
    expected = setting["logit0"].mean() / 2
    assert row["random_baseline"] == pytest.approx(expected, rel=0.05)


def _area(tol: float):
    def check(setting: dict, row: dict) -> None:
        area = setting["masks"].mean(axis=(1, 2)).mean()
        assert row["random_baseline"] == pytest.approx(area, abs=tol)

    return check


def _pointing_game(setting: dict, row: dict) -> None:
    # the default tolerance, 3 % of 16 px, rounds to the 1-px minimum: the grown mask's area
    grown = np.array([grow(m, 1.0) for m in setting["masks"]])
    assert row["random_baseline"] == pytest.approx(grown.mean(), abs=0.08)
    strict = setting["ev"].get(method="saliency", metric="pointing_game.strict")
    assert strict["random_baseline"] == pytest.approx(setting["masks"].mean(), abs=0.08)


def _sparseness(setting: dict, row: dict) -> None:
    assert row["random_baseline"] == pytest.approx(1 / 3, abs=0.02)  # Gini of U(0, 1)
    assert row["gaussian_baseline"] == pytest.approx(gini(gaussian_map((SIZE, SIZE))))


def _complexity(setting: dict, row: dict) -> None:
    # entropy of u_i / sum u, u ~ U(0, 1): ln n - (ln 2 - 1/2)
    expected = math.log(SIZE * SIZE) - (math.log(2) - 0.5)
    assert row["random_baseline"] == pytest.approx(expected, abs=0.02)


def _max_sensitivity(setting: dict, row: dict) -> None:
    # fresh noise maps: ||b - a|| / ||a|| ~ sqrt((1/6) / (1/3)) = 0.71, the max of 4 a bit more
    assert 0.68 < row["random_baseline"] < 0.85
    assert row["gaussian_baseline"] == 0.0  # the same blob whatever the noise


def _sanity(setting: dict, row: dict) -> None:
    assert abs(row["random_baseline"]) < 0.05  # two independent noise maps
    assert row["gaussian_baseline"] == pytest.approx(1.0)  # the blob ignores the model


EXPECTED = {
    "deletion": _curve,
    "insertion": _curve,
    "morf": _curve,
    "lerf": _curve,
    "pointing_game": _pointing_game,  # one Bernoulli draw per image: coarse
    "energy_pointing_game": _area(0.015),
    "relevance_mass": _area(0.015),
    "relevance_rank": _area(0.03),
    "max_sensitivity": _max_sensitivity,
    "sparseness": _sparseness,
    "complexity": _complexity,
    "sanity_model_randomization": _sanity,
}


def test_every_metric_has_an_expected_reference() -> None:
    assert sorted(EXPECTED) == sorted(xs.metric_names())


@pytest.mark.parametrize("metric", sorted(EXPECTED))
def test_random_and_gaussian_references(setting: dict, metric: str) -> None:
    row = _row(setting, metric)
    assert row["n_images"] == N
    EXPECTED[metric](setting, row)


def test_the_method_beats_chance_where_it_should(setting: dict) -> None:
    # saliency of a linear model is exactly the region: deletion removes it first
    row = _row(setting, "deletion")
    assert row["score"] < 0.5 * row["random_baseline"] and row["better_than_random"] is True
    lerf = _row(setting, "lerf")
    assert lerf["score"] > lerf["random_baseline"]
    # and the map does not move with the noise (the gradient of a linear model is constant)
    assert _row(setting, "max_sensitivity")["score"] == pytest.approx(0.0, abs=1e-6)
