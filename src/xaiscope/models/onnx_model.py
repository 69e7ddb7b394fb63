"""ONNX adapter: a ``.onnx`` classifier run by onnxruntime.

An ONNX graph gives no gradients here, so gradient methods refuse it, but its intermediate
tensors are reachable: ``activations`` runs the graph's prefix up to a tensor, and
``forward_from_layer`` runs the suffix after it with the tensor replaced, which is all that
Score-CAM, Ablation-CAM and Eigen-CAM need. Sub-graphs are cut from the model once per
layer and their sessions cached.

onnx and onnxruntime are imported lazily, only by this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaiscope.errors import (
    ModelLoadError,
    ParameterError,
    UnknownLayerError,
    UnsupportedModelError,
    XaiscopeError,
)
from xaiscope.models.base import Model, layer_suggestions
from xaiscope.models.callable_model import as_score_array, looks_like_probabilities
from xaiscope.settings import get, limit_hint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Ops whose output is a pooled summary, never the default CAM layer (as for torch pools).
POOL_OPS = frozenset(
    {
        "MaxPool",
        "AveragePool",
        "LpPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "GlobalLpPool",
        "MaxRoiPool",
    }
)

_FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx TensorProto codes
_ORT_FLOAT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


def import_onnx() -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a one-line :class:`ModelLoadError` naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ModelLoadError(
            f"ONNX models need onnx and onnxruntime ({exc.name or exc} is missing): "
            "pip install 'xaiscope[onnx]'"
        ) from exc
    return onnx, onnxruntime


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _subgraph_inputs(node: Any) -> list[str]:
    """Names a node reads: its inputs plus outer-scope names used by If/Loop/Scan bodies."""
    names = list(node.input)
    for attr in node.attribute:
        graphs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for g in graphs:
            inner = {o for n in g.node for o in n.output} | {i.name for i in g.input}
            inner |= {t.name for t in g.initializer}
            names += [i for n in g.node for i in _subgraph_inputs(n) if i not in inner]
    return names


def is_onnx_model_bytes(data: bytes) -> bool:
    """Whether ``data`` parses as an ONNX ``ModelProto`` (for checking uploads by content).

    Every exporter writes field 1 (``ir_version``) first; without the ``onnx`` package only
    that first byte is checked and onnxruntime judges the rest when loading.
    """
    if data[:1] != b"\x08":
        return False
    try:
        import onnx
    except ImportError:
        return True
    try:
        onnx.load_model_from_string(data)
    except Exception:
        return False
    return True


@dataclass
class _Graph:
    """The model's graph, indexed: producers, shapes and types of every tensor."""

    proto: Any
    input_name: str
    output_name: str
    initializers: set[str]
    producer: dict[str, int]
    reads: list[list[str]]
    shapes: dict[str, tuple[int, ...]]
    elem_types: dict[str, int]
    #: torch-style module paths (from the exporters' name scopes) -> the module's output
    aliases: dict[str, str] = field(default_factory=dict)

    @property
    def nodes(self) -> Any:
        return self.proto.graph.node

    def upstream(self, outputs: Iterable[str], stop: set[str]) -> set[int]:
        """Indices of the nodes needed to compute ``outputs`` from the tensors in ``stop``."""
        needed: set[int] = set()
        stack = list(outputs)
        seen: set[str] = set()
        while stack:
            t = stack.pop()
            if not t or t in seen or t in stop or t in self.initializers:
                continue
            seen.add(t)
            i = self.producer.get(t)
            if i is None:
                raise UnsupportedModelError(
                    f"tensor {t!r} is neither produced in the graph nor an input given"
                )
            if i not in needed:
                needed.add(i)
                stack.extend(self.reads[i])
        return needed


@dataclass
class _Suffix:
    """How to run the graph after ``layer``: the suffix session and its side inputs.

    ``side`` are the tensors the suffix reads that depend on the input but not on the layer
    (a skip connection around it): computed from ``x`` by ``side_session``.
    """

    session: Any
    side: list[str]
    side_session: Any | None
    depends: bool
    layer: str = ""
    per_row: bool = False


