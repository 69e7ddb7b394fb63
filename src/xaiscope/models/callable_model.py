"""Black-box adapter: a plain predict function ``f(batch_uint8_NHWC) -> scores``.

The model input of a black box is the [0, 1] image itself (``normalize`` is the identity);
``forward`` turns it back into the uint8 (N, H, W, 3) batch the function expects. Only
methods that need nothing but forward passes (perturbation methods) can run on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from xaiscope.errors import ModelLoadError, ModelRunError, ParameterError, XaiscopeError
from xaiscope.models.base import Model

OutputKind = Literal["auto", "probabilities", "logits"]

#: Rows that are non-negative and sum to 1 within this are taken for probabilities.
PROBABILITY_TOLERANCE = 1e-3


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """Whether every row of ``scores`` (N, classes) is a probability distribution."""
    if scores.size == 0 or not np.isfinite(scores).all():
        return False
    sums = scores.sum(axis=1, dtype=np.float64)
    return bool((scores >= 0).all() and np.abs(sums - 1.0).max() <= PROBABILITY_TOLERANCE)


def as_score_array(out: Any, n: int, what: str, classes: int | None = None) -> np.ndarray:
    """A black box's output as a finite float32 (n, classes) array, or a one-line error.

    Accepts numpy arrays, torch tensors, nested lists and anything with ``__array__``;
    (n, 1, classes)-like outputs with singleton dimensions are flattened to (n, classes).
    """
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().float().numpy()
    try:
        arr = np.asarray(out, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise XaiscopeError(
            f"{what} returned a {type(out).__name__}, not an array of scores "
            f"(expected shape ({n}, classes))"
        ) from exc
    if arr.ndim > 2 and arr.shape[0] == n and all(d == 1 for d in arr.shape[1:-1]):
        arr = arr.reshape(n, arr.shape[-1])
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise XaiscopeError(
            f"{what} returned shape {tuple(arr.shape)} for a batch of {n} image(s); "
            f"expected ({n}, classes)"
        )
    if classes is not None and arr.shape[1] != classes:
        raise XaiscopeError(f"{what} returned {arr.shape[1]} classes, expected {classes}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = [int(i) for i in np.flatnonzero(bad)[:10]]
        raise XaiscopeError(
            f"{what} returned NaN or inf scores for row(s) {rows} of a batch of {n}"
        )
    return arr


def probe_images(size: tuple[int, int]) -> np.ndarray:
    """A few (4, H, W, 3) uint8 images (black, white, gray, noise) to probe a black box."""
    rng = np.random.default_rng(0)
    h, w = size
    return np.stack(
        [
            np.zeros((h, w, 3), np.uint8),
            np.full((h, w, 3), 255, np.uint8),
            np.full((h, w, 3), 128, np.uint8),
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        ]
    )


def to_uint8_nhwc(x01: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) [0, 1] float tensor -> (N, H, W, 3) uint8 array (rounded, clipped)."""
    x = (x01.detach().float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).cpu().numpy())


def resolve_output_kind(output: str, probe: np.ndarray) -> bool:
    """``outputs_probabilities`` from ``output`` ("auto" looks at the probe's scores)."""
    if output == "probabilities":
        return True
    if output == "logits":
        return False
    if output == "auto":
        return looks_like_probabilities(probe)
    raise ParameterError(f"output must be 'auto', 'probabilities' or 'logits', got {output!r}")


class CallableModel(Model):
    """A predict function from a uint8 (N, H, W, 3) RGB batch to (N, classes) scores.

    ``output``: "probabilities", "logits", or "auto" (probabilities when every row of the
    function's output on a few probe images is non-negative and sums to 1). ``batch_size``
    bounds how many images go to the function at once.
    """

    framework = "callable"

    def __init__(
        self,
        fn: Callable[[np.ndarray], Any],
        *,
        labels: Sequence[str] | None = None,
        input_size: tuple[int, int] | int = (224, 224),
        output: OutputKind | str = "auto",
        batch_size: int = 64,
        device: str | torch.device | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise ModelLoadError(f"expected a predict function, got a {type(fn).__name__}")
        if batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
        self.fn = fn
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.device = torch.device(device or "cpu")
        self.batch_size = int(batch_size)
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        probe = probe_images(self.input_size)
        try:
            scores = self._call(probe)
        except XaiscopeError as exc:
            raise ModelLoadError(f"cannot wrap {self.name}: {exc}") from exc
        classes = scores.shape[1]
        if labels is not None and len(labels) != classes:
            raise ModelLoadError(
                f"{len(labels)} labels given but the predict function returns {classes} scores"
            )
        self.labels = list(labels) if labels is not None else [str(i) for i in range(classes)]
        self.outputs_probabilities = resolve_output_kind(output, scores)

    def _call(self, batch: np.ndarray, classes: int | None = None) -> np.ndarray:
        try:
            out = self.fn(batch)
        except Exception as exc:
            from xaiscope.batching import is_oom

            if is_oom(exc):  # let the caller retry with a smaller batch
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ModelRunError(
                f"the predict function failed on a uint8 batch of shape {batch.shape}: "
                f"{type(exc).__name__}: {first}"
            ) from exc
        return as_score_array(out, batch.shape[0], "the predict function", classes)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """The identity: a black box's input is the [0, 1] image itself."""
        return x01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, classes) of a (N, 3, H, W) [0, 1] batch, as float32 on ``device``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise XaiscopeError(f"expected a (N, 3, H, W) batch, got shape {tuple(x.shape)}")
        n = x.shape[0]
        parts = []
        for start in range(0, n, self.batch_size):
            batch = to_uint8_nhwc(x[start : start + self.batch_size])
            parts.append(self._call(batch, classes=len(self.labels)))
        scores = np.concatenate(parts) if parts else np.zeros((0, len(self.labels)), np.float32)
        return torch.from_numpy(scores).to(self.device)

    def activations(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        from xaiscope.errors import UnsupportedModelError

        raise UnsupportedModelError(
            "a predict function has no layers: " + self._no_gradients_message()
        )

    def _no_gradients_message(self) -> str:
        # unlike ONNX graphs, a function has no layers either: leave out the layer methods
        from xaiscope.methods.registry import all_methods

        usable = [m.name for m in all_methods() if not m.needs_gradients and not m.uses_layer]
        return (
            "this predict function is a black box: gradient, CAM and layer methods need a "
            f"PyTorch or Keras model; methods that work here: {', '.join(usable) or 'none yet'}"
        )
