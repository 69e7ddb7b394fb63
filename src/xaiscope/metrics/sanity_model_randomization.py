"""Model-parameter randomisation test: do the maps change when the model's weights go?

Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim (2018), "Sanity Checks for Saliency Maps",
NeurIPS. The layers of a deep copy of the PyTorch module are re-initialised one after the
other from the top (the logits) down, cascading, and the method is re-run for the same
targets after each step. Each step's maps are compared with the trained model's maps by
Spearman rank correlation of the absolute values (the score), Spearman of the signed values
and SSIM (``extra``); ``details`` hold every step. The score is taken with every layer
randomised; lower is better: a method whose maps stay the same without the trained weights
(an edge detector, near 1) does not explain the model.

Layers are the modules holding parameters, in the order a forward pass calls them; models
with more than ``max_steps`` of them are randomised in ``max_steps`` contiguous groups.
A module is re-initialised by its own ``reset_parameters()`` (PyTorch's default
initialisation; batch norms also reset their running statistics), or else its parameters
are redrawn from a normal of their own standard deviation. The user's model is never
changed. PyTorch models only (TorchScript has no per-layer reset).
Cost: ``max_steps`` runs of the method on all images.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from xaiscope.errors import ParameterError, UnsupportedModelError
from xaiscope.metrics.explainers import call_explainer
from xaiscope.metrics.registry import MapList, MetricContext, MetricOutput, register
from xaiscope.metrics.similarity import spearman, ssim


def parameter_layers(module: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules that hold parameters, in the order one forward of ``x`` calls
    them (modules never called are left out: they do not affect the output)."""
    holders = {
        name: m
        for name, m in module.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    }
    order: list[str] = []
    handles = []
    for name, m in holders.items():

        def hook(_m: nn.Module, _inputs: Any, name: str = name) -> None:
            if name not in order:
                order.append(name)

        handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return order


def reinitialise(module: nn.Module) -> None:
    """Re-draw ``module``'s own parameters (see the module docstring)."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            std = float(p.float().std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if std > 0 else 0.02)


def cascade_groups(layers: list[str], max_steps: int) -> list[list[str]]:
    """Layers from the top (last called) down, in at most ``max_steps`` contiguous groups."""
    top_down = layers[::-1]
    k = max(1, min(int(max_steps), len(top_down)))
    return [list(g) for g in np.array_split(np.array(top_down, dtype=object), k) if len(g)]


def randomized_models(model: Any, images01: torch.Tensor, max_steps: int, seed: int) -> Any:
    """Yield ``(label, model)`` for each cascade step: a wrapped deep copy of the module
    with every layer down to ``label`` re-initialised (the copy is changed in place)."""
    from xaiscope.models.torch_model import TorchModel

    if not isinstance(model, TorchModel) or model.scripted:
        kind = "TorchScript" if isinstance(model, TorchModel) else model.framework
        raise UnsupportedModelError(
            f"sanity_model_randomization re-initialises the layers of a PyTorch module; "
            f"this {kind} model has none to reset (use an nn.Module, e.g. via xs.wrap)"
        )
    module = copy.deepcopy(model.module).eval()
    layers = parameter_layers(module, model.normalize(images01[:1]))
    if not layers:
        raise UnsupportedModelError("the model has no parameters to randomise")
    named = dict(module.named_modules())
    device = model.device
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        # initialisers draw from the global generator: seed it, leave the caller's alone
        torch.manual_seed(int(seed))
        for group in cascade_groups(layers, max_steps):
            for name in group:
                reinitialise(named[name])
            label = group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"
            yield (
                label,
                TorchModel(
                    module,
                    labels=model.labels,
                    input_size=model.input_size,
                    preprocess=model.normalize,
                    device=device,
                    name=f"{model.name} randomized down to {group[-1]}",
                    outputs_probabilities=model.outputs_probabilities,
                ),
            )


@register(
    "sanity_model_randomization",
    category="sanity",
    higher_is_better=False,
    paper="Adebayo et al. 2018, Sanity Checks for Saliency Maps (NeurIPS; arXiv:1810.03292)",
    summary="Spearman of |maps| between the trained and a fully randomised model "
    "(cascading from the top layer)",
    aliases=("model_randomization", "sanity"),
    needs_model=True,
    needs_method=True,
    needs_torch=True,
    bounds=(-1.0, 1.0),
)
def sanity_model_randomization(
    ctx: MetricContext, maps: MapList, *, max_steps: int = 10
) -> MetricOutput:
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ParameterError(f"max_steps must be a positive integer, got {max_steps!r}")
    model = ctx.require_model("sanity_model_randomization")
    explainer = ctx.require_explainer("sanity_model_randomization")
    labels: list[str] = []
    rows: dict[str, list[list[float]]] = {"spearman_abs": [], "spearman": [], "ssim": []}
    for label, rmodel in randomized_models(model, ctx.pixels(), max_steps, ctx.seed):
        moved = call_explainer(explainer, rmodel, ctx.images, ctx.targets)
        labels.append(label)
        rows["spearman_abs"].append(
            [spearman(a, b, absolute=True) for a, b in zip(maps, moved, strict=True)]
        )
        rows["spearman"].append([spearman(a, b) for a, b in zip(maps, moved, strict=True)])
        rows["ssim"].append([ssim(a, b, absolute=True) for a, b in zip(maps, moved, strict=True)])
    last = {key: np.array(values[-1]) for key, values in rows.items()}
    return MetricOutput(
        scores=last["spearman_abs"],
        extra={"spearman": last["spearman"], "ssim": last["ssim"]},
        details={"layers": labels, **rows},
    )
