"""Keras files uploaded to the app: ``.keras`` and ``.h5`` recognised by content and loaded in
safe mode; a Lambda layer (code in the file) refused and never run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import SmallCNN
from tests.keras_support import keras_or_skip, keras_small_cnn, randomize_bn
from xaiscope.app import logic
from xaiscope.errors import UnsafeModelError

keras = keras_or_skip()


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_upload_loads_in_safe_mode(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cnn{suffix}"
    keras_small_cnn(randomize_bn(SmallCNN())).save(path)
    files = logic.SessionFiles()
    try:
        data = path.read_bytes()
        assert logic.sniff_model(f"upload{suffix}", data) == suffix
        choice = logic.model_choice_for_upload(files, f"my model{suffix}", data, 50)
        model = logic.load_model_safely(choice)
        assert model.framework == "keras" and model.default_layer == "relu2"
        # the other Keras format's name on these bytes is refused by content
        other = ".h5" if suffix == ".keras" else ".keras"
        with pytest.raises(logic.UploadError):
            logic.sniff_model(f"upload{other}", data)
    finally:
        files.cleanup()


def test_lambda_layer_upload_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    fn = eval(f"lambda t: (open({str(marker)!r}, 'w').write('ran'), t)[1]")  # noqa: S307
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(fn, name="sneaky")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inp, keras.layers.Dense(2)(x)).save(path)
    marker.unlink()
    files = logic.SessionFiles()
    try:
        choice = logic.model_choice_for_upload(files, "lambda.keras", path.read_bytes(), 50)
        with pytest.raises(UnsafeModelError) as info:
            logic.load_model_safely(choice)
        assert "lambda.keras" in str(info.value) and "sneaky" in str(info.value)
        assert not marker.exists()
    finally:
        files.cleanup()
