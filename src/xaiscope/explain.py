"""``xs.explain``: run one or several methods for one or several targets per image.

Methods that read the shared single pass (saliency, gradient x input, every gradient CAM)
get their gradients from one forward and one backward per target set, whatever their
number. Other methods run once over all (image, target) pairs stacked into one batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from xaiscope.batching import checked_output, default_batch_size, run_batched
from xaiscope.errors import ParameterError, TargetError, UnknownLayerError
from xaiscope.explanation import Explanation
from xaiscope.methods.registry import MethodContext, MethodInfo, MethodOutput, get_method
from xaiscope.models.base import GradPass, Model
from xaiscope.models.base import layer_suggestions as _suggest

TargetSpec = Any


def as_model(model: Any) -> Model:
    """A :class:`Model` from a Model, a spec string, or a live framework object."""
    if isinstance(model, Model):
        return model
    from xaiscope.models.loaders import load_model, wrap

    if isinstance(model, str):
        return load_model(model)
    return wrap(model)


def as_image_list(images: Any) -> list[np.ndarray]:
    """Load every image of ``images`` (one image, a list, or an (N, H, W, 3) array)."""
    from xaiscope.data.images import load_image

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [load_image(images[i]) for i in range(images.shape[0])]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ParameterError("no images given")
        return [load_image(im) for im in images]
    return [load_image(images)]


def resolve_targets(
    model: Model, logits: torch.Tensor, target: TargetSpec, labels: Any = None
) -> torch.Tensor:
    """Class indices (N, K) from a target spec: ``"top1"``, ``"topK"``, an int, a label
    string, a per-image list of ints/labels, or ``"true"`` with per-image ``labels``."""
    n, classes = logits.shape
    if isinstance(target, str):
        m = re.fullmatch(r"top(\d+)", target.strip().lower())
        if m:
            k = int(m.group(1))
            if not 1 <= k <= classes:
                raise TargetError(f"{target!r}: the model has {classes} classes")
            return logits.float().topk(k, dim=1).indices
        if target.strip().lower() == "true":
            if labels is None:
                raise TargetError("target='true' needs labels= (the true class of each image)")
            return resolve_targets(
                model, logits, list(labels) if not isinstance(labels, str) else [labels]
            )
        return torch.full((n, 1), _class_index(model, target, classes), device=logits.device)
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return torch.full((n, 1), _class_index(model, int(target), classes), device=logits.device)
    if isinstance(target, (list, tuple, np.ndarray, torch.Tensor)):
        items = list(
            np.asarray(
                target.cpu() if isinstance(target, torch.Tensor) else target, dtype=object
            ).ravel()
        )
        if len(items) != n:
            raise TargetError(f"got {len(items)} targets for {n} images")
        idx = [_class_index(model, t, classes) for t in items]
        return torch.tensor(idx, device=logits.device).view(n, 1)
    raise TargetError(
        f"unsupported target {target!r}: use 'top1', 'top3', an int, a label or a list"
    )


def _class_index(model: Model, t: Any, classes: int) -> int:
    if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
        if not 0 <= int(t) < classes:
            raise TargetError(
                f"target class {int(t)} out of range: "
                f"the model has {classes} classes (0..{classes - 1})"
            )
        return int(t)
    if isinstance(t, str):
        text = t.strip()
        if text.lstrip("-").isdigit():
            return _class_index(model, int(text), classes)
        lowered = [lab.lower() for lab in model.labels]
        exact = [i for i, lab in enumerate(lowered) if lab == text.lower()]
        # ImageNet names like "tabby, tabby cat": else match one comma-separated synonym
        hits = exact or [
            i
            for i, lab in enumerate(lowered)
            if text.lower() in [part.strip() for part in lab.split(",")]
        ]
        if len(hits) == 1:
            return hits[0]
        if hits:  # ImageNet has two "crane"s (the bird and the machine)
            named = ", ".join(f"{i} ({model.labels[i]})" for i in hits)
            raise TargetError(f"class label {t!r} is ambiguous: {named}; give the class index")
        close = _suggest(text, model.labels, n=3)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise TargetError(f"unknown class label {t!r}{hint}")
    raise TargetError(f"unsupported target {t!r}")


def _split_params(infos: list[MethodInfo], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Give each method the hyper-parameters it accepts; reject ones that no method takes.

    ``params`` may also hold a dict per method name: ``{"integrated_gradients": {...}}``.
    """
    per: dict[str, dict[str, Any]] = {info.name: {} for info in infos}
    names = {info.name for info in infos} | {a for info in infos for a in info.aliases}
    used: set[str] = set()
    for key, value in params.items():
        if key in names and isinstance(value, dict):
            info = next(i for i in infos if key == i.name or key in i.aliases)
            per[info.name].update(value)
            used.add(key)
            continue
        for info in infos:
            if key in info.defaults:
                per[info.name][key] = value
                used.add(key)
    unused = sorted(set(params) - used)
    if unused:
        valid = sorted({p for info in infos for p in info.defaults})
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unused)} for {', '.join(i.name for i in infos)}; "
            f"valid: {', '.join(valid) or 'none'}"
        )
    return {info.name: info.check_params(per[info.name]) for info in infos}


