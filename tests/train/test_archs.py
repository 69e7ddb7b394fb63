"""The built-in architectures: study layer names, CAM layers, ViT attention, timm heads;
plus the metrics and augmentation the trainer uses."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

import xaiscope as xs
from xaiscope.train import Cifar10CNN, TinyViT, build_arch, macro_f1
from xaiscope.train.augment import shift_flip


def _images(n: int = 2, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_cifar10_cnn_has_the_study_layer_names() -> None:
    module = build_arch("cifar10_cnn", 10, (32, 32))
    assert isinstance(module, Cifar10CNN)
    names = dict(module.named_modules())
    for b in (1, 2, 3):
        for layer in (1, 2):
            conv = names[f"Conv2D_Block{b}_Layer{layer}"]
            assert isinstance(conv[0], torch.nn.Conv2d) and isinstance(conv[1], torch.nn.ReLU)
            assert isinstance(names[f"BatchNorm_Block{b}_Layer{layer}"], torch.nn.BatchNorm2d)
        assert names[f"Dropout_Block{b}"].p == 0.2
    assert names["Dense_1024"][0].out_features == 1024
    model = xs.wrap(module, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    exp = xs.explain(model, _images(), method="gradcam", layer="Conv2D_Block3_Layer1")
    assert exp.raw.shape == (2, 8, 8)  # block 3 runs at 1/4 of 32 px
    assert model.default_layer == "BatchNorm_Block3_Layer2"
    with pytest.raises(xs.ParameterError, match="divisible by 8"):
        build_arch("cifar10_cnn", 10, (36, 36))


def test_small_cnn_any_size_and_cam_layer() -> None:
    for size in (32, 64):
        model = xs.wrap(build_arch("small_cnn", 2, (size, size)), input_size=size)
        assert model.default_layer == "relu3"
        assert np.asarray(xs.explain(model, _images(1, size), method="gradcam").maps).shape == (
            1,
            size,
            size,
        )


def test_tiny_vit_attention_for_rollout() -> None:
    vit = build_arch("tiny_vit", 5, (32, 32))
    assert isinstance(vit, TinyViT) and vit.grid_size == (8, 8) and vit.num_prefix_tokens == 1
    x = torch.randn(2, 3, 32, 32)
    maps = vit.attention_maps(x)
    assert len(maps) == 4
    for a in maps:
        assert a.shape == (2, 4, 65, 65)  # (N, heads, T, T), CLS + 8x8 patches
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 65))
    # nothing stays switched on, and asking does not change the output
    assert all(not m.keep_attention and m.attention is None for m in vit.attention_modules())
    vit.eval()
    with torch.no_grad():
        out = vit(x)
    # the last block's input laid out as a map: the CAM layer of the ViT
    model = xs.wrap(vit, input_size=32)
    assert model.default_layer == "token_grid"
    exp = xs.explain(model, _images(), method="gradcam")
    assert exp.raw.shape == (2, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), out)
    assert build_arch("tiny_vit", 3, (64, 64)).grid_size == (8, 8)


def test_timm_new_head_random_init_offline() -> None:
    module = build_arch("timm:resnet18", 3, (32, 32))
    assert module(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(xs.ModelLoadError, match="timm has no model"):
        build_arch("timm:not_a_model", 3, (32, 32))


def test_timm_pretrained_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> socket.socket:
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    start = time.perf_counter()
    with pytest.raises(xs.OfflineError, match="offline"):
        build_arch("timm:resnet10t", 3, (32, 32), pretrained=True)
    assert time.perf_counter() - start < 10


def test_tiny_vit_and_timm_train_save_and_reload(tmp_path: Path) -> None:
    data = xs.datasets.shapes(24, 32, classes=2, seed=1)
    for arch in ("tiny_vit", "timm:resnet18"):
        result = xs.train(arch, data, epochs=1, models_dir=tmp_path, progress=False)
        loaded = xs.load_model(result.name or "", models_dir=tmp_path)
        np.testing.assert_allclose(
            loaded.predict(data.images[:4]).probs,
            result.model.predict(data.images[:4]).probs,
            rtol=1e-5,
            atol=1e-6,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timm-resnet18-shapes", "tiny_vit-shapes"]
    vit = xs.load_model("tiny_vit-shapes", models_dir=tmp_path)
    assert isinstance(vit.module, TinyViT)  # type: ignore[attr-defined]


def test_unknown_arch_and_options() -> None:
    with pytest.raises(xs.ParameterError, match="unknown architecture"):
        build_arch("vgg", 2, (32, 32))
    with pytest.raises(xs.ParameterError, match="no pretrained weights"):
        build_arch("small_cnn", 2, (32, 32), pretrained=True)
    with pytest.raises(xs.ParameterError, match="at least 2 classes"):
        build_arch("small_cnn", 1, (32, 32))
    with pytest.raises(xs.ParameterError, match="not divisible by the patch size"):
        build_arch("tiny_vit", 2, (36, 36), patch_size=5)
    with pytest.raises(xs.ParameterError, match="even patch size"):
        build_arch("tiny_vit", 2, (35, 35), patch_size=5)
    plain = build_arch("tiny_vit", 2, (35, 35), patch_size=5, stem="patch")
    assert plain.grid_size == (7, 7) and plain(torch.randn(1, 3, 35, 35)).shape == (1, 2)


def test_macro_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 4, 50)
        p = np.where(rng.random(50) < 0.6, y, rng.integers(0, 5, 50))
        assert macro_f1(y, p, 5) == pytest.approx(f1_score(y, p, average="macro"))
    assert macro_f1(np.array([0, 1]), np.array([0, 1])) == 1.0


def test_shift_flip_moves_and_mirrors() -> None:
    x = torch.rand(64, 3, 20, 30)
    g = torch.Generator().manual_seed(0)
    flipped = shift_flip(x, g, shift=0.0)
    same = [torch.equal(flipped[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], x[i].flip(-1)) for i in range(64)]
    assert all(a or b for a, b in zip(same, mirrored, strict=True))
    assert 16 < sum(mirrored) < 48  # about half
    shifted = shift_flip(x, torch.Generator().manual_seed(1), shift=0.1, flip=False)
    found = set()
    for i in range(64):
        hits = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-3, 4)
            # the interior, away from the replicated edges, is the image moved by (dy, dx)
            if torch.equal(shifted[i, :, 2 + dy : 18 + dy, 3 + dx : 27 + dx], x[i, :, 2:18, 3:27])
        ]
        assert len(hits) == 1  # a whole-pixel shift of at most 10 % (2 and 3 px here)
        found.add(hits[0])
    assert len(found) > 10  # shifts vary from image to image
    again = shift_flip(x, torch.Generator().manual_seed(1), shift=0.1, flip=False)
    assert torch.equal(again, shifted)
