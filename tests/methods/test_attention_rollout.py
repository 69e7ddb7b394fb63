"""Attention rollout and raw attention: exact on a hand-built transformer, read correctly
from timm, torchvision and tiny_vit, typed errors elsewhere, and CAMs on ViT token grids."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

import xaiscope as xs
from tests.conftest import SmallCNN, hook_count, rand_images
from xaiscope.methods.attention_rollout import rollout
from xaiscope.models.vit import TokenLayout, attention_probabilities, token_layout

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- a hand-built transformer
class FixedAttention(nn.Module):
    """Attention with given probabilities (heads, T, T), following tiny_vit's protocol
    (``keep_attention`` / ``attention``)."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("probs", probs)
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.probs.expand(x.shape[0], -1, -1, -1)
        if self.keep_attention:
            self.attention = attn.detach()
        return x + attn.mean(1) @ x


class HandViT(nn.Module):
    """8 px input, 4 px patches: CLS + a 2 x 2 grid (T = 5), two fixed attention layers."""

    num_prefix_tokens = 1
    grid_size = (2, 2)

    def __init__(self, probs: list[torch.Tensor]) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.patch_embed = nn.Conv2d(3, 4, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4, generator=g))
        self.blocks = nn.ModuleList(FixedAttention(p) for p in probs)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        for b in self.blocks:
            t = b(t)
        return self.head(t[:, 0])


def _stochastic(rng: np.random.Generator, heads: int, t: int) -> np.ndarray:
    a = rng.random((heads, t, t)) + 0.05
    return a / a.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def hand() -> tuple[xs.Model, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    probs = [_stochastic(rng, 2, 5) for _ in range(2)]
    net = HandViT([torch.tensor(p, dtype=torch.float32) for p in probs])
    return xs.wrap(net, input_size=8, mean=(0, 0, 0), std=(1, 1, 1)), probs


def _by_hand(probs: list[np.ndarray], fusion: str, discard: float) -> np.ndarray:
    """Abnar & Zuidema's rollout written out: fuse heads, drop the lowest, add I, renormalise
    rows, multiply first to last; the class token's row over the 2 x 2 patches."""
    t = probs[0].shape[-1]
    result = np.eye(t)
    for p in probs:
        fused = {"mean": p.mean(0), "max": p.max(0), "min": p.min(0)}[fusion].astype(np.float64)
        if discard > 0:
            flat = fused.ravel().copy()
            k = int(t * t * discard)
            lowest = np.argsort(flat, kind="stable")[:k]
            keep = flat[0]
            flat[lowest] = 0.0
            flat[0] = keep
            fused = flat.reshape(t, t)
        step = (fused + np.eye(t)) / 2
        step = step / step.sum(1, keepdims=True)
        result = step @ result
    return result[0, 1:].reshape(2, 2)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.4])
def test_rollout_equals_product_by_hand(hand, fusion, discard):
    model, probs = hand
    img = rand_images(1, size=8, seed=1)
    exp = xs.explain(
        model, img, method="attention_rollout", head_fusion=fusion, discard_ratio=discard
    )
    expected = _by_hand(probs, fusion, discard)
    np.testing.assert_allclose(exp.raw[0].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert exp.maps.shape == (1, 8, 8)
    assert exp.params == {"head_fusion": fusion, "discard_ratio": discard}
    assert exp.extras["grid"] == [2, 2] and exp.extras["prefix_tokens"] == 1


def test_rollout_two_layers_written_out(hand):
    """The same numbers with the two matrices multiplied explicitly: R = Â2 Â1."""
    model, probs = hand
    a1 = (probs[0].mean(0) + np.eye(5)) / 2
    a2 = (probs[1].mean(0) + np.eye(5)) / 2
    a1 /= a1.sum(1, keepdims=True)
    a2 /= a2.sum(1, keepdims=True)
    expected = (a2 @ a1)[0, 1:].reshape(2, 2)
    got = xs.attention_maps(model, rand_images(1, size=8)).rollout()
    np.testing.assert_allclose(got[0], expected, rtol=1e-5)
    # and the raw maps are the given probabilities, CLS row over the patches
    att = xs.attention_maps(model, rand_images(2, size=8))
    assert att.num_layers == 2 and att.num_heads == 2 and att.grid == (2, 2) and len(att) == 2
    np.testing.assert_allclose(att.probs[1][1], probs[1], rtol=1e-6)
    np.testing.assert_allclose(att.cls_maps(1)[0], probs[0][:, 0, 1:].reshape(2, 2, 2), rtol=1e-6)


def test_rollout_identity_attention_gives_zero_map():
    eye = torch.eye(5).expand(1, 3, 5, 5)
    r = rollout([eye, eye])
    torch.testing.assert_close(r[0], torch.eye(5))


def test_rollout_parameters_checked(hand):
    model, _ = hand
    img = rand_images(1, size=8)
    with pytest.raises(xs.ParameterError, match="head_fusion"):
        xs.explain(model, img, method="attention_rollout", head_fusion="median")
    with pytest.raises(xs.ParameterError, match="discard_ratio"):
        xs.explain(model, img, method="attention_rollout", discard_ratio=1.0)


# ---------------------------------------------------------------- real transformers
def _timm_vit(name: str = "vit_tiny_patch16_224", **kw) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=32, patch_size=8, depth=2, **kw)


