"""The model adapter interface that every explanation method is written against.

Methods never touch a framework directly: they call the few primitives of :class:`Model`
(``forward``, ``grad_pass``, ``activations``, ``layers``). PyTorch is the compute engine;
adapters for other frameworks convert tensors at this boundary.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaiscope.errors import UnsupportedModelError

ImageInput = Any  # an (H, W, 3) uint8 array, a list of them, an (N, H, W, 3) array, or paths


@dataclass
class GradPass:
    """What one forward pass plus one backward per target set returns.

    Shapes: ``logits`` (N, classes); ``input_grads`` (K, N, C, H, W) or None;
    ``activation`` (N, c, h, w) or None; ``layer_grads`` (K, N, c, h, w) or None,
    where K is the number of target sets asked for.
    """

    logits: torch.Tensor
    #: the target sets differentiated, (K, N) (or (K, N, classes) weights)
    targets: torch.Tensor | None = None
    input_grads: torch.Tensor | None = None
    activation: torch.Tensor | None = None
    layer_grads: torch.Tensor | None = None


@dataclass
class Prediction:
    """Top-k predictions: ``probs`` (N, k), ``indices`` (N, k), ``labels`` (N lists of k)."""

    probs: np.ndarray
    indices: np.ndarray
    labels: list[list[str]]

    def __str__(self) -> str:
        lines = []
        for i, (p, lab) in enumerate(zip(self.probs, self.labels, strict=True)):
            tops = ", ".join(f"{name} {prob:.1%}" for name, prob in zip(lab, p, strict=True))
            lines.append(f"[{i}] {tops}")
        return "\n".join(lines)


class Model(abc.ABC):
    """A classifier seen through xaiscope.

    Attributes: ``labels`` (class names), ``input_size`` (H, W) of the model input,
    ``framework`` ("torch" | "keras" | "onnx" | "callable"), ``device``.
    """

    framework: str = "abstract"
    labels: list[str]
    input_size: tuple[int, int]
    device: torch.device = torch.device("cpu")
    #: True when the model's raw output is already probabilities (no softmax needed).
    outputs_probabilities: bool = False

    # ----------------------------------------------------------------- primitives
    @property
    def supports_gradients(self) -> bool:
        """Whether gradient and CAM methods can run (False for black boxes)."""
        return False

    def pixels(self, images: ImageInput) -> torch.Tensor:
        """(N, 3, H, W) images in [0, 1] at ``input_size`` on ``device``.

        The whole image is resized (bilinear, antialiased; no crop), so that maps map back
        onto the full image.
        """
        return resize_images(images, self.input_size, self.device)

    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """Resize and normalise images into the model's input, (N, C, H, W) float on ``device``."""
        return self.normalize(self.pixels(images))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map a (N, 3, H, W) batch in [0, 1] at ``input_size`` to the model input."""
        raise NotImplementedError

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, classes) for a preprocessed batch, without gradients."""

    def grad_pass(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        *,
        layer: str | None = None,
        need_input: bool = True,
        guided: bool = False,
    ) -> GradPass:
        """One forward and one backward per row of ``targets`` (K, N) (or (N,) for K = 1).

        ``targets`` may instead hold float class weights, (K, N, classes) or (N, classes):
        the score differentiated is then sum_j w_j z_j (a vector-Jacobian product). It may
        also be a function from the logits of this forward to such targets (top-k chosen
        without a separate forward); ``GradPass.targets`` returns what was used.

        Returns the gradients of the target scores with respect to the input and/or the
        output of ``layer``. ``guided`` rectifies gradients at every ReLU (guided backprop).
        """
        raise UnsupportedModelError(self._no_gradients_message())

    def activations(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Output of ``layer`` for a preprocessed batch, (N, c, h, w) or (N, tokens, d)."""
        raise UnsupportedModelError(
            f"{self.framework} models expose no intermediate layers; "
            "use a PyTorch or Keras model for activations and CAMs"
        )

    def forward_from_layer(
        self, x: torch.Tensor, layer: str, activation: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B, classes) of the model with the output of ``layer`` replaced.

        ``x`` is ONE preprocessed image (1, C, H, W); ``activation`` (B, ...) holds B
        replacements for the output of ``layer`` (its native shape with batch B). The part
        of the network before ``layer`` runs once, at batch 1; only the layers after it run
        at batch B (Ablation-CAM: one ablated channel per row). ``activation`` may be
        overwritten by in-place operations after the layer: pass a tensor you no longer need.
        """
        raise UnsupportedModelError(
            f"{self.framework} models cannot replace an intermediate layer's output; "
            "use a PyTorch model for Ablation-CAM"
        )

    def layers(self) -> list[str]:
        """Names of the layers usable for CAMs and activations (empty for black boxes)."""
        return []

    @property
    def default_layer(self) -> str | None:
        """The last spatial layer, used by CAMs when no layer is given."""
        return None

    # ------------------------------------------------------------------- helpers
    def _no_gradients_message(self) -> str:
        from xaiscope.methods.registry import method_names

        black_box = ", ".join(method_names(needs_gradients=False)) or "none yet"
        return (
            f"this {self.framework} model is a black box without gradients: gradient methods and "
            f"gradient-weighted CAMs need a PyTorch or Keras model; methods that work here: "
            f"{black_box}"
        )

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities from the model's raw output."""
        if self.outputs_probabilities:
            return logits
        return F.softmax(logits.float(), dim=-1)

    def predict(self, images: ImageInput, top_k: int = 5) -> Prediction:
        """Top-k classes and probabilities for each image."""
        x = self.preprocess(images)
        probs = self.probabilities(self.forward(x))
        k = min(top_k, probs.shape[1])
        top = probs.topk(k, dim=1)
        idx = top.indices.cpu().numpy()
        return Prediction(
            probs=top.values.cpu().numpy().astype(np.float32),
            indices=idx,
            labels=[[self.label(int(j)) for j in row] for row in idx],
        )

    def label(self, index: int) -> str:
        """Readable name of class ``index`` (the index itself when no labels are known)."""
        if 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(framework={self.framework!r}, classes={len(self.labels)}, "
            f"input_size={self.input_size}, device={self.device})"
        )


def _image_list(images: ImageInput) -> list[Any]:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [images[i] for i in range(images.shape[0])]
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _to_float01(img: Any) -> torch.Tensor:
    """One image as a (3, H, W) float32 tensor in [0, 1], made in place: a 50-megapixel
    photo costs its float copy once, not twice."""
    from xaiscope.data.images import load_image

    u8 = torch.from_numpy(np.ascontiguousarray(load_image(img))).permute(2, 0, 1)
    out = torch.empty(u8.shape, dtype=torch.float32)
    out.copy_(u8)
    return out.div_(255.0)


def images_to_tensor(images: ImageInput) -> list[torch.Tensor]:
    """Turn user images into a list of (3, H, W) float tensors in [0, 1]."""
    return [_to_float01(img) for img in _image_list(images)]


def resize_images(
    images: ImageInput, size: tuple[int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """User images as one (N, 3, H, W) batch in [0, 1] at ``size`` on ``device``.

    Bilinear antialiased resize of the whole image; images already at ``size`` are kept as
    is. Images are converted one at a time, so only one is ever held at full size in float.
    """
    resized = []
    for img in _image_list(images):
        t = _to_float01(img)
        if tuple(t.shape[1:]) != tuple(size):
            t = F.interpolate(
                t[None].to(device), size=size, mode="bilinear", antialias=True, align_corners=False
            )[0]
        resized.append(t.to(device))
    return torch.stack(resized).clamp_(0, 1)


def layer_suggestions(name: str, candidates: Sequence[str], n: int = 5) -> list[str]:
    """Close matches to a mistyped layer name, best first."""
    import difflib

    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if close:
        return close
    return [c for c in candidates if name.lower() in c.lower()][:n]
