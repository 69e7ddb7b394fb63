"""Attention rollout on a tiny_vit trained on ``shapes`` looks at the object.

One short training (one CPU thread, about 35 s) in a module-scoped fixture: circles
against crosses with little clutter, the pair a small ViT learns within a test's budget.
The measure is the mass density of the rollout map (resized to the image): mean map
value inside the object's mask over the mean value outside it, on held-out images.
Uniform attention gives 1; the same architecture untrained is the baseline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaiscope as xs
from xaiscope import viz

pytestmark = pytest.mark.slow

N, SIZE, SEED = 2000, 32, 3
#: A small ViT that learns the two most different outlines within the budget of a test
#: (about 35 s on one CPU thread): it stays at chance for about six epochs, then learns.
ARCH = {"depth": 2, "dim": 32, "heads": 2, "mlp_ratio": 2.0}
CLASSES = ["circle", "cross"]


@pytest.fixture(scope="module")
def trained():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = xs.datasets.shapes(N, SIZE, seed=SEED, classes=CLASSES, distractors=(0, 2))
        result = xs.train(
            "tiny_vit", data, epochs=14, save=False, progress=False, seed=SEED, lr=5e-4,
            augment=False, arch_kwargs=ARCH,
        )  # fmt: skip
        yield result, data
    finally:
        torch.set_num_threads(before)


def densities(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: mean map value inside the mask, and outside it."""
    inside = np.array([m[k].mean() for m, k in zip(maps, masks, strict=True)])
    outside = np.array([m[~k].mean() for m, k in zip(maps, masks, strict=True)])
    return inside, outside


def test_rollout_mass_density_inside_the_object(trained) -> None:
    from xaiscope.train.archs import build_arch

    result, data = trained
    assert result.val_accuracy > 0.7  # chance is 0.5: the model has learnt the shapes
    val = result.folds[0].val_indices[:150]
    images, masks = data.images[val], data.masks[val]
    exp = xs.explain(result.model, images, method="attention_rollout")
    inside, outside = densities(exp.maps, masks)
    ratio = inside.mean() / outside.mean()
    # the same architecture untrained, with the same preprocessing: the baseline
    torch.manual_seed(0)
    untrained = xs.wrap(
        build_arch("tiny_vit", 2, (SIZE, SIZE), **ARCH).eval(),
        input_size=SIZE,
        mean=result.model.mean.flatten().tolist(),
        std=result.model.std.flatten().tolist(),
    )
    base_in, base_out = densities(
        xs.explain(untrained, images, method="attention_rollout").maps, masks
    )
    base = base_in.mean() / base_out.mean()
    print(
        f"rollout mass density inside {inside.mean():.4g} vs outside {outside.mean():.4g}: "
        f"ratio {ratio:.2f}, higher inside for {np.mean(inside > outside):.0%} of images "
        f"(untrained: ratio {base:.2f}, {np.mean(base_in > base_out):.0%})"
    )
    assert ratio > 1.5 and ratio > base + 0.5
    assert np.mean(inside > outside) > 0.85
    # max fusion with discarding, as vit-explain shows it, agrees
    sharp = xs.explain(
        result.model, images, method="attention_rollout", head_fusion="max", discard_ratio=0.5
    )
    s_in, s_out = densities(sharp.maps, masks)
    assert s_in.mean() > 1.5 * s_out.mean()


def test_training_curves_of_the_run(trained) -> None:
    result, _ = trained
    fig = viz.training_curves(result)
    acc = fig.axes[0]
    epochs = [row["epoch"] for row in result.folds[0].history]
    np.testing.assert_array_equal(acc.lines[1].get_xdata(), epochs)  # validation accuracy
    np.testing.assert_allclose(
        acc.lines[1].get_ydata(), [row["val_acc"] for row in result.folds[0].history]
    )
