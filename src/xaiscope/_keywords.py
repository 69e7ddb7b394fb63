"""Options of registered functions (methods, metrics), read from their signatures, and the
checks every given value passes before the function runs.

:func:`merge_keywords` refuses, with one line naming the function, the option and the value:

- unknown options (listing the valid ones);
- numbers that are NaN or infinite, anywhere in the value (a float, a tuple of them, a
  numeric array): no option of a method or metric means anything with them;
- ``True``/``False`` where the default is a number (``bool`` is an ``int`` in Python, so
  ``n_samples=True`` would otherwise run one sample);
- counts of passes (:data:`COUNTS`: ``n_samples``, ``n_steps``, ``n_masks``) that are not
  integers, below 1 or above the ``max_samples`` limit (:mod:`xaiscope.settings`): each
  costs a forward or backward pass per image, so the limit bounds time, and the refusal
  comes before any work with a hint on how to raise it;
- whatever a function's own :class:`Rule` table says (ranges such as ``p`` in (0, 1]).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from xaiscope.errors import ParameterError

#: Options that count forward or backward passes per image, bounded by ``max_samples``.
COUNTS = ("n_samples", "n_steps", "n_masks")


def keyword_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword-only parameters of ``fn`` and their defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _not_finite(value: Any) -> bool:
    """Whether ``value`` holds a NaN or an infinity (numbers, sequences, numeric arrays)."""
    if _is_number(value):
        return not math.isfinite(float(value))
    if isinstance(value, (tuple, list)):
        return any(_not_finite(v) for v in value)
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return not bool(np.isfinite(value).all())
    if type(value).__module__ == "torch" and getattr(value, "is_floating_point", None):
        import torch

        return value.is_floating_point() and not bool(torch.isfinite(value).all())
    return False


@dataclass(frozen=True)
class Rule:
    """The values a numeric option accepts: a number (``integer``: an integer) in the
    interval from ``low`` to ``high`` (``open_low``/``open_high``: excluding that end),
    ``None`` too where ``none_ok``, and an (h, w) pair of such values too where ``pair``.
    ``count``: also at most the ``max_samples`` limit."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    integer: bool = False
    none_ok: bool = False
    pair: bool = False
    count: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            text = f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.open_low else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.open_high else '<='} {self.high:g}"
        else:
            text = kind
        if self.pair:
            text += " or a pair (h, w) of them"
        return text + (" or None" if self.none_ok else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none_ok
        if self.pair and isinstance(value, (tuple, list)):
            return len(value) == 2 and all(self._one(v) for v in value)
        return self._one(value)

    def _one(self, value: Any) -> bool:
        if not (_is_integer(value) if self.integer else _is_number(value)):
            return False
        v = float(value)
        if not math.isfinite(v):
            return False
        if self.low is not None and (v <= self.low if self.open_low else v < self.low):
            return False
        return not (self.high is not None and (v >= self.high if self.open_high else v > self.high))


def count(minimum: int = 1) -> Rule:
    """A count of passes per image: an integer from ``minimum`` to the ``max_samples`` limit."""
    return Rule(low=minimum, integer=True, count=True)


def check_value(owner: str, key: str, value: Any, rule: Rule) -> None:
    """Raise :class:`ParameterError` unless ``rule`` accepts ``value`` (and, for a count,
    ``value`` is within the ``max_samples`` limit)."""
    if not rule.accepts(value):
        raise ParameterError(f"{owner}: {key}={value!r} is not valid; expected {rule.describe()}")
    if rule.count:
        from xaiscope.settings import get, limit_hint

        limit = get("max_samples")
        if value > limit:
            raise ParameterError(
                f"{owner}: {key}={value:,} is more passes per image than allowed; "
                f"{limit_hint('max_samples')}"
            )


def merge_keywords(
    name: str,
    defaults: dict[str, Any],
    given: dict[str, Any],
    noun: str,
    rules: Mapping[str, Rule] | None = None,
) -> dict[str, Any]:
    """``defaults`` updated by ``given``, after the checks of the module docstring.

    Unknown keys raise one line listing the valid ones; ``rules`` maps option names to the
    :class:`Rule` their value must follow (counts in :data:`COUNTS` get :func:`count` when
    they have none). Rules and count limits apply to the merged values, defaults included:
    a lowered ``max_samples`` limit also bounds a default count.
    """
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise ParameterError(f"{name} has no {noun} {', '.join(unknown)}; valid {noun}s: {valid}")
    for key, value in given.items():
        if _not_finite(value):
            raise ParameterError(f"{name}: {key}={value!r} is not valid; it must be finite")
        default = defaults[key]
        if isinstance(value, (bool, np.bool_)) and _is_number(default):
            kind = "an integer" if _is_integer(default) else "a number"
            raise ParameterError(
                f"{name}: {key}={value!r} is not valid; expected {kind} like {default!r}"
            )
    merged = {**defaults, **given}
    table = dict(rules or {})
    for key in COUNTS:
        if key in merged and key not in table and _is_number(defaults[key]):
            table[key] = count()
    for key, rule in table.items():
        if key in merged:
            check_value(name, key, merged[key], rule)
            if rule.integer and _is_integer(merged[key]):
                merged[key] = int(merged[key])  # a numpy integer is saved as a plain int
    return merged
