"""Vision transformers seen through xaiscope: token grids and attention probabilities.

Three things every ViT-aware feature needs, found from the model itself:

* :func:`token_layout`: how the (N, T, D) tokens of a layer map onto the image, i.e. how
  many prefix tokens (CLS, DeiT's distillation token, register tokens) come first and the
  (h, w) patch grid of the rest. Read from the module (timm's ``num_prefix_tokens`` and
  ``patch_embed.grid_size``, torchvision's ``class_token``/``image_size``/``patch_size``,
  ``tiny_vit``'s ``grid_size``), with a shape-only fallback for other models.
* :func:`attention_probabilities`: the softmax attention of every attention module, in
  call order, for timm ViTs/DeiTs (their fused kernel is switched off for the pass),
  ``nn.MultiheadAttention`` (torchvision ViTs) and modules following ``tiny_vit``'s
  ``keep_attention``/``attention`` protocol. Every hook and switch is undone in ``finally``.
* :func:`transformer_cam_layer`: the layer CAMs use on a ViT by default, the input of the
  last block's attention (its first LayerNorm, as pytorch-grad-cam recommends), instead of
  a 4-D tensor that only looks spatial (a (N, heads, T, d) query/key inside attention).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xaiscope.errors import NotSpatialError, UnsupportedModelError

#: Largest number of prefix tokens tried when the model does not say (CLS + distillation);
#: models with register tokens declare them (timm's ``num_prefix_tokens``).
MAX_PREFIX = 2


@dataclass(frozen=True)
class TokenLayout:
    """``prefix`` tokens first, then ``grid`` = (h, w) patch tokens in row-major order."""

    prefix: int
    grid: tuple[int, int]

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]


def _module_of(model: Any) -> nn.Module | None:
    if isinstance(model, nn.Module):
        return model
    module = getattr(model, "module", None)
    return module if isinstance(module, nn.Module) else None


def _declared_prefix(module: nn.Module | None) -> int | None:
    if module is None:
        return None
    n = getattr(module, "num_prefix_tokens", None)
    if isinstance(n, int) and n >= 0:
        return n
    if isinstance(getattr(module, "class_token", None), torch.Tensor):  # torchvision ViT
        return 1
    return None


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    return None


def _declared_grid(module: nn.Module | None, input_size: tuple[int, int]) -> tuple[int, int] | None:
    if module is None:
        return None
    embed = getattr(module, "patch_embed", None)
    for owner in (embed, module):
        grid = _pair(getattr(owner, "grid_size", None)) if owner is not None else None
        if grid is not None:
            return grid
    patch = _pair(getattr(embed, "patch_size", None)) or _pair(getattr(module, "patch_size", None))
    if patch is not None:
        size = _pair(getattr(module, "image_size", None)) or input_size
        return (size[0] // patch[0], size[1] // patch[1])
    return None


def token_layout(model: Any, tokens: int, input_size: tuple[int, int] | None = None) -> TokenLayout:
    """Where the patch grid sits in a sequence of ``tokens`` tokens of ``model``.

    ``model``: a :class:`~xaiscope.models.base.Model` or an ``nn.Module`` (or None: shape
    only). The model's own prefix count and patch grid are used when they account for the
    tokens (also without the prefix, for a layer that already dropped it); otherwise the
    smallest prefix (0 to :data:`MAX_PREFIX`) leaving a grid with the input's aspect ratio.
    Raises :class:`~xaiscope.errors.NotSpatialError` when no grid fits.
    """
    size = input_size or getattr(model, "input_size", None) or (1, 1)
    h_in, w_in = int(size[0]), int(size[1])
    module = _module_of(model)
    prefix = _declared_prefix(module)
    grid = _declared_grid(module, (h_in, w_in))
    if grid is not None:
        cells = grid[0] * grid[1]
        for p in ([prefix] if prefix is not None else []) + list(range(MAX_PREFIX + 1)):
            if tokens == p + cells:
                return TokenLayout(p, grid)
    order = ([prefix] if prefix is not None else []) + list(range(MAX_PREFIX + 1))
    for p in order:
        rest = tokens - p
        if rest <= 0:
            continue
        # h * w = rest with h / w = H / W: w = sqrt(rest * W / H)
        gw = max(1, round((rest * w_in / h_in) ** 0.5))
        gh = rest // gw
        if gh * gw == rest and gh * w_in == gw * h_in:
            return TokenLayout(p, (gh, gw))
    raise NotSpatialError(
        f"{tokens} tokens do not form the model's patch grid"
        + (f" {grid[0]}x{grid[1]}" if grid else "")
        + " (after at most a class and a distillation token): this layer has no spatial layout"
    )


def tokens_to_grid(t: torch.Tensor, model: Any = None) -> torch.Tensor:
    """(N, T, D) tokens -> (N, D, h, w) patch grid, prefix tokens (CLS, ...) dropped."""
    if t.ndim != 3:
        raise NotSpatialError(f"expected (N, tokens, dim) tokens, got shape {tuple(t.shape)}")
    n, tokens, d = t.shape
    layout = token_layout(model, tokens)
    gh, gw = layout.grid
    return t[:, layout.prefix :].reshape(n, gh, gw, d).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------ attention
def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.MultiheadAttention):
        return "mha"
    if hasattr(m, "keep_attention") and hasattr(m, "attention"):
        return "keep"
    # timm's Attention (ViT, DeiT, ...): q/k/v, a fused-kernel switch, and attn_drop, whose
    # input is the softmax attention when the fused kernel is off
    if (
        hasattr(m, "fused_attn")
        and isinstance(getattr(m, "attn_drop", None), nn.Module)
        and hasattr(m, "qkv")
        and not hasattr(m, "window_size")  # Swin's windowed attention: no global token mix
    ):
        return "timm"
    return None


def attention_modules(model: Any) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention module whose probabilities can be read."""
    module = _module_of(model)
    if module is None:
        return []
    return [(name, m) for name, m in module.named_modules() if _kind(m) is not None]


