"""Unit tests of ``--param`` parsing and typing (registry defaults decide the type)."""

from __future__ import annotations

import pytest

from xaiscope.cli.common import safe_name
from xaiscope.cli.params import ParamArg, coerce, method_params, parse_param_args
from xaiscope.errors import ParameterError, UnknownMethodError
from xaiscope.methods.registry import get_method


def test_parse_param_args() -> None:
    assert parse_param_args(["n_steps=8", "ig.baseline = blur", "stdev="]) == [
        ParamArg(None, "n_steps", "8"),
        ParamArg("ig", "baseline", "blur"),
        ParamArg(None, "stdev", ""),
    ]
    for bad in ["n_steps", "=3", ".x=1", "ig.=1", "two words=1"]:
        with pytest.raises(ParameterError, match="key=value"):
            parse_param_args([bad])


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("8", 50, 8),
        ("0.3", 0.15, 0.3),
        ("1", 0.15, 1.0),
        ("false", True, False),
        ("Yes", False, True),
        ("blur", "black", "blur"),
        ("none", None, None),
        ("0.2", None, 0.2),
        ("7", None, 7),
        ("text", None, "text"),
        ("8x8", (4, 4), (8, 8)),
        ("3,5", [1, 1], [3, 5]),
    ],
)
def test_coerce_follows_default_type(text: str, default: object, expected: object) -> None:
    value = coerce(text, default, "--param x")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("text", "default"), [("many", 50), ("x", 0.1), ("maybe", True)])
def test_coerce_rejects(text: str, default: object) -> None:
    with pytest.raises(ParameterError, match="--param x"):
        coerce(text, default, "--param x")


def test_method_params_fans_out_and_types_per_method() -> None:
    infos = [get_method("smoothgrad"), get_method("vargrad"), get_method("saliency")]
    params = method_params(parse_param_args(["n_samples=4", "saliency.abs=false"]), infos)
    assert params == {
        "smoothgrad": {"n_samples": 4},
        "vargrad": {"n_samples": 4},
        "saliency": {"abs": False},
    }
    with pytest.raises(ParameterError, match="valid parameters: .*n_samples"):
        method_params(parse_param_args(["nope=1"]), infos)
    with pytest.raises(ParameterError, match="not selected"):
        method_params(parse_param_args(["gradcam.x=1"]), infos)
    with pytest.raises(UnknownMethodError):
        method_params(parse_param_args(["nosuch.x=1"]), infos)


def test_param_seed_points_at_the_seed_option() -> None:
    infos = [get_method("integrated_gradients")]
    for item in ("seed=0", "integrated_gradients.seed=0"):
        with pytest.raises(ParameterError, match="use --seed N"):
            method_params(parse_param_args([item]), infos)


def test_readme_params_are_method_parameters() -> None:
    """Every ``--param KEY=`` in the README's examples is a registered method parameter."""
    import re
    from pathlib import Path

    from xaiscope.methods.registry import all_methods

    readme = Path(__file__).resolve().parents[2] / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md next to the tests")
    keys = set(re.findall(r"--param\s+(?:[\w+-]+\.)?(\w+)=", readme.read_text("utf-8")))
    known = {key for info in all_methods() for key in info.defaults}
    assert keys and keys <= known, keys - known


def test_safe_name() -> None:
    assert safe_name("tabby, tabby cat") == "tabby_tabby_cat"
    assert safe_name("gradcam++") == "gradcam++"
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("???") == "x"
    assert len(safe_name("a" * 500)) == 60
