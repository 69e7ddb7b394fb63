"""Explainers: functions that compute maps for images, and the chance references.

An *explainer* is ``f(model, images, targets) -> maps``: ``images`` a list of N
(H_i, W_i, 3) uint8 arrays, ``targets`` (N,) class indices, ``maps`` N (H_i, W_i) float
arrays (a list, or an (N, H, W) array). Metrics that re-run an explanation (max-sensitivity
on noisy copies, the model-randomisation sanity check) call one.

* :func:`method_explainer` re-runs a registered method with an explanation's parameters;
* :class:`RandomExplainer` returns fresh uniform noise at every call, and
  :class:`GaussianExplainer` the same centred Gaussian blob whatever the input: every score
  in :func:`xaiscope.evaluate` is also computed for these two, so that a user can tell a
  method's signal from chance (random) and from a centre bias (Gaussian);
* :func:`edge_detector` returns the image's edges whatever the model: the control of
  Adebayo et al. (2018), which a sanity check must flag (its maps never change when the
  model is randomised).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xaiscope.errors import ParameterError, UnknownMethodError

if TYPE_CHECKING:
    from xaiscope.explanation import Explanation
    from xaiscope.models.base import Model

Explainer = Callable[[Any, list[np.ndarray], np.ndarray], Any]

#: Standard deviation of the centre-Gaussian reference map, as a fraction of each side.
GAUSSIAN_SIGMA = 0.25


def as_map_list(maps: Any, shapes: Sequence[tuple[int, int]] | None = None) -> list[np.ndarray]:
    """Maps as a list of 2-D float64 arrays, checked against the image ``shapes`` if given."""
    if isinstance(maps, np.ndarray) and maps.ndim == 2:
        maps = maps[None]
    try:
        out = [np.asarray(m, dtype=np.float64) for m in maps]
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"maps must be numeric (N, H, W) arrays: {exc}") from None
    for i, m in enumerate(out):
        if m.ndim == 3 and m.shape[0] == 1:
            out[i] = m = m[0]
        if m.ndim != 2:
            raise ParameterError(f"map {i} must be 2-D (H, W), got shape {m.shape}")
    if shapes is not None:
        if len(out) != len(shapes):
            raise ParameterError(f"got {len(out)} maps for {len(shapes)} images")
        for i, (m, hw) in enumerate(zip(out, shapes, strict=True)):
            if tuple(m.shape) != tuple(hw):
                raise ParameterError(
                    f"map {i} is {m.shape[0]}x{m.shape[1]} but its image is {hw[0]}x{hw[1]}"
                )
    return out


def random_maps(shapes: Sequence[tuple[int, int]], rng: np.random.Generator) -> list[np.ndarray]:
    """Uniform [0, 1) noise maps of the given (H, W) shapes."""
    return [rng.random(tuple(hw)) for hw in shapes]


def gaussian_map(shape: tuple[int, int], sigma: float = GAUSSIAN_SIGMA) -> np.ndarray:
    """A Gaussian blob at the image centre, peak 1, sigma = ``sigma`` x each side."""
    h, w = int(shape[0]), int(shape[1])
    y = (np.arange(h) + 0.5 - h / 2) / max(sigma * h, 1e-9)
    x = (np.arange(w) + 0.5 - w / 2) / max(sigma * w, 1e-9)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def gaussian_maps(shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    return [gaussian_map(hw) for hw in shapes]


class RandomExplainer:
    """An explainer returning fresh uniform noise maps at every call (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5EED])

    def __call__(self, model: Any, images: list[np.ndarray], targets: np.ndarray) -> list[Any]:
        return random_maps([im.shape[:2] for im in images], self.rng)


class GaussianExplainer:
    """An explainer returning the same centre-Gaussian map whatever the image and model."""

    name = "gaussian"

    def __call__(self, model: Any, images: list[np.ndarray], targets: np.ndarray) -> list[Any]:
        return gaussian_maps([im.shape[:2] for im in images])


def edge_detector(model: Any, images: list[np.ndarray], targets: np.ndarray) -> list[np.ndarray]:
    """Sobel gradient magnitude of each image's luminance: a model-independent control.

    Adebayo et al. (2018), "Sanity Checks for Saliency Maps" (NeurIPS): an edge detector
    produces plausible-looking maps that ignore the model entirely, so a sanity check must
    show them unchanged when the model's weights are randomised.
    """
    from scipy import ndimage

    out = []
    for im in images:
        gray = np.asarray(im, dtype=np.float64)[..., :3] @ np.array([0.299, 0.587, 0.114]) / 255
        out.append(np.hypot(ndimage.sobel(gray, axis=0), ndimage.sobel(gray, axis=1)))
    return out


def method_explainer(explanation: Explanation) -> Explainer | None:
    """An explainer re-running ``explanation``'s registered method with its parameters,
    layer and seed (for the targets it is given); None if the method is not registered."""
    from xaiscope.methods.registry import get_method

    try:
        info = get_method(explanation.method)
    except UnknownMethodError:
        return None
    params = {k: v for k, v in explanation.params.items() if k != "seed"}
    for key, value in params.items():
        # Explanation.load keeps array parameters only as a description
        if isinstance(value, str) and value.startswith("<array"):
            raise ParameterError(
                f"cannot re-run {info.name}: parameter {key} was an array that the saved "
                "explanation does not hold; pass explainer= or the Explanation from xs.explain"
            )
    seed = explanation.params.get("seed")
    layer = explanation.layer

    def run(model: Model, images: list[np.ndarray], targets: np.ndarray) -> Any:
        from xaiscope.explain import explain

        exp = explain(
            model,
            list(images),
            method=info.name,
            target=[int(t) for t in np.asarray(targets).ravel()],
            layer=layer,
            seed=seed,
            progress=False,
            **params,
        )
        assert not isinstance(exp, list)
        return exp.maps

    run.__name__ = info.name
    return run


def call_explainer(
    explainer: Explainer, model: Any, images: list[np.ndarray], targets: np.ndarray
) -> list[np.ndarray]:
    """Run ``explainer`` and check it returned one map per image at the image's size."""
    maps = explainer(model, images, np.asarray(targets))
    return as_map_list(maps, [im.shape[:2] for im in images])