def test_timm_attention_read_matches_manual_softmax():
    net = _timm_vit().eval()
    model = xs.wrap(net, input_size=32)
    x = model.preprocess(rand_images(2, size=32, seed=3))
    probs = attention_probabilities(model, x)
    assert len(probs) == 2 and probs[0].shape == (2, 3, 17, 17)  # 3 heads, CLS + 4x4
    # the first block's attention computed from its weights
    with torch.no_grad():
        t = net.patch_embed(x)
        t = net._pos_embed(t)
        t = net.norm_pre(t)
        blk = net.blocks[0]
        h = blk.norm1(t)
        attn = blk.attn
        qkv = attn.qkv(h).reshape(2, 17, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        manual = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    torch.testing.assert_close(probs[0], manual, rtol=1e-5, atol=1e-6)
    # nothing left switched: the fused kernel is back on, no hooks
    assert all(b.attn.fused_attn == timm.layers.use_fused_attn() for b in net.blocks)
    assert hook_count(net) == 0


def test_deit_distilled_two_prefix_tokens():
    torch.manual_seed(0)
    net = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2
    ).eval()
    model = xs.wrap(net, input_size=32)
    assert token_layout(model, 18) == TokenLayout(2, (4, 4))
    img = rand_images(2, size=32, seed=5)
    exp = xs.explain(model, img, method="attention_rollout")
    assert exp.raw.shape == (2, 4, 4) and exp.extras["prefix_tokens"] == 2
    att = xs.attention_maps(model, img)
    cls_and_dist = att.rollout()
    np.testing.assert_allclose(exp.raw.numpy(), cls_and_dist, rtol=1e-5)
    # CAMs on the token grid: the two prefix tokens dropped (formerly a reshape error)
    assert model.default_layer == "blocks.1.norm1"
    cam = xs.explain(model, img, method="gradcam")
    assert cam.raw.shape == (2, 4, 4) and np.isfinite(cam.maps).all()


def test_torchvision_vit_multihead_attention():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()
    model = xs.wrap(net, input_size=32)
    x = model.preprocess(rand_images(2, size=32))
    probs = attention_probabilities(model, x)
    assert len(probs) == 2 and probs[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(2, 2, 17))
    assert hook_count(net) == 0
    with torch.no_grad():
        before = net(x)
    assert model.default_layer == "encoder.layers.encoder_layer_1.ln_1"
    exp = xs.explain(model, rand_images(2, size=32), method="attention_rollout")
    assert exp.raw.shape == (2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before)  # need_weights forced only while reading