class OnnxModel(Model):
    """An ONNX image classifier run by onnxruntime (CUDA when available, else CPU).

    ``input_size`` is read from the graph's input when static (default 224 otherwise);
    ``mean``/``std`` normalise [0, 1] RGB, or ``preprocess`` maps a (N, 3, H, W) [0, 1]
    batch to the model input. ``output`` names the graph output to read (default the first);
    ``outputs_probabilities`` None: probabilities when the output's rows on two probe images
    are non-negative and sum to 1. Inputs may be NCHW or NHWC (``preprocess`` always returns
    NCHW; NHWC graphs get the batch transposed). A static batch size in the graph is honoured
    by running chunks of exactly that size.

    Layers are the graph's rank-4 tensors, named as in the graph (in its own layout); a node
    name, or a torch module path recorded by ``torch.onnx.export`` (``"features"``, ``"layer4"``),
    also names its output.
    """

    framework = "onnx"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        labels: Sequence[str] | None = None,
        input_size: tuple[int, int] | int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        outputs_probabilities: bool | None = None,
        output: str | None = None,
        batch_size: int | None = None,
        name: str | None = None,
    ) -> None:
        _, ort = import_onnx()
        self.path = Path(path)
        self.name = name or self.path.name
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        if batch_size is not None and batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        want_cuda = device is None or torch.device(device).type == "cuda"
        cuda = want_cuda and "CUDAExecutionProvider" in ort.get_available_providers()
        if device is not None and torch.device(device).type == "cuda" and not cuda:
            raise ModelLoadError("device='cuda' needs onnxruntime-gpu with CUDA available")
        self.providers = (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
        self.device = torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")
        self.session = self._session(str(self.path), what=f"cannot load {self.path}")
        self._setup_io(output)
        self._setup_size(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
        self._user_preprocess = preprocess
        # one probe pass: the number of classes, whether the output is probabilities, and
        # a clear error now rather than in the middle of a method if the graph cannot run
        probe = torch.rand(2, 3, *self.input_size, generator=torch.Generator().manual_seed(0))
        probe[0] = 0.0
        try:
            scores = self.forward(self.normalize(probe.to(self.device)))
        except XaiscopeError as exc:
            raise ModelLoadError(f"cannot run {self.path}: {exc}") from exc
        classes = int(scores.shape[1])
        if classes > get("max_labels"):
            raise ModelLoadError(
                f"{self.name} refused: it has {classes:,} outputs; {limit_hint('max_labels')}"
            )
        if labels is not None and len(labels) != classes:
            raise ModelLoadError(
                f"{len(labels)} labels given but {self.name} has {classes} outputs"
            )
        self.labels = list(labels) if labels is not None else [str(i) for i in range(classes)]
        if outputs_probabilities is None:
            outputs_probabilities = looks_like_probabilities(scores.cpu().numpy())
        self.outputs_probabilities = bool(outputs_probabilities)
        self._graph: _Graph | None = None
        self._sessions: dict[tuple[str, str], Any] = {}
        self._suffixes: dict[str, _Suffix] = {}
        self._default: str | None | bool = False  # False: not computed yet

    # ------------------------------------------------------------------ loading
    def _session(self, model: str | bytes, *, what: str) -> Any:
        _, ort = import_onnx()
        opts = ort.SessionOptions()
        # onnxruntime logs are not the user's business: its errors come back as exceptions
        opts.log_severity_level = 4
        try:
            return ort.InferenceSession(model, opts, providers=self.providers)
        except Exception as exc:
            raise ModelLoadError(f"{what}: not a valid ONNX model ({_first_line(exc)})") from exc

    def _setup_io(self, output: str | None) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise ModelLoadError(
                f"{self.name} takes {len(inputs)} inputs ({names}); xaiscope needs a single "
                "image input (wrap a predict function with xs.wrap otherwise)"
            )
        inp = inputs[0]
        if inp.type not in _ORT_FLOAT_TYPES:
            raise ModelLoadError(
                f"{self.name} takes {inp.type} input, not float: wrap it as a predict function "
                "with xs.wrap(lambda batch_uint8_nhwc: ...)"
            )
        if len(inp.shape) != 4:
            raise ModelLoadError(
                f"{self.name} takes input of shape {inp.shape}; expected an image batch "
                "(N, C, H, W) or (N, H, W, C)"
            )
        self.input_name: str = inp.name
        self._input_dtype = _ORT_FLOAT_TYPES[inp.type]
        shape = list(inp.shape)
        # channels-last graphs (converted from TensorFlow) have 1 or 3 in the last dimension
        self.channels_last = shape[1] not in (1, 3) and shape[3] in (1, 3)
        self._input_shape = shape
        self._static_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        outputs = [o.name for o in self.session.get_outputs()]
        if output is None:
            output = outputs[0]
        elif output not in outputs:
            raise ModelLoadError(f"{self.name} has no output {output!r}; outputs: {outputs}")
        self.output_name: str = output
        out_shape = self.session.get_outputs()[outputs.index(output)].shape or []
        dims = [d for d in list(out_shape)[1:] if isinstance(d, int) and d > 0]
        classes = int(np.prod(dims, dtype=np.float64)) if dims else 0
        if classes > get("max_labels"):
            raise ModelLoadError(
                f"{self.name} refused: its output {output!r} declares {classes:,} values per "
                f"image; {limit_hint('max_labels')}"
            )

    def _setup_size(self, input_size: tuple[int, int] | int | None) -> None:
        shape = self._input_shape
        hw = shape[1:3] if self.channels_last else shape[2:4]
        static = (hw[0], hw[1]) if all(isinstance(d, int) and d > 0 for d in hw) else None
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        if input_size is not None:
            input_size = (int(input_size[0]), int(input_size[1]))
            if static is not None and input_size != static:
                raise ModelLoadError(
                    f"{self.name} takes {static[0]}x{static[1]} images, not input_size={input_size}"
                )
        self.input_size = static or input_size or (224, 224)
        # the probe pass, shape inference and every chunk make batches of this size, so the
        # size a file declares is refused here, before any of them is made
        h, w = self.input_size
        batch = self._static_batch or 1
        if batch * h * w > get("max_input_pixels"):
            what = f"{h}x{w}" + (f" in batches of {batch}" if batch > 1 else "")
            raise ModelLoadError(
                f"{self.name} refused: its input of {what} = {batch * h * w:,} pixels is too "
                f"large; {limit_hint('max_input_pixels')}"
            )

    # -------------------------------------------------------------- primitives
    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map a (N, 3, H, W) batch in [0, 1] at ``input_size`` to the model input."""
        if self._user_preprocess is not None:
            return self._user_preprocess(x01)
        return (x01 - self.mean) / self.std

    def _run(self, session: Any, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[Any]:
        try:
            return list(session.run(outputs, feeds))
        except Exception as exc:
            from xaiscope.batching import is_oom

            if is_oom(exc):
                raise
            shapes = {k: v.shape for k, v in feeds.items()}
            raise XaiscopeError(
                f"onnxruntime failed on {self.name} with inputs {shapes}: {_first_line(exc)}"
            ) from exc

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        size = self._static_batch or self.batch_size or max(n, 1)
        return [(a, min(n, a + size)) for a in range(0, n, size)]

    def _pad(self, arr: np.ndarray) -> np.ndarray:
        """Pad a chunk to a static batch size by repeating its last row."""
        k = self._static_batch
        if k is None or arr.shape[0] == k:
            return arr
        return np.concatenate([arr, np.repeat(arr[-1:], k - arr.shape[0], axis=0)])

    def _input_array(self, x: torch.Tensor) -> np.ndarray:
        x = x.detach()
        if x.ndim != 4:
            raise XaiscopeError(f"expected a (N, C, H, W) batch, got shape {tuple(x.shape)}")
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        return np.ascontiguousarray(x.cpu().numpy().astype(self._input_dtype, copy=False))

    def _to_torch(self, arr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, classes) for a preprocessed (N, C, H, W) batch, float32 on ``device``."""
        arr = self._input_array(x)
        classes = len(self.labels) if hasattr(self, "labels") else None
        parts = []
        for a, b in self._chunks(arr.shape[0]):
            (out,) = self._run(
                self.session, [self.output_name], {self.input_name: self._pad(arr[a:b])}
            )
            out = np.asarray(out)[: b - a]
            parts.append(as_score_array(out, b - a, f"{self.name}'s output", classes))
        if not parts:
            return torch.zeros(0, classes or 0, device=self.device)
        return self._to_torch(np.concatenate(parts))

    # ------------------------------------------------------------------ layers
    def graph(self) -> _Graph:
        """The parsed graph with shapes for every tensor (loaded on first use)."""
        if self._graph is None:
            self._graph = self._load_graph()
        return self._graph

    def _load_graph(self) -> _Graph:
        onnx, _ = import_onnx()
        try:
            proto = onnx.load(str(self.path))
        except Exception as exc:
            raise ModelLoadError(f"cannot parse {self.path}: {_first_line(exc)}") from exc
        g = proto.graph
        producer: dict[str, int] = {}
        for i, node in enumerate(g.node):
            for o in node.output:
                if o:
                    producer[o] = i
        graph = _Graph(
            proto=proto,
            input_name=self.input_name,
            output_name=self.output_name,
            initializers={t.name for t in g.initializer} | {t.name for t in g.sparse_initializer},
            producer=producer,
            reads=[_subgraph_inputs(n) for n in g.node],
            shapes={},
            elem_types={},
        )
        self._infer_shapes(graph)
        graph.aliases = _module_aliases(g.node)
        return graph

    def _infer_shapes(self, graph: _Graph) -> None:
        """Static shapes of every tensor at batch 1 (static batch k) and ``input_size``.

        ONNX shape inference first; tensors it leaves unknown are measured by one probe run.
        """
        onnx, _ = import_onnx()
        proto = graph.proto
        fixed = onnx.ModelProto()
        fixed.CopyFrom(proto)
        batch = self._static_batch or 1
        h, w = self.input_size
        dims = [batch, h, w, 3] if self.channels_last else [batch, 3, h, w]
        for vi in fixed.graph.input:
            if vi.name == self.input_name:
                for d, value in zip(vi.type.tensor_type.shape.dim, dims, strict=False):
                    if not d.HasField("dim_value"):
                        d.dim_value = value
        try:
            inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
        except Exception:
            inferred = fixed  # shape inference is best effort: the probe below measures
        for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            tt = vi.type.tensor_type
            if tt.elem_type:
                graph.elem_types[vi.name] = tt.elem_type
            if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
                graph.shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
        unknown = [
            o
            for node in proto.graph.node
            for o in node.output
            if o and o not in graph.shapes and graph.elem_types.get(o, 1) in _FLOAT_TYPES
        ]
        if unknown:
            self._probe_shapes(graph, unknown)

    def _probe_shapes(self, graph: _Graph, names: list[str]) -> None:
        onnx, _ = import_onnx()
        probe = onnx.ModelProto()
        probe.CopyFrom(graph.proto)
        known = {o.name for o in probe.graph.output}
        probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
        try:
            session = self._session(probe.SerializeToString(), what="probe")
            x = self.normalize(torch.zeros(1, 3, *self.input_size, device=self.device))
            arr = self._pad(self._input_array(x))
            values = session.run(names, {self.input_name: arr})
        except Exception:
            return  # tensors whose shape cannot be known are simply not offered as layers
        for n, v in zip(names, values, strict=True):
            v = np.asarray(v)
            graph.shapes[n] = tuple(v.shape)
            if v.dtype == np.float32:
                graph.elem_types.setdefault(n, 1)

    def _spatial(self) -> list[str]:
        """Rank-4 float node outputs in graph order."""
        graph = self.graph()
        return [
            o
            for node in graph.nodes
            for o in node.output
            if o
            and len(graph.shapes.get(o, ())) == 4
            and graph.elem_types.get(o, 1) in _FLOAT_TYPES
        ]

    def layers(self) -> list[str]:
        """Names of the rank-4 intermediate tensors (node outputs), in graph order."""
        return self._spatial()

    @property
    def default_layer(self) -> str | None:
        """The last rank-4 tensor with spatial size > 1 that is not a pooling output."""
        if self._default is False:
            graph = self.graph()
            candidates = [
                t
                for t in self._spatial()
                if graph.shapes[t][2] > 1
                and graph.shapes[t][3] > 1
                and graph.nodes[graph.producer[t]].op_type not in POOL_OPS
                and t != graph.output_name
            ]
            self._default = candidates[-1] if candidates else None
        return self._default  # type: ignore[return-value]

    def get_layer(self, name: str) -> str:
        """The tensor called ``name`` (or a node name, or a torch module path the exporter
        recorded, for its output); :class:`UnknownLayerError` with close names if none."""
        graph = self.graph()
        if name in graph.producer:
            return name
        for node in graph.nodes:
            if node.name == name and node.output and node.output[0]:
                return str(node.output[0])
        if name in graph.aliases:
            return graph.aliases[name]
        layers = self.layers()
        close = layer_suggestions(name, [*layers, *graph.aliases])
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise UnknownLayerError(
            f"unknown layer {name!r} in {self.name}{hint} "
            "(model.layers() lists the graph's rank-4 tensors)"
        )

    def _build(self, nodes: set[int], inputs: list[str], outputs: list[str]) -> bytes:
        """A model holding ``nodes`` (in graph order), fed by ``inputs``, giving ``outputs``."""
        onnx, _ = import_onnx()
        graph = self.graph()
        src = graph.proto
        used = {t for i in nodes for t in graph.reads[i]}
        g = onnx.helper.make_graph(
            [src.graph.node[i] for i in sorted(nodes)],
            f"{src.graph.name or 'graph'}_part",
            # no shapes declared: onnxruntime infers them, so any batch size is accepted
            [
                onnx.helper.make_tensor_value_info(n, graph.elem_types.get(n, 1), None)
                for n in inputs
            ],
            [
                onnx.helper.make_tensor_value_info(n, graph.elem_types.get(n, 1), None)
                for n in outputs
            ],
            initializer=[t for t in src.graph.initializer if t.name in used],
            sparse_initializer=[t for t in src.graph.sparse_initializer if t.name in used],
        )
        part = onnx.helper.make_model(
            g, opset_imports=list(src.opset_import), functions=list(src.functions)
        )
        # IR < 4 wants every initializer listed as an input; newer IRs do not
        part.ir_version = max(int(src.ir_version), 4)
        return bytes(part.SerializeToString())

    def _sub_session(self, kind: str, layer: str, build: Callable[[], bytes]) -> Any:
        key = (kind, layer)
        if key not in self._sessions:
            self._sessions[key] = self._session(build(), what=f"cannot cut {layer!r} out")
        return self._sessions[key]

    def activations(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Output of tensor ``layer`` for a preprocessed batch (runs only the graph's prefix)."""
        layer = self.get_layer(layer)
        graph = self.graph()

        def build() -> bytes:
            return self._build(
                graph.upstream([layer], {self.input_name}), [self.input_name], [layer]
            )

        session = self._sub_session("act", layer, build)
        arr = self._input_array(x)
        parts = [
            np.asarray(self._run(session, [layer], {self.input_name: self._pad(arr[a:b])})[0])[
                : b - a
            ]
            for a, b in self._chunks(arr.shape[0])
        ]
        return self._to_torch(np.concatenate(parts))

    def _suffix(self, layer: str) -> _Suffix:
        """Cut the graph after ``layer``: nodes that depend on it, plus constant work."""
        if layer in self._suffixes:
            return self._suffixes[layer]
        graph = self.graph()
        on_layer: set[str] = {layer}
        on_input: set[str] = {self.input_name}
        for node, reads in zip(graph.nodes, graph.reads, strict=True):
            outs = [o for o in node.output if o and o != layer]
            if any(r in on_layer for r in reads):
                on_layer.update(outs)
            if any(r in on_input for r in reads):
                on_input.update(outs)
        if self.output_name not in on_layer:
            suffix = _Suffix(session=None, side=[], side_session=None, depends=False)
            self._suffixes[layer] = suffix
            return suffix
        # walk back from the output: stop at the layer; tensors computed from the input but
        # not from the layer are side inputs, fed from the unmodified image
        nodes: set[int] = set()
        side: list[str] = []
        stack, seen = [self.output_name], set()
        while stack:
            t = stack.pop()
            if not t or t in seen or t == layer or t in graph.initializers:
                continue
            seen.add(t)
            if t in on_input and t not in on_layer:
                side.append(t)
                continue
            i = graph.producer[t]
            if i not in nodes:
                nodes.add(i)
                stack.extend(graph.reads[i])
        session = self._session(
            self._build(nodes, [layer, *side], [self.output_name]),
            what=f"cannot cut the graph after {layer!r}",
        )
        side_session = None
        if side:
            side_session = self._session(
                self._build(graph.upstream(side, {self.input_name}), [self.input_name], side),
                what=f"cannot cut the inputs around {layer!r}",
            )
        suffix = _Suffix(
            session=session, side=side, side_session=side_session, depends=True, layer=layer
        )
        self._suffixes[layer] = suffix
        return suffix

    def forward_from_layer(
        self, x: torch.Tensor, layer: str, activation: torch.Tensor
    ) -> torch.Tensor:
        """Scores (B, classes) with the output of ``layer`` replaced by ``activation`` (B, ...).

        ``x`` is one preprocessed image (1, C, H, W): tensors that bypass ``layer`` (skip
        connections) are computed from it once and shared by the B rows.
        """
        layer = self.get_layer(layer)
        graph = self.graph()
        want = graph.shapes.get(layer)
        if want is not None and tuple(activation.shape[1:]) != tuple(want[1:]):
            raise ParameterError(
                f"activation of shape {tuple(activation.shape)} does not fit layer {layer!r} "
                f"of shape (B, {', '.join(map(str, want[1:]))})"
            )
        if x.shape[0] != 1:
            raise ParameterError(f"forward_from_layer takes one image, got a batch of {x.shape[0]}")
        n = activation.shape[0]
        if layer == self.output_name:  # replacing the output itself
            scores = as_score_array(activation.detach().cpu().numpy(), n, "activation")
            return self._to_torch(scores)
        suffix = self._suffix(layer)
        if not suffix.depends:  # the output does not read the layer: it ignores the change
            return self.forward(x).expand(n, -1).clone()
        dtype = _FLOAT_TYPES.get(graph.elem_types.get(layer, 1), np.float32)
        act = np.ascontiguousarray(activation.detach().cpu().numpy().astype(dtype, copy=False))
        side: dict[str, np.ndarray] = {}
        if suffix.side:
            xin = self._pad(self._input_array(x))
            values = self._run(suffix.side_session, suffix.side, {self.input_name: xin})
            side = {k: np.asarray(v) for k, v in zip(suffix.side, values, strict=True)}
        classes = len(self.labels)
        parts = []
        for a, b in self._chunks(n):
            chunk = self._pad(act[a:b])
            out = self._suffix_chunk(suffix, chunk, side)
            parts.append(as_score_array(out[: b - a], b - a, f"{self.name}'s output", classes))
        return self._to_torch(np.concatenate(parts))

    def _suffix_chunk(
        self, suffix: _Suffix, act: np.ndarray, side: dict[str, np.ndarray]
    ) -> np.ndarray:
        """Suffix scores for a chunk of activations, side inputs broadcast to the chunk."""
        n = act.shape[0]
        if not suffix.side or self._static_batch is not None or n == 1:
            # side values already have the batch the graph was cut at
            return self._suffix_run(suffix, act, side)
        if not suffix.per_row:
            # a side tensor with the image's batch of 1 in front is per image: repeat it
            tiled = {
                k: np.repeat(v, n, axis=0)
                if v.ndim >= 1 and v.shape[0] == 1 and v.dtype.kind == "f"
                else v
                for k, v in side.items()
            }
            try:
                out = self._suffix_run(suffix, act, tiled)
                if out.ndim >= 1 and out.shape[0] == n:
                    return out
            except XaiscopeError:
                pass
            # a side input holds the batch size as a value (say a reshape target): run one
            # row at a time from now on, where the batch-1 side values are exact
            suffix.per_row = True
        return np.concatenate([self._suffix_run(suffix, act[i : i + 1], side) for i in range(n)])

    def _suffix_run(
        self, suffix: _Suffix, act: np.ndarray, side: dict[str, np.ndarray]
    ) -> np.ndarray:
        (out,) = self._run(suffix.session, [self.output_name], {suffix.layer: act, **side})
        return np.asarray(out)


def _name_scopes(node: Any) -> list[str]:
    """The torch module paths a node was exported from, outermost first (best effort)."""
    import ast

    meta = {p.key: p.value for p in node.metadata_props}
    raw = meta.get("pkg.torch.onnx.name_scopes")  # torch.export-based exporter
    if raw:
        try:
            parts = [str(p) for p in ast.literal_eval(raw)]
        except (ValueError, SyntaxError):
            return []
        return [p for p in parts[:-1] if p]
    if node.name.startswith("/"):  # TorchScript-based exporter: "/features/features.5/Relu"
        return [p for p in node.name.split("/")[1:-1] if p]
    return []


def _module_aliases(nodes: Iterable[Any]) -> dict[str, str]:
    """Torch module path -> first output of the last node exported from that module."""
    aliases: dict[str, str] = {}
    for node in nodes:
        if node.output and node.output[0]:
            for scope in _name_scopes(node):
                aliases[scope] = str(node.output[0])
    return aliases


def load_onnx(
    path: str | os.PathLike[str], *, device: str | torch.device | None = None, **kw: Any
) -> OnnxModel:
    """``xs.load_model("m.onnx", ...)``: an :class:`OnnxModel`; unknown options, one line."""
    import inspect

    valid = [
        p.name
        for p in inspect.signature(OnnxModel.__init__).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ModelLoadError(
            f"unknown option(s) for an ONNX model: {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    return OnnxModel(path, device=device, **kw)
