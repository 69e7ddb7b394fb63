"""``shapes`` is learnable, and only from the object.

One short training of small_cnn (about 20 s on one CPU thread) must reach well above
chance; the same model must fall to chance when the object is replaced by what lies
behind it, and a classifier fitted on the object-free images must stay at chance too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xaiscope as xs
from xaiscope.train import TrainResult

pytestmark = pytest.mark.slow

N, SEED, CHANCE = 2000, 21, 0.2  # five balanced classes


@pytest.fixture(scope="module")
def trained() -> tuple[TrainResult, xs.ImageDataset]:
    data = xs.datasets.shapes(N, 32, seed=SEED)
    return xs.train("small_cnn", data, epochs=8, save=False, progress=False), data


def _accuracy(model: xs.Model, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = model.forward(model.preprocess(images)).argmax(1).numpy()
    return float((pred == labels).mean())


def test_small_cnn_learns_shapes_well_above_chance(
    trained: tuple[TrainResult, xs.ImageDataset],
) -> None:
    result, data = trained
    fold = result.folds[0]
    assert fold.n_val == N // 5
    assert result.val_accuracy >= 0.5  # chance is 0.2
    # the number is real: the kept model scores it again on the held-out images
    val = fold.val_indices
    assert _accuracy(result.model, data.images[val], data.labels[val]) == pytest.approx(
        result.val_accuracy
    )


def test_without_the_object_the_class_is_not_predictable(
    trained: tuple[TrainResult, xs.ImageDataset],
) -> None:
    result, data = trained
    # the same images with the object left out (identical elsewhere, see test_shapes.py)
    empty = xs.datasets.shapes(N, 32, seed=SEED, with_object=False)
    val = result.folds[0].val_indices
    acc = _accuracy(result.model, empty.images[val], empty.labels[val])
    # 400 images: chance +- 0.02 (one standard error); the trained model drops to chance
    assert acc < CHANCE + 0.08, acc

    # and nothing outside the object carries the label for a fitted classifier either:
    # colour histograms and 8x8 thumbnails of the object-free images, 5-fold CV (training
    # a CNN on the object-free images stays at chance too: bench/train_shapes.py --control)
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    images = empty.images
    thumbs = images.reshape(N, 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(N, -1)
    bins = (images // 32).reshape(N, -1, 3)
    hist = np.stack([(bins[..., c, None] == np.arange(8)).mean(1) for c in range(3)], 1)
    features = np.hstack([thumbs, hist.reshape(N, -1)])
    probe = make_pipeline(StandardScaler(), RidgeClassifier(alpha=10.0))
    scores = cross_val_score(probe, features, empty.labels, cv=5)
    assert scores.mean() < CHANCE + 0.05, scores
