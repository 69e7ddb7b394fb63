"""The method registry: one entry per explanation method, one small file per method.

The CLI, the app and the contract tests are generated from this registry. A method is a
function ``fn(ctx, **params) -> MethodOutput``; its keyword-only parameters with
defaults are its hyper-parameters, read from the signature.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from xaiscope._keywords import Rule, keyword_defaults, merge_keywords
from xaiscope.errors import UnknownMethodError
from xaiscope.models.base import GradPass, Model

Family = Literal["gradient", "cam", "perturbation", "attention"]
SharedNeed = Literal["input", "layer"]


@dataclass
class MethodOutput:
    """A method's result for one target set.

    ``raw``: native output ((N, C, H, W) in model-input space for pixel methods,
    (N, h, w) at layer resolution for CAMs). ``map``: (N, h, w) single-channel map at any
    resolution, resized to each image by :func:`xaiscope.explain`. ``delta``: (N,)
    completeness gap, where the method defines one. ``extras``: anything else worth keeping.
    ``warnings``: ``(row, message)`` for maps that are degenerate or unreliable, ``row``
    the batch row the message is about (None: all of them); :func:`xaiscope.explain`
    hands each explanation the messages of its own rows, as ``"image i: message"``.
    """

    raw: torch.Tensor
    map: torch.Tensor
    delta: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    warnings: list[tuple[int | None, str]] = field(default_factory=list)


@dataclass
class MethodContext:
    """What a method sees: the model, the preprocessed batch and one target per row.

    ``x`` (N, C, H, W) on the model's device; ``targets`` (N,) long; ``layer`` for layer
    methods; ``batch_size`` is the starting chunk size; ``images01`` (N, 3, H, W) in
    [0, 1] at model resolution, for baselines defined in pixel space. ``images``: how many
    images were given, where several target sets are stacked as rows (row ``k * images + i``
    is image ``i``); None when every row is its own image.
    """

    model: Model
    x: torch.Tensor
    targets: torch.Tensor
    images01: torch.Tensor
    layer: str | None = None
    batch_size: int = 32
    seed: int | None = None
    progress: bool | None = None
    shared: GradPass | None = None
    logits: torch.Tensor | None = None
    images: int | None = None
    #: (row, message) notes on the inputs a method built (e.g. a baseline), merged into the
    #: method's warnings by :func:`xaiscope.explain`
    notes: list[tuple[int | None, str]] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        """The number of images given (rows of per-image arguments such as baselines)."""
        return self.images if self.images is not None else int(self.x.shape[0])

    def rows_of_images(self, t: torch.Tensor) -> torch.Tensor:
        """A per-image tensor (``n_images``, ...) repeated for every stacked target set."""
        reps = int(self.x.shape[0]) // self.n_images
        return t if reps == 1 else t.repeat(reps, *([1] * (t.ndim - 1)))

    def generator(self) -> torch.Generator:
        """A generator on the model's device, seeded with ``seed`` (random when None)."""
        gen = torch.Generator(device=self.x.device)
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(self.seed))
        return gen

    def image_generators(self) -> Callable[[], torch.Generator]:
        """A factory of generators on the model's device that all start in the same state
        (``seed``, or one random seed drawn for this call): drawing each image's samples
        from a fresh one makes them independent of the other images in the batch."""
        base = int(self.seed) if self.seed is not None else torch.Generator().seed()

        def fresh() -> torch.Generator:
            gen = torch.Generator(device=self.x.device)
            gen.manual_seed(base)
            return gen

        return fresh

    def target_scores(self) -> torch.Tensor:
        """The model's score for each target, (N,)."""
        logits = self.logits if self.logits is not None else self.model.forward(self.x)
        return logits.gather(1, self.targets[:, None].to(logits.device))[:, 0].float()


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its name, family, needs, hyper-parameters and paper."""

    name: str
    fn: Callable[..., MethodOutput]
    family: Family
    paper: str
    summary: str
    aliases: tuple[str, ...] = ()
    needs_gradients: bool = True
    uses_layer: bool = False
    stochastic: bool = False
    #: what the shared single forward/backward pass must provide (empty: method runs alone)
    shared: frozenset[str] = frozenset()
    #: runs only on vision transformers whose attention can be read (attention rollout)
    needs_attention: bool = False
    #: the values each numeric hyper-parameter accepts, checked before the method runs
    #: (counts such as ``n_samples`` get :func:`xaiscope._keywords.count` when not listed)
    rules: Mapping[str, Rule] = field(default_factory=dict, hash=False, compare=False)

    def applicable(self, model: Model) -> bool:
        """Whether this method can run on ``model`` (gradients, a layer, attention)."""
        if self.needs_gradients and not model.supports_gradients:
            return False
        if self.uses_layer and not model.layers():
            return False
        if self.needs_attention:
            from xaiscope.models.vit import is_transformer

            return is_transformer(model)
        return True

    @property
    def defaults(self) -> dict[str, Any]:
        """Hyper-parameters and their defaults."""
        return keyword_defaults(self.fn)

    def check_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults + ``params``, after the checks of :func:`~xaiscope._keywords.merge_keywords`:
        unknown names (listing the valid ones), NaN or infinite numbers, counts beyond the
        ``max_samples`` limit and values outside :attr:`rules` raise :class:`ParameterError`."""
        return merge_keywords(self.name, self.defaults, params, "parameter", self.rules)


