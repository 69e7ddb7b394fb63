"""Perturbation methods and gradient-free CAMs: exact answers on hand-built models, and
agreement with implementations no one here wrote (Captum's Occlusion, pytorch-grad-cam's
ScoreCAM, AblationCAM and EigenCAM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import xaiscope as xs
from tests.conftest import LinearNet, SmallCNN, hook_count, identity_wrap, model_input, rand_images
from xaiscope.errors import UnsupportedModelError
from xaiscope.methods.occlusion import window_grid

# ----------------------------------------------------------------------------- occlusion


def occlusion_reference(
    w: torch.Tensor, x: torch.Tensor, fill: float, win: int, stride: int
) -> torch.Tensor:
    """Direct occlusion of a linear model: the drop of window P is sum_{i in P} w_i (x_i - f),
    and a pixel's attribution is the mean over the windows covering it (Python loops)."""
    n, c, h, wd = x.shape
    total = torch.zeros(n, h, wd, dtype=torch.float64)
    count = torch.zeros(h, wd, dtype=torch.float64)
    contrib = (w.double() * (x.double() - fill)).sum(1)  # (N, H, W): per-pixel drop share
    for r in range(window_grid(h, win, stride)):
        for q in range(window_grid(wd, win, stride)):
            rs = slice(r * stride, min(h, r * stride + win))
            cs = slice(q * stride, min(wd, q * stride + win))
            drop = contrib[:, rs, cs].sum((1, 2))
            total[:, rs, cs] += drop[:, None, None]
            count[rs, cs] += 1
    return (total / count.clamp(min=1)).float()