def is_transformer(model: Any) -> bool:
    """Whether ``model`` is a PyTorch model with attention xaiscope can read (ViT, DeiT)."""
    return bool(attention_modules(model))


def require_transformer(model: Any, what: str) -> nn.Module:
    """The model's ``nn.Module``; :class:`UnsupportedModelError` for anything else."""
    module = _module_of(model)
    if module is None or not is_transformer(module):
        kind = getattr(model, "framework", type(model).__name__)
        name = getattr(model, "name", None)
        label = f"{kind} model {name!r}" if name else f"{kind} model"
        raise UnsupportedModelError(
            f"{what} needs a vision transformer (a PyTorch model with attention layers: timm "
            f"vit_*/deit_*, torchvision vit_*, tiny_vit); this {label} has none"
        )
    return module


def _reset_keep(m: Any, old: bool) -> None:
    m.keep_attention = old
    m.attention = None


@contextlib.contextmanager
def _capturing(module: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    handles: list[Any] = []
    restore: list[Callable[[], None]] = []
    try:
        m: Any  # attention modules carry attributes nn.Module does not declare
        for _name, m in module.named_modules():
            kind = _kind(m)
            if kind == "keep":
                old = bool(m.keep_attention)
                m.keep_attention = True

                def keep_hook(mod: Any, _i: Any, _o: Any) -> None:
                    if mod.attention is not None:
                        store.append(mod.attention.detach())

                handles.append(m.register_forward_hook(keep_hook))
                restore.append(functools.partial(_reset_keep, m, old))
            elif kind == "timm":
                old_fused = m.fused_attn
                m.fused_attn = False
                restore.append(functools.partial(setattr, m, "fused_attn", old_fused))

                def drop_hook(_m: nn.Module, inp: Any, _o: Any) -> None:
                    store.append(inp[0].detach())

                handles.append(m.attn_drop.register_forward_hook(drop_hook))
            elif kind == "mha":

                def pre(_m: nn.Module, args: Any, kwargs: dict[str, Any]) -> Any:
                    kwargs = {**kwargs, "need_weights": True, "average_attn_weights": False}
                    return args[:4], kwargs  # need_weights passed by position is replaced

                def post(_m: nn.Module, _i: Any, out: Any) -> None:
                    if isinstance(out, tuple) and len(out) > 1 and out[1] is not None:
                        w = out[1].detach()
                        store.append(w if w.ndim == 4 else w[:, None])

                handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(m.register_forward_hook(post))
        yield
    finally:
        for h in handles:
            h.remove()
        for undo in restore:
            undo()


def attention_probabilities(model: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """Softmax attention of every attention module for the preprocessed batch ``x``.

    Returns a list (one per attention call, in call order) of (N, heads, T, T) float
    tensors whose rows sum to 1. Raises :class:`UnsupportedModelError` for models without
    readable attention (CNNs, Keras, ONNX, black boxes).
    """
    module = require_transformer(model, "reading attention")
    device = getattr(model, "device", None) or next(module.parameters()).device
    store: list[torch.Tensor] = []
    with _capturing(module, store), torch.no_grad():
        module(x.to(device))
    if not store:
        raise UnsupportedModelError(
            "the model's attention modules were not called in the forward pass"
        )
    n = x.shape[0]
    shapes = {tuple(a.shape[-2:]) for a in store}
    if any(a.ndim != 4 or a.shape[0] != n for a in store) or len(shapes) != 1:
        raise UnsupportedModelError(
            "this model's attention is windowed or changes the number of tokens between "
            f"layers (shapes {sorted({tuple(a.shape) for a in store})}); attention rollout "
            "and attention maps need every layer to attend over the same tokens (ViT, DeiT)"
        )
    return [a.float() for a in store]


# ------------------------------------------------------------------------ CAM layer
def _call_order(
    module: nn.Module, input_size: tuple[int, int], device: torch.device, preprocess: Any
) -> list[str]:
    order: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name))
        for name, m in module.named_modules()
        if name
    ]
    try:
        with torch.inference_mode():
            x = torch.zeros(1, 3, *input_size, device=device)
            module(preprocess(x) if preprocess is not None else x)
    finally:
        for h in handles:
            h.remove()
    return order