_REGISTRY: dict[str, MethodInfo] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    family: Family,
    paper: str,
    summary: str,
    aliases: tuple[str, ...] = (),
    needs_gradients: bool = True,
    uses_layer: bool = False,
    stochastic: bool = False,
    shared: frozenset[str] | set[str] = frozenset(),
    needs_attention: bool = False,
    rules: Mapping[str, Rule] | None = None,
) -> Callable[[Callable[..., MethodOutput]], Callable[..., MethodOutput]]:
    """Decorator adding a method function to the registry; ``rules`` maps hyper-parameter
    names to the :class:`~xaiscope._keywords.Rule` their values must follow."""

    def deco(fn: Callable[..., MethodOutput]) -> Callable[..., MethodOutput]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} registered twice")
        unknown = sorted(set(rules or {}) - set(keyword_defaults(fn)))
        if unknown:
            raise ValueError(f"method {name!r}: rules for unknown parameters {unknown}")
        _REGISTRY[name] = MethodInfo(
            name=name,
            fn=fn,
            family=family,
            paper=paper,
            summary=summary,
            aliases=aliases,
            needs_gradients=needs_gradients,
            uses_layer=uses_layer,
            stochastic=stochastic,
            shared=frozenset(shared),
            needs_attention=needs_attention,
            rules=dict(rules or {}),
        )
        for alias in aliases:
            _ALIASES[alias] = name
        return fn

    return deco


def _load_all() -> None:
    # importing the package registers every method file
    import xaiscope.methods  # noqa: F401


def get_method(name: str) -> MethodInfo:
    """The method called ``name`` (or an alias); :class:`UnknownMethodError` lists valid ones."""
    _load_all()
    key = name.strip()
    for candidate in (key, key.lower(), key.lower().replace("-", "_")):
        candidate = _ALIASES.get(candidate, candidate)
        if candidate in _REGISTRY:
            return _REGISTRY[candidate]
    exact = _spellings().get(_squash(key))  # "Grad-CAM++", "Integrated Gradients"
    if exact is not None:
        return _REGISTRY[exact]
    hint = suggest_method(key)
    guess = f"did you mean {hint}? " if hint else ""
    raise UnknownMethodError(
        f"unknown method {name!r}; {guess}valid methods: {', '.join(sorted(method_names()))}"
    )


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch == "+")


def suggest_method(name: str) -> str | None:
    """The registered method whose name or alias is closest to ``name`` (a typo such as
    ``gradcm``), compared without case, '-' and '_'; None when nothing is close."""
    import difflib

    spellings = _spellings()
    close = difflib.get_close_matches(_squash(name), list(spellings), n=1, cutoff=0.75)
    return spellings[close[0]] if close else None


def _spellings() -> dict[str, str]:
    """Every name and alias without case, '-', '_' or spaces -> the method's name."""
    _load_all()
    out = {_squash(a): target for a, target in _ALIASES.items()}
    out.update({_squash(n): n for n in _REGISTRY})
    return out


def method_names(*, needs_gradients: bool | None = None, family: str | None = None) -> list[str]:
    """Registered method names, in registration order, optionally filtered."""
    _load_all()
    return [
        m.name
        for m in _REGISTRY.values()
        if (needs_gradients is None or m.needs_gradients == needs_gradients)
        and (family is None or m.family == family)
    ]


def all_methods() -> list[MethodInfo]:
    """Every registered method."""
    _load_all()
    return list(_REGISTRY.values())
