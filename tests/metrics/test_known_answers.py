"""Metrics against answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.metrics.conftest import region_model
from xaiscope.metrics import get_metric
from xaiscope.metrics.registry import MetricContext
from xaiscope.metrics.similarity import pearson, spearman, ssim, top_k_intersection

SIZE = 8
REGION = np.zeros((SIZE, SIZE), dtype=bool)
REGION[:4, :4] = True  # 16 of 64 pixels: logit_0 of a white image = 3 * 16 = 48


def _white(n: int) -> np.ndarray:
    return np.full((n, SIZE, SIZE, 3), 255, dtype=np.uint8)


def _score(metric: str, maps: np.ndarray, n: int = 4, **options: object) -> np.ndarray:
    """Per-image scores of ``metric`` for ``maps`` on white images, target class 0."""
    ev = xs.evaluate(
        region_model(REGION),
        _white(n),
        np.repeat(maps[None], n, axis=0),
        metrics=[metric],
        targets=0,
        baselines=False,
        **{metric: {"score": "logit", **options}},
    )
    return np.asarray(ev.get(metric=metric)["scores"], dtype=float)


# ------------------------------------------------------------------ faithfulness
def test_deletion_by_the_true_map_drops_fastest() -> None:
    true = REGION.astype(float)
    # removing the 16 region pixels first (to black): the logit falls linearly from 48 to
    # 0 over the first quarter of the pixels, so the area is 48 * 0.25 / 2 = 6
    assert _score("deletion", true, step=1, fill="black") == pytest.approx(6.0)
    # the region last: 48 for three quarters, then down to 0: 36 + 6 = 42
    assert _score("deletion", 1.0 - true, step=1, fill="black") == pytest.approx(42.0)
    # a step of 4 pixels keeps every corner of the curve: same areas
    assert _score("deletion", true, step=4, fill="black") == pytest.approx(6.0)
    # as a fraction of the pixels: 0.25 -> 16 pixels a step, points at 0, 1/4, ..., 1
    assert _score("deletion", true, step=0.25, fill="black") == pytest.approx(6.0)
    # a grey fill of 0.5 halves every drop
    assert _score("deletion", true, step=1, fill=0.5) == pytest.approx(24.0 + 3.0)
    # the default fill, a blur, of a white image is white: nothing changes, area 48
    assert _score("deletion", true, step=1) == pytest.approx(48.0)


def test_insertion_by_the_true_map_rises_fastest() -> None:
    true = REGION.astype(float)
    # from black, the region first: 0 -> 48 over the first quarter, then 48: 6 + 36 = 42
    assert _score("insertion", true, step=1, fill="black") == pytest.approx(42.0)
    assert _score("insertion", 1.0 - true, step=1, fill="black") == pytest.approx(6.0)


def test_deletion_curve_points_and_probability_scale() -> None:
    n = 3
    ev = xs.evaluate(
        region_model(REGION), _white(n), np.repeat(REGION[None].astype(float), n, 0),
        metrics=["deletion"], targets=0, baselines=False, step=4, fill="black",
    )  # fmt: skip
    curves = ev.details[("maps", "deletion")]["method"]
    assert len(curves["x"]) == 64 // 4 + 1 and curves["x"][0] == 0.0 and curves["x"][-1] == 1.0
    y = np.asarray(curves["curves"])
    assert y.shape == (n, 17)
    # probability of class 0 with logits (48, 0) at the start, (0, 0) once the region is gone
    assert y[0, 0] == pytest.approx(1 / (1 + math.exp(-48)))
    assert y[0, 4:] == pytest.approx(0.5)
    assert np.all(np.diff(y[0]) <= 1e-7)  # removing pixels of a positive sum never raises it


def test_pixel_flipping_morf_and_lerf_by_regions() -> None:
    true = REGION.astype(float)
    # 2x2 patches: the region is 4 of the 16 patches; same areas as pixel deletion
    assert _score("morf", true, patch=2, step=1, fill="black") == pytest.approx(6.0)
    assert _score("lerf", true, patch=2, step=1, fill="black") == pytest.approx(42.0)
    # a patch covering the whole image flips everything at once: area 48 / 2
    assert _score("morf", true, patch=8, step=1, fill="black") == pytest.approx(24.0)


def test_curves_run_in_batches_not_one_forward_per_step() -> None:
    model = region_model(REGION)
    calls: list[int] = []
    model.module.register_forward_hook(lambda _m, i, _o: calls.append(i[0].shape[0]))
    n = 4
    xs.evaluate(
        model, _white(n), np.repeat(REGION[None].astype(float), n, 0), metrics=["deletion"],
        targets=0, baselines=False, step=1, batch_size=64,
    )  # fmt: skip
    # 4 images x 65 points = 260 perturbed images, 64 per forward (plus the targets' forward)
    rows = [c for c in calls if c > n]
    assert sum(rows) >= 4 * 65 - 64 and len(calls) <= math.ceil(260 / 64) + 2, calls


# ------------------------------------------------------------------ localization
def _ctx(masks: list[np.ndarray]) -> MetricContext:
    return MetricContext(model=None, images=[], targets=np.zeros(len(masks)), masks=masks)


def _local(metric: str, maps: list[np.ndarray], masks: list[np.ndarray], **kw: object) -> list:
    info = get_metric(metric)
    return info.fn(_ctx(masks), maps, **info.check_params(dict(kw))).scores.tolist()


MASK = np.zeros((6, 6), dtype=bool)
MASK[1:3, 1:4] = True  # 6 of 36 pixels


def test_pointing_game_on_hand_made_maps() -> None:
    inside = np.zeros((6, 6))
    inside[2, 2] = 5.0
    outside = np.zeros((6, 6))
    outside[5, 5] = 5.0
    near = np.zeros((6, 6))
    near[3, 2] = 5.0  # one pixel below the mask
    flat = np.ones((6, 6))
    empty = np.zeros((6, 6), dtype=bool)
    scores = _local(
        "pointing_game",
        [inside, outside, near, flat, inside],
        [MASK, MASK, MASK, MASK, empty],
        tolerance=0,
    )
    assert scores[:3] == [1.0, 0.0, 0.0]
    assert scores[3] == pytest.approx(6 / 36)  # a flat map: every pixel ties for the maximum
    assert math.isnan(scores[4])  # no object: left out
    assert _local("pointing_game", [near, outside], [MASK, MASK], tolerance=1) == [1.0, 0.0]
    # the default: Zhang et al.'s 15 px on 500 px photos, scaled (at least 1 px); the strict
    # game is reported next to it
    info = get_metric("pointing_game")
    out = info.fn(_ctx([MASK, MASK]), [near, inside], **info.check_params({}))
    assert out.scores.tolist() == [1.0, 1.0] and out.extra["strict"].tolist() == [0.0, 1.0]
    big = np.zeros((224, 224), dtype=bool)
    big[100:120, 100:120] = True
    off = np.zeros((224, 224))
    off[100, 126] = 1.0  # 7 px right of the mask's last column (119): within 3 % of 224 px
    off2 = np.zeros((224, 224))
    off2[100, 127] = 1.0  # 8 px: outside
    assert _local("pointing_game", [off, off2], [big, big]) == [1.0, 0.0]
    # the mean leaves the empty-mask image out
    ev = xs.evaluate(
        None, np.zeros((5, 6, 6, 3), np.uint8), [inside, outside, near, flat, inside],
        metrics=["pointing_game"], masks=[MASK, MASK, MASK, MASK, empty], targets=[0] * 5,
        tolerance=0,
    )  # fmt: skip
    row = ev.get(method="maps", metric="pointing_game")
    assert row["n_images"] == 4 and row["score"] == pytest.approx((1 + 0 + 0 + 6 / 36) / 4)


def test_relevance_mass_rank_and_energy_on_hand_made_maps() -> None:
    m = np.zeros((6, 6))
    m[1, 1], m[1, 2], m[2, 3] = 1.0, 1.0, 1.0  # 3 inside
    m[5, 5] = 1.0  # 1 outside
    assert _local("relevance_mass", [m], [MASK]) == [pytest.approx(0.75)]
    negative = m.copy()
    negative[1:3, 1:4] = -5.0  # negative relevance inside is ignored
    assert _local("relevance_mass", [negative], [MASK]) == [0.0]
    # K = 6 pixels of the mask
    ranked = m.copy()
    ranked[1:3, 1:4] += 2.0  # all 6 mask pixels now outrank everything outside
    assert _local("relevance_rank", [ranked], [MASK]) == [1.0]
    half = np.zeros((6, 6))
    half[1, 1:4] = 2.0  # 3 mask pixels on top ...
    half[4, 0:3] = 1.0  # ... then 3 outside
    assert _local("relevance_rank", [half], [MASK]) == [0.5]
    # energy: min-max scaled, so a map 1 on the mask and 0 elsewhere has all its energy inside
    assert _local("energy_pointing_game", [MASK * 3.0 - 1.0], [MASK]) == [1.0]
    assert _local("energy_pointing_game", [m], [MASK]) == [pytest.approx(0.75)]
    # the box of an L-shaped mask holds energy the mask itself does not
    ell = np.zeros((6, 6), bool)
    ell[0:4, 0] = True
    ell[3, 0:4] = True
    box_only = np.zeros((6, 6))
    box_only[1, 2] = 1.0  # inside the box, outside the L
    assert _local("energy_pointing_game", [box_only], [ell]) == [0.0]
    assert _local("energy_pointing_game", [box_only], [ell], box=True) == [1.0]


# ------------------------------------------------------------------ complexity
def test_sparseness_and_complexity_of_one_hot_and_uniform_maps() -> None:
    n = 32 * 32
    one_hot = np.zeros((32, 32))
    one_hot[7, 9] = 3.0
    uniform = np.full((32, 32), 0.4)
    sparse = _local("sparseness", [one_hot, uniform, -one_hot], [MASK] * 3)
    assert sparse[0] == pytest.approx((n - 1) / n) and sparse[0] > 0.99
    assert sparse[1] == pytest.approx(0.0, abs=1e-12)
    assert sparse[2] == pytest.approx(sparse[0])  # Gini of |map|
    ent = _local("complexity", [one_hot, uniform], [MASK] * 2)
    assert ent[0] == pytest.approx(0.0) and ent[1] == pytest.approx(math.log(n))
    assert _local("complexity", [uniform], [MASK], normalize=True) == [pytest.approx(1.0)]
    assert math.isnan(_local("sparseness", [np.zeros((4, 4))], [MASK])[0])


# ------------------------------------------------------------------ similarity
def test_similarity_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((24, 24))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 3 * a + 2) == pytest.approx(1.0)  # scaled to [0, 1] first
    assert ssim(a, rng.random((24, 24))) < 0.2
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a - 0.5, -(a - 0.5), absolute=True) == pytest.approx(1.0)
    assert spearman(a, a**3) == pytest.approx(1.0) and pearson(a, a**3) < 0.95
    assert pearson(a, np.ones_like(a)) == 0.0 and spearman(a, np.ones_like(a)) == 0.0
    assert top_k_intersection(a, a, k=0.1) == 1.0
    assert top_k_intersection(a, -a, k=0.1) == 0.0
    share = np.mean([top_k_intersection(rng.random((24, 24)), a, k=0.2) for _ in range(40)])
    assert share == pytest.approx(0.2, abs=0.03)  # independent maps: k on average


def test_sanity_helpers_cascade_from_the_top_in_forward_order() -> None:
    from tests.conftest import SmallCNN
    from xaiscope.metrics.sanity_model_randomization import cascade_groups, parameter_layers

    layers = parameter_layers(SmallCNN(), torch.zeros(1, 3, 8, 8))
    assert layers == ["features.0", "features.1", "features.4", "head"]
    assert cascade_groups(layers, 10) == [["head"], ["features.4"], ["features.1"], ["features.0"]]
    assert cascade_groups(layers, 2) == [["head", "features.4"], ["features.1", "features.0"]]
