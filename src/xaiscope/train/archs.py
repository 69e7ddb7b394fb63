"""Built-in architectures for :func:`xaiscope.train`: ``cifar10_cnn``, ``small_cnn``,
``tiny_vit``, and any ``timm:NAME`` with a new classification head.

All take (N, 3, H, W) normalised images and return (N, classes) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xaiscope.errors import ModelLoadError, ParameterError

__all__ = [
    "ARCHS",
    "Cifar10CNN",
    "SmallCNN",
    "TinyViT",
    "arch_names",
    "build_arch",
]


class _ConvReLU(nn.Sequential):
    """Conv2d (3x3, same padding) then ReLU: a Keras ``Conv2D(..., activation="relu")``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class Cifar10CNN(nn.Module):
    """The CNN of the CIFAR-10 study: three blocks of two Conv-BN layers, max pooling and
    dropout 0.2 after each block, then dense 1024 and the classifier.

    Layer names follow the study (``Conv2D_Block1_Layer1`` ... ``Conv2D_Block3_Layer2``,
    each Conv2D with its ReLU as in Keras, then ``BatchNorm_BlockB_LayerL``), so
    ``layer="Conv2D_Block3_Layer1"`` works in :func:`xaiscope.explain`. Channels 32, 64,
    128; the flattened features go to ``Dense_1024``. Input (N, 3, H, W) with H and W
    divisible by 8.
    """

    def __init__(self, num_classes: int = 10, input_size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        h, w = input_size
        if h % 8 or w % 8:
            raise ParameterError(f"cifar10_cnn needs an input size divisible by 8, got {h}x{w}")
        cin = 3
        for b, cout in enumerate((32, 64, 128), start=1):
            for layer in (1, 2):
                setattr(self, f"Conv2D_Block{b}_Layer{layer}", _ConvReLU(cin, cout))
                setattr(self, f"BatchNorm_Block{b}_Layer{layer}", nn.BatchNorm2d(cout))
                cin = cout
            setattr(self, f"MaxPool_Block{b}", nn.MaxPool2d(2))
            setattr(self, f"Dropout_Block{b}", nn.Dropout(0.2))
        self.Flatten = nn.Flatten()
        self.Dense_1024 = nn.Sequential(nn.Linear(128 * (h // 8) * (w // 8), 1024), nn.ReLU())
        self.Dropout_Dense = nn.Dropout(0.2)
        self.Output = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in (1, 2, 3):
            for layer in (1, 2):
                x = getattr(self, f"Conv2D_Block{b}_Layer{layer}")(x)
                x = getattr(self, f"BatchNorm_Block{b}_Layer{layer}")(x)
            x = getattr(self, f"Dropout_Block{b}")(getattr(self, f"MaxPool_Block{b}")(x))
        x = self.Dropout_Dense(self.Dense_1024(self.Flatten(x)))
        return self.Output(x)


class SmallCNN(nn.Module):
    """Three Conv-BN-ReLU-MaxPool layers (32, 64, 128 channels), global max pooling,
    dropout and a linear classifier: the three-layer CNN of the Muffin-vs-Chihuahua study.

    Global pooling makes it size-agnostic (any input of 8 px or more) and keeps the last
    conv map (``relu3``, the default CAM layer) directly tied to the logits. Max rather
    than average pooling: a part of the object detected anywhere counts in full, which on
    ``shapes`` learns several times faster than with average pooling.
    """

    def __init__(self, num_classes: int = 2, width: int = 32, dropout: float = 0.2) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.conv1, self.bn1, self.relu1, self.pool1 = _conv_bn(3, c1)
        self.conv2, self.bn2, self.relu2, self.pool2 = _conv_bn(c1, c2)
        self.conv3, self.bn3, self.relu3, self.pool3 = _conv_bn(c2, c3)
        self.global_pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.pool3(self.relu3(self.bn3(self.conv3(x))))
        return self.fc(self.dropout(self.global_pool(x).flatten(1)))


def _conv_bn(cin: int, cout: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    return nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)


# --------------------------------------------------------------------------- tiny ViT
class Attention(nn.Module):
    """Multi-head self-attention that can keep its attention probabilities.

    With ``keep_attention = True`` each forward stores the softmax attention, (N, heads,
    T, T) with T = 1 + patches (CLS first), in ``self.attention`` (detached) for attention
    rollout. Dropout on the probabilities is functional, not a module: a module returning
    (N, heads, T, T) would look like a spatial map and be taken for the CAM layer.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ParameterError(f"tiny_vit: dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.dropout = dropout
        self.proj = nn.Linear(dim, dim)
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        if self.keep_attention:
            self.attention = attn.detach()
        attn = F.dropout(attn, self.dropout, self.training)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenGrid(nn.Module):
    """Patch tokens (N, h*w, D) laid out as a feature map (N, D, h, w).

    Its output is the input of the last block seen as an image: the layer Grad-CAM and
    the activation viewers use on the ViT (``default_layer``), the usual choice for ViTs.
    """

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, _, d = tokens.shape
        return tokens.transpose(1, 2).reshape(n, d, *self.grid)


class TinyViT(nn.Module):
    """A small vision transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words",
    ICLR 2021): patch tokens, a CLS token, learned position embeddings, pre-norm blocks, and
    a linear head on the final CLS token.

    ``stem="conv"`` (default) makes the patch tokens with two strided 3x3-style convolutions
    instead of one patchifying convolution (Xiao et al., "Early Convolutions Help
    Transformers See Better", NeurIPS 2021): same tokens and grid, but on small data sets it
    learns several times faster (white shapes on black: 73 % against 36 % after 6 epochs).
    ``stem="patch"`` is the plain ViT embedding.

    Tokens: index 0 is CLS, then the ``grid_size`` = (h, w) patches in row-major order.
    :meth:`attention_maps` returns each block's softmax attention, (N, heads, T, T) with
    T = 1 + h*w. Defaults (dim 64, depth 4, 4 heads, patch = side / 8) suit 32 px images.
    """

    num_prefix_tokens = 1

    def __init__(
        self,
        num_classes: int = 10,
        input_size: tuple[int, int] = (32, 32),
        *,
        patch_size: int | None = None,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        stem: str = "conv",
    ) -> None:
        super().__init__()
        h, w = input_size
        patch = patch_size or max(2, min(h, w) // 8)
        if stem not in ("conv", "patch"):
            raise ParameterError(f"tiny_vit: stem must be 'conv' or 'patch', got {stem!r}")
        if h % patch or w % patch:
            raise ParameterError(
                f"tiny_vit: input {h}x{w} is not divisible by the patch size {patch}"
            )
        if stem == "conv" and patch % 2:
            raise ParameterError(
                f"tiny_vit: the conv stem needs an even patch size, got {patch} "
                "(or use stem='patch')"
            )
        if depth < 1:
            raise ParameterError(f"tiny_vit: depth must be at least 1, got {depth}")
        self.patch_size = patch
        self.grid_size = (h // patch, w // patch)
        tokens = 1 + self.grid_size[0] * self.grid_size[1]
        self.patch_embed: nn.Module
        if stem == "conv":
            # stride 2, then the remaining factor r with a kernel 2r - 1 (3 for patch 4)
            r = patch // 2
            self.patch_embed = nn.Sequential(
                nn.Conv2d(3, dim // 2, 3, stride=2, padding=1),
                nn.BatchNorm2d(dim // 2),
                nn.ReLU(),
                nn.Conv2d(dim // 2, dim, 2 * r - 1, stride=r, padding=r - 1),
            )
        else:
            self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.token_grid = TokenGrid(self.grid_size)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks[:-1]:
            x = block(x)
        # the round trip through a (N, D, h, w) map is exact; it gives CAMs a spatial layer
        grid = self.token_grid(x[:, 1:])
        x = torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        x = self.norm(self.blocks[-1](x))
        return self.head(x[:, 0])

    def attention_modules(self) -> list[Attention]:
        """The attention module of each block, first to last."""
        return [m for m in self.modules() if isinstance(m, Attention)]

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Softmax attention of every block for input ``x``: a list of (N, heads, T, T)."""
        mods = self.attention_modules()
        try:
            for m in mods:
                m.keep_attention = True
                m.attention = None
            with torch.no_grad():
                self(x)
            return [m.attention for m in mods if m.attention is not None]
        finally:
            for m in mods:
                m.keep_attention = False
                m.attention = None


# --------------------------------------------------------------------------- factory
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "cifar10_cnn": lambda num_classes, input_size, **kw: Cifar10CNN(num_classes, input_size, **kw),
    "small_cnn": lambda num_classes, input_size, **kw: SmallCNN(num_classes, **kw),
    "tiny_vit": lambda num_classes, input_size, **kw: TinyViT(num_classes, input_size, **kw),
}

_ABOUT = {
    "cifar10_cnn": "three blocks of two Conv-BN layers, max pooling, dropout 0.2, dense 1024",
    "small_cnn": "three Conv-BN-MaxPool layers, global max pooling (any input size)",
    "tiny_vit": "small vision transformer (conv stem), CLS token, attention for rollout",
    "timm:NAME": "any timm model with a new head (random init; pretrained=True online)",
}


#: Options of timm models that a saved entry may carry: regularisation only. Others (e.g.
#: ``checkpoint_path``, ``pretrained_cfg_overlay``) would let a registry file make timm read
#: other files or download.
TIMM_OPTIONS = frozenset({"drop_rate", "drop_path_rate", "drop_block_rate", "global_pool"})
_CLASSES: dict[str, type[nn.Module]] = {
    "cifar10_cnn": Cifar10CNN,
    "small_cnn": SmallCNN,
    "tiny_vit": TinyViT,
}


def arch_options(arch: str) -> frozenset[str]:
    """The documented options of ``arch`` (the keywords :func:`build_arch` passes on),
    without the number of classes and the input size, which are given separately."""
    import inspect

    if arch.startswith("timm:"):
        return TIMM_OPTIONS
    cls = _CLASSES.get(arch)
    if cls is None:
        return frozenset()
    params = inspect.signature(cls.__init__).parameters
    return frozenset(p for p in params if p not in ("self", "num_classes", "input_size"))


def arch_names() -> dict[str, str]:
    """Architectures :func:`build_arch` knows, with a one-line description each."""
    return dict(_ABOUT)


def build_arch(
    arch: str,
    num_classes: int,
    input_size: tuple[int, int],
    *,
    pretrained: bool = False,
    **kw: Any,
) -> nn.Module:
    """A fresh ``arch`` for ``num_classes`` classes and (H, W) inputs.

    ``timm:NAME`` builds timm's model with a new ``num_classes`` head; ``pretrained=True``
    downloads its ImageNet weights where online and raises
    :class:`~xaiscope.errors.OfflineError` at once where not. Extra keywords go to the
    architecture (e.g. ``width`` for small_cnn, ``dim``/``depth`` for tiny_vit).
    """
    if num_classes < 2:
        raise ParameterError(f"a classifier needs at least 2 classes, got {num_classes}")
    if arch.startswith("timm:"):
        return _build_timm(arch[5:], num_classes, pretrained=pretrained, **kw)
    if arch not in ARCHS:
        raise ParameterError(
            f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}, or timm:NAME"
        )
    if pretrained:
        raise ParameterError(f"{arch} has no pretrained weights; train it from scratch")
    try:
        return ARCHS[arch](num_classes, tuple(input_size), **kw)
    except TypeError as exc:
        raise ParameterError(f"bad option for {arch}: {exc}") from None


def _build_timm(name: str, num_classes: int, *, pretrained: bool, **kw: Any) -> nn.Module:
    import timm

    if name not in timm.list_models() and name.split(".")[0] not in timm.list_models():
        raise ModelLoadError(f"timm has no model {name!r} (see timm.list_models())")
    if pretrained:
        # the shared loader probes the hub first: offline fails in seconds with OfflineError
        from xaiscope.models.loaders import load_model

        model = load_model(f"timm:{name}", pretrained=True, num_classes=num_classes, **kw)
        return model.module  # type: ignore[attr-defined]
    try:
        module: nn.Module = timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    except (TypeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot build timm:{name}: {exc}") from None
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
