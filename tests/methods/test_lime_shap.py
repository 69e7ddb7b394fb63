"""LIME and KernelSHAP on superpixels: known answers, brute-force Shapley values, the
``lime`` package as a reference, seeds, degenerate inputs and the embedded model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import xaiscope as xs
from tests.conftest import SmallCNN, identity_wrap, rand_images
from xaiscope.errors import ParameterError, XaiscopeError
from xaiscope.methods._segmentation import grid_segments, segment
from xaiscope.methods.kernelshap import sampled_coalitions
from xaiscope.methods.lime import top_superpixels, weighted_ridge

SQUARE = (slice(8, 16), slice(16, 24))  # cell (1, 2) of a 4 x 4 grid of 8-px cells on 32 px


class SquareModel(nn.Module):
    """Class 0: mean intensity inside SQUARE; class 1: minus that. Looks nowhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, SQUARE[0], SQUARE[1]].mean(dim=(1, 2, 3))
        return torch.stack([s, -s], dim=1)


class CellGame(nn.Module):
    """A nonlinear function of the mean intensities m_0..m_7 of a 2 x 4 grid on 16 px."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), (2, 4)).flatten(1)
        out = (
            m[:, 0] * m[:, 1]
            + torch.maximum(m[:, 2], m[:, 3])
            + 2 * m[:, 4] * m[:, 5] * m[:, 6]
            + torch.relu(m[:, 7] - 0.3)
            + torch.sigmoid(5 * (m[:, 1] - m[:, 4]))
            + (x**2).mean(dim=(1, 2, 3))  # a pixel-level term, so "mean" fills matter too
        )
        return torch.stack([out, -out], dim=1)


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """A (size, size, 3) uint8 image with values in 40..215 (no exact zeros)."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, size=(size, size, 3), dtype=np.uint8)


def brute_force_shapley(
    net: nn.Module, img01: np.ndarray, segments: np.ndarray, fill: np.ndarray
) -> tuple[np.ndarray, float, float]:
    """Shapley values of the superpixels, v(S) = net(image with only S kept)[0], by enumeration."""
    m = int(segments.max()) + 1
    masks = np.stack([segments == j for j in range(m)])  # (m, H, W)
    coalitions = np.array(list(itertools.product([0, 1], repeat=m)), dtype=bool)  # (2^m, m)
    keep = np.einsum("cj,jhw->chw", coalitions.astype(np.float64), masks) > 0
    images = np.where(keep[..., None], img01[None], fill[None])
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        v = net(x)[:, 0].double().numpy()
    value = {tuple(c): v[i] for i, c in enumerate(coalitions)}
    phi = np.zeros(m)
    for c in coalitions:
        s = int(c.sum())
        for j in np.flatnonzero(~c):
            with_j = c.copy()
            with_j[j] = True
            weight = math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m)
            phi[j] += weight * (value[tuple(with_j)] - value[tuple(c)])
    return phi, value[(True,) * m], value[(False,) * m]


def superpixel_mean_fill(img01: np.ndarray, segments: np.ndarray) -> np.ndarray:
    out = np.empty_like(img01)
    for j in np.unique(segments):
        out[segments == j] = img01[segments == j].mean(0)
    return out