def transformer_cam_layer(
    module: nn.Module,
    found: str | None,
    input_size: tuple[int, int],
    device: torch.device,
    preprocess: Any = None,
) -> str | None:
    """The default CAM layer of a transformer, given what the CNN rule ``found``.

    Keeps ``found`` for non-transformers and for a genuine feature map called among the
    blocks (``tiny_vit``'s ``token_grid``). Otherwise (a (N, heads, T, d) tensor inside an
    attention module, or the patch embedding before the first block) returns the first
    LayerNorm of the block holding the last attention module (``blocks.11.norm1`` in timm,
    ``encoder.layers.encoder_layer_11.ln_1`` in torchvision), or that block itself.
    """
    attn = attention_modules(module)
    if not attn:
        return found
    names = [n for n, _ in attn]
    order = _call_order(module, input_size, device, preprocess)
    first_attn = min((order.index(n) for n in names if n in order), default=None)
    inside = found is not None and any(found == n or found.startswith(n + ".") for n in names)
    before = (
        found is not None
        and first_attn is not None
        and found in order
        and order.index(found) < first_attn
    )
    if found is not None and not inside and not before:
        return found
    last = max(names, key=lambda n: order.index(n) if n in order else -1)
    block = last.rsplit(".", 1)[0] if "." in last else ""
    if not block:
        return found
    parent = dict(module.named_modules())[block]
    for child_name, child in parent.named_children():
        if isinstance(child, nn.LayerNorm):
            return f"{block}.{child_name}"
    return block
