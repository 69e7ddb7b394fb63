"""Golden tests of the plotting functions: the arrays they draw, not the pixels of fonts.

Colour arrays are compared with values computed here by hand; figures are checked through
the data of their axes (``ax.images[k].get_array()``, bar heights, line data).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import xaiscope as xs
from tests.conftest import CamNet, rand_images
from xaiscope import viz
from xaiscope.explanation import Explanation
from xaiscope.models.activations import Activations

JET = matplotlib.colormaps["jet"]


# ---------------------------------------------------------------- colour arrays
def test_heatmap_golden() -> None:
    m = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    got = viz.heatmap(m, percentile=100.0)
    expected = JET(np.array([[0.0, 0.25], [0.5, 1.0]]), bytes=True)[..., :3]
    np.testing.assert_array_equal(got, expected)
    viridis = matplotlib.colormaps["viridis"]
    np.testing.assert_array_equal(
        viz.heatmap(m, "viridis", percentile=100.0),
        viridis(np.array([[0.0, 0.25], [0.5, 1.0]]), bytes=True)[..., :3],
    )


def test_overlay_golden_alpha_and_colormap() -> None:
    img = np.array([[[10, 20, 30], [200, 100, 0]]], dtype=np.uint8)  # (1, 2, 3)
    m = np.array([[0.0, 3.0]], dtype=np.float32)
    heat = JET(np.array([[0.0, 1.0]]), bytes=True)[..., :3].astype(np.float64)
    for alpha in (0.0, 0.3, 1.0):
        expected = np.floor(img * (1 - alpha) + heat * alpha + 0.5).astype(np.uint8)
        got = viz.overlay(img, m, alpha=alpha, percentile=100.0)
        np.testing.assert_array_equal(got, expected)
    hot = matplotlib.colormaps["hot"](np.array([[0.0, 1.0]]), bytes=True)[..., :3]
    got = viz.overlay(img, m, alpha=0.5, cmap="hot", percentile=100.0)
    np.testing.assert_array_equal(got, np.floor(img * 0.5 + hot * 0.5 + 0.5).astype(np.uint8))


def test_signed_golden_green_positive_red_negative() -> None:
    m = np.array([[2.0, 1.0, 0.0, -1.0, -2.0]], dtype=np.float32)
    got = viz.signed(m, percentile=100.0)
    expected = np.array(
        [[[0, 200, 0], [0, 100, 0], [0, 0, 0], [110, 0, 0], [220, 0, 0]]], dtype=np.uint8
    )
    np.testing.assert_array_equal(got, expected)
    # a signed overlay moves each pixel towards its colour in proportion to |map|
    img = np.full((1, 5, 3), 100, dtype=np.uint8)
    out = viz.overlay(img, m, alpha=1.0, signed=True, percentile=100.0)
    np.testing.assert_array_equal(out[0, 0], [0, 200, 0])
    np.testing.assert_array_equal(out[0, 1], [50, 150, 50])
    np.testing.assert_array_equal(out[0, 2], [100, 100, 100])
    np.testing.assert_array_equal(out[0, 4], [220, 0, 0])


# ---------------------------------------------------------------- activation grid
def test_scale_each_and_tile_maps_golden() -> None:
    maps = np.stack(
        [
            np.array([[0.0, 1.0], [2.0, 4.0]]),
            np.array([[100.0, 300.0], [200.0, 500.0]]),  # same pattern, another scale
            np.full((2, 2), 7.0),  # constant: zeros
        ]
    ).astype(np.float32)
    scaled = viz.scale_each(maps)
    np.testing.assert_allclose(scaled[0], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(scaled[1], [[0, 0.5], [0.25, 1]])
    assert not scaled[2].any()
    tiles = viz.tile_maps(scaled, per_row=2, gap=1)
    assert tiles.shape == (2 * 3 - 1, 2 * 3 - 1)
    np.testing.assert_array_equal(tiles[0:2, 0:2], scaled[0])
    np.testing.assert_array_equal(tiles[0:2, 3:5], scaled[1])
    np.testing.assert_array_equal(tiles[3:5, 0:2], scaled[2])
    assert np.isnan(tiles[2]).all() and np.isnan(tiles[:, 2]).all()  # gaps
    assert np.isnan(tiles[3:5, 3:5]).all()  # the empty cell of the last row


def test_activation_grid_tiles_16_per_row_each_scaled_on_its_own(tmp_path) -> None:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(1, 40, 5, 6)).astype(np.float32)
    maps[0, 3] *= 1000.0  # a loud channel does not wash out the others
    acts = Activations("conv", maps, "spatial", maps=maps)
    fig = viz.activation_grid(acts)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    data = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    assert data.shape == (3 * 6 - 1, 16 * 7 - 1)  # 40 channels: 3 rows of 16
    for k in (0, 3, 15, 16, 39):
        r, q = divmod(k, 16)
        tile = data[r * 6 : r * 6 + 5, q * 7 : q * 7 + 6]
        ch = maps[0, k]
        np.testing.assert_allclose(tile, (ch - ch.min()) / (ch.max() - ch.min()), rtol=1e-5)
    assert "40 channels of 5x6" in fig.texts[0].get_text()
    viz.save_figure(fig, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
    # arrays and tensors of one or N images; max_channels
    fig = viz.activation_grid(torch.from_numpy(maps[0]), per_row=8, max_channels=10)
    assert fig.axes[0].images[0].get_array().shape == (2 * 6 - 1, 8 * 7 - 1)


def test_activation_grid_refuses_non_spatial_layers() -> None:
    vec = Activations("fc", np.zeros((1, 10), np.float32), "vector")
    with pytest.raises(xs.NotSpatialError, match="'fc' has no spatial output") as info:
        viz.activation_grid(vec)
    assert "\n" not in str(info.value)
    pooled = Activations("pool", np.ones((1, 8, 1, 1), np.float32), "spatial")
    pooled.maps = pooled.values
    with pytest.raises(xs.NotSpatialError, match="1x1"):
        viz.activation_grid(pooled)
    with pytest.raises(xs.NotSpatialError):
        viz.activation_grid(np.zeros((4, 10), np.float32))
    with pytest.raises(xs.ParameterError, match="out of range"):
        viz.activation_grid(np.zeros((1, 2, 3, 3), np.float32), index=2)


# ---------------------------------------------------------------- side by side, top-k
def _exp(method: str, maps: np.ndarray, labels: list[str]) -> Explanation:
    n = maps.shape[0]
    return Explanation(
        method=method,
        params={},
        targets=np.arange(n),
        scores=np.linspace(1.0, 2.0, n).astype(np.float32),
        maps=maps,
        probabilities=np.full(n, 0.25, dtype=np.float32),
        target_labels=labels,
    )


def test_side_by_side_images_by_methods_grid() -> None:
    rng = np.random.default_rng(1)
    images = rand_images(2, size=12, seed=3)
    a = _exp("gradcam", rng.random((2, 12, 12)).astype(np.float32), ["cat", "dog"])
    b = _exp("ig", rng.normal(size=(2, 12, 12)).astype(np.float32), ["cat", "dog"])
    fig = viz.side_by_side(images, [a, b], alpha=0.4)
    assert len(fig.axes) == 2 * 3  # two rows: image + two methods
    rows = [fig.axes[0:3], fig.axes[3:6]]
    for i, axes in enumerate(rows):
        np.testing.assert_array_equal(axes[0].images[0].get_array(), images[i])
        np.testing.assert_array_equal(
            axes[1].images[0].get_array(), viz.overlay(images[i], a.maps[i], 0.4)
        )
        # both signs: green/red overlay
        np.testing.assert_array_equal(
            axes[2].images[0].get_array(), viz.overlay(images[i], b.maps[i], 0.4, signed=True)
        )
        title = axes[1].get_title()
        assert "gradcam" in title and ["cat", "dog"][i] in title
        assert "25.0%" in title and "score" in title
    # rows are stacked top to bottom
    assert rows[0][0].get_position().y0 > rows[1][0].get_position().y0
    one = viz.side_by_side(images, [a, b], index=1)
    assert len(one.axes) == 3
    np.testing.assert_array_equal(one.axes[0].images[0].get_array(), images[1])
    with pytest.raises(xs.ParameterError, match="row titles"):
        viz.side_by_side(images, [a, b], row_titles=["only one"])


@pytest.fixture(scope="module")
def cam12() -> xs.Model:
    return xs.wrap(CamNet(classes=12), input_size=16, labels=[f"c{i}" for i in range(12)])


def test_topk_grid_maps_of_ranked_classes(cam12) -> None:
    img = rand_images(1, size=16, seed=2)[0]
    fig = viz.topk_grid(cam12, img, "gradcam", ranks=(1, 2, 5, 10), alpha=0.5)
    assert len(fig.axes) == 5
    order = cam12.predict(img, top_k=12).indices[0]
    for ax, rank in zip(fig.axes[1:], (1, 2, 5, 10), strict=True):
        cls = int(order[rank - 1])
        assert ax.get_title().startswith(f"#{rank} c{cls} (")
        e = xs.explain(cam12, img, method="gradcam", target=cls)
        drawn = np.asarray(ax.images[0].get_array(), dtype=np.int16)
        expected = viz.overlay(img, e.maps[0], 0.5).astype(np.int16)
        assert np.abs(drawn - expected).max() <= 1  # float rounding of another batch at most
    two = viz.topk_grid(cam12, img, ["gradcam", "saliency"], ranks=(1, 3, 50))
    assert len(two.axes) == 2 * 3  # ranks beyond the 12 classes are skipped
    assert "saliency" in two.axes[3].get_title()
    with pytest.raises(xs.ParameterError, match="beyond"):
        viz.topk_grid(cam12, img, ranks=(20,))
    with pytest.raises(xs.ParameterError, match="positive"):
        viz.topk_grid(cam12, img, ranks=(0, 1))


# ---------------------------------------------------------------- attention grid
def test_attention_grid_tiles_layers_by_heads() -> None:
    from xaiscope.models.activations import AttentionMaps

    rng = np.random.default_rng(4)
    probs = []
    for _ in range(3):  # 3 layers, 2 heads, CLS + 2x2
        a = rng.random((1, 2, 5, 5)).astype(np.float32)
        probs.append(a / a.sum(-1, keepdims=True))
    att = AttentionMaps(probs=probs, prefix=1, grid=(2, 2))
    fig = viz.attention_grid(att, gap=1)
    data = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    assert data.shape == (3 * 3 - 1, 2 * 3 - 1)
    for layer in range(3):
        for head in range(2):
            tile = data[layer * 3 : layer * 3 + 2, head * 3 : head * 3 + 2]
            row = probs[layer][0, head, 0, 1:].reshape(2, 2)
            np.testing.assert_allclose(tile, viz.scale_each(row[None])[0], rtol=1e-6)


# ---------------------------------------------------------------- statistics
def test_histograms_counts() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=500), rng.random((10, 10))
    b[0, 0] = np.nan
    fig = viz.histograms({"a": a, "b": b}, bins=20)
    ax_a, ax_b = fig.axes[:2]
    heights = [p.get_height() for p in ax_a.patches]
    np.testing.assert_array_equal(heights, np.histogram(a, bins=20)[0])
    assert sum(p.get_height() for p in ax_b.patches) == 99
    assert "1 non-finite" in ax_b.get_title()
    ragged = viz.histograms([np.ones((2, 3)), np.zeros((4, 1))])  # maps of different sizes
    assert sum(p.get_height() for p in ragged.axes[0].patches) == 10


def test_scatter_matrix_points_and_pearson() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=300)
    values = {"x": x, "2x": 2 * x + 1, "noise": rng.normal(size=300)}
    fig = viz.scatter_matrix(values)
    axes = np.array(fig.axes).reshape(3, 3)
    offsets = axes[1, 0].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], x)
    np.testing.assert_allclose(offsets[:, 1], 2 * x + 1)
    assert axes[1, 0].get_title() == "r = 1.00"
    assert axes[0, 0].patches  # histogram on the diagonal
    small = viz.scatter_matrix({"a": np.arange(100.0), "b": np.arange(100.0)}, max_points=10)
    assert len(np.array(small.axes).reshape(2, 2)[0, 1].collections[0].get_offsets()) == 10
    with pytest.raises(xs.ParameterError, match="equal length"):
        viz.scatter_matrix({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(xs.ParameterError, match="two series"):
        viz.scatter_matrix({"a": np.ones(3)})


def test_training_curves_from_keras_history_and_rows() -> None:
    hist = {"loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.6], "accuracy": [0.3, 0.6, 0.8],
            "val_accuracy": [0.3, 0.5, 0.7]}  # fmt: skip
    fig = viz.training_curves(hist)
    acc_ax, loss_ax = fig.axes[:2]
    np.testing.assert_array_equal(acc_ax.lines[0].get_xydata(), [[1, 0.3], [2, 0.6], [3, 0.8]])
    np.testing.assert_array_equal(acc_ax.lines[1].get_ydata(), [0.3, 0.5, 0.7])
    np.testing.assert_array_equal(loss_ax.lines[1].get_ydata(), [1.1, 0.7, 0.6])
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.5 / e} for e in (1, 2)]
    fig = viz.training_curves(rows, metrics=("loss",))
    np.testing.assert_array_equal(fig.axes[0].lines[1].get_xydata(), [[1, 1.5], [2, 0.75]])
    with pytest.raises(xs.ParameterError, match="none of the metrics"):
        viz.training_curves({"foo": [1, 2]})
    with pytest.raises(xs.ParameterError, match="unknown metric"):
        viz.training_curves(hist, metrics=("auc",))