@pytest.mark.parametrize(("win", "stride"), [(3, 2), (4, 4), (5, 3), (8, 8)])
@pytest.mark.parametrize("fill", [0.0, 0.5])
def test_occlusion_exact_on_linear_model(win, stride, fill):
    net = LinearNet()
    model = identity_wrap(net)
    images = rand_images(2, seed=3)
    e = xs.explain(
        model, images, method="occlusion", target=1, window=win, stride=stride, fill=fill
    )
    w = net.fc.weight[1].detach().view(1, 3, 8, 8)
    ref = occlusion_reference(w, model_input(images), fill, win, stride)
    torch.testing.assert_close(e.raw[:, 0], ref, rtol=1e-4, atol=1e-4)
    assert tuple(e.raw.shape) == (2, 3, 8, 8)
    torch.testing.assert_close(e.raw, e.raw[:, :1].expand_as(e.raw))
    np.testing.assert_allclose(e.maps, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_occlusion_gaps_are_zero_and_mean_fill():
    """stride > window leaves pixels no window covers: they get 0 (no NaN)."""
    net = LinearNet()
    model = identity_wrap(net)
    images = rand_images(1, seed=4)
    e = xs.explain(model, images, method="occlusion", target=0, window=2, stride=3)
    assert np.isfinite(e.maps).all()
    assert np.all(e.maps[0, 2, :] == 0) and np.all(e.maps[0, :, 5] == 0)
    # 8 px, windows of 2 at 0, 3, 6: rows/columns 2 and 5 uncovered, 1 - (6/8)^2 = 44 %
    assert any("44% of the pixels" in w for w in e.warnings), e.warnings
    x = model_input(images)
    mean = x.mean((2, 3), keepdim=True)
    w = net.fc.weight[0].detach().view(1, 3, 8, 8)
    contrib = (w * (x - mean)).sum(1)
    e2 = xs.explain(model, images, method="occlusion", target=0, window=8, stride=8, fill="mean")
    torch.testing.assert_close(e2.raw[0, 0], contrib.sum().expand(8, 8), rtol=1e-4, atol=1e-4)
    assert not any("stride" in w for w in e2.warnings)  # one window: constant, not gappy


def test_occlusion_equals_captum(effnet, chelsea):
    captum_attr = pytest.importorskip("captum.attr")
    x = effnet.preprocess(chelsea)
    target = int(effnet.forward(x).argmax())
    # overlapping windows and a last window cut at the border (positions 0, 80, 160)
    e = xs.explain(effnet, chelsea, method="occlusion", window=96, stride=80, fill=0.3)
    baseline = effnet.normalize(torch.full_like(effnet.pixels(chelsea), 0.3))
    ref = captum_attr.Occlusion(effnet.module).attribute(
        x,
        sliding_window_shapes=(3, 96, 96),
        strides=(3, 80, 80),
        baselines=baseline,
        target=target,
        perturbations_per_eval=16,
    )
    torch.testing.assert_close(e.raw, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    assert e.extras["n_windows"] == 9


# ----------------------------------------------------------------------------------- RISE


class QuadrantNet(nn.Module):
    """logit 0 = 8 x (mean of the top-left quadrant) - 4, logit 1 = 0: only that quadrant counts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        z = 8 * x[:, :, : h // 2, : w // 2].mean((1, 2, 3)) - 4
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_rise_concentrates_on_used_region():
    model = identity_wrap(QuadrantNet(), size=32)
    images = np.full((2, 32, 32, 3), 230, np.uint8)
    images[1] = rand_images(1, size=32, seed=1)[0] // 2 + 128
    e = xs.explain(model, images, method="rise", target=0, n_masks=500, seed=0, batch_size=250)
    for m in e.maps:
        top = np.argsort(m.ravel())[-64:]  # top 1/16 of the pixels
        rows, cols = np.unravel_index(top, m.shape)
        inside = np.mean((rows < 16) & (cols < 16))
        assert inside > 0.9, inside
        assert m[:16, :16].mean() > m[16:, 16:].mean() + 0.1 * np.abs(m).max()


def test_rise_seed_and_batch_composition():
    model = identity_wrap(QuadrantNet(), size=16)
    images = rand_images(3, size=16, seed=2)
    kw = dict(method="rise", target=0, n_masks=40, seed=5, grid=4, p=0.4)
    batch = xs.explain(model, images, batch_size=7, **kw)
    one = xs.explain(model, images[1], batch_size=3, **kw)
    np.testing.assert_allclose(batch.maps[1], one.maps[0], rtol=1e-5, atol=1e-6)
    other = xs.explain(model, images[1], **{**kw, "seed": 6})
    assert not np.array_equal(one.maps, other.maps)


def test_rise_masks_shape_and_mean():
    from xaiscope.methods.rise import rise_masks

    g = torch.Generator().manual_seed(0)
    grids = (torch.rand(400, 7, 7, generator=g) < 0.5).float()
    shifts = torch.randint(0, 4, (400, 2), generator=g)
    masks = rise_masks(grids, shifts, (25, 25), (4, 4))
    assert tuple(masks.shape) == (400, 1, 25, 25)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert abs(float(masks.mean()) - 0.5) < 0.03
    # a shift moves the mask: the crop at shift (1, 2) is the shifted crop at (0, 0)
    big = rise_masks(grids[:1], torch.zeros(1, 2, dtype=torch.long), (30, 30), (4, 4))
    moved = rise_masks(grids[:1], torch.tensor([[1, 2]]), (25, 25), (4, 4))
    torch.testing.assert_close(moved[0, 0], big[0, 0, 1:26, 2:27])


# ----------------------------------------------------------------------------------- CAMs


@pytest.fixture(scope="module")
def small32():
    net = SmallCNN()
    return net, xs.wrap(net, input_size=32)


def _grad_cam_pipeline(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's post-processing of a raw CAM: min-max, resize, min-max."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(raw, size))


def dead_channel_cnn() -> SmallCNN:
    """SmallCNN whose last conv has six dead channels (all zero after the ReLU)."""
    net = SmallCNN()
    with torch.no_grad():
        net.features[4].weight[:6] = 0
        net.features[4].bias[:6] = -1
    return net


def test_scorecam_equals_pytorch_grad_cam():
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # six dead channels, all zero after the ReLU as in real networks: one shared forward
    net = dead_channel_cnn()
    model = xs.wrap(net, input_size=32)
    images = rand_images(3, size=32, seed=3)
    targets = [0, 4, 2]
    e = xs.explain(model, images, method="scorecam", layer="features.5", target=targets)
    with gc.ScoreCAM(net, [net.features[5]]) as cam:
        ref = cam(model.preprocess(images), targets=[ClassifierOutputTarget(t) for t in targets])
    ours = _grad_cam_pipeline(e.raw.numpy(), (32, 32))
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert e.extras["forwards"] == 3 * 10 + 1


class DupNet(nn.Module):
    """Layer ``act`` has channels (a0, a1, a0, 0, 0, 1): 2 distinct maps, 3 constants."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.act = nn.Identity()
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        consts = [torch.zeros_like(a), torch.ones_like(a[:, :1])]
        feats = self.act(torch.cat([a, a[:, :1], *consts], 1))
        return self.fc(feats.mean((2, 3)))


def test_scorecam_dedupes_constant_and_duplicate_channels():
    from xaiscope.methods.scorecam import score_masks

    model = xs.wrap(DupNet(), input_size=8)
    images = rand_images(2, size=8, seed=1)
    e = xs.explain(model, images, method="scorecam", layer="act", target=1)
    assert e.extras["forwards"] == 2 * 2 + 1
    # the direct computation: one forward per channel, constant channels masked to zero
    x = model.preprocess(images)
    a = model.activations(x, "act")
    masks = [score_masks(a[i], (8, 8)) for i in range(2)]
    for m in masks:
        m[3:] = 0
    scores = torch.stack([model.forward(x[i] * masks[i])[:, 1] for i in range(2)])
    w = torch.softmax(scores, 1)
    direct = torch.einsum("nc,nchw->nhw", w, a).clamp(min=0)
    torch.testing.assert_close(e.raw, direct, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["features.3", "features.5"])
def test_ablationcam_equals_pytorch_grad_cam(layer):
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = dead_channel_cnn()
    model = xs.wrap(net, input_size=32)
    images = rand_images(2, size=32, seed=4)
    targets = [1, 3]
    e = xs.explain(model, images, method="ablationcam", layer=layer, target=targets)
    module = net.get_submodule(layer)
    with gc.AblationCAM(net, [module], batch_size=5) as cam:
        ref = cam(model.preprocess(images), targets=[ClassifierOutputTarget(t) for t in targets])
    ours = _grad_cam_pipeline(e.raw.numpy(), (32, 32))
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    if layer == "features.5":
        assert e.extras["forwards"] == 2 * 10  # dead channels need no forward
    assert hook_count(net) == 0


def test_ablationcam_closed_form_after_gap():
    """After ReLU -> GAP -> linear, zeroing channel k lowers logit c by W[c, k] mean(A_k)."""
    from tests.conftest import CamNet

    net = CamNet(channels=6)
    model = identity_wrap(net)
    images = rand_images(2, seed=5)
    a = net.relu(net.conv(model_input(images))).detach()
    y = net(model_input(images)).detach()[:, 2]
    w = net.fc.weight[2].detach()[None] * a.mean((2, 3)) / y[:, None]
    expected = torch.einsum("nk,nkhw->nhw", w, a).clamp(min=0)
    e = xs.explain(model, images, method="ablationcam", layer="relu", target=2)
    torch.testing.assert_close(e.raw, expected, rtol=1e-4, atol=1e-5)


def test_forward_from_layer_matches_full_forward(small32):
    net, model = small32
    x = model.preprocess(rand_images(1, size=32, seed=6))
    a = model.activations(x, "features.3")
    batch = torch.cat([a, a * 0.5, torch.zeros_like(a)])
    out = model.forward_from_layer(x, "features.3", batch.clone())
    tail = nn.Sequential(net.features[4], net.features[5])
    direct = net.head(net.pool(tail(batch.clone())).flatten(1))
    torch.testing.assert_close(out, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0], model.forward(x)[0], rtol=1e-5, atol=1e-6)
    assert hook_count(net) == 0


def test_forward_from_layer_unsupported_for_black_boxes():
    from xaiscope.models.base import Model

    class Box(Model):
        framework = "callable"
        labels = ["a"]
        input_size = (4, 4)

        def pixels(self, images):  # type: ignore[no-untyped-def]
            raise NotImplementedError

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)[:, :1]

    with pytest.raises(UnsupportedModelError, match="Ablation-CAM"):
        Box().forward_from_layer(torch.zeros(1, 3, 4, 4), "x", torch.zeros(2, 1))


