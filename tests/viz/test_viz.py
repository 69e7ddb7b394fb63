"""Tests of xaiscope.viz: normalisation, colouring, overlays and figures (Agg, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from xaiscope import viz
from xaiscope.errors import ParameterError
from xaiscope.explanation import Explanation

RNG = np.random.default_rng(0)


def _image(h: int = 24, w: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


# ---------------------------------------------------------------------------- normalize
def test_normalize_unsigned_range_and_zero_kept() -> None:
    m = RNG.random((10, 12)).astype(np.float32) * 7.0
    m[0, 0] = 0.0
    out = viz.normalize(m)
    assert out.dtype == np.float32 and out.shape == m.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out[0, 0] == 0.0  # non-negative maps (CAMs) keep zero at zero
    assert out.max() == pytest.approx(1.0)


def test_normalize_percentile_clips_outliers() -> None:
    m = np.ones((50, 50), dtype=np.float32)
    m[0, 0] = 1e6
    out = viz.normalize(m, percentile=99.0)
    assert np.median(out) == pytest.approx(1.0)  # one hot pixel does not wash out the rest
    assert viz.normalize(m, percentile=100.0)[1, 1] < 1e-3


def test_normalize_unsigned_with_negatives_in_unit_range() -> None:
    m = RNG.normal(size=(20, 20)).astype(np.float32)
    out = viz.normalize(m)
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)


def test_normalize_signed_symmetric() -> None:
    m = RNG.normal(size=(20, 20)).astype(np.float32)
    out = viz.normalize(m, signed=True)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.sign(out[m != 0]).tolist() == np.sign(m[m != 0]).tolist()
    np.testing.assert_allclose(viz.normalize(-m, signed=True), -out, atol=1e-6)


def test_normalize_constant_nan_tensor_and_bad_percentile() -> None:
    assert not viz.normalize(np.zeros((4, 4))).any()
    assert not viz.normalize(np.zeros((4, 4)), signed=True).any()
    m = np.array([[np.nan, 1.0], [np.inf, 2.0]])
    out = viz.normalize(m)
    assert np.isfinite(out).all()
    t = torch.rand(5, 5, requires_grad=True)
    assert viz.normalize(t).shape == (5, 5)
    with pytest.raises(ParameterError):
        viz.normalize(np.ones((3, 3)), percentile=0)


# ---------------------------------------------------------------------------- colours
def test_heatmap_shape_dtype() -> None:
    h = viz.heatmap(RNG.random((9, 11)))
    assert h.shape == (9, 11, 3) and h.dtype == np.uint8
    assert viz.heatmap(RNG.random((1, 9, 11)), cmap="viridis").shape == (9, 11, 3)
    with pytest.raises(ParameterError, match="colormap"):
        viz.heatmap(np.ones((3, 3)), cmap="no-such-cmap")
    with pytest.raises(ParameterError, match="shape"):
        viz.heatmap(np.ones((2, 3, 3)))


def test_overlay_shape_resize_and_alpha() -> None:
    img = _image(24, 32)
    small = RNG.random((6, 8)).astype(np.float32)  # CAM resolution: resized to the image
    out = viz.overlay(img, small)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(viz.overlay(img, small, alpha=0.0), img)
    full = RNG.random((24, 32)).astype(np.float32)
    np.testing.assert_array_equal(viz.overlay(img, full, alpha=1.0), viz.heatmap(full))
    gray = RNG.integers(0, 256, size=(24, 32), dtype=np.uint8)
    assert viz.overlay(gray, small).shape == (24, 32, 3)
    with pytest.raises(ParameterError, match="alpha"):
        viz.overlay(img, small, alpha=1.5)


def test_signed_colours() -> None:
    m = np.zeros((4, 4), dtype=np.float32)
    m[0, 0], m[3, 3] = 2.0, -2.0
    rgb = viz.signed(m)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    r, g, b = (int(v) for v in rgb[0, 0])
    assert g > r and g > b  # positive -> green
    r, g, b = (int(v) for v in rgb[3, 3])
    assert r > g and r > b  # negative -> red
    assert not rgb[1, 1].any()  # zero -> black


def test_signed_overlay_leaves_neutral_pixels() -> None:
    img = _image(8, 8)
    m = np.zeros((8, 8), dtype=np.float32)
    m[0, 0] = 1.0
    m[7, 7] = -1.0
    out = viz.overlay(img, m, alpha=0.6, signed=True)
    np.testing.assert_array_equal(out[4, 4], img[4, 4])

    def green_minus_red(px: np.ndarray) -> int:
        return int(px[1]) - int(px[0])

    assert green_minus_red(out[0, 0]) > green_minus_red(img[0, 0])  # positive pulls to green
    assert green_minus_red(out[7, 7]) < green_minus_red(img[7, 7])  # negative pulls to red
    assert viz.is_signed(m) and not viz.is_signed(np.abs(m))


# ---------------------------------------------------------------------------- figures
def test_panel_returns_figure_and_saves_png(tmp_path: Path) -> None:
    fig = viz.panel(_image(30, 40), RNG.random((7, 7)), title="gradcam: tabby (p = 50%)")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    out = viz.save_figure(fig, tmp_path / "sub" / "panel.png")
    assert out == tmp_path / "sub" / "panel.png"
    w, h = _assert_png(out)
    assert w > h  # three columns side by side
    assert [p.name for p in out.parent.iterdir()] == ["panel.png"]  # no temporary left


def test_panel_signed_map(tmp_path: Path) -> None:
    fig = viz.panel(_image(), RNG.normal(size=(24, 32)))
    assert "green" in fig.axes[1].get_title()
    _assert_png(viz.save_figure(fig, tmp_path / "s.png"))


def _explanation(maps: np.ndarray | list[np.ndarray], n: int) -> Explanation:
    return Explanation(
        method="saliency",
        params={},
        targets=np.arange(n),
        scores=np.ones(n, dtype=np.float32),
        maps=maps,
        probabilities=np.full(n, 0.5, dtype=np.float32),
        target_labels=[f"class {i}" for i in range(n)],
    )


def test_side_by_side_dict_and_explanations(tmp_path: Path) -> None:
    img = _image()
    fig = viz.side_by_side(img, {"a": RNG.random((6, 8)), "b": RNG.normal(size=(24, 32))})
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    _assert_png(viz.save_figure(fig, tmp_path / "dict.png"))

    exps = [_explanation(RNG.random((2, 24, 32)).astype(np.float32), 2) for _ in range(3)]
    fig = viz.side_by_side([img, img], exps, index=1, title="three methods")
    assert len(fig.axes) == 4
    assert "saliency" in fig.axes[1].get_title() and "class 1" in fig.axes[1].get_title()
    _assert_png(viz.save_figure(fig, tmp_path / "exps.png"))
    with pytest.raises(ParameterError):
        viz.side_by_side(img, {})


def test_plot_explanation_ragged_and_ax(tmp_path: Path) -> None:
    images = [_image(20, 30), _image(40, 20)]
    exp = _explanation([RNG.random((20, 30)), RNG.random((40, 20))], 2)
    fig = viz.plot_explanation(exp, images)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    _assert_png(viz.save_figure(fig, tmp_path / "ragged.png"))

    fig = exp.plot()  # bare heatmaps through Explanation.plot
    assert isinstance(fig, Figure) and len(fig.axes) == 2

    host = Figure()
    axes = host.subplots(1, 2)
    assert viz.plot_explanation(exp, images, ax=axes) is host
    with pytest.raises(ParameterError, match="images"):
        viz.plot_explanation(exp, [images[0]])


def test_save_figure_closes_pyplot_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure()
    fig.add_subplot().imshow(_image())
    num = fig.number
    viz.save_figure(fig, tmp_path / "plt.png")
    assert num not in plt.get_fignums()
    _assert_png(tmp_path / "plt.png")


def test_figures_draw_large_images_at_display_size() -> None:
    """A 50-megapixel photo drawn at full size costs gigabytes in matplotlib's buffers:
    figures downsample image and map to DISPLAY_MAX pixels on the long side (antialiased),
    and leave smaller images untouched."""
    from xaiscope.viz.colors import DISPLAY_MAX, display_image, display_map

    img = np.zeros((3000, 4500, 3), np.uint8)
    img[:, 2250:] = 255
    heat = np.tile(np.linspace(0, 1, 4500, dtype=np.float32), (3000, 1))
    fig = viz.panel(img, heat)
    for ax in fig.axes[:3]:
        shown = ax.images[0].get_array()
        assert shown.shape[:2] == (1365, DISPLAY_MAX)
    small = display_image(img[:300, :450])
    assert small.shape == (300, 450, 3) and np.array_equal(small, img[:300, :450])
    assert display_map(heat[:10, :20]).shape == (10, 20)
    # the right half stays white and the map keeps its left-to-right ramp after downsampling
    shown = display_image(img)
    assert shown[:, -10:].min() == 255 and shown[:, :10].max() == 0
    ramp = display_map(heat)[0]
    assert np.all(np.diff(ramp) >= -1e-6) and ramp[0] < 0.01 and ramp[-1] > 0.99
