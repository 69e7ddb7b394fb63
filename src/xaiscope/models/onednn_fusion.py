"""Convolutions fused with what follows them, for forward-only passes on a CPU.

Inference engines run a convolution, the residual addition after it and its activation as
one oneDNN primitive with "post-ops": the activation is applied while the output tile is
still in registers instead of in another sweep over memory, and the weights are reordered
("prepacked") once into the blocked layout the kernel reads instead of on every call
(Intel oneDNN developer guide, "Primitive Attributes: Post-ops"; the same rewrite that
PyTorch's Inductor applies on CPUs when it freezes a model). PyTorch exposes those
primitives as ``torch.ops.mkldnn._convolution_pointwise``; this module rewrites a
(batch-norm-folded, channels-last) copy of a network, traced with :mod:`torch.fx`, to call
them: ``conv -> activation``, ``conv -> add`` and ``conv -> add -> activation`` become one
call each.

On one CPU thread this makes forwards of EfficientNet-Lite0 about 1.2x faster (its ReLU6
sweeps and bias copies are memory-bound); ResNet-50, whose forward is bound by the
convolutions' arithmetic, gains nothing measurable. The values are the same function up to
float rounding (about 1e-6 relative on the logits); the caller checks the rewritten copy
against the original on a real input before using it.

Limits: float32 on a CPU with oneDNN; 2-D convolutions with numeric padding and zero
padding mode; activations ReLU, ReLU6/Hardtanh and SiLU; a network that :mod:`torch.fx`
cannot trace (data-dependent control flow) is left as it is.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import nn

# out-of-place adds only: replacing an in-place one would un-alias its other users
_ADD_TARGETS = (operator.add, torch.add)


def available() -> bool:
    """Whether this PyTorch build has the fused oneDNN convolution."""
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight")
    )


class FusedConv2d(nn.Module):
    """One oneDNN convolution with an optional residual addition and activation.

    ``forward(x)`` is ``act(conv(x))``; ``forward(x, other)`` is ``act(conv(x) + other)``.
    The weight is kept prepacked for ``input_size`` (a hint: other sizes still work).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        attr: str,
        scalars: list[float],
        binary: bool,
        input_size: list[int] | None,
    ) -> None:
        super().__init__()
        assert not isinstance(conv.padding, str)
        self.padding = [int(p) for p in conv.padding]
        self.stride = [int(s) for s in conv.stride]
        self.dilation = [int(d) for d in conv.dilation]
        self.groups = int(conv.groups)
        w = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        # the stubs omit the (optional) input-size hint that the op takes
        self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(  # type: ignore[call-arg]
            w.to_mkldnn(), self.padding, self.stride, self.dilation, self.groups, input_size
        )
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.attr = attr
        self.scalars: list[float] = list(scalars)
        self.binary = binary

    def forward(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if other is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                self.groups, self.attr, self.scalars, "",
            )  # fmt: skip
        unary = None if self.attr == "none" else self.attr
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
            self.padding, self.stride, self.dilation, self.groups, "add", None, unary,
            self.scalars, "",
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"attr={self.attr}, scalars={self.scalars}, binary={self.binary}"


def _activation(gm: torch.fx.GraphModule, node: torch.fx.Node) -> tuple[str, list[float]] | None:
    """oneDNN's name and scalars for the activation ``node`` computes, if it has one."""
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if type(mod) is nn.ReLU:
            return "relu", []
        if type(mod) in (nn.ReLU6, nn.Hardtanh):
            assert isinstance(mod, nn.Hardtanh)
            return "hardtanh", [float(mod.min_val), float(mod.max_val)]
        if type(mod) is nn.SiLU:
            return "swish", []
        return None
    if node.op in ("call_function", "call_method") and not node.kwargs and len(node.args) == 1:
        if node.target in (torch.relu, torch.relu_, nn.functional.relu, "relu", "relu_"):
            return "relu", []
        if node.target in (nn.functional.relu6,):
            return "hardtanh", [0.0, 6.0]
        if node.target in (nn.functional.silu,):
            return "swish", []
    return None


