"""The xs.explain API: targets, several methods at once, pass sharing, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.conftest import SmallCNN, rand_images
from xaiscope.models.torch_model import TorchModel


@pytest.fixture(scope="module")
def small():
    return xs.wrap(SmallCNN(), input_size=16, labels=["cat", "dog", "tabby, tabby cat", "d", "e"])


def test_targets_top1_int_label_list(small):
    images = rand_images(2, size=16)
    logits = small.forward(small.preprocess(images))
    top = logits.argmax(1).numpy()
    assert list(xs.explain(small, images, method="saliency").targets) == list(top)
    assert list(xs.explain(small, images, method="saliency", target=3).targets) == [3, 3]
    assert list(xs.explain(small, images, method="saliency", target="dog").targets) == [1, 1]
    assert list(xs.explain(small, images, method="saliency", target="tabby cat").targets) == [2, 2]
    e = xs.explain(small, images, method="saliency", target=["cat", 4])
    assert list(e.targets) == [0, 4] and e.target_labels == ["cat", "e"]
    e = xs.explain(small, images, method="saliency", target="true", labels=[1, "e"])
    assert list(e.targets) == [1, 4]


def test_topk_returns_list_in_rank_order(small):
    images = rand_images(2, size=16)
    logits = small.forward(small.preprocess(images))
    ranks = logits.topk(3, dim=1).indices.numpy()
    out = xs.explain(small, images, method="gradcam", target="top3")
    assert isinstance(out, list) and len(out) == 3
    for k, e in enumerate(out):
        assert list(e.targets) == list(ranks[:, k])
        # the same map as asking for that class alone
        alone = xs.explain(small, images, method="gradcam", target=list(ranks[:, k]))
        np.testing.assert_allclose(e.maps, alone.maps, rtol=1e-5, atol=1e-7)


def test_many_methods_many_targets_order_and_equality(small):
    images = rand_images(3, size=16, seed=2)
    methods = ["gradcam", "integrated_gradients", "hirescam", "saliency"]
    out = xs.explain(small, images, methods=methods, targets="top2", n_steps=8)
    assert len(out) == 8
    assert [e.method for e in out] == [m for m in methods for _ in range(2)]
    for e in out:
        extra = {"n_steps": 8} if e.method == "integrated_gradients" else {}
        single = xs.explain(small, images, method=e.method, target=list(e.targets), **extra)
        np.testing.assert_allclose(e.maps, single.maps, rtol=1e-4, atol=1e-6)


class CountingModel(TorchModel):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.grad_passes = 0
        self.backward_sets = 0
        self.forwards = 0

    def forward(self, x):
        self.forwards += 1
        return super().forward(x)

    def grad_pass(self, x, targets, **kw):
        self.grad_passes += 1
        out = super().grad_pass(x, targets, **kw)
        self.backward_sets += out.targets.shape[0]
        return out


def test_cam_methods_share_one_pass_per_target_set():
    model = CountingModel(SmallCNN(), input_size=16)
    images = rand_images(8, size=16)
    cams = [
        "gradcam",
        "gradcam++",
        "xgradcam",
        "layercam",
        "hirescam",
        "saliency",
        "gradient_x_input",
    ]
    out = xs.explain(model, images, methods=cams, targets="top3", batch_size=8)
    assert len(out) == len(cams) * 3
    assert model.grad_passes == 1  # one forward for everything, top-3 chosen from it
    assert model.forwards == 0  # no separate forward to find the targets
    assert model.backward_sets == 3  # one backward per target set
    logits = SmallCNN()(model.preprocess(images))
    np.testing.assert_array_equal(out[0].targets, logits.argmax(1).numpy())


def test_params_routing_and_errors(small):
    images = rand_images(1, size=16)
    out = xs.explain(small, images, methods=["ig", "smoothgrad"], n_steps=3, n_samples=2, seed=0)
    assert out[0].params["n_steps"] == 3 and out[1].params["n_samples"] == 2
    per = xs.explain(
        small,
        images,
        methods=["ig", "vargrad"],
        integrated_gradients={"n_steps": 5},
        vargrad={"n_samples": 3},
        seed=0,
    )
    assert per[0].params["n_steps"] == 5 and per[1].params["n_samples"] == 3
    with pytest.raises(xs.ParameterError, match="valid"):
        xs.explain(small, images, method="gradcam", n_steps=3)
    with pytest.raises(xs.ParameterError, match="rule"):
        xs.explain(small, images, method="ig", rule="simpson")
    with pytest.raises(xs.ParameterError, match="baseline"):
        xs.explain(small, images, method="ig", baseline="purple")


def test_errors_are_typed_with_clear_messages(small):
    images = rand_images(1, size=16)
    with pytest.raises(xs.UnknownMethodError, match="valid methods: .*saliency"):
        xs.explain(small, images, method="gradcan")
    with pytest.raises(xs.UnknownLayerError, match="did you mean: features.4"):
        xs.explain(small, images, method="gradcam", layer="features.44")
    with pytest.raises(xs.TargetError, match="out of range"):
        xs.explain(small, images, method="saliency", target=5)
    with pytest.raises(xs.TargetError, match="unknown class label"):
        xs.explain(small, images, method="saliency", target="zebra")
    twins = xs.wrap(SmallCNN(), input_size=16, labels=["crane", "b", "crane", "d", "e"])
    with pytest.raises(xs.TargetError, match=r"ambiguous: 0 \(crane\), 2 \(crane\)"):
        xs.explain(twins, images, method="saliency", target="crane")
    with pytest.raises(xs.TargetError):
        xs.explain(small, images, method="saliency", target="top9")
    with pytest.raises(xs.TargetError, match="2 targets for 1 images"):
        xs.explain(small, images, method="saliency", target=[1, 2])
    with pytest.raises(xs.ParameterError):
        xs.explain(small, images)
    with pytest.raises(xs.ImageLoadError):
        xs.explain(small, b"not an image", method="saliency")
    for err in (xs.UnknownMethodError, xs.UnknownLayerError, xs.TargetError):
        assert issubclass(err, xs.XaiscopeError)


def test_black_box_model_asked_for_gradients():
    class Box(xs.Model):
        framework = "callable"
        labels = ["a", "b"]
        input_size = (8, 8)

        def pixels(self, images):
            from xaiscope.models.torch_model import images_to_tensor

            return torch.stack(images_to_tensor(images))

        def normalize(self, x01):
            return x01

        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)

    with pytest.raises(xs.UnsupportedModelError, match="black box"):
        xs.explain(Box(), rand_images(1), method="saliency")


def test_save_load_round_trip(tmp_path, small):
    images = [rand_images(1, size=16)[0], rand_images(1, size=24, seed=3)[0]]
    for method in ["ig", "gradcam"]:
        e = (
            xs.explain(small, images, method=method, n_steps=4)
            if method == "ig"
            else xs.explain(small, images, method=method)
        )
        path = e.save(tmp_path / f"{method}")
        assert path.suffix == ".npz"
        back = xs.Explanation.load(path)
        assert back.method == e.method and back.params == e.params
        for a, b in zip(back.maps, e.maps, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(back.targets, e.targets)
        np.testing.assert_array_equal(back.scores, e.scores)
        torch.testing.assert_close(back.raw, e.raw.float())
        assert back.target_labels == e.target_labels
        if e.delta is not None:
            np.testing.assert_array_equal(back.delta, e.delta)
        d = e.to_dict()
        assert d["method"] == e.method and len(d["targets"]) == 2


def test_load_bad_file(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"junk")
    with pytest.raises(xs.XaiscopeError, match="cannot read explanation"):
        xs.Explanation.load(bad)


def test_integrated_gradients_baselines_on_real_model(effnet, chelsea):
    for baseline in ["black", "white", "noise", "blur", "uniform", chelsea[::-1].copy()]:
        e = xs.explain(effnet, chelsea, method="ig", baseline=baseline, n_steps=8, seed=0)
        assert np.isfinite(e.maps).all() and e.delta is not None


def test_adversarial_baseline_is_fifty_fifty(effnet, chelsea):
    from xaiscope.methods.baselines import adversarial_baseline
    from xaiscope.methods.registry import MethodContext

    x01 = effnet.pixels(chelsea)
    x = effnet.normalize(x01)
    logits = effnet.forward(x)
    target = logits.argmax(1)
    ctx = MethodContext(model=effnet, x=x, targets=target, images01=x01, seed=0, logits=logits)
    base = adversarial_baseline(ctx)
    p = effnet.probabilities(effnet.forward(base))[0]
    runner = int(logits[0].topk(2).indices[1])
    pt, pr = float(p[int(target)]), float(p[runner])
    assert abs(pt - pr) < 0.05 * (pt + pr)
    assert pt + pr > 0.5


def test_adversarial_baseline_of_an_image_does_not_depend_on_the_batch():
    # each image stops when it reaches 50/50 itself; one that never does is flagged
    from xaiscope.methods.baselines import adversarial_baseline
    from xaiscope.methods.registry import MethodContext

    model = xs.wrap(SmallCNN(), input_size=16)
    images = rand_images(3, size=16, seed=2)
    x01 = model.pixels(list(images))
    x = model.normalize(x01)

    def baseline(rows: slice, steps: int = 300) -> tuple[torch.Tensor, list]:
        logits = model.forward(x[rows])
        ctx = MethodContext(
            model=model, x=x[rows], targets=logits.argmax(1), images01=x01[rows], seed=0
        )
        return adversarial_baseline(ctx, steps=steps), ctx.notes

    batch, notes = baseline(slice(0, 3))
    assert notes == []
    for i in range(3):
        one, _ = baseline(slice(i, i + 1))
        torch.testing.assert_close(batch[i], one[0], rtol=1e-4, atol=1e-5)
    _, notes = baseline(slice(0, 3), steps=0)
    assert [row for row, _ in notes] == [0, 1, 2]
    e = xs.explain(model, images[:1], method="ig", baseline="adversarial", n_steps=4)
    assert e.warnings == []


def test_per_image_baseline_array_with_several_targets():
    model = xs.wrap(SmallCNN(), input_size=16)
    images = rand_images(2, size=16, seed=3)
    base = rand_images(2, size=16, seed=4)
    exps = xs.explain(model, images, method="ig", baseline=base, target="top2", n_steps=4)
    assert len(exps) == 2
    for e in exps:
        for i in range(2):
            one = xs.explain(
                model, images[i], method="ig", baseline=base[i], target=int(e.targets[i]), n_steps=4
            )
            np.testing.assert_allclose(e.maps[i], one.maps[0], rtol=1e-4, atol=1e-6)
    with pytest.raises(xs.ParameterError, match=r"\(2, H, W, 3\)"):
        xs.explain(model, images, method="ig", baseline=base[:1].repeat(3, 0), target="top2")