def explain(
    model: Any,
    images: Any,
    method: str | None = None,
    *,
    methods: Sequence[str] | None = None,
    target: TargetSpec = None,
    targets: TargetSpec = None,
    layer: str | None = None,
    labels: Any = None,
    batch_size: int | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    **params: Any,
) -> Explanation | list[Explanation]:
    """Explain the predictions of ``model`` on ``images``.

    ``method`` (one name) or ``methods`` (several); ``target``/``targets`` as in
    :func:`resolve_targets` (default ``"top1"``); ``layer`` for CAMs (default: the model's
    ``default_layer``); ``batch_size`` the starting chunk size (halved on out-of-memory);
    ``seed`` makes random methods reproducible; other keywords are method parameters.

    Returns one :class:`Explanation` for one method and one target per image; otherwise
    a list ordered by method, then target rank (``[m1 top1, m1 top2, m2 top1, ...]``).
    """
    if method is None and methods is None:
        raise ParameterError("give method= or methods=")
    if method is not None and methods is not None:
        raise ParameterError("give either method= or methods=, not both")
    names = [method] if method is not None else list(methods or [])
    if isinstance(methods, str):
        names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ParameterError("methods= is empty")
    if target is not None and targets is not None:
        raise ParameterError("give either target= or targets=, not both")
    spec = target if target is not None else targets if targets is not None else "top1"

    model = as_model(model)
    infos: list[MethodInfo] = []
    for name in names:
        info = get_method(name)
        if info not in infos:
            infos.append(info)
    for info in infos:
        if info.needs_gradients and not model.supports_gradients:
            from xaiscope.errors import UnsupportedModelError

            raise UnsupportedModelError(f"{info.name}: " + model._no_gradients_message())
        if info.uses_layer and not model.supports_gradients and not model.layers():
            from xaiscope.errors import UnsupportedModelError

            # before "give layer=": a black box without layers cannot take one
            raise UnsupportedModelError(
                f"{info.name} needs a layer, and this model has none: "
                + model._no_gradients_message()
            )
    per_params = _split_params(infos, params)

    arrays = as_image_list(images)
    sizes = [a.shape[:2] for a in arrays]
    images01 = model.pixels(arrays)
    x = model.normalize(images01)
    bs = default_batch_size(model.device, batch_size, tuple(x.shape[-2:]))
    n = x.shape[0]
    # only shared-pass methods: the shared pass's own forward gives the logits (and picks
    # top-k targets), so no separate forward is spent on finding the targets
    logits_from_pass = all(info.shared for info in infos)
    select = None
    if logits_from_pass:
        if _is_ranked(spec):

            def select(chunk_logits: torch.Tensor) -> torch.Tensor:
                _check_finite(chunk_logits)
                return resolve_targets(model, chunk_logits, spec, labels).T.contiguous()

            tgt = torch.zeros((n, 0), dtype=torch.long)  # filled from the pass below
        else:
            shape_only = torch.empty((n, model.num_classes), device=x.device)
            tgt = resolve_targets(model, shape_only, spec, labels)  # (N, K)
    else:
        # every adapter's output is checked here, the black boxes' and Keras' included
        logits = torch.cat(
            run_batched(
                lambda a, b: checked_output(model.forward(x[a:b]), b - a), n, bs, progress=False
            )
        )
        _check_finite(logits)
        tgt = resolve_targets(model, logits, spec, labels)
    k_sets = tgt.shape[1]

    uses_layer = any(info.uses_layer for info in infos)
    layer_name = None
    if uses_layer:
        layer_name = layer or model.default_layer
        if layer_name is None:
            raise UnknownLayerError(
                "this model has no spatial layer for CAMs; give layer= (see model.layers())"
            )
        if hasattr(model, "get_layer"):
            model.get_layer(layer_name)

    shared = _shared_pass(model, x, tgt, infos, layer_name, bs, select)
    if logits_from_pass:
        assert shared is not None and shared.targets is not None
        logits = shared.logits
        _check_finite(logits)
        tgt = shared.targets.T.contiguous()
        k_sets = tgt.shape[1]
    probs = model.probabilities(logits)
    results: list[Explanation] = []
    for info in infos:
        outputs = _run_method(
            info,
            per_params[info.name],
            model,
            x,
            images01,
            tgt,
            logits,
            layer_name,
            bs,
            seed,
            progress,
            shared,
        )
        for k, out in enumerate(outputs):
            t = tgt[:, k]
            results.append(
                Explanation(
                    method=info.name,
                    params={**per_params[info.name], **({"seed": seed} if info.stochastic else {})},
                    targets=t.cpu().numpy().astype(np.int64),
                    scores=logits.float().gather(1, t[:, None])[:, 0].cpu().numpy(),
                    probabilities=probs.gather(1, t[:, None])[:, 0].float().cpu().numpy(),
                    maps=_to_image_size(out.map, sizes),
                    raw=out.raw,
                    delta=None if out.delta is None else out.delta.float().cpu().numpy(),
                    target_labels=[model.label(int(i)) for i in t],
                    layer=layer_name if info.uses_layer else None,
                    model_name=getattr(model, "name", None),
                    extras=out.extras,
                    warnings=_map_warnings(out),
                )
            )
    if method is not None and methods is None and k_sets == 1:
        return results[0]
    return results