def _is_passthrough(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """Identity and eval-mode dropout: nothing to compute."""
    if node.op != "call_module":
        return False
    mod = gm.get_submodule(str(node.target))
    return type(mod) is nn.Identity or (isinstance(mod, nn.Dropout) and not mod.training)


def _fusable_conv(gm: torch.fx.GraphModule, node: torch.fx.Node) -> nn.Conv2d | None:
    if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
        return None
    conv = gm.get_submodule(str(node.target))
    if (
        type(conv) is not nn.Conv2d
        or isinstance(conv.padding, str)
        or conv.padding_mode != "zeros"
        or conv.weight.dtype != torch.float32
        or conv.weight.device.type != "cpu"
    ):
        return None
    return conv


def _same_shape_summand(add: torch.fx.Node, node: torch.fx.Node) -> torch.fx.Node | None:
    """The other operand of ``add`` if it is ``node + other`` with both of one shape."""
    if (
        add.op != "call_function"
        or add.target not in _ADD_TARGETS
        or add.kwargs
        or len(add.args) != 2
        or add.args[0] is add.args[1]
    ):
        return None
    other = add.args[1] if add.args[0] is node else add.args[0]
    if not isinstance(other, torch.fx.Node):
        return None
    meta, out_meta = other.meta.get("tensor_meta"), node.meta.get("tensor_meta")
    # only a tensor of the output's own shape (no broadcasting) can be the fused summand
    if meta is None or out_meta is None or tuple(meta.shape) != tuple(out_meta.shape):
        return None
    return other


def fuse_convolutions(module: nn.Module, probe: torch.Tensor) -> nn.Module | None:
    """A traced copy of ``module`` whose convolutions run fused (see the module docstring).

    ``module`` is an eval-mode network whose batch norms are already folded into its
    convolutions, and ``probe`` a real input (its shape is the prepacking hint). The
    result takes channels-last inputs. Returns ``None`` where nothing can be fused or the
    network cannot be traced; the caller checks the result's values.
    """
    if not available() or probe.device.type != "cpu" or probe.dtype != torch.float32:
        return None
    try:
        gm = torch.fx.symbolic_trace(module)
    except Exception:  # data-dependent control flow and the like: leave the network alone
        return None
    graph = gm.graph
    for node in list(graph.nodes):
        source = node.args[0] if len(node.args) == 1 else None
        if _is_passthrough(gm, node) and isinstance(source, torch.fx.Node):
            node.replace_all_uses_with(source)
            graph.erase_node(node)
    gm.recompile()
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(probe.contiguous(memory_format=torch.channels_last))
    except Exception:
        return None
    sizes: dict[str, list[int]] = {}
    for node in graph.nodes:
        source = node.args[0] if node.args else None
        if _fusable_conv(gm, node) is not None and isinstance(source, torch.fx.Node):
            meta = source.meta.get("tensor_meta")
            if meta is not None and len(meta.shape) == 4:
                sizes[node.name] = [int(s) for s in meta.shape]
    fused = 0
    for node in list(graph.nodes):
        conv = _fusable_conv(gm, node)
        if conv is None or node.name not in sizes:
            continue
        users = list(node.users)
        attr, scalars = "none", list[float]()
        other: torch.fx.Node | None = None
        chain = [node]  # the nodes the fused call replaces, in graph order
        if len(users) == 1 and (act := _activation(gm, users[0])) is not None:
            attr, scalars = act
            chain.append(users[0])
        elif len(users) == 1 and (summand := _same_shape_summand(users[0], node)) is not None:
            other = summand
            chain.append(users[0])
            after = list(users[0].users)
            act = _activation(gm, after[0]) if len(after) == 1 else None
            if act is not None and act[0] == "relu":  # oneDNN's only activation after a sum
                attr, scalars = act
                chain.append(after[0])
        name = f"fused_conv_{fused}"
        fused += 1
        gm.add_submodule(
            name, FusedConv2d(conv, attr, scalars, other is not None, sizes[node.name])
        )
        args: tuple[Any, ...] = (node.args[0],) if other is None else (node.args[0], other)
        with graph.inserting_after(chain[-1]):
            new = graph.call_module(name, args)
        new.meta = dict(chain[-1].meta)  # its shape, for the fusions after it
        chain[-1].replace_all_uses_with(new)
        for dead in reversed(chain):
            graph.erase_node(dead)
    if not fused:
        return None
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval()