def test_eigencam_closed_form():
    """A hand-built activation: the map is the numpy SVD projection, sign toward the sum."""
    from xaiscope.methods.eigencam import first_component_projection

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 6, 7, generator=g) * (torch.rand(3, 5, 1, 1, generator=g) * 3)
    got = first_component_projection(a)
    for i in range(3):
        m = a[i].reshape(5, -1).T.numpy().astype(np.float64)
        m = m - m.mean(0)
        _, _, vt = np.linalg.svd(m, full_matrices=True)
        proj = m @ vt[0]
        s = a[i].sum(0).reshape(-1).numpy()
        if np.corrcoef(proj, s)[0, 1] < 0:
            proj = -proj
        np.testing.assert_allclose(got[i].reshape(-1).numpy(), proj, rtol=1e-4, atol=1e-5)


def test_eigencam_rank_one_activation_and_pytorch_grad_cam(small32):
    # A = u v^T (outer product of a spatial map and channel loadings): the first component
    # is v, and the map is the centred u scaled, positive where u is above its mean
    u = torch.linspace(0, 1, 12).reshape(1, 3, 4)
    v = torch.tensor([1.0, 2.0, 0.5])
    a = (v[:, None, None] * u)[None]
    from xaiscope.methods.eigencam import first_component_projection

    proj = first_component_projection(a)[0]
    expected = (u[0] - u.mean()) * v.norm()
    torch.testing.assert_close(proj, expected, rtol=1e-4, atol=1e-5)

    gc = pytest.importorskip("pytorch_grad_cam")
    net, model = small32
    images = rand_images(2, size=32, seed=7)
    e = xs.explain(model, images, method="eigencam", layer="features.5")
    other = xs.explain(model, images, method="eigencam", layer="features.5", target=3)
    np.testing.assert_array_equal(e.maps, other.maps)  # class-agnostic
    with gc.EigenCAM(net, [net.features[5]]) as cam:
        ref = cam(model.preprocess(images), targets=None)
    # same up to pytorch-grad-cam's arbitrary sign: compare with our signed projection
    a5 = model.activations(model.preprocess(images), "features.5")
    signed = first_component_projection(a5).numpy()
    for i in range(2):
        candidates = [
            _grad_cam_pipeline(np.maximum(s * signed[i : i + 1], 0), (32, 32)) for s in (1, -1)
        ]
        err = min(float(np.abs(c - ref[i : i + 1]).max()) for c in candidates)
        assert err < 1e-4


