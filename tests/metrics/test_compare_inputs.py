"""``xs.compare`` and ``xaiscope compare`` refuse maps that would turn into wrong numbers
(NaN, inf, strings, objects, empty, sizes that differ) and flag constant maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xaiscope as xs
from xaiscope.cli.main import main


def _maps(seed: int, n: int = 2, shape: tuple[int, int] = (8, 9)) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def _with(value: float) -> np.ndarray:
    m = _maps(1)
    m[1, 2, 3] = value
    return m


def _nan_all() -> np.ndarray:
    return np.full((2, 8, 9), np.nan)


REFUSED: dict[str, tuple[Any, type[Exception], str]] = {
    "all NaN": (_nan_all(), xs.ParameterError, "image 0 is all NaN"),
    "one NaN": (_with(np.nan), xs.ParameterError, "image 1 has 1 NaN or inf"),
    "inf": (_with(np.inf), xs.ParameterError, "NaN or inf"),
    "-inf": (_with(-np.inf), xs.ParameterError, "NaN or inf"),
    "strings": (_maps(1).astype(str), xs.ParameterError, "not real numbers"),
    "objects": (_maps(1).astype(object), xs.ParameterError, "dtype object"),
    "complex": (_maps(1).astype(np.complex64), xs.ParameterError, "not real numbers"),
    "no maps": (np.zeros((0, 8, 9)), xs.ParameterError, "has no maps"),
    "empty map": (np.zeros((2, 0, 9)), xs.ParameterError, "is empty (0x9)"),
    "other size": (_maps(1, shape=(8, 10)), xs.ExplanationMismatchError, "8x9 but b's is 8x10"),
    "other count": (_maps(1, n=3), xs.ExplanationMismatchError, "2 maps but b has 3"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_maps_are_refused(case: str) -> None:
    bad, error, expected = REFUSED[case]
    with pytest.raises(error) as info:
        xs.compare({"a": _maps(0), "b": bad})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_string_maps_of_numbers_do_not_convert() -> None:
    # np.asarray(["0.5"], float) would succeed: the dtype is checked before converting
    text = np.array([[["0.5", "0.25"], ["1", "2"]]])
    with pytest.raises(xs.ParameterError, match="not real numbers"):
        xs.compare({"a": np.ones((1, 2, 2)) + np.eye(2), "b": text})


def test_nan_explanations_are_refused() -> None:
    a = xs.Explanation("x", {}, np.array([0, 1]), np.zeros(2, np.float32), _maps(0))
    b = xs.Explanation("y", {}, np.array([0, 1]), np.zeros(2, np.float32), _with(np.nan))
    with pytest.raises(xs.ParameterError, match="y: the map of image 1 has 1 NaN"):
        xs.compare([a, b])


def test_constant_maps_are_flagged_not_scored() -> None:
    constant = _maps(2)
    constant[0] = 0.25  # image 0 of "flat" carries no ordering
    result = xs.compare({"a": _maps(0), "b": _maps(1), "flat": constant})
    rows = {(r["method_a"], r["method_b"]): r for r in result.rows}
    assert result.warnings == [
        "image 0: flat's map is constant (0.25 everywhere): its statistics with every other "
        "map are undefined (left empty)"
    ]
    for pair in [("a", "flat"), ("b", "flat")]:
        row = rows[pair]
        for s in ("spearman", "pearson", "top_k_intersection", "ssim"):
            per = row[f"{s}_scores"]
            assert per[0] is None and per[1] is not None, (pair, s)
            assert row[s] == pytest.approx(per[1])  # the mean of the defined image
    ab = rows[("a", "b")]
    assert all(v is not None for v in ab["spearman_scores"])
    assert '"warnings"' in result.to_json()


def test_all_constant_gives_nan_means() -> None:
    result = xs.compare({"a": np.ones((2, 8, 9)), "b": _maps(1)})
    assert result.rows[0]["spearman"] is None and len(result.warnings) == 2
    assert np.isnan(result.matrix("spearman")[0, 1])
    summary = {r["method"]: r for r in result.summary().rows}
    assert summary["a"]["mean_spearman_with_others"] is None


def test_absolute_makes_sign_only_maps_constant() -> None:
    signs = np.where(_maps(3) > 0.5, 1.0, -1.0)
    assert not xs.compare({"a": _maps(0), "b": signs}).warnings
    assert xs.compare({"a": _maps(0), "b": signs}, absolute=True).warnings


def _saved(tmp_path: Path, name: str, maps: np.ndarray, warnings: list[str]) -> Path:
    e = xs.Explanation(
        method=name,
        params={},
        targets=np.arange(len(maps)),
        scores=np.zeros(len(maps), np.float32),
        maps=maps.astype(np.float32),
        warnings=warnings,
    )
    return e.save(tmp_path / f"{name}.npz")


def test_cli_flags_constant_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat = _maps(2)
    flat[1] = 0.0
    a = _saved(tmp_path, "a", _maps(0), [])
    b = _saved(tmp_path, "b", flat, ["image 1: the map is constant (0 everywhere)"])
    code = main(["compare", str(a), str(b), "--out", str(tmp_path / "out"), "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: image 1: b's map is constant" in captured.out
    assert (tmp_path / "out" / "agreement.png").exists()


def test_cli_refuses_nan_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _saved(tmp_path, "a", _maps(0), [])
    # flagged as explain() flags it, so the file loads; compare still refuses the map
    b = _saved(tmp_path, "b", _with(np.nan), ["image 1: the map has NaN or inf values"])
    code = main(["compare", "--explanations", str(a), str(b), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "b: the map of image 1 has 1 NaN or inf values" in err


def test_cli_mixed_npz_and_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _saved(tmp_path, "a", _maps(0), [])
    code = main(["compare", str(a), "cat.png", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "not both" in err and err.count("\n") == 1