# ------------------------------------------------------------------------------ known answers
@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_recovers_the_one_superpixel_the_model_uses(method):
    model = identity_wrap(SquareModel(), size=32)
    image = np.kron(smooth_image(32), np.ones((2, 2, 1), dtype=np.uint8))  # 64 px, model at 32
    params = {"exact_limit": 0} if method == "kernelshap" else {}
    e = xs.explain(
        model,
        image,
        method=method,
        target=0,
        segmentation="grid",
        n_segments=16,
        fill=0.0,
        n_samples=300,
        seed=0,
        **params,
    )
    values = e.extras["weights" if method == "lime" else "values"][0].numpy()
    assert values.shape == (16,) and int(np.argmax(values)) == 6  # row 1, col 2
    others = np.delete(values, 6)
    assert np.abs(others).max() < 0.05 * values[6]
    # the map carries the weight on the square only, at image resolution (64 px)
    assert e.maps.shape == (1, 64, 64) and e.raw.shape == (1, 3, 32, 32)
    top = top_superpixels(e, k=1)
    expected = np.zeros((64, 64), dtype=bool)
    expected[16:32, 32:48] = True
    np.testing.assert_array_equal(top[0], expected)
    # no superpixel lowers the class-0 score: the negative view is (nearly) empty
    assert top_superpixels(e, k=3, positive=False)[0].sum() <= 3 * 16 * 16
    if method == "kernelshap":
        # v is linear in the coalition here: the regression recovers it exactly
        assert values[6] == pytest.approx(float(e.scores[0]), rel=1e-4)  # f(x) - f(black)
        assert np.abs(others).max() < 1e-5


def test_lime_negative_superpixel():
    model = identity_wrap(SquareModel(), size=32)
    e = xs.explain(
        model,
        smooth_image(32),
        method="lime",
        target=1,
        segmentation="grid",
        n_segments=16,
        fill=0.0,
        n_samples=300,
        seed=1,
    )
    neg = top_superpixels(e, k=1, positive=False)[0]
    assert neg.sum() == 64 and neg[SQUARE].all()
    assert not top_superpixels(e, k=1, positive=True)[0][SQUARE].any()


@pytest.mark.parametrize(
    ("segmentation", "n_segments", "fill"),
    [("grid", 8, 0.3), ("grid", 4, "mean"), ("grid", 2, "blur"), ("slic", 6, "mean")],
)
def test_kernelshap_equals_brute_force_shapley(segmentation, n_segments, fill):
    net = CellGame()
    model = identity_wrap(net, size=16)
    image = smooth_image(16, seed=3)
    if segmentation == "slic":  # superpixels of a real photo (noise gives a single one)
        image = (model.pixels(xs.sample_images()["coffee"])[0].permute(1, 2, 0) * 255).numpy()
        image = image.round().astype(np.uint8)
    e = xs.explain(
        model,
        image,
        method="kernelshap",
        target=0,
        segmentation=segmentation,
        n_segments=n_segments,
        fill=fill,
        seed=0,
    )
    segments = e.extras["segments"][0].numpy()
    m = int(segments.max()) + 1
    assert 2 <= m <= 10 and bool(e.extras["exact"][0])
    img01 = image.astype(np.float64) / 255
    if fill == "mean":
        fill_img = superpixel_mean_fill(img01, segments)
    elif fill == "blur":
        from xaiscope.methods.baselines import gaussian_blur

        x = torch.from_numpy(img01).permute(2, 0, 1)[None].float()
        fill_img = gaussian_blur(x, sigma=0.05 * 16)[0].permute(1, 2, 0).double().numpy()
    else:
        fill_img = np.full_like(img01, fill)
    phi, fx, f0 = brute_force_shapley(net, img01, segments, fill_img)
    values = e.extras["values"][0, :m].double().numpy()
    np.testing.assert_allclose(values, phi, rtol=1e-3, atol=1e-5)
    # efficiency: the values add up to f(x) - f(baseline)
    assert float(e.extras["fx"][0]) == pytest.approx(fx, abs=1e-5)
    assert float(e.extras["base_value"][0]) == pytest.approx(f0, abs=1e-5)
    assert values.sum() == pytest.approx(fx - f0, abs=1e-5)
    assert abs(float(e.delta[0])) < 1e-5


