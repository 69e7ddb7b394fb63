"""``xaiscope train`` and the registry on the command line: output, listing, loading by
name, and one clear line with exit code 2 for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xaiscope.cli import main


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xaiscope: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _folder(root: Path, classes: dict[str, int], size: int = 24) -> Path:
    rng = np.random.default_rng(0)
    for name, n in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


FAST = ("--epochs", "1", "--threads", "1", "--quiet")


def test_train_lists_and_explains(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models, out = tmp_path / "models", tmp_path / "curves"
    code, stdout, err = _run(
        capsys, "train", "--arch", "small_cnn", "--data", "shapes", "--n-images", "60",
        "--folds", "3", "--name", "cli-shapes", "--models-dir", models, "--out", out, *FAST,
    )  # fmt: skip
    assert code == 0, err
    assert "shapes: 60 images 32x32, 5 classes" in stdout
    assert "3 folds, 1 epochs" in stdout
    rows = [line.split()[0] for line in stdout.splitlines() if line.strip()]
    for label in ("1", "2", "3", "mean", "std"):
        assert rows.count(label) == 2  # in both tables
    assert f"saved model 'cli-shapes' to {models / 'cli-shapes'}" in stdout
    assert (out / "accuracy.png").is_file() and (out / "history.json").is_file()

    code, stdout, _ = _run(capsys, "models", "--models-dir", models)
    assert code == 0 and f"trained models in {models}" in stdout
    line = next(x for x in stdout.splitlines() if "cli-shapes" in x)
    assert "small_cnn on shapes, 5 classes" in line and "32x32" in line
    assert _run(capsys, "models", "list", "--models-dir", models)[1] == stdout

    monkeypatch.setenv("XAISCOPE_MODELS", str(models))
    code, stdout, err = _run(
        capsys, "explain", "--model", "cli-shapes", "--method", "gradcam", "--out", tmp_path / "x"
    )
    assert code == 0, err
    assert "top-5 predictions" in stdout and list((tmp_path / "x").glob("*.png"))
    code, stdout, _ = _run(capsys, "models", "layers", "cli-shapes")
    assert code == 0 and "relu3  (default)" in stdout


def test_folder_with_unreadable_images(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    root = _folder(tmp_path / "pets", {"chihuahua": 6, "muffin": 6})
    (root / "muffin" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    args = ("train", "--data", f"folder:{root}", "--size", "16", "--no-save", *FAST)
    code, stdout, err = _run(capsys, *args)
    assert code == 0, err
    assert "pets: 12 images 16x16, 2 classes (chihuahua 6, muffin 6)" in stdout
    assert "skipped 1 unreadable image(s)" in err and "broken.jpg" in err
    code, _, err = _run(capsys, *args, "--on-bad-image", "error")
    assert "broken.jpg" in _one_line_error(code, err)


@pytest.mark.parametrize(
    ("setup", "extra", "expected"),
    [
        ("missing", (), "does not exist"),
        ("empty", (), "no class sub-folders"),
        ("one_class", (), "only one class"),
        ("folds", ("--folds", "5"), "at most 3 folds"),
        ("cifar_missing", (), "does not exist"),
        ("arch", ("--arch", "resnet9000"), "unknown architecture"),
        ("epochs", ("--epochs", "0"), "--epochs must be at least 1"),
        ("data_kind", (), "unknown dataset"),
        ("device", ("--device", "cuda:7"), "--device"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    setup: str,
    extra: tuple[str, ...],
    expected: str,
) -> None:
    if setup == "device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    root = tmp_path / "data"
    data = f"folder:{root}"
    if setup == "empty":
        root.mkdir()
    elif setup == "one_class":
        _folder(root, {"only": 3})
    elif setup in ("folds", "arch", "epochs", "device"):
        _folder(root, {"a": 3, "b": 4})
    elif setup == "cifar_missing":
        data = f"cifar10:{root}"
    elif setup == "data_kind":
        data = "mnist"
    models = tmp_path / "models"
    code, _, err = _run(capsys, "train", "--data", data, "--models-dir", models, *FAST, *extra)
    assert expected in _one_line_error(code, err)
    assert not models.exists()  # nothing written


def test_name_taken_refused_before_training(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    base = ("train", "--n-images", "30", "--models-dir", models, *FAST)
    assert _run(capsys, *base)[0] == 0
    weights = models / "small_cnn-shapes" / "weights.pt"
    before = weights.read_bytes()
    code, stdout, err = _run(capsys, *base, "--seed", "3")
    assert "already exists" in _one_line_error(code, err) and "--overwrite" in err
    assert "training small_cnn" not in stdout  # refused before the first epoch
    assert weights.read_bytes() == before
    code, _, err = _run(capsys, *base, "--seed", "3", "--overwrite")
    assert code == 0, err
    assert weights.read_bytes() != before
    code, _, err = _run(capsys, *base, "--name", "bad/name")
    assert "bad model name" in _one_line_error(code, err)