def test_gradcam_on_vit_matches_pytorch_grad_cam():
    """Token-to-grid reshaping found from the model equals the reshape_transform that
    pytorch-grad-cam documents for ViTs (drop CLS, tokens -> 4 x 4)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = _timm_vit().eval()
    model = xs.wrap(net, input_size=32)
    assert model.default_layer == "blocks.1.norm1"
    images = rand_images(2, size=32, seed=11)
    exp = xs.explain(model, images, method="gradcam", target=[1, 4])

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ref_cam = GradCAM(model=net, target_layers=[net.blocks[1].norm1], reshape_transform=reshape)
    x = model.preprocess(images)
    acts: dict[str, torch.Tensor] = {}
    # pytorch-grad-cam normalises its output; compare its raw weighted activations instead
    with ref_cam:
        ref_cam.activations_and_grads(x)
        targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
        out = ref_cam.activations_and_grads(x)
        loss = sum(t(o) for t, o in zip(targets, out, strict=True))
        net.zero_grad()
        loss.backward()
        a = ref_cam.activations_and_grads.activations[0]
        g = ref_cam.activations_and_grads.gradients[0]
        acts["cam"] = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))
    torch.testing.assert_close(exp.raw.float(), acts["cam"].float(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "name",
    ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam",
     "eigencam"],
)  # fmt: skip
def test_every_cam_runs_on_vit_token_grids(name):
    net = _timm_vit().eval()
    model = xs.wrap(net, input_size=32)
    e = xs.explain(model, rand_images(2, size=32, seed=6), method=name, target=[0, 3])
    assert tuple(e.raw.shape) == (2, 4, 4)  # the 4 x 4 patch grid, CLS dropped
    assert e.maps.shape == (2, 32, 32) and np.isfinite(e.maps).all()
    assert hook_count(net) == 0


# ---------------------------------------------------------------- contract on transformers
@pytest.fixture(scope="module")
def tiny_vit_model() -> xs.Model:
    from xaiscope.train.archs import TinyViT

    torch.manual_seed(0)
    return xs.wrap(TinyViT(5, (32, 32)).eval(), input_size=32)


def test_contract_shapes_batch_and_targets(tiny_vit_model):
    model = tiny_vit_model
    images = [rand_images(1, size=40, seed=1)[0], rand_images(1, size=32, seed=2)[0]]
    ragged = xs.explain(model, images, method="attention_rollout")
    assert [m.shape for m in ragged.maps] == [(40, 40), (32, 32)]
    batch = rand_images(3, size=32, seed=4)
    e = xs.explain(model, batch, method="rollout", batch_size=2)  # alias
    assert e.method == "attention_rollout"
    assert e.maps.shape == (3, 32, 32) and e.maps.dtype == np.float32
    assert e.raw.shape == (3, 8, 8) and bool((e.raw >= 0).all())
    assert float(e.raw.sum(dim=(1, 2)).max()) <= 1.0 + 1e-5  # a share of the flow
    for i in range(3):
        one = xs.explain(model, batch[i], method="attention_rollout")
        np.testing.assert_allclose(e.maps[i], one.maps[0], rtol=1e-5, atol=1e-7)
    # class-agnostic: every target gives the same map
    many = xs.explain(model, batch, method="attention_rollout", targets="top3")
    assert len(many) == 3
    for other in many[1:]:
        np.testing.assert_array_equal(other.maps, many[0].maps)
    assert hook_count(model.module) == 0
    assert all(not m.keep_attention for m in model.module.attention_modules())


def test_no_hooks_or_switches_left_after_error(tiny_vit_model):
    net = _timm_vit().eval()
    model = xs.wrap(net, input_size=32)

    def boom(*_a):
        raise RuntimeError("boom")

    handle = net.blocks[1].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            attention_probabilities(model, model.preprocess(rand_images(1, size=32)))
    finally:
        handle.remove()
    assert hook_count(net) == 0
    assert all(b.attn.fused_attn == timm.layers.use_fused_attn() for b in net.blocks)


def test_non_transformer_is_a_typed_one_line_error():
    model = xs.wrap(SmallCNN(), input_size=16)
    assert not xs.get_method("attention_rollout").applicable(model)
    assert xs.get_method("gradcam").applicable(model)
    with pytest.raises(xs.UnsupportedModelError, match="vision transformer") as info:
        xs.explain(model, rand_images(1, size=16), method="attention_rollout")
    assert "\n" not in str(info.value)
    with pytest.raises(xs.UnsupportedModelError, match="vision transformer"):
        xs.attention_maps(model, rand_images(1, size=16))
    black_box = xs.wrap(lambda x: np.ones((len(x), 3)), labels=["a", "b", "c"], input_size=16)
    with pytest.raises(xs.UnsupportedModelError, match="black box"):
        xs.explain(black_box, rand_images(1, size=16), method="attention_rollout")
    assert "attention_rollout" not in black_box._no_gradients_message()


def test_cli_explain_rollout_on_cnn_exits_2(capsys, tmp_path):
    from xaiscope.cli.main import main

    code = main(
        ["explain", "sample:chelsea", "--method", "attention_rollout", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xaiscope: error: ")
    assert "vision transformer" in lines[0]
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- token layouts
def test_token_layout_rules():
    from xaiscope.train.archs import TinyViT

    wide = xs.wrap(TinyViT(3, (32, 64)).eval(), input_size=(32, 64))
    assert token_layout(wide, 1 + 8 * 16) == TokenLayout(1, (8, 16))
    assert token_layout(wide, 8 * 16) == TokenLayout(0, (8, 16))  # a layer without CLS
    # shape only: the smallest prefix leaving a grid of the input's aspect ratio
    assert token_layout(None, 50, (224, 224)) == TokenLayout(1, (7, 7))
    assert token_layout(None, 49, (224, 224)) == TokenLayout(0, (7, 7))
    assert token_layout(None, 2 + 4 * 8, (32, 64)) == TokenLayout(2, (4, 8))
    with pytest.raises(xs.NotSpatialError, match="tokens"):
        token_layout(None, 23, (32, 32))