def test_kernelshap_sampling_approaches_shapley_and_keeps_efficiency():
    net = CellGame()
    model = identity_wrap(net, size=16)
    image = smooth_image(16, seed=5)
    e = xs.explain(
        model,
        image,
        method="kernelshap",
        target=0,
        segmentation="grid",
        n_segments=8,
        fill=0.0,
        n_samples=120,  # < 2^8 - 2: sizes 1 and 2 enumerated, the rest drawn
        exact_limit=0,
        seed=0,
    )
    assert not bool(e.extras["exact"][0])
    segments = e.extras["segments"][0].numpy()
    phi, fx, f0 = brute_force_shapley(
        net, image / 255.0, segments, np.zeros((16, 16, 3), dtype=np.float64)
    )
    values = e.extras["values"][0].double().numpy()
    assert values.sum() == pytest.approx(fx - f0, abs=1e-5)  # exact even when sampled
    assert np.corrcoef(values, phi)[0, 1] > 0.98
    np.testing.assert_allclose(values, phi, atol=0.05 * np.abs(phi).max())


def test_sampled_coalitions_follow_shap():
    gen = torch.Generator().manual_seed(0)
    for m, n in [(8, 120), (12, 300), (40, 1000), (41, 7)]:
        z, w = sampled_coalitions(m, n, gen, torch.device("cpu"))
        # pairs come two at a time: an odd budget may leave one sample unused
        assert z.shape[1] == m and n - 1 <= z.shape[0] <= n
        assert w.sum().item() == pytest.approx(1.0)  # kernel weights of all sizes sum to 1
        assert (w > 0).all()
        sizes = z.sum(1)
        assert ((sizes > 0) & (sizes < m)).all()  # no empty or full coalition
        assert torch.unique(z, dim=0).shape[0] == z.shape[0]  # repeats add weight instead
    # budget large enough for size 1 and its complements: all 2m of them are present
    z, _ = sampled_coalitions(12, 300, gen, torch.device("cpu"))
    sizes = z.sum(1)
    assert int((sizes == 1).sum()) == 12 and int((sizes == 11).sum()) == 12


def test_weighted_ridge_matches_scikit_learn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, (200, 7)).astype(np.float64)
    y = z @ rng.normal(size=7) + rng.normal(size=200)
    w = rng.random(200)
    for alpha in (1.0, 0.0):
        ref = Ridge(alpha=alpha).fit(z, y, sample_weight=w)
        beta, b, r2 = weighted_ridge(torch.tensor(z), torch.tensor(y), torch.tensor(w), alpha)
        np.testing.assert_allclose(beta.numpy(), ref.coef_, atol=1e-10)
        assert float(b) == pytest.approx(ref.intercept_, abs=1e-10)
        assert float(r2) == pytest.approx(ref.score(z, y, sample_weight=w), abs=1e-10)


# ------------------------------------------------------------------------------ reference
def test_lime_agrees_with_the_lime_package():
    from lime.lime_image import LimeImageExplainer

    model = xs.wrap(SmallCNN(), input_size=32)  # a conv net: nonlinear in the coalition
    photo = xs.sample_images()["chelsea"]
    image = model.pixels(photo)[0].permute(1, 2, 0).numpy()
    image = (image * 255).round().astype(np.uint8)  # 32 px uint8, as explain() will see it
    img01 = image.astype(np.float64) / 255
    segments = segment(img01, "slic", n_segments=20)

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        return model.forward(model.normalize(x)).numpy()

    ref = LimeImageExplainer(random_state=0).explain_instance(
        img01,
        classifier_fn,
        labels=(0,),
        top_labels=None,
        hide_color=None,
        num_samples=1000,
        batch_size=100,
        segmentation_fn=lambda _img: segments,
    )
    ref_w = np.zeros(int(segments.max()) + 1)
    for j, wj in ref.local_exp[0]:
        ref_w[j] = wj
    e = xs.explain(
        model, image, method="lime", target=0, segmentation=segments, n_samples=1000, seed=0
    )
    ours = e.extras["weights"][0].double().numpy()
    np.testing.assert_array_equal(e.extras["segments"][0].numpy(), segments)
    top_ref = set(np.argsort(-ref_w)[:3])
    top_ours = set(np.argsort(-ours)[:3])
    assert len(top_ref & top_ours) >= 2
    assert np.corrcoef(ours, ref_w)[0, 1] > 0.9
    assert 0 < float(e.extras["score"][0]) <= 1  # a weighted R^2


