"""PyTorch adapter: a live ``nn.Module`` seen through the :class:`Model` primitives.

Hooks are registered only for the duration of one call and removed in ``finally``.
Parameters are frozen during gradient passes so that autograd records nothing for the
weights: a backward then costs the part of the network after the tensor asked for. Gradient
passes also run in-place ReLU6/Hardtanh out of place (no clone for autograd), eval-mode
batch norms with a cheap backward (folded into the preceding convolution's backward where
there is one), and on a CPU take a channels-last input where that was checked to give
bit-identical gradients; forward-only passes run a batch-norm-folded, fused copy
(:mod:`.batchnorm_folding`, :mod:`.onednn_fusion`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from xaiscope.batching import checked_output, runs_model
from xaiscope.errors import ParameterError, TargetError, UnknownLayerError
from xaiscope.models.base import GradPass, ImageInput, Model, layer_suggestions
from xaiscope.models.base import images_to_tensor as images_to_tensor  # re-exported
from xaiscope.models.batchnorm_folding import (
    batchnorm_tail,
    conv_bn_pairs,
    has_user_hooks,
    inference_copy,
    module_fingerprint,
)
from xaiscope.models.pointwise_grads import pointwise_input_grad
from xaiscope.models.stem_grads import stem_input_grad

_UNSET = object()

#: Set while the layout probe compares NCHW with channels-last: both sides then use
#: torch's own convolution backward, so that the comparison sees the kernels alone.
_NATIVE_CONV_BACKWARD: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "xaiscope_native_conv_backward", default=False
)

#: Activation modules whose gradients guided backpropagation rectifies.
RELU_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)

_POOL_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)


class _GuidedGate(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through (Springenberg 2015)."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


class _EvalBatchNorm(torch.autograd.Function):
    """Eval-mode batch norm: the native forward (bit-identical), a one-multiply backward.

    In eval mode the input gradient is ``grad * weight / sqrt(var + eps)`` per channel; the
    native backward kernel spends about twice the forward's time on it (it also sweeps the
    batch for weight and bias gradients that a frozen network never uses): on
    EfficientNet-Lite0 this backward makes a gradient pass about 15 % cheaper.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        y = torch.batch_norm(
            x, weight, bias, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled
        )
        scale = 1.0 / torch.sqrt(var + eps)
        if weight is not None:
            scale = scale * weight
        ctx.save_for_backward(scale.to(x.dtype))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (scale,) = ctx.saved_tensors
        shape = (1, -1) + (1,) * (grad.ndim - 2)
        return grad * scale.view(shape), None, None, None, None, None


class _EvalConvBatchNorm(torch.autograd.Function):
    """A convolution and the eval-mode batch norm after it: the native forward ops
    (bit-identical values), and a backward that is one transposed convolution with the
    batch norm's per-channel scale folded into the weights, instead of a multiply over the
    whole gradient and then the transposed convolution (about 4 % of a gradient pass of
    ResNet-50). The input gradient differs from the two-step one by float rounding only:
    the forward, and so every ReLU's kink, is the module's own. 1x1 convolutions
    back-propagate as matrix products (:mod:`.pointwise_grads`), a strided stem reading the
    image as one forward convolution over its phases (:mod:`.stem_grads`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d,
        scaled_weight: torch.Tensor,
    ) -> torch.Tensor:
        z = conv._conv_forward(x, conv.weight, conv.bias)
        assert bn.running_mean is not None and bn.running_var is not None
        y = torch.batch_norm(
            z, bn.weight, bn.bias, bn.running_mean, bn.running_var, False, 0.0, bn.eps,
            torch.backends.cudnn.enabled,
        )  # fmt: skip
        ctx.save_for_backward(x, scaled_weight)
        ctx.conv = conv
        ctx.native = _NATIVE_CONV_BACKWARD.get()
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        conv = ctx.conv
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        gx = pointwise_input_grad(grad, x, w, *args)
        if gx is None and not ctx.native:
            gx = stem_input_grad(grad, x, w, *args)
        if gx is not None:
            return gx, None, None, None
        gx = torch.ops.aten.convolution_backward(
            grad, x, w, None, list(conv.stride), list(conv.padding), list(conv.dilation),
            False, [0] * len(conv.stride), conv.groups, [True, False, False],
        )[0]  # fmt: skip
        return gx, None, None, None


class _ChannelsLastMaxPool(torch.autograd.Function):
    """Max pooling of an NCHW CPU tensor computed in channels-last layout.

    torch's NCHW max-pool kernel is scalar; the channels-last one is vectorised over
    channels (ResNet's 3x3/2 pool at 224 px: 2 ms instead of 27 ms, about 2 % of a gradient
    pass). Both scan each window in the same order and keep the first maximum, so values,
    indices and the input gradient are bit-identical to ``nn.MaxPool2d``'s; the output and
    the gradient go back in the caller's layout.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
        args = [_two(pool.kernel_size), _two(pool.stride or pool.kernel_size)]
        args += [_two(pool.padding), _two(pool.dilation)]
        y, idx = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), *args, pool.ceil_mode
        )
        ctx.save_for_backward(idx)
        ctx.args = (x.shape, args, pool.ceil_mode)
        return y.contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (idx,) = ctx.saved_tensors
        shape, args, ceil_mode = ctx.args
        # only the input's shape and layout are read
        like = torch.empty(shape, dtype=grad.dtype, memory_format=torch.channels_last)
        gx = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(memory_format=torch.channels_last), like, *args, ceil_mode, idx
        )
        return gx.contiguous(), None