def _is_ranked(spec: TargetSpec) -> bool:
    """Whether the targets depend on the model's output (``"top1"``, ``"top3"``, ...)."""
    return isinstance(spec, str) and re.fullmatch(r"top\d+", spec.strip().lower()) is not None


def _check_finite(logits: torch.Tensor) -> None:
    if not bool(torch.isfinite(logits).all()):
        from xaiscope.errors import XaiscopeError

        bad = sorted({int(i) for i in (~torch.isfinite(logits)).nonzero()[:, 0]})
        raise XaiscopeError(f"the model's output is not finite (NaN or inf) for image(s) {bad}")


def _map_warnings(out: MethodOutput) -> list[str]:
    """The method's notes as ``"image i: ..."``, and maps that carry no information flagged
    instead of returned silently."""
    notes = [text if row is None else f"image {row}: {text}" for row, text in out.warnings]
    # a method registered elsewhere may still leave plain strings in its extras
    notes += [str(v) for v in out.extras.pop("warnings", []) or []]
    m = out.map.detach().float().flatten(1)
    # a 1x1 map (a CAM of a layer after global pooling) is constant by construction
    single = (
        " because it has a single cell (the layer's output is 1x1); use a layer with a "
        "spatial size above 1x1"
        if m.shape[1] == 1
        else ""
    )
    for i in range(m.shape[0]):
        if not bool(torch.isfinite(m[i]).all()):
            notes.append(f"image {i}: the map has NaN or inf values")
        elif bool((m[i] == m[i, 0]).all()):
            notes.append(f"image {i}: the map is constant ({float(m[i, 0]):g} everywhere){single}")
    return notes