# ------------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_seed_makes_runs_identical(method):
    model = identity_wrap(CellGame(), size=16)
    images = [smooth_image(16, seed=1), smooth_image(16, seed=2)]
    kw = {"segmentation": "grid", "n_segments": 16, "n_samples": 60, "fill": 0.0}
    a = xs.explain(model, images, method=method, seed=11, **kw)
    b = xs.explain(model, images, method=method, seed=11, **kw)
    c = xs.explain(model, images, method=method, seed=12, **kw)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert not np.array_equal(a.maps, c.maps)


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_map_of_an_image_does_not_depend_on_the_rest_of_the_batch(method):
    # the other image has more superpixels and draws first: neither may change the draws
    # (12 superpixels: sampled, not enumerated, by kernelshap)
    model = identity_wrap(CellGame(), size=16)
    image, other = smooth_image(16, seed=1), smooth_image(16, seed=2)
    kw = {"n_samples": 60, "fill": 0.0, "seed": 3}
    seg = np.stack([grid_segments(16, 16, 16), grid_segments(16, 16, 12)])
    alone = xs.explain(model, image, method=method, segmentation=seg[1], **kw)
    both = xs.explain(model, [other, image], method=method, segmentation=seg, **kw)
    np.testing.assert_allclose(both.maps[1], alone.maps[0], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------ degenerate
@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_degenerate_inputs_are_flagged(method):
    model = identity_wrap(CellGame(), size=16)
    image = smooth_image(16)
    one = xs.explain(
        model, image, method=method, segmentation="grid", n_segments=1, n_samples=20, fill=0.0
    )
    assert any("single superpixel" in w for w in one.warnings)
    few = xs.explain(model, image, method=method, segmentation="grid", n_segments=16, n_samples=5)
    assert any("smaller than the number of superpixels" in w for w in few.warnings)
    assert np.isfinite(few.maps).all()
    flat = xs.explain(model, np.full((16, 16, 3), 90, np.uint8), method=method, n_samples=20)
    assert any("constant" in w for w in flat.warnings)
    assert any("same for every perturbation" in w for w in flat.warnings)
    clean = xs.explain(
        model, image, method=method, segmentation="grid", n_segments=4, n_samples=40, fill=0.0
    )
    assert clean.warnings == []


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_warnings_name_the_image_in_every_target_set(method):
    # targets are stacked as rows k * N + i: each explanation must keep only its own rows'
    # notes, numbered as the images are
    model = identity_wrap(CellGame(), size=16)
    images = [smooth_image(16), np.full((16, 16, 3), 90, np.uint8)]
    kw = {"segmentation": "grid", "n_segments": 4, "n_samples": 40, "fill": 0.0}
    exps = xs.explain(model, images, method=method, target="top2", **kw)
    assert len(exps) == 2
    for e in exps:
        assert e.warnings, e.targets
        assert all(w.startswith("image 1: ") for w in e.warnings), e.warnings
        assert any("the image is constant" in w for w in e.warnings)


class NaNWhenBlack(nn.Module):
    """Finite on the image, NaN as soon as any pixel is exactly 0 (a hidden superpixel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(1, 2, 3))
        bad = (x == 0).flatten(1).any(1)
        s = torch.where(bad, torch.full_like(s, float("nan")), s)
        return torch.stack([s, -s], dim=1)


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_nan_output_is_a_clear_error(method):
    model = identity_wrap(NaNWhenBlack(), size=16)
    with pytest.raises(XaiscopeError, match="not finite"):
        xs.explain(
            model,
            smooth_image(16),
            method=method,
            segmentation="grid",
            n_segments=4,
            n_samples=20,
            fill=0.0,
        )


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("lime", {"n_samples": 1}),
        ("kernelshap", {"n_samples": 0}),
        ("lime", {"kernel_width": 0}),
        ("lime", {"alpha": -1}),
        ("kernelshap", {"exact_limit": 30}),
        ("lime", {"segmentation": "watershed"}),
        ("kernelshap", {"segmentation": np.zeros((5, 5), dtype=np.int64)}),
        ("lime", {"n_segments": 0, "segmentation": "grid"}),
        ("kernelshap", {"fill": "purple"}),
    ],
)
def test_bad_parameters(method, params):
    model = identity_wrap(CellGame(), size=16)
    with pytest.raises(ParameterError):
        xs.explain(model, smooth_image(16), method=method, **params)


# ------------------------------------------------------------------------------ options
def test_segmentations():
    img = smooth_image(32)
    g = grid_segments(32, 64, 8)
    assert g.max() == 7 and len(np.unique(g[:, :32])) == 4  # 2 rows x 4 cols on a 2:1 image
    assert len(np.unique(grid_segments(16, 16, 7))) >= 4  # a prime count: about 7 cells
    for name in ("slic", "quickshift", "grid"):
        labels = segment(img, name, n_segments=10)
        assert labels.dtype == np.int64 and labels.shape == (32, 32)
        assert labels.min() == 0 and set(np.unique(labels)) == set(range(labels.max() + 1))
    assert segment(img, "grid", n_segments=16).max() == 15
    # tiny images
    assert segment(img[:4, :4], "slic").max() >= 0


def test_quickshift_callable_and_several_targets():
    model = identity_wrap(CellGame(), size=16)
    images = rand_images(2, size=16, seed=3)
    e = xs.explain(model, images, method="lime", segmentation="quickshift", n_samples=20, seed=0)
    assert e.maps.shape == (2, 16, 16)

    def halves(img: np.ndarray) -> np.ndarray:
        return (np.arange(img.shape[1])[None, :] >= img.shape[1] // 2).repeat(img.shape[0], 0)

    both = xs.explain(
        model, images, method="kernelshap", segmentation=halves, targets="top2", seed=0
    )
    assert len(both) == 2
    for ex in both:
        assert ex.extras["segments"].shape == (2, 16, 16)
        assert ex.extras["values"].shape == (2, 2)
        assert np.abs(ex.delta).max() < 1e-5
    # class 1 is minus class 0: the values flip sign
    np.testing.assert_allclose(
        both[0].extras["values"].numpy(), -both[1].extras["values"].numpy(), atol=1e-5
    )


# ------------------------------------------------------------------------------ real model
@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_runs_on_the_embedded_model(effnet, chelsea, method):
    e = xs.explain(effnet, chelsea, method=method, n_samples=12, seed=0)
    assert e.maps.shape == (1, 300, 451) and np.isfinite(e.maps).all()
    assert e.target_labels == ["Egyptian cat"]
    assert e.raw.shape == (1, 3, 224, 224)
    m = int(e.extras["n_superpixels"][0])
    assert 20 <= m <= 80 and e.extras["segments"].shape == (1, 224, 224)
    assert any("smaller than the number of superpixels" in w for w in e.warnings)
    top = top_superpixels(e, k=3)
    assert top.shape == (1, 300, 451) and top.dtype == bool and top.any()
    if method == "kernelshap":
        assert float(e.extras["fx"][0]) == pytest.approx(float(e.scores[0]), abs=1e-4)
        assert abs(float(e.delta[0])) < 1e-3


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_per_image_segmentation_array_with_several_targets(method):
    model = identity_wrap(CellGame(), size=16)
    images = [smooth_image(16, seed=1), smooth_image(16, seed=2)]
    seg = np.stack([grid_segments(16, 16, 4), grid_segments(16, 16, 8)])
    exps = xs.explain(model, images, method=method, segmentation=seg, target="top2", seed=0)
    for e in exps:
        assert [int(c) for c in e.extras["n_superpixels"]] == [4, 8]


@pytest.mark.parametrize("method", ["lime", "kernelshap"])
def test_targets_of_one_image_share_the_perturbed_forwards(method):
    # the target sets of an image draw the same coalitions: scored once, read K times
    net = SmallCNN(classes=3)
    rows = [0]
    net.register_forward_hook(lambda _m, _i, out: rows.__setitem__(0, rows[0] + out.shape[0]))
    model = identity_wrap(net, size=16)
    images = rand_images(2, size=16, seed=6)
    kw = {"segmentation": "grid", "n_segments": 16, "n_samples": 50, "seed": 1}
    rows[0] = 0
    xs.explain(model, images, method=method, target="top1", **kw)
    top1 = rows[0]
    rows[0] = 0
    both = xs.explain(model, images, method=method, target="top2", **kw)
    assert rows[0] == top1
    for e in both:
        one = xs.explain(model, images, method=method, target=[int(t) for t in e.targets], **kw)
        np.testing.assert_array_equal(e.maps, one.maps)


# ------------------------------------------------------------------------------ L1 selection
def _shap_values_on_cells(net, image, segments, l1_reg):
    """shap's KernelExplainer on the superpixel game itself (all 2^M coalitions evaluated)."""
    shap = pytest.importorskip("shap")
    img01 = image / 255.0
    m = int(segments.max()) + 1

    def game(z: np.ndarray) -> np.ndarray:
        keep = z[:, segments].astype(np.float64)  # (k, H, W)
        batch = img01[None] * keep[..., None]
        with torch.no_grad():
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
            return net(x)[:, 0].double().numpy()

    explainer = shap.KernelExplainer(game, np.zeros((1, m)))
    return np.asarray(
        explainer.shap_values(np.ones((1, m)), nsamples=2**m, l1_reg=l1_reg, silent=True)
    ).reshape(m)


@pytest.mark.parametrize("l1_reg", ["num_features(3)", "aic", "bic", 0.002, 2])
def test_kernelshap_l1_selection_equals_shap(l1_reg):
    net = CellGame()
    model = identity_wrap(net, size=16)
    image = smooth_image(16, seed=5)
    kw = dict(method="kernelshap", target=0, segmentation="grid", n_segments=8, fill=0.0)
    e = xs.explain(model, image, l1_reg=l1_reg, **kw)
    assert bool(e.extras["exact"][0])
    values = e.extras["values"][0].double().numpy()
    ref = _shap_values_on_cells(net, image, e.extras["segments"][0].numpy(), l1_reg)
    np.testing.assert_allclose(values, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    kept = int(e.extras["selected"][0])
    assert kept == np.count_nonzero(values)
    if l1_reg == 2:  # so strong that nothing is kept: all 0, as in shap, and flagged
        assert kept == 0 and any("kept no superpixel" in w for w in e.warnings)
        return
    assert kept >= 1 and not e.warnings
    if l1_reg == "num_features(3)":
        assert kept == 3
    elif isinstance(l1_reg, float):
        assert kept < 8  # this alpha drops some (the criteria keep all 8 this game uses)
    # the survivors still carry all of f(x) - f(baseline)
    plain = xs.explain(model, image, **kw)
    assert values.sum() == pytest.approx(plain.extras["values"][0].double().sum(), rel=1e-6)
    assert abs(float(e.delta[0])) < 1e-5


def test_kernelshap_l1_finds_the_one_superpixel_and_auto_keeps_exact_values():
    model = identity_wrap(SquareModel(), size=32)
    image = smooth_image(32)
    kw = dict(method="kernelshap", target=0, segmentation="grid", n_segments=16, fill=0.0, seed=0)
    e = xs.explain(model, image, n_samples=200, exact_limit=0, l1_reg="num_features(1)", **kw)
    values = e.extras["values"][0].numpy()
    assert np.flatnonzero(values).tolist() == [6]
    assert values[6] == pytest.approx(float(e.scores[0]), rel=1e-5)  # f(x) - f(black)
    # 'auto' selects (AIC) when under 20 % of the coalitions are evaluated...
    auto = xs.explain(model, image, n_samples=200, exact_limit=0, l1_reg="auto", **kw)
    assert int(auto.extras["selected"][0]) < 16
    # ...and leaves enumerated (exact) values alone
    small = dict(kw, n_segments=8, segmentation="grid")
    exact = xs.explain(model, image, l1_reg="auto", **small)
    none = xs.explain(model, image, **small)
    assert bool(exact.extras["exact"][0]) and int(exact.extras["selected"][0]) == 8
    assert torch.equal(torch.as_tensor(exact.raw), torch.as_tensor(none.raw))


@pytest.mark.parametrize(
    "l1_reg", ["lasso", "num_features(0)", -0.5, True, "num_features(x)", float("nan"), -2]
)
def test_kernelshap_bad_l1_reg(l1_reg):
    model = identity_wrap(CellGame(), size=16)
    with pytest.raises(ParameterError, match="l1_reg"):
        xs.explain(model, smooth_image(16), method="kernelshap", l1_reg=l1_reg)


def test_kernelshap_information_criterion_needs_enough_samples():
    model = identity_wrap(CellGame(), size=16)
    with pytest.raises(ParameterError, match="num_features"):
        xs.explain(
            model, smooth_image(16), method="kernelshap", segmentation="grid", n_segments=16,
            fill=0.0, n_samples=6, exact_limit=0, l1_reg="bic", seed=0,
        )  # fmt: skip


def test_l1_reg_reads_from_the_command_line():
    from xaiscope.cli.params import coerce
    from xaiscope.methods.kernelshap import parse_l1_reg
    from xaiscope.methods.registry import get_method

    default = get_method("kernelshap").defaults["l1_reg"]
    assert parse_l1_reg(coerce("num_features(5)", default, "l1_reg")) == ("num", 5.0)
    # as in shap, a number is a Lasso alpha, whether it reads as an int or a float
    assert parse_l1_reg(coerce("2", default, "l1_reg")) == ("alpha", 2.0)
    assert parse_l1_reg(coerce("0.01", default, "l1_reg")) == ("alpha", 0.01)
    assert parse_l1_reg(coerce("0", default, "l1_reg")) == ("none", 0.0)
    assert parse_l1_reg(np.float32(0.5)) == ("alpha", 0.5)
    assert parse_l1_reg(np.int64(3)) == ("alpha", 3.0)
    assert parse_l1_reg(coerce("AIC", default, "l1_reg")) == ("aic", 0.0)
    assert parse_l1_reg(coerce("false", default, "l1_reg")) == ("none", 0.0)
    assert parse_l1_reg(coerce("none", default, "l1_reg")) == ("none", 0.0)


class ReadsThenIgnores(nn.Module):
    """Class 0 reads the image; class 1 is a constant (a dead logit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean((1, 2, 3)), torch.zeros(x.shape[0])], 1)


@pytest.mark.parametrize("l1_reg", ["num_features(3)", "aic", 1e-6])
def test_kernelshap_l1_on_a_flat_target_gives_zeros_not_an_error(l1_reg):
    model = identity_wrap(ReadsThenIgnores(), size=16)
    kw = dict(method="kernelshap", segmentation="grid", n_segments=8, fill=0.0, l1_reg=l1_reg)
    # with two targets the flat one must not take the other down
    live, flat = xs.explain(model, smooth_image(16), target="top2", **kw)
    assert int(live.targets[0]) == 0 and int(flat.targets[0]) == 1
    assert np.count_nonzero(flat.extras["values"][0].numpy()) == 0
    assert int(flat.extras["selected"][0]) == 0
    assert not any("kept no superpixel" in w for w in flat.warnings)  # nothing to keep
    assert int(live.extras["selected"][0]) >= 1
    assert abs(float(live.delta[0])) < 1e-5