def _unpatch_forwards(modules: Sequence[nn.Module]) -> None:
    """Remove the instance ``forward`` that shadows each module's class forward."""
    for m in modules:
        if "forward" in vars(m):
            del m.forward


def _two(v: int | tuple[int, ...]) -> list[int]:
    return [v, v] if isinstance(v, int) else [int(i) for i in v]


def _scaled_conv_weight(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``conv.weight`` times the batch norm's scale per output channel (float64 product)."""
    assert bn.running_var is not None
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    return w.to(conv.weight.dtype).contiguous(memory_format=torch.preserve_format)


def _fusable_pair(conv: nn.Module, bn: nn.Module) -> bool:
    """A plain Conv2d (numeric zero padding, no hooks) and an eval-mode BatchNorm2d."""
    return (
        type(conv) is nn.Conv2d
        and not isinstance(conv.padding, str)
        and conv.padding_mode == "zeros"
        and not (conv._forward_hooks or conv._forward_pre_hooks)
        and not bn._forward_pre_hooks
        and isinstance(bn, nn.BatchNorm2d)
        and _eval_bn_forward(bn) is not None
    )


def _eval_bn_forward(m: nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A replacement ``forward`` for an eval-mode BatchNorm2d (or timm's BatchNormAct2d)."""
    if m.training or m.running_mean is None or m.running_var is None or "forward" in vars(m):
        return None
    tail = batchnorm_tail(m)
    if tail is None:
        return None
    mean, var = m.running_mean, m.running_var

    def bn(x: torch.Tensor) -> torch.Tensor:
        return tail(_EvalBatchNorm.apply(x, mean, var, m.weight, m.bias, m.eps))

    return bn


class TorchModel(Model):
    """A ``torch.nn.Module`` classifier with its preprocessing.

    ``mean``/``std`` normalise [0, 1] RGB images resized to ``input_size``; pass
    ``preprocess`` (a callable from a (N, 3, H, W) [0, 1] tensor at ``input_size`` to
    the model input) for anything else. ``fold_batchnorm=False`` makes forward-only passes
    run ``module`` itself instead of its batch-norm-folded (and, on a CPU, channels-last)
    copy (same function, different float rounding; see
    :mod:`xaiscope.models.batchnorm_folding`).
    """

    framework = "torch"

    def __init__(
        self,
        module: nn.Module,
        *,
        labels: Sequence[str] | None = None,
        input_size: tuple[int, int] | int = (224, 224),
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        name: str | None = None,
        outputs_probabilities: bool = False,
        fold_batchnorm: bool = True,
    ) -> None:
        if device is None:
            try:
                device = next(module.parameters()).device
            except StopIteration:
                device = torch.device("cpu")
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self._user_preprocess = preprocess
        self.name = name or type(module).__name__
        self.outputs_probabilities = outputs_probabilities
        if labels is None:
            labels = [str(i) for i in range(self._infer_num_classes())]
        self.labels = list(labels)
        self._modules = dict(self.module.named_modules())
        self._default_layer: object = _UNSET
        #: Forward-only passes run a copy with conv -> batch-norm pairs folded (see
        #: :mod:`.batchnorm_folding`); gradient and layer passes always use ``module``.
        self.fold_batchnorm = fold_batchnorm
        self._folded: nn.Module | None = None
        self._folded_key: tuple[Any, ...] | None = None
        #: Whether gradient passes may take a channels-last input: decided once per module
        #: state by :meth:`_channels_last_grads` (bit-identical results or not at all).
        self._grad_layout: tuple[tuple[Any, ...], bool] | None = None
        self._grad_pairs: (
            tuple[tuple[Any, ...], list[tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]]] | None
        ) = None

    # ------------------------------------------------------------------ basics
    @property
    def supports_gradients(self) -> bool:
        return True

    @runs_model
    def _infer_num_classes(self) -> int:
        with torch.inference_mode():
            x = torch.zeros(1, 3, *self.input_size, device=self.device)
            if self._user_preprocess is not None:
                x = self._user_preprocess(x)
            return int(checked_output(self.module(x), 1).shape[-1])

    def preprocess(self, images: ImageInput) -> torch.Tensor:
        """(N, C, H, W) model input: :meth:`pixels` then :meth:`normalize`."""
        return self.normalize(self.pixels(images))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map a (N, 3, H, W) batch in [0, 1] at ``input_size`` to the model input."""
        if self._user_preprocess is not None:
            return self._user_preprocess(x01)
        return (x01 - self.mean) / self.std

    @runs_model
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no_grad rather than inference_mode: callers may go on to differentiate the outputs
        with torch.no_grad():
            x = x.to(self.device)
            return checked_output(self._forward_module(x)(x), x.shape[0])

    def _forward_module(self, x: torch.Tensor) -> nn.Module:
        """The module forward-only passes run: the folded, channels-last copy when valid."""
        if not self.fold_batchnorm or self.scripted or x.shape[0] == 0:
            return self.module
        key = module_fingerprint(self.module)
        if key != self._folded_key:
            self._folded = inference_copy(self.module, x[:1])
            # the fold's own forward may not change anything: fingerprint again
            self._folded_key = module_fingerprint(self.module)
        return self._folded if self._folded is not None else self.module

    # ------------------------------------------------------------------ layers
    def layers(self) -> list[str]:
        return [name for name, m in self.module.named_modules() if name and _is_candidate(m)]

    @property
    def scripted(self) -> bool:
        """TorchScript modules take no hooks: no layer methods, no guided backprop."""
        return isinstance(self.module, torch.jit.ScriptModule)

    def _require_hooks(self, what: str) -> None:
        if self.scripted:
            from xaiscope.errors import UnsupportedModelError

            raise UnsupportedModelError(
                f"{what} needs hooks, which TorchScript modules do not support; use the "
                "nn.Module itself (xs.wrap) or an xaiscope checkpoint, or a pixel method"
            )

    @property
    @runs_model
    def default_layer(self) -> str | None:
        if self.scripted:
            return None
        if self._default_layer is _UNSET:
            found = find_default_layer(
                self.module, self.input_size, self.device, self._user_preprocess
            )
            # ViTs: a query/key tensor inside attention looks spatial; use a block's tokens
            from xaiscope.models.vit import transformer_cam_layer

            self._default_layer = transformer_cam_layer(
                self.module, found, self.input_size, self.device, self._user_preprocess
            )
        return self._default_layer  # type: ignore[return-value]

    def get_layer(self, name: str) -> nn.Module:
        """The submodule called ``name``; :class:`UnknownLayerError` with close names if none."""
        module = self._modules.get(name)
        if module is None or not name:
            close = layer_suggestions(name, [n for n in self._modules if n])
            hint = f"; did you mean: {', '.join(close)}" if close else ""
            raise UnknownLayerError(
                f"unknown layer {name!r} in {self.name}{hint} "
                "(list them with `xaiscope models layers MODEL`)"
            )
        return module

    @runs_model
    def activations(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        self._require_hooks("reading a layer's activations")
        store: dict[str, torch.Tensor] = {}
        module = self.get_layer(layer)

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            # a copy: an in-place op after the layer (ReLU(inplace=True)) must not alter it
            store["a"] = _first_tensor(out).clone()

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.module(x.to(self.device))
        finally:
            handle.remove()
        return store["a"]

    @runs_model
    def forward_from_layer(
        self, x: torch.Tensor, layer: str, activation: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B, classes) with the output of ``layer`` replaced by ``activation`` (B, ...).

        One forward of the single image ``x`` (1, C, H, W) in which a forward hook swaps the
        layer's output for the batch ``activation``: the prefix runs at batch 1, the suffix
        at batch B. Tensors that skip over the layer (a residual branch that starts before
        it) stay at batch 1 and broadcast against the batch-B path, which is right for
        standard architectures (ResNet, EfficientNet, ViT); a skip joined by concatenation
        (DenseNet inside a dense block) cannot broadcast and raises. The hook is removed in
        ``finally``; ``activation`` may be overwritten by in-place ops after the layer.
        """
        self._require_hooks(f"replacing the output of layer {layer!r}")
        if x.shape[0] != 1:
            raise ParameterError(
                f"forward_from_layer takes one image (1, C, H, W), got {tuple(x.shape)}"
            )
        module = self.get_layer(layer)
        called: list[bool] = []

        def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
            called.append(True)
            first = _first_tensor(out)
            return _replace_first(out, activation.to(first.device, first.dtype))

        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = self.module(x.to(self.device))
        finally:
            handle.remove()
        if not called:
            raise UnknownLayerError(f"layer {layer!r} was not called in the forward pass")
        if out.ndim != 2 or out.shape[0] != activation.shape[0]:
            raise TargetError(
                f"replacing layer {layer!r} by a batch of {activation.shape[0]} gave an output "
                f"of shape {tuple(out.shape)}; expected ({activation.shape[0]}, classes)"
            )
        return out

    # --------------------------------------------------------------- gradients
    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        flags = [(p, p.requires_grad) for p in self.module.parameters()]
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextlib.contextmanager
    def _out_of_place(self) -> Iterator[None]:
        """Run in-place ReLU6/Hardtanh out of place during gradient passes.

        Their backward needs the input, so under autograd ``hardtanh_`` first clones it: the
        out-of-place op gives bit-identical results without that copy (about 7 % of a
        gradient pass of EfficientNet-Lite0). ``relu_`` saves its output and needs no copy.
        """
        mods = [m for m in self.module.modules() if isinstance(m, nn.Hardtanh) and m.inplace]
        try:
            for m in mods:
                m.inplace = False
            yield
        finally:
            for m in mods:
                m.inplace = True

    def _conv_batchnorm_pairs(
        self, x: torch.Tensor, state: tuple[Any, ...]
    ) -> list[tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]]:
        """(conv, batch norm, scaled weight) for every conv -> eval batch-norm pair.

        Found once per module ``state`` (its fingerprint) with one forward of ``x[:1]`` (see
        :func:`~xaiscope.models.batchnorm_folding.conv_bn_pairs`), and kept only if the
        forward with the pairs joined gives bit-identical logits on it: a conv output that
        also goes around its batch norm (a skip connection) would otherwise be replaced by
        the batch norm's output there.
        """
        # user hooks would see the probe forward; the plain backward is used instead
        if self.scripted or x.ndim != 4 or x.shape[0] == 0 or has_user_hooks(self.module):
            return []
        if self._grad_pairs is None or self._grad_pairs[0] != state:
            found = []
            for conv_name, bn_name in conv_bn_pairs(self.module, x[:1].detach()):
                conv, bn = self._modules[conv_name], self._modules[bn_name]
                if (
                    isinstance(conv, nn.Conv2d)
                    and isinstance(bn, nn.BatchNorm2d)
                    and _fusable_pair(conv, bn)
                ):
                    found.append((conv, bn, _scaled_conv_weight(conv, bn)))
            if found and not self._pairs_agree(x[:1].detach(), found):
                found = []
            self._grad_pairs = (state, found)
        return self._grad_pairs[1]

    def _pairs_agree(
        self, probe: torch.Tensor, pairs: Sequence[tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]]
    ) -> bool:
        """Whether the module's forward on ``probe`` is bit-identical with ``pairs`` joined
        (the joined forward runs the same native ops, so any difference is a wrong pair)."""
        try:
            with torch.no_grad():
                ref = self.module(probe)
                with self._out_of_place(), self._light_batchnorm(pairs):
                    joined = self.module(probe)
        except Exception:
            return False
        return (
            isinstance(ref, torch.Tensor)
            and isinstance(joined, torch.Tensor)
            and torch.equal(ref, joined)
        )

    @contextlib.contextmanager
    def _light_batchnorm(
        self, pairs: Sequence[tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]] = ()
    ) -> Iterator[None]:
        """Eval-mode batch norms run with a cheaper backward during gradient passes.

        A batch norm right after a plain convolution runs with it as
        :class:`_EvalConvBatchNorm` (its scale folded into the backward's weights); any
        other runs :class:`_EvalBatchNorm`. The forwards are the native ops (same values,
        same hooks; a convolution with hooks keeps its own forward).
        """
        patched: list[nn.Module] = []
        try:
            for conv, bn, w in pairs:
                rest = batchnorm_tail(bn)
                if rest is None or not _fusable_pair(conv, bn):
                    continue

                def conv_bn(
                    x: torch.Tensor,
                    conv: nn.Conv2d = conv,
                    bn: nn.BatchNorm2d = bn,
                    w: torch.Tensor = w,
                ) -> torch.Tensor:
                    return _EvalConvBatchNorm.apply(x, conv, bn, w)

                # as plain modules: an instance attribute shadows the class's forward
                conv_module: nn.Module = conv
                bn_module: nn.Module = bn
                conv_module.forward = conv_bn
                # a function, not the module itself (that would register a child module)
                bn_module.forward = rest.__call__
                patched += [conv_module, bn_module]
            for m in self.module.modules():
                fwd = _eval_bn_forward(m) if isinstance(m, nn.BatchNorm2d) else None
                if fwd is not None:
                    m.forward = fwd
                    patched.append(m)
            yield
        finally:
            _unpatch_forwards(patched)

    @contextlib.contextmanager
    def _channels_last_pools(self) -> Iterator[None]:
        """CPU max pools on NCHW inputs run as :class:`_ChannelsLastMaxPool` (same values,
        same gradients, hooks unchanged)."""
        patched: list[nn.Module] = []
        try:
            for m in self.module.modules():
                if type(m) is not nn.MaxPool2d or m.return_indices or "forward" in vars(m):
                    continue

                def pool(x: torch.Tensor, m: nn.MaxPool2d = m) -> torch.Tensor:
                    if (
                        x.device.type == "cpu"
                        and x.ndim == 4
                        and x.dtype in (torch.float32, torch.float64)
                        and x.is_contiguous()
                        and x.shape[1] > 1
                    ):
                        return _ChannelsLastMaxPool.apply(x, m)
                    return type(m).forward(m, x)

                mod: nn.Module = m
                mod.forward = pool
                patched.append(m)
            yield
        finally:
            _unpatch_forwards(patched)

    @contextlib.contextmanager
    def _guided(self, enabled: bool) -> Iterator[None]:
        handles = []
        try:
            if enabled:
                for m in self.module.modules():
                    if isinstance(m, RELU_TYPES):
                        handles.append(
                            m.register_forward_hook(lambda _m, _i, out: _GuidedGate.apply(out))
                        )
            yield
        finally:
            for h in handles:
                h.remove()

    def _target_sets(self, targets: torch.Tensor, n: int) -> torch.Tensor:
        """(K, N) class indices or (K, N, classes) weights on the device."""
        weighted = targets.is_floating_point()
        if targets.ndim == (2 if weighted else 1):
            targets = targets[None]
        targets = targets.to(self.device) if weighted else targets.to(self.device).long()
        if targets.shape[1] != n:
            raise TargetError(f"expected {n} targets per set, got {targets.shape[1]}")
        return targets

    def _grad_contexts(
        self,
        guided: bool = False,
        pairs: Sequence[tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]] = (),
    ) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for ctx in (
            self._frozen(),
            self._out_of_place(),
            self._light_batchnorm(pairs),
            self._channels_last_pools(),
            self._guided(guided),
            torch.enable_grad(),
        ):
            stack.enter_context(ctx)
        return stack

    def _channels_last_grads(
        self,
        x: torch.Tensor,
        state: tuple[Any, ...],
        pairs: Sequence[tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]] = (),
    ) -> bool:
        """Whether gradient passes on ``x`` may run with a channels-last input.

        On a CPU a channels-last input makes oneDNN and the GEMM-based 1x1 convolutions skip
        layout reorders (about 13 % of a gradient pass of EfficientNet-Lite0). It is used
        only where it changes nothing: once per module state, the input gradient of one image
        is computed in both layouts (with the gradient pass's own backward, ``pairs`` from
        :meth:`_conv_batchnorm_pairs`, and torch's own convolution kernels on both sides,
        not the NCHW-only :mod:`.stem_grads` path) and must be bit-identical (the same
        kernels; the logits may differ by float rounding, up to 1e-6 of their largest
        magnitude, as a global average pool sums in another order). Where the layouts pick
        different kernels (ResNet-50's 3x3 convolutions), float rounding moves ReLU units at
        their kinks and the gradients differ by up to ~1e-2, so the module's own layout is
        kept. The check
        (two batch-1 gradient passes) runs only for batches of 2 or more rows, and again
        when the module or the number of torch threads changes (on EfficientNet-Lite0 the
        layouts agree bit for bit with one thread, not with two).
        """
        if (
            x.device.type != "cpu"
            or x.ndim != 4
            or self.scripted
            or not x.is_floating_point()
            or x.is_contiguous(memory_format=torch.channels_last)
            or has_user_hooks(self.module)
        ):
            return False
        # kernels split work differently with more threads: the check holds for one count
        key = (state, torch.get_num_threads())
        if self._grad_layout is not None and self._grad_layout[0] == key:
            return self._grad_layout[1]
        if x.shape[0] < 2 or not any(isinstance(m, nn.Conv2d) for m in self.module.modules()):
            return False
        probe = x[:1].detach()
        results = []
        token = _NATIVE_CONV_BACKWARD.set(True)
        try:
            for xp in (probe, probe.contiguous(memory_format=torch.channels_last)):
                with self._grad_contexts(pairs=pairs):
                    xg = xp.clone(memory_format=torch.preserve_format).requires_grad_(True)
                    logits = self.module(xg)
                    (grad,) = torch.autograd.grad(logits.max(1).values.sum(), xg)
                results.append((logits.detach(), grad))
            (ref_logits, ref_grad), (cl_logits, cl_grad) = results
            # the global average pool sums in another order: logits may move by an ulp
            tol = 1e-6 * float(ref_logits.abs().max())
            same = torch.equal(ref_grad, cl_grad) and bool(
                (ref_logits - cl_logits).abs().max() <= tol
            )
        except Exception:  # e.g. ``x.view`` on a channels-last activation: keep NCHW
            same = False
        finally:
            _NATIVE_CONV_BACKWARD.reset(token)
        self._grad_layout = (key, same)
        return same

    @runs_model
    def grad_pass(
        self,
        x: torch.Tensor,
        targets: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        *,
        layer: str | None = None,
        need_input: bool = True,
        guided: bool = False,
    ) -> GradPass:
        select = targets if callable(targets) and not isinstance(targets, torch.Tensor) else None
        if select is None:
            assert isinstance(targets, torch.Tensor)
            targets = self._target_sets(targets, x.shape[0])
        if layer is not None:
            self._require_hooks(f"layer {layer!r}")
        if guided:
            self._require_hooks("guided backpropagation")
        x = x.to(self.device)
        state = module_fingerprint(self.module)
        pairs = self._conv_batchnorm_pairs(x, state)
        if self._channels_last_grads(x, state, pairs):
            x = x.contiguous(memory_format=torch.channels_last)
        captured: dict[str, torch.Tensor] = {}
        handle = None
        if layer is not None:
            module = self.get_layer(layer)

            def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
                a = _first_tensor(out)
                if not a.requires_grad:
                    a = a.detach().requires_grad_(True)
                captured["a"] = a
                # a copy goes on so that in-place ops downstream cannot alter what we keep
                return _replace_first(out, a.clone())

            handle = module.register_forward_hook(hook)
        try:
            with self._grad_contexts(guided, pairs):
                xg = x.detach().requires_grad_(need_input)
                logits = checked_output(self.module(xg), x.shape[0])
                if select is not None:
                    # targets chosen from this very forward (e.g. top-k): no separate forward
                    targets = self._target_sets(select(logits.detach()), x.shape[0])
                assert isinstance(targets, torch.Tensor)
                weighted = targets.is_floating_point()
                inputs: list[torch.Tensor] = []
                if need_input:
                    inputs.append(xg)
                if layer is not None:
                    if "a" not in captured:
                        raise UnknownLayerError(
                            f"layer {layer!r} was not called in the forward pass"
                        )
                    inputs.append(captured["a"])
                if not inputs:
                    return GradPass(logits=logits.detach(), targets=targets)
                in_grads, lay_grads = [], []
                k_sets = targets.shape[0]
                for k in range(k_sets):
                    if weighted:
                        score = (logits * targets[k].to(logits.dtype)).sum()
                    else:
                        score = logits.gather(1, targets[k][:, None]).sum()
                    grads = torch.autograd.grad(
                        score, inputs, retain_graph=k < k_sets - 1, allow_unused=True
                    )
                    grads = tuple(
                        torch.zeros_like(t) if g is None else g
                        for g, t in zip(grads, inputs, strict=True)
                    )
                    if need_input:
                        in_grads.append(grads[0].contiguous())
                    if layer is not None:
                        lay_grads.append(grads[-1])
                return GradPass(
                    logits=logits.detach(),
                    targets=targets,
                    input_grads=torch.stack(in_grads) if in_grads else None,
                    activation=captured["a"].detach() if layer is not None else None,
                    layer_grads=torch.stack(lay_grads) if lay_grads else None,
                )
        finally:
            if handle is not None:
                handle.remove()


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UnknownLayerError(f"layer output of type {type(out).__name__} holds no tensor")


