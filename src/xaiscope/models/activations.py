"""Looking inside a network: intermediate activations and transformer attention.

``xs.activations(model, image, layer)`` returns what a layer computes for an image, laid
out as feature maps: (N, C, h, w) for convolution layers (channels-first for Keras too),
ViT tokens reshaped onto the patch grid (class/distillation tokens kept aside), and flat
vectors flagged as such. Early layers have few channels at high resolution, late layers
many channels at low resolution; :func:`spatial_layers` lists every layer with its shape
and :func:`pick_layers` picks an early, a middle and a late one.

``xs.attention_maps(model, image)`` returns the raw softmax attention of every layer and
head of a vision transformer (timm ViT/DeiT, torchvision ViT, ``tiny_vit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from xaiscope.errors import NotSpatialError, ParameterError, UnknownLayerError
from xaiscope.models.base import Model

Kind = Literal["spatial", "tokens", "vector"]

__all__ = [
    "Activations",
    "AttentionMaps",
    "LayerInfo",
    "activations",
    "attention_maps",
    "pick_layers",
    "spatial_layers",
]


@dataclass
class Activations:
    """The output of one layer for N images.

    ``values``: the layer's output as it came (float32 numpy, channels-first), (N, C, h, w),
    (N, T, D) tokens or (N, D). ``kind``: ``"spatial"`` (conv maps), ``"tokens"``
    (transformer tokens with a patch grid) or ``"vector"`` (no spatial layout).
    ``maps``: (N, C, h, w) feature maps (tokens: the D features of the patch tokens on
    the (h, w) grid, prefix tokens dropped), None for vectors. ``prefix``: (N, P, D) the
    class/distillation tokens of a token layer, else None.
    """

    layer: str
    values: np.ndarray
    kind: Kind
    maps: np.ndarray | None = None
    prefix: np.ndarray | None = None
    model_name: str | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def spatial(self) -> bool:
        return self.maps is not None

    @property
    def channels(self) -> int:
        """Number of feature maps (channels, or features per token; D for vectors)."""
        return int(self.maps.shape[1] if self.maps is not None else self.values.shape[-1])

    @property
    def size(self) -> tuple[int, int] | None:
        """(h, w) of each map, or None for vectors."""
        return None if self.maps is None else (int(self.maps.shape[2]), int(self.maps.shape[3]))

    def require_maps(self) -> np.ndarray:
        """``maps``, or :class:`NotSpatialError` when the layer has no spatial output."""
        if self.maps is None:
            raise NotSpatialError(
                f"layer {self.layer!r} has no spatial output (shape "
                f"{tuple(self.values.shape[1:])} per image): pick a convolution layer or a "
                "transformer block (see spatial_layers(model) or model.layers())"
            )
        return self.maps

    def __repr__(self) -> str:
        size = self.size
        what = (
            f"{self.channels} maps of {size[0]}x{size[1]}"
            if size is not None
            else f"vector of {self.channels}"
        )
        return f"Activations(layer={self.layer!r}, n={len(self)}, {self.kind}: {what})"

    def plot(self, index: int = 0, **kw: Any) -> Any:
        """:func:`xaiscope.viz.activation_grid` of image ``index``."""
        from xaiscope.viz import activation_grid

        return activation_grid(self, index=index, **kw)


def _as_model(model: Any) -> Model:
    from xaiscope.explain import as_model

    return as_model(model)


def _layer_output(model: Model, x: torch.Tensor, layer: str) -> torch.Tensor:
    getter = getattr(model, "get_layer", None)
    if callable(getter):
        getter(layer)  # UnknownLayerError with close names
    elif layer not in model.layers():
        raise UnknownLayerError(f"unknown layer {layer!r}; see model.layers()")
    return model.activations(x, layer)


def _wrap(model: Model, layer: str, out: torch.Tensor) -> Activations:
    from xaiscope.models.vit import is_transformer, token_layout

    values = out.detach().float().cpu()
    name = getattr(model, "name", None)
    if values.ndim == 4:
        arr = values.numpy()
        return Activations(layer, arr, "spatial", maps=arr, model_name=name)
    # (N, T, D) is laid out on the patch grid only for transformers: elsewhere a 3-D output
    # (a 1-D convolution, a sequence) has no known image layout
    if values.ndim == 3 and is_transformer(model):
        try:
            layout = token_layout(model, values.shape[1])
        except NotSpatialError:
            layout = None
        if layout is not None:
            n, _, d = values.shape
            grid = values[:, layout.prefix :].reshape(n, *layout.grid, d).permute(0, 3, 1, 2)
            return Activations(
                layer,
                values.numpy(),
                "tokens",
                maps=np.ascontiguousarray(grid.numpy()),
                prefix=values[:, : layout.prefix].numpy() if layout.prefix else None,
                model_name=name,
            )
    return Activations(
        layer, values.reshape(values.shape[0], -1).numpy(), "vector", model_name=name
    )


def activations(
    model: Any, image: Any, layer: str | list[str] | tuple[str, ...] | None = None
) -> Any:
    """What ``layer`` of ``model`` computes for ``image``: an :class:`Activations`.

    ``model``: a :class:`~xaiscope.models.base.Model` or a spec for ``xs.load_model``.
    ``image``: one image or several (as for :func:`xaiscope.explain`); images are
    preprocessed like the model's input. ``layer``: any name in ``model.layers()`` (early,
    middle or last), None for ``model.default_layer``, or a list of names (then a dict
    name -> Activations, in the order given). Works for PyTorch and Keras models; black
    boxes raise :class:`~xaiscope.errors.UnsupportedModelError`.
    """
    from xaiscope.explain import as_image_list

    m = _as_model(model)
    x = m.preprocess(as_image_list(image))
    if isinstance(layer, (list, tuple)):
        if not layer:
            raise ParameterError("no layers given")
        return {name: _wrap(m, name, _layer_output(m, x, name)) for name in layer}
    name = layer if layer is not None else m.default_layer
    if name is None:
        raise UnknownLayerError("this model has no default layer; give layer= (see model.layers())")
    return _wrap(m, name, _layer_output(m, x, name))


# ------------------------------------------------------------------------ layer survey
@dataclass(frozen=True)
class LayerInfo:
    """A layer's name and the shape of its output for one image (channels-first)."""

    name: str
    shape: tuple[int, ...]

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3 and self.shape[1] > 1 and self.shape[2] > 1


