"""Explanation.save / load keep ``extras`` (LIME / KernelSHAP superpixels) and read old files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import xaiscope as xs
from tests.conftest import SmallCNN, rand_images
from xaiscope.errors import XaiscopeError
from xaiscope.methods.lime import top_superpixels


@pytest.fixture(scope="module")
def tiny() -> xs.Model:
    return xs.wrap(SmallCNN(), input_size=16, mean=(0, 0, 0), std=(1, 1, 1))


def _assert_extras_equal(loaded: dict[str, Any], original: dict[str, Any]) -> None:
    assert set(loaded) == set(original)
    for name, value in original.items():
        got = loaded[name]
        if isinstance(value, torch.Tensor):
            assert isinstance(got, torch.Tensor), name
            assert got.dtype == value.dtype and got.shape == value.shape, name
            torch.testing.assert_close(got, value.detach().cpu(), equal_nan=True, msg=name)
        elif isinstance(value, np.ndarray):
            assert isinstance(got, np.ndarray), name
            assert got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, value)
        else:
            assert got == value and type(got) is type(value), name


def _assert_same_fields(loaded: xs.Explanation, original: xs.Explanation) -> None:
    assert loaded.method == original.method
    assert loaded.params == original.params
    assert loaded.warnings == original.warnings
    assert loaded.target_labels == original.target_labels
    assert loaded.model_name == original.model_name and loaded.layer == original.layer
    np.testing.assert_array_equal(loaded.targets, original.targets)
    np.testing.assert_array_equal(loaded.scores, original.scores)
    for a, b in zip(loaded.maps, original.maps, strict=True):
        np.testing.assert_array_equal(a, b)
    for name in ("delta", "probabilities"):
        a, b = getattr(loaded, name), getattr(original, name)
        assert (a is None) == (b is None), name
        if b is not None:
            np.testing.assert_array_equal(a, b)


def test_lime_round_trip_keeps_superpixels(tiny, tmp_path: Path) -> None:
    images = rand_images(2, size=16)
    e = xs.explain(
        tiny, images, method="lime", segmentation="grid", n_segments=4, n_samples=40, seed=0
    )
    assert {"segments", "weights"} <= set(e.extras)
    loaded = xs.Explanation.load(e.save(tmp_path / "lime"))
    _assert_same_fields(loaded, e)
    _assert_extras_equal(loaded.extras, e.extras)
    assert loaded.extras["segments"].dtype == torch.int64
    np.testing.assert_array_equal(top_superpixels(loaded, k=2), top_superpixels(e, k=2))
    np.testing.assert_array_equal(
        top_superpixels(loaded, k=2, positive=False), top_superpixels(e, k=2, positive=False)
    )


def test_kernelshap_round_trip_keeps_values_and_base(tiny, tmp_path: Path) -> None:
    images = rand_images(2, size=16, seed=1)
    e = xs.explain(
        tiny, images, method="kernelshap", segmentation="grid", n_segments=4, n_samples=40, seed=0
    )
    loaded = xs.Explanation.load(e.save(tmp_path / "shap.npz"))
    _assert_same_fields(loaded, e)
    _assert_extras_equal(loaded.extras, e.extras)
    torch.testing.assert_close(loaded.extras["values"], e.extras["values"].cpu(), equal_nan=True)
    torch.testing.assert_close(loaded.extras["base_value"], e.extras["base_value"].cpu())
    np.testing.assert_array_equal(top_superpixels(loaded, k=3), top_superpixels(e, k=3))


def test_warnings_and_plain_extras_round_trip(tiny, tmp_path: Path) -> None:
    # n_samples below the superpixel count: LIME flags every image
    e = xs.explain(
        tiny,
        rand_images(2, size=16, seed=2),
        method="lime",
        segmentation="grid",
        n_segments=4,
        n_samples=3,
        seed=0,
    )
    assert e.warnings
    loaded = xs.Explanation.load(e.save(tmp_path / "flagged.npz"))
    assert loaded.warnings == e.warnings
    _assert_extras_equal(loaded.extras, e.extras)

    # ragged maps and every kind of extra a method may leave
    plain = {
        "window": (3, 4),
        "grid": [2, 2],
        "n_masks": 7,
        "p": 0.5,
        "name": "x",
        "flag": True,
        "nothing": None,
        "nested": {"a": (1, [2.5, "b"])},
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "exact": torch.tensor(True),
        "half": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
    }
    ragged = xs.Explanation(
        method="occlusion",
        params={"window": 3},
        targets=np.array([1, 2]),
        scores=np.array([0.5, -1.0], dtype=np.float32),
        maps=[np.ones((4, 5), np.float32), np.zeros((6, 3), np.float32)],
        extras={**plain, "skipped": object(), "tensors": [torch.zeros(2)]},
        warnings=["image 1: the map is constant"],
    )
    back = xs.Explanation.load(ragged.save(tmp_path / "ragged.npz"))
    assert isinstance(back.maps, list) and [m.shape for m in back.maps] == [(4, 5), (6, 3)]
    assert back.warnings == ragged.warnings
    # what is neither an array nor JSON data is skipped, never pickled
    _assert_extras_equal(back.extras, plain)


def test_file_without_extras_still_loads(tiny, tmp_path: Path) -> None:
    e = xs.explain(
        tiny,
        rand_images(1, size=16, seed=3),
        method="lime",
        segmentation="grid",
        n_segments=4,
        n_samples=40,
        seed=0,
    )
    path = e.save(tmp_path / "new.npz")
    # rewrite it as the format before extras were saved: no extras arrays, no extras metadata
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    dropped = [k for k in arrays if k.startswith("extras/")]
    assert dropped  # the new format does store them
    for k in dropped:
        del arrays[k]
    meta = json.loads(arrays["meta"].tobytes().decode())
    del meta["extras"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    old = tmp_path / "old.npz"
    np.savez_compressed(old, **arrays)  # type: ignore[arg-type]

    loaded = xs.Explanation.load(old)
    assert loaded.extras == {}
    _assert_same_fields(loaded, e)
    with pytest.raises(XaiscopeError, match="computed in this session"):
        top_superpixels(loaded, k=2)