def _replace_first(out: Any, new: torch.Tensor) -> Any:
    if isinstance(out, torch.Tensor):
        return new
    return type(out)([new, *out[1:]])


def _is_candidate(m: nn.Module) -> bool:
    # containers are listed too: their outputs (e.g. ResNet's layer4) are the usual CAM layers
    return not isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten))


def find_default_layer(
    module: nn.Module,
    input_size: tuple[int, int],
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> str | None:
    """The last module, in call order, whose output is a spatial (N, C, h, w) map with h, w > 1.

    Among modules that return the same tensor (a block and its last ReLU), the outermost
    is kept, so ResNet gives ``layer4`` and EfficientNet ``bn2``.
    """
    order: list[tuple[str, torch.Tensor]] = []
    handles = []

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                order.append((name, out))

        return hook

    named = dict(module.named_modules())
    for name, m in named.items():
        if name:
            handles.append(m.register_forward_hook(make_hook(name)))
    try:
        with torch.inference_mode():
            x = torch.zeros(1, 3, *input_size, device=device)
            if preprocess is not None:
                x = preprocess(x)
            module(x)
    finally:
        for h in handles:
            h.remove()
    # pooling outputs (and containers returning them) are summaries, not the feature map
    pooled = {o.data_ptr() for n, o in order if isinstance(named[n], _POOL_TYPES)}
    spatial = [
        (i, n, o)
        for i, (n, o) in enumerate(order)
        if o.ndim == 4 and o.shape[2] > 1 and o.shape[3] > 1 and o.data_ptr() not in pooled
    ]
    if not spatial:
        return None
    last_ptr = spatial[-1][2].data_ptr()
    # a block, its last ReLU and an in-place ReLU's conv share one tensor: name the outermost,
    # and among equals the one called last (the activation)
    same = [(n.count("."), -i, n) for i, n, o in spatial if o.data_ptr() == last_ptr]
    return min(same)[2]