def _shared_pass(
    model: Model,
    x: torch.Tensor,
    tgt: torch.Tensor,
    infos: list[MethodInfo],
    layer: str | None,
    bs: int,
    select: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> GradPass | None:
    """One forward + one backward per target set for every method that reads the shared pass.

    ``select`` picks the target sets from each chunk's logits (top-k) instead of ``tgt``.
    """
    needs = set().union(*(info.shared for info in infos))
    if not needs:
        return None
    need_input = "input" in needs
    lay = layer if "layer" in needs else None
    targets = tgt.T.contiguous()  # (K, N)

    def step(a: int, b: int) -> GradPass:
        chosen = select if select is not None else targets[:, a:b]
        return model.grad_pass(x[a:b], chosen, layer=lay, need_input=need_input)

    parts = run_batched(step, x.shape[0], bs, desc="gradients", progress=False)

    def cat(attr: str, dim: int) -> torch.Tensor | None:
        vals = [getattr(p, attr) for p in parts]
        return None if vals[0] is None else torch.cat(vals, dim=dim)

    logits = cat("logits", 0)
    assert logits is not None
    return GradPass(
        logits=logits,
        targets=cat("targets", 1),
        input_grads=cat("input_grads", 1),
        activation=cat("activation", 0),
        layer_grads=cat("layer_grads", 1),
    )


def _run_method(
    info: MethodInfo,
    params: dict[str, Any],
    model: Model,
    x: torch.Tensor,
    images01: torch.Tensor,
    tgt: torch.Tensor,
    logits: torch.Tensor,
    layer: str | None,
    bs: int,
    seed: int | None,
    progress: bool | None,
    shared: GradPass | None,
) -> list[MethodOutput]:
    n, k_sets = tgt.shape
    if info.shared and shared is not None:
        outs = []
        for k in range(k_sets):
            view = GradPass(
                logits=shared.logits,
                input_grads=None if shared.input_grads is None else shared.input_grads[k : k + 1],
                activation=shared.activation,
                layer_grads=None if shared.layer_grads is None else shared.layer_grads[k : k + 1],
            )
            ctx = MethodContext(
                model=model,
                x=x,
                targets=tgt[:, k],
                images01=images01,
                layer=layer,
                batch_size=bs,
                seed=seed,
                progress=progress,
                shared=view,
                logits=logits,
            )
            out = info.fn(ctx, **params)
            out.warnings = [*out.warnings, *ctx.notes]
            outs.append(out)
        return outs
    # stack (image, target) pairs: rank-major, so rows [k*n:(k+1)*n] are target set k
    ctx = MethodContext(
        model=model,
        x=x.repeat(k_sets, 1, 1, 1) if k_sets > 1 else x,
        targets=tgt.T.reshape(-1),
        images01=images01.repeat(k_sets, 1, 1, 1) if k_sets > 1 else images01,
        layer=layer,
        batch_size=bs,
        seed=seed,
        progress=progress,
        logits=logits.repeat(k_sets, 1) if k_sets > 1 else logits,
        images=n,
    )
    out = info.fn(ctx, **params)
    out.warnings = [*out.warnings, *ctx.notes]
    if k_sets == 1:
        return [out]
    return [
        MethodOutput(
            raw=out.raw[k * n : (k + 1) * n],
            map=out.map[k * n : (k + 1) * n],
            delta=None if out.delta is None else out.delta[k * n : (k + 1) * n],
            extras={
                key: v[k * n : (k + 1) * n]
                if isinstance(v, torch.Tensor) and len(v) == n * k_sets
                else v
                for key, v in out.extras.items()
            },
            # each target set keeps the notes of its own rows, numbered as the images are
            warnings=[
                (None if row is None else row - k * n, text)
                for row, text in out.warnings
                if row is None or k * n <= row < (k + 1) * n
            ],
        )
        for k in range(k_sets)
    ]


def _to_image_size(
    maps: torch.Tensor, sizes: list[tuple[int, int]]
) -> np.ndarray | list[np.ndarray]:
    """Bilinear resize of (N, h, w) maps to each image's (H_i, W_i), as float32 numpy."""
    m = maps.detach().float()[:, None]
    if len(set(sizes)) == 1:
        h, w = sizes[0]
        if tuple(m.shape[-2:]) != (h, w):
            m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
        return m[:, 0].cpu().numpy().astype(np.float32)
    out = []
    for i, (h, w) in enumerate(sizes):
        mi = F.interpolate(m[i : i + 1], size=(h, w), mode="bilinear", align_corners=False)
        out.append(mi[0, 0].cpu().numpy().astype(np.float32))
    return out