def _torch_survey(model: Model) -> list[LayerInfo]:
    from xaiscope.models.vit import attention_modules

    module: nn.Module = model.module  # type: ignore[attr-defined]
    # a query/key (N, heads, T, d) inside attention is 4-D but no feature map
    inner = tuple(f"{n}." for n, _ in attention_modules(module))
    allowed = {n for n in model.layers() if not (inner and n.startswith(inner))}
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []

    def hook(name: str) -> Any:
        def fn(_m: nn.Module, _i: Any, out: Any) -> None:
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, torch.Tensor):
                seen.append((name, t))

        return fn

    transformer = bool(inner)
    for name, sub in module.named_modules():
        if name in allowed:
            handles.append(sub.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            x = model.normalize(torch.zeros(1, 3, *model.input_size, device=model.device))
            module(x)
    finally:
        for h in handles:
            h.remove()
    out: list[LayerInfo] = []
    done: set[str] = set()
    for name, t in seen:
        if name in done:
            continue
        done.add(name)
        shape = tuple(int(s) for s in t.shape[1:])
        out.append(LayerInfo(name, _map_shape(model, shape) if transformer else shape))
    return out


def _map_shape(model: Model, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A transformer token layer's shape (T, D) as maps (D, h, w); other shapes unchanged."""
    if len(shape) == 2:
        from xaiscope.models.vit import token_layout

        try:
            layout = token_layout(model, shape[0])
        except NotSpatialError:
            return shape
        return (shape[1], *layout.grid)
    return shape


def spatial_layers(model: Any, *, all_layers: bool = False) -> list[LayerInfo]:
    """Layers of ``model`` in call order with their output shape per image.

    By default only layers with a spatial output (C, h, w), h and w > 1 (ViT tokens count,
    on their patch grid); ``all_layers=True`` lists every layer. PyTorch models take one
    forward of a blank image; Keras models read their layers' static output shapes.
    """
    m = _as_model(model)
    if isinstance(getattr(m, "module", None), nn.Module):
        infos = _torch_survey(m)
    else:
        infos = []
        for name in m.layers():
            try:
                shape = tuple(m.get_layer(name).output.shape[1:])  # type: ignore[attr-defined]
            except Exception:  # a layer without one static output
                continue
            if len(shape) == 3:  # Keras is channels-last
                shape = (shape[2], shape[0], shape[1])
            if all(isinstance(s, int) for s in shape):
                infos.append(LayerInfo(name, tuple(int(s) for s in shape)))
    return infos if all_layers else [i for i in infos if i.spatial]


def pick_layers(model: Any, count: int = 3) -> list[str]:
    """``count`` spatial layers spread from first to last (early, middle, late)."""
    if count < 1:
        raise ParameterError(f"count must be at least 1, got {count}")
    infos = spatial_layers(model)
    if not infos:
        return []
    if len(infos) <= count:
        return [i.name for i in infos]
    idx = np.linspace(0, len(infos) - 1, count).round().astype(int)
    return [infos[i].name for i in dict.fromkeys(idx.tolist())]


# ------------------------------------------------------------------------ attention
@dataclass
class AttentionMaps:
    """The softmax attention of every layer and head of a vision transformer.

    ``probs``: one float32 array per attention layer (call order), (N, heads, T, T), rows
    summing to 1. ``prefix``: number of class/distillation tokens before the patches;
    ``grid``: (h, w) patch grid.
    """

    probs: list[np.ndarray]
    prefix: int
    grid: tuple[int, int]
    layer_names: list[str] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return len(self.probs)

    @property
    def num_heads(self) -> int:
        return int(self.probs[0].shape[1]) if self.probs else 0

    def __len__(self) -> int:
        return int(self.probs[0].shape[0]) if self.probs else 0

    def cls_maps(self, index: int = 0) -> np.ndarray:
        """(layers, heads, h, w): attention from the class token (mean of the prefix
        tokens; of all tokens when there is none) to each patch, for image ``index``."""
        if not 0 <= index < len(self):
            raise ParameterError(f"image index {index} out of range for {len(self)} images")
        out = []
        for a in self.probs:
            rows = a[index, :, : self.prefix] if self.prefix else a[index]
            flow = rows.mean(axis=1)[:, self.prefix :]
            out.append(flow.reshape(flow.shape[0], *self.grid))
        return np.stack(out).astype(np.float32)

    def rollout(self, head_fusion: str = "mean", discard_ratio: float = 0.0) -> np.ndarray:
        """Attention rollout (Abnar & Zuidema 2020) of every image: (N, h, w)."""
        from xaiscope.methods.attention_rollout import rollout, rollout_map

        result = rollout([torch.from_numpy(a) for a in self.probs], head_fusion, discard_ratio)
        return rollout_map(result, self.prefix, self.grid).numpy()


def attention_maps(model: Any, image: Any) -> AttentionMaps:
    """Raw attention of every layer and head of a vision transformer for ``image``.

    Raises :class:`~xaiscope.errors.UnsupportedModelError` for models without readable
    attention (CNNs, Keras, ONNX).
    """
    from xaiscope.explain import as_image_list
    from xaiscope.models.vit import (
        attention_modules,
        attention_probabilities,
        require_transformer,
        token_layout,
    )

    m = _as_model(model)
    require_transformer(m, "attention maps")
    x = m.preprocess(as_image_list(image))
    probs = attention_probabilities(m, x)
    layout = token_layout(m, probs[0].shape[-1])
    names = [n for n, _ in attention_modules(m)]
    return AttentionMaps(
        probs=[p.cpu().numpy().astype(np.float32) for p in probs],
        prefix=layout.prefix,
        grid=layout.grid,
        layer_names=names if len(names) == len(probs) else [],
    )