# ---------------------------------------------------------------------- several targets


class CountingNet(SmallCNN):
    """SmallCNN (dead channels) that counts the images its forward sees."""

    def __init__(self) -> None:
        super().__init__()
        with torch.no_grad():
            self.features[4].weight[:6] = 0
            self.features[4].bias[:6] = -1
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return super().forward(x)


PARAMS = {
    "occlusion": {"window": 4, "stride": 4},
    "rise": {"n_masks": 24},
    "scorecam": {},
    "ablationcam": {},
    "eigencam": {},
}


@pytest.mark.parametrize("method", list(PARAMS))
def test_target_sets_share_forwards(method):
    """targets="top3" gives each target's single-target map, for the forwards of one."""
    net = CountingNet()
    model = xs.wrap(net, input_size=16)
    model.fold_batchnorm = False  # the folded copy would count on its own copy of `seen`
    images = rand_images(2, size=16, seed=8)
    kw = dict(method=method, layer="features.5", seed=1, **PARAMS[method])
    net.seen = 0
    results = xs.explain(model, images, targets="top3", **kw)
    shared = net.seen
    for r in results:
        net.seen = 0
        single = xs.explain(model, images, target=list(r.targets), **kw)
        np.testing.assert_allclose(r.maps, single.maps, rtol=1e-4, atol=1e-6)
        assert r.raw.shape == single.raw.shape
    if method != "eigencam":
        # explain's own prediction is 2 images; the method's work is done once, not 3 times
        assert shared - 2 < 1.5 * (net.seen - 2)


# ------------------------------------------------------------------------ degenerate input


@pytest.mark.parametrize("method", ["occlusion", "rise", "scorecam", "ablationcam", "eigencam"])
def test_constant_image_is_finite_and_flagged(small32, method):
    _, model = small32
    black = np.zeros((1, 32, 32, 3), np.uint8)
    params = {"n_masks": 16} if method == "rise" else {}
    e = xs.explain(model, black, method=method, layer="features.5", seed=0, **params)
    assert np.isfinite(e.maps).all()
    if float(np.ptp(e.maps)) == 0:
        assert e.warnings and "constant" in e.warnings[0]
    if method == "rise":
        # masks blend with a black fill: every masked image is black too and the score
        # never moves, whatever the map shows
        assert any("same" in w for w in e.warnings), e.warnings


class Blind(nn.Module):
    """Logits that ignore the input: no explanation can find anything."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        nn.init.zeros_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["rise", "scorecam"])
def test_input_blind_model_is_flagged(method):
    model = identity_wrap(Blind())
    images = rand_images(2)
    params = {"n_masks": 200} if method == "rise" else {}
    exps = xs.explain(model, images, method=method, layer="conv", target="top2", **params)
    for e in exps:
        flagged = [w for w in e.warnings if "same" in w]
        assert [w.split(":")[0] for w in flagged] == ["image 0", "image 1"], e.warnings
    # a model that looks at its input is not flagged
    clean = xs.explain(identity_wrap(SmallCNN()), images, method=method, **params)
    assert not any("same" in w for w in clean.warnings), clean.warnings


def test_rise_flags_too_few_masks():
    model = identity_wrap(SmallCNN())
    few = xs.explain(model, rand_images(1), method="rise", n_masks=8, seed=0)
    assert any("n_masks=8" in w for w in few.warnings)
    enough = xs.explain(model, rand_images(1), method="rise", n_masks=100, seed=0)
    assert not any("n_masks" in w for w in enough.warnings)


def test_nan_model_is_an_error():
    class NanNet(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 2), float("nan"))

    model = identity_wrap(NanNet())
    for method, params in [("occlusion", {}), ("rise", {"n_masks": 4})]:
        with pytest.raises(xs.XaiscopeError, match="not finite"):
            xs.explain(model, rand_images(1), method=method, **params)
