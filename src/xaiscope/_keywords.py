"""Options of registered functions (methods, metrics), read from their signatures."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from xaiscope.errors import ParameterError


def keyword_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` and their defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def merge_keywords(
    name: str, defaults: dict[str, Any], given: dict[str, Any], noun: str
) -> dict[str, Any]:
    """``defaults`` updated by ``given``; unknown keys raise one line listing the valid ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ParameterError(f"{name} has no {noun} {', '.join(unknown)}; valid {noun}s: {valid}")
    return {**defaults, **given}
