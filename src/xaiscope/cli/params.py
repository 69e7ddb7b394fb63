"""``--param key=value`` parsing, typed by the registry's defaults (no second list of names).

``key=value`` goes to every selected method that has parameter ``key``;
``method.key=value`` (method name or alias) goes to that method only. Each value is
converted to the type of that method's default for ``key``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xaiscope.errors import ParameterError
from xaiscope.methods.registry import MethodInfo, get_method

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null"}


@dataclass(frozen=True)
class ParamArg:
    """One ``--param``: ``method`` (None for every method that takes ``key``), key, raw text."""

    method: str | None
    key: str
    text: str

    @property
    def display(self) -> str:
        prefix = f"{self.method}." if self.method else ""
        return f"{prefix}{self.key}={self.text}"


def parse_param_args(items: Sequence[str]) -> list[ParamArg]:
    """Split ``key=value`` / ``method.key=value`` strings; bad syntax -> :class:`ParameterError`."""
    out = []
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        method, dot, key = name.partition(".")
        if not dot:
            method, key = "", name
        if not sep or not key or (dot and not method) or not key.isidentifier():
            raise ParameterError(
                f"bad --param {item!r}: expected key=value or method.key=value "
                "(e.g. --param n_steps=16 or --param integrated_gradients.baseline=blur)"
            )
        out.append(ParamArg(method or None, key, text.strip()))
    return out


def coerce(text: str, default: Any, where: str) -> Any:
    """Convert ``text`` to the type of ``default``; :class:`ParameterError` if it does not fit."""
    low = text.lower()
    if isinstance(default, bool):
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ParameterError(f"{where}: expected true or false, got {text!r}")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ParameterError(f"{where}: expected an integer, got {text!r}") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ParameterError(f"{where}: expected a number, got {text!r}") from None
    if isinstance(default, (tuple, list)):
        first = default[0] if default else None
        numeric = isinstance(first, (int, float)) and not isinstance(first, bool)
        # "8x8" reads as (8, 8) for numeric tuples such as occlusion windows
        parts = [p for p in (text.replace("x", ",") if numeric else text).split(",") if p.strip()]
        if not parts:
            raise ParameterError(f"{where}: expected comma-separated values, got {text!r}")
        values = [coerce(p.strip(), first, where) for p in parts]
        return type(default)(values)
    if default is None or not isinstance(default, str):
        # untyped default: a number if it reads as one, None for none/null, else text
        if low in _NONE or not text:
            return None
        for convert in (int, float):
            try:
                return convert(text)
            except ValueError:
                pass
        if text[:1] in "[{":
            try:
                return json.loads(text)
            except ValueError:
                pass
        return text
    return text


def _valid_list(infos: Sequence[MethodInfo]) -> str:
    parts = [f"{i.name}: {', '.join(i.defaults) or 'none'}" for i in infos]
    return "; ".join(parts)


def method_params(
    args: Sequence[ParamArg], infos: Sequence[MethodInfo]
) -> dict[str, dict[str, Any]]:
    """Typed parameters per selected method: ``{method name: {key: value}}``.

    Raises :class:`ParameterError` (one line, listing the valid parameters) for a key no
    selected method takes, a method prefix that is not selected, or a value of the wrong type.
    """
    per: dict[str, dict[str, Any]] = {i.name: {} for i in infos}
    selected = {i.name: i for i in infos}
    for arg in args:
        if arg.key == "seed" and not any("seed" in i.defaults for i in infos):
            # the seed is a run option shared by every method, not a method parameter
            raise ParameterError(
                f"--param {arg.display}: the seed is not a method parameter; use --seed N"
            )
        if arg.method is not None:
            info = get_method(arg.method)
            if info.name not in selected:
                raise ParameterError(
                    f"--param {arg.display}: method {info.name} is not selected "
                    f"(selected: {', '.join(selected)})"
                )
            targets = [info]
            if arg.key not in info.defaults:
                raise ParameterError(
                    f"unknown parameter {arg.key!r} for {info.name}; "
                    f"valid parameters: {', '.join(info.defaults) or 'none'}"
                )
        else:
            targets = [i for i in infos if arg.key in i.defaults]
            if not targets:
                raise ParameterError(
                    f"unknown parameter {arg.key!r} for {', '.join(selected)}; "
                    f"valid parameters: {_valid_list(infos)}"
                )
        for info in targets:
            where = f"--param {arg.display} ({info.name})"
            per[info.name][arg.key] = coerce(arg.text, info.defaults[arg.key], where)
    for info in infos:
        info.check_params(per[info.name])  # the registry's own check has the last word
    return {name: values for name, values in per.items() if values}
