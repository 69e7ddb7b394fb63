"""xs.train: k-fold histories, the kept best epoch, the registry round trip, determinism,
Ctrl-C, protection of existing entries, and bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xaiscope as xs
from xaiscope.models import registry_store
from xaiscope.train import TrainResult, macro_f1

Rows = list[tuple[int, int, dict[str, float]]]


@pytest.fixture(scope="module")
def tiny() -> xs.ImageDataset:
    return xs.datasets.shapes(90, 32, seed=0, classes=3)  # 30 images per class


@pytest.fixture(scope="module")
def run(
    tiny: xs.ImageDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, Path, Rows]:
    models = tmp_path_factory.mktemp("models")
    rows: Rows = []
    result = xs.train(
        "small_cnn",
        tiny,
        epochs=4,
        folds=3,
        name="tiny",
        models_dir=models,
        progress=False,
        callback=lambda fold, epoch, row: rows.append((fold, epoch, row)),
    )
    return result, models, rows


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_folds_are_stratified_and_histories_complete(
    run: tuple[TrainResult, Path, Rows], tiny: xs.ImageDataset
) -> None:
    result, _, rows = run
    assert [f.fold for f in result.folds] == [1, 2, 3] and not result.interrupted
    val = np.concatenate([f.val_indices for f in result.folds])
    assert sorted(val.tolist()) == list(range(90))  # every image validated exactly once
    for f in result.folds:
        assert np.bincount(tiny.labels[f.val_indices]).tolist() == [10, 10, 10]
        assert not set(f.train_indices) & set(f.val_indices)
        assert [row["epoch"] for row in f.history] == [1, 2, 3, 4]
        for row in f.history:
            assert 0 <= row["val_acc"] <= 1 and row["val_loss"] > 0 and row["seconds"] > 0
            assert set(row) >= {"train_acc", "train_loss", "train_f1", "val_f1"}
    # the callback saw every epoch of every fold, with the history's numbers
    assert [(fo, e) for fo, e, _ in rows] == [(k, e) for k in (1, 2, 3) for e in (1, 2, 3, 4)]
    assert rows[5][2] == result.folds[1].history[1]


def test_summary_table(run: tuple[TrainResult, Path, Rows]) -> None:
    result, _, _ = run
    summary = result.summary()
    for f, row in zip(result.folds, summary["folds"], strict=True):
        accs = [h["val_acc"] for h in f.history]
        assert row["val_acc_max"] == max(accs) and row["val_acc_mean"] == pytest.approx(
            np.mean(accs)
        )
        assert row["train_loss_min"] == min(h["train_loss"] for h in f.history)
        assert row["val_acc"] == f.best["val_acc"] and row["best_epoch"] == f.best_epoch
    kept = [f.best["val_acc"] for f in result.folds]
    assert summary["mean"]["val_acc"] == pytest.approx(np.mean(kept))
    assert summary["std"]["val_acc"] == pytest.approx(np.std(kept))
    text = result.table()
    lines = text.splitlines()
    for label in ("1", "2", "3", "mean", "std"):
        assert sum(line.split()[0] == label for line in lines if line.strip()) == 2
    assert "val acc" in text and "max / mean" in text
    first = next(line for line in lines if line.split()[:1] == ["1"])
    assert f"{result.folds[0].best['val_acc']:.1%}" in first


def test_best_epoch_is_kept(run: tuple[TrainResult, Path, Rows], tiny: xs.ImageDataset) -> None:
    result, _, _ = run
    for f in result.folds:
        key = [(h["val_acc"], -h["val_loss"]) for h in f.history]
        assert f.best_epoch == 1 + max(range(len(key)), key=lambda i: (key[i], -i))
        # re-evaluating the kept weights gives that epoch's numbers, not the last epoch's
        model = result.fold_model(f.fold)
        images = tiny.images[f.val_indices]
        logits = model.forward(model.preprocess(images))
        labels = torch.from_numpy(tiny.labels[f.val_indices])
        acc = float((logits.argmax(1) == labels).double().mean())
        loss = float(F.cross_entropy(logits, labels))
        assert acc == pytest.approx(f.best["val_acc"], abs=1e-9)
        assert loss == pytest.approx(f.best["val_loss"], rel=1e-4)
        f1 = macro_f1(labels.numpy(), logits.argmax(1).numpy(), 3)
        assert f1 == pytest.approx(f.best["val_f1"])
    # with this seed some fold peaks before its last epoch, so "kept" is not "last"
    assert any(f.best_epoch < len(f.history) for f in result.folds)
    best = max(result.folds, key=lambda f: (f.best["val_acc"], -f.best["val_loss"]))
    assert result.best_fold == best.fold and result.val_accuracy == best.best["val_acc"]


def test_registry_lists_and_reloads_the_same_model(
    run: tuple[TrainResult, Path, Rows], tiny: xs.ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, models, _ = run
    entries = registry_store.list_entries(models)
    assert [e.name for e in entries] == ["tiny"] and result.path == models / "tiny"
    config = json.loads((models / "tiny" / "config.json").read_text())
    assert config["arch"] == "small_cnn" and config["labels"] == ["circle", "square", "triangle"]
    assert config["input_size"] == [32, 32]
    assert config["mean"] == pytest.approx(list(tiny.mean or ()))
    assert config["training"]["best_fold"] == result.best_fold
    assert config["training"]["val_accuracy"] == result.val_accuracy
    assert len(config["history"]) == 3 and config["summary"]["folds"][0]["fold"] == 1
    assert "small_cnn on shapes, 3 classes" in entries[0].describe()

    images = tiny.images[:12]
    expected = result.model.predict(images, top_k=3)
    monkeypatch.setenv("XAISCOPE_MODELS", str(models))
    for loaded in (
        xs.load_model("tiny", models_dir=models),
        xs.load_model("tiny"),  # found through $XAISCOPE_MODELS
        xs.load_model(models / "tiny"),  # the entry's folder
    ):
        assert loaded.labels == ["circle", "square", "triangle"]
        assert loaded.input_size == (32, 32)
        got = loaded.predict(images, top_k=3)
        np.testing.assert_array_equal(got.indices, expected.indices)
        np.testing.assert_allclose(got.probs, expected.probs, rtol=1e-5, atol=1e-6)
    state = loaded.module.state_dict()  # type: ignore[attr-defined]
    for key, value in result.folds[result.best_fold - 1].state_dict.items():
        assert torch.equal(state[key], value), key
    # Grad-CAM runs on the reloaded model with its automatic layer
    assert loaded.default_layer == "relu3"
    exp = xs.explain(loaded, images[:2], method="gradcam")
    assert np.asarray(exp.maps).shape == (2, 32, 32)


def test_same_seed_same_weights_on_cpu(tiny: xs.ImageDataset) -> None:
    def weights(seed: int) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
        r = xs.train("small_cnn", tiny, epochs=2, seed=seed, save=False, progress=False)
        return r.folds[0].state_dict, [
            {k: v for k, v in h.items() if k != "seconds"} for h in r.folds[0].history
        ]

    state_a, hist_a = weights(5)
    state_b, hist_b = weights(5)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert hist_a == hist_b
    state_c, _ = weights(6)
    assert not all(torch.equal(state_a[k], state_c[k]) for k in state_a)
    # training does not move the caller's global random state
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    xs.train("small_cnn", tiny, epochs=1, save=False, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_ctrl_c_keeps_the_best_so_far(tiny: xs.ImageDataset, tmp_path: Path) -> None:
    def stop(fold: int, epoch: int, _row: dict[str, float]) -> None:
        if (fold, epoch) == (2, 1):
            raise KeyboardInterrupt

    result = xs.train(
        "small_cnn", tiny, epochs=3, folds=3, models_dir=tmp_path, name="cut",
        progress=False, callback=stop,
    )  # fmt: skip
    assert result.interrupted and [len(f.history) for f in result.folds] == [3, 1]
    assert not result.folds[0].interrupted and result.folds[1].interrupted
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["training"]["interrupted"] is True
    assert "INTERRUPTED" in result.table()
    assert xs.load_model("cut", models_dir=tmp_path).labels == tiny.classes


def test_existing_entry_is_never_lost(tiny: xs.ImageDataset, tmp_path: Path) -> None:
    first = xs.train("small_cnn", tiny, epochs=1, name="keep", models_dir=tmp_path, progress=False)
    assert first.path is not None
    before = _sha(first.path / "weights.pt")
    calls: list[int] = []
    with pytest.raises(xs.RegistryError, match="already exists"):
        xs.train(
            "small_cnn", tiny, epochs=1, name="keep", models_dir=tmp_path, progress=False,
            callback=lambda *_: calls.append(1),
        )  # fmt: skip
    assert calls == []  # refused before training started

    def fail(*_: Any) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        xs.train(
            "small_cnn", tiny, epochs=1, name="keep", models_dir=tmp_path, overwrite=True,
            progress=False, callback=fail,
        )  # fmt: skip
    assert _sha(first.path / "weights.pt") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]  # no temporaries left
    xs.train(
        "small_cnn", tiny, epochs=1, seed=9, name="keep", models_dir=tmp_path, overwrite=True,
        progress=False,
    )  # fmt: skip
    assert _sha(first.path / "weights.pt") != before


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"folds": 31}, xs.DatasetError, "at most 30 folds"),
        ({"data": "folder:/no/such/folder"}, xs.DatasetError, "does not exist"),
        ({"data": "cifar10:/no/such/folder"}, xs.DatasetError, "does not exist"),
        ({"epochs": 0}, xs.ParameterError, "epochs must be a positive integer"),
        ({"lr": -1.0}, xs.ParameterError, "lr must be a positive number"),
        ({"arch": "resnet9000"}, xs.ParameterError, "unknown architecture"),
        ({"name": "../escape"}, xs.RegistryError, "bad model name"),
        ({"arch_kwargs": {"colour": 3}}, xs.ParameterError, "bad option for small_cnn"),
    ],
)
def test_bad_input_typed_errors(
    tiny: xs.ImageDataset, tmp_path: Path, kwargs: dict[str, Any], error: type, match: str
) -> None:
    args: dict[str, Any] = {"arch": "small_cnn", "data": tiny, "epochs": 1, **kwargs}
    with pytest.raises(error, match=match) as info:
        xs.train(args.pop("arch"), args.pop("data"), models_dir=tmp_path, progress=False, **args)
    assert "\n" not in str(info.value) and isinstance(info.value, xs.XaiscopeError)
    assert not any(tmp_path.iterdir())


def test_single_image_class_cannot_be_split(tmp_path: Path) -> None:
    data = xs.datasets.shapes(30, 32, classes=3)
    keep = np.r_[np.flatnonzero(data.labels != 2), np.flatnonzero(data.labels == 2)[:1]]
    with pytest.raises(xs.DatasetError, match="only 1 image"):
        xs.train("small_cnn", data.subset(keep), epochs=1, save=False, progress=False)


def test_curves_are_figures_and_files(run: tuple[TrainResult, Path, Rows], tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    result, _, _ = run
    fig = result.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    # per fold: train and validation lines plus the kept-epoch marker
    assert len(fig.axes[0].lines) == 3 * 3
    xdata = fig.axes[0].lines[1].get_xdata()
    assert list(xdata) == [1, 2, 3, 4]
    assert plt.get_fignums() == []  # nothing registered with pyplot, no window
    written = result.save(tmp_path / "out")
    for key in ("accuracy", "loss", "curves"):
        assert written[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads(written["history"].read_text())
    assert history["best_fold"] == result.best_fold and len(history["history"]) == 3
