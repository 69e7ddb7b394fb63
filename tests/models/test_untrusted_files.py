"""Model files from strangers: TorchScript needs trust, checkpoints and registry entries
declare only what they may, and nothing outside the file (or the entry's folder) is read."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest
import torch

import xaiscope as xs
from tests.hostile import CLEAN, evil_torchscript
from xaiscope.models import registry_store, save_checkpoint
from xaiscope.train.archs import SmallCNN


def evil_torchscript_file(folder: Path) -> tuple[Path, Path]:
    """A TorchScript model that overwrites a canary file when loaded; (model, canary)."""
    canary = folder / "canary.txt"
    path = folder / "evil.pt"
    path.write_bytes(evil_torchscript(canary))
    return path, canary


def test_torchscript_refused_without_trust_and_runs_only_with_it(tmp_path: Path) -> None:
    path, canary = evil_torchscript_file(tmp_path)
    with pytest.raises(xs.UnsafeModelError) as info:
        xs.load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and "TorchScript" in msg and "trust=True" in msg
    assert "--trust-model" in msg
    assert canary.read_bytes() == CLEAN  # refused before anything ran
    model = xs.load_model(path, trust=True, input_size=8)  # the opt-in loads it...
    assert canary.read_bytes() == b"AAAA"  # ...and so runs its code: what trust means
    assert model.forward(torch.zeros(1, 3, 8, 8)).shape == (1, 3)


def test_cli_refuses_torchscript_without_trust_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xaiscope.cli.main import main

    path, canary = evil_torchscript_file(tmp_path)
    code = main(["explain", "--model", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--trust-model" in err[0], err
    assert canary.read_bytes() == CLEAN
    assert not (tmp_path / "out").exists()


def _checkpoint(tmp_path: Path, **changes: object) -> Path:
    model = xs.load_model("timm:resnet18", num_classes=3)
    model.labels = ["a", "b", "c"]
    path = save_checkpoint(model, tmp_path / "m.pth", arch="timm:resnet18")
    if changes:
        ckpt = torch.load(path, weights_only=True)
        ckpt.update(changes)
        torch.save(ckpt, path)
    return path


def test_checkpoint_architecture_must_be_a_zoo_spec(tmp_path: Path) -> None:
    evil, canary = evil_torchscript_file(tmp_path)
    for arch in (str(evil), str(tmp_path / "m.pth"), "efficientnet_lite0", "my-registry-entry"):
        path = _checkpoint(tmp_path, xaiscope_arch=arch)
        with pytest.raises(xs.ModelLoadError, match="timm:NAME or torchvision:NAME"):
            xs.load_model(path)
    assert canary.read_bytes() == CLEAN
    assert xs.load_model(_checkpoint(tmp_path)).labels == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"input_size": [0, 0]}, "not two positive integers"),
        ({"input_size": [-3, 5]}, "not two positive integers"),
        ({"input_size": [100000, 100000]}, "max_input_pixels"),
        ({"input_size": "big"}, "not two positive integers"),
        ({"mean": [float("nan")] * 3}, "mean must be"),
        ({"std": [0.0, 1.0, 1.0]}, "std must be positive"),
        ({"labels": "abc"}, "list of names"),
        ({"state_dict": {"x": 1}}, "mapping of names to tensors"),
        ({"labels": ["a", "b"]}, "do not fit"),  # 2 classes, a 3-class head
    ],
)
def test_checkpoint_declarations_checked(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(xs.ModelLoadError, match=match) as info:
        xs.load_model(_checkpoint(tmp_path, **change))
    assert "\n" not in str(info.value)


def test_checkpoint_with_millions_of_labels_refused_before_unpickling(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, labels=[f"c{i}" for i in range(3_000_000)])
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(xs.ModelLoadError, match="max_pickle_bytes") as info:
            xs.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 10
    assert peak < 50_000_000, peak  # neither the labels nor a 3-million-class head
    assert "xs.config(max_pickle_bytes=" in str(info.value)


def test_checkpoint_label_count_limit(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, labels=[f"c{i}" for i in range(150_000)])
    with pytest.raises(xs.ModelLoadError, match="150,000 labels.*max_labels"):
        xs.load_model(path)
    with xs.config(max_labels=200_000), pytest.raises(xs.ModelLoadError, match="do not fit"):
        xs.load_model(path)  # within the raised limit, but the 3-class weights do not fit


def test_oversized_head_refused_before_it_is_built(tmp_path: Path) -> None:
    """Labels within the limit but a head the weights do not have: checked on the meta
    device, so the 50,000 x 512 head is never allocated."""
    path = _checkpoint(tmp_path, labels=[f"c{i}" for i in range(50_000)])
    tracemalloc.start()
    try:
        with pytest.raises(xs.ModelLoadError, match="do not fit"):
            xs.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 60_000_000, peak


# ------------------------------------------------------------------------------ registry
def _entry(tmp_path: Path, arch: str = "small_cnn", **kw: object) -> Path:
    folder = registry_store.save_entry(
        "net",
        SmallCNN(num_classes=2, width=4),
        arch=arch,
        labels=["x", "y"],
        input_size=(16, 16),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        arch_kwargs={"width": 4},
        models_dir_path=tmp_path / "models",
    )
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(kw)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_registry_entry_loads(tmp_path: Path) -> None:
    _entry(tmp_path)
    model = xs.load_model("net", models_dir=tmp_path / "models")
    assert model.labels == ["x", "y"]


@pytest.mark.parametrize(
    "weights", ["/etc/passwd", "../other/weights.pt", "sub/weights.pt", "..", "", 7]
)
def test_registry_weights_stay_in_the_entry_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: object
) -> None:
    _entry(tmp_path, weights=weights)
    opened: list[str] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: opened.append(str(f)) or real(f, *a, **k))
    with pytest.raises(xs.ModelLoadError, match="weights must be a file name") as info:
        xs.load_model("net", models_dir=tmp_path / "models")
    assert opened == []
    assert str(tmp_path) not in str(info.value)  # names the entry, not the folder


def test_registry_weights_symlink_out_of_the_folder_refused(tmp_path: Path) -> None:
    folder = _entry(tmp_path)
    outside = tmp_path / "outside.pt"
    (folder / "weights.pt").rename(outside)
    (folder / "link.pt").symlink_to(outside)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights"] = "link.pt"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(xs.ModelLoadError, match="outside the entry"):
        xs.load_model("net", models_dir=tmp_path / "models")


@pytest.mark.parametrize(
    ("arch", "kwargs", "match"),
    [
        ("timm:resnet18", {"checkpoint_path": "/etc/passwd"}, "checkpoint_path"),
        ("small_cnn", {"pretrained": True}, "not an option"),
        ("small_cnn", {"width": [1, 2]}, "number or a word"),
        ("small_cnn", {"width": 100000}, "do not fit"),  # checked on the meta device
        ("small_cnn", "width=4", "must be a mapping"),
    ],
)
def test_registry_arch_kwargs_limited_to_documented_options(
    tmp_path: Path, arch: str, kwargs: object, match: str
) -> None:
    _entry(tmp_path, arch=arch, arch_kwargs=kwargs)
    with pytest.raises(xs.ModelLoadError, match=match):
        xs.load_model("net", models_dir=tmp_path / "models")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"labels": [f"c{i}" for i in range(200_000)]}, "max_labels"),
        ({"input_size": [0, 0]}, "not two positive integers"),
        ({"labels": ["only"]}, "at least 2 labels"),
        ({"arch": "net"}, "unknown architecture|not an option"),  # names itself
    ],
)
def test_registry_declarations_checked(tmp_path: Path, changes: dict, match: str) -> None:
    _entry(tmp_path, **changes)
    with pytest.raises(xs.ModelLoadError, match=match):
        xs.load_model("net", models_dir=tmp_path / "models")


def test_registry_corrupt_weights_message_gives_no_unsafe_advice(tmp_path: Path) -> None:
    folder = _entry(tmp_path)
    torch.save({"net": SmallCNN()}, folder / "weights.pt")  # a pickled module
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("weights_sha256")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(xs.ModelLoadError) as info:
        xs.load_model("net", models_dir=tmp_path / "models")
    msg = str(info.value)
    assert "cannot read weights.pt safely" in msg and "\n" not in msg
    assert "weights_only" not in msg and "Re-running" not in msg


def test_registry_deeply_nested_config_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    folder = _entry(tmp_path)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(xs.ModelLoadError, match="unreadable config.json"):
        xs.load_model("net", models_dir=tmp_path / "models")
    [entry] = registry_store.list_entries(tmp_path / "models")
    assert entry.error and "\n" not in entry.describe()


def test_weights_that_repeat_their_storage_are_refused_before_building(tmp_path: Path) -> None:
    """A stride-0 view (``expand``) saves one value for a whole tensor: a file of a few KB
    would make the real module allocate every weight it claims."""
    model = xs.load_model("timm:resnet18", num_classes=3)
    state = {
        k: torch.zeros((), dtype=v.dtype).expand(*v.shape) if v.dim() else v
        for k, v in model.module.state_dict().items()
    }
    path = tmp_path / "implied.pth"
    torch.save(
        {"xaiscope_arch": "timm:resnet18", "state_dict": state, "labels": ["a", "b", "c"]}, path
    )
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(xs.ModelLoadError, match="stores fewer"):
            xs.load_model(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak


def test_weights_sharing_one_storage_are_bounded_by_the_file(tmp_path: Path) -> None:
    from xaiscope.models.file_checks import check_stored

    big = torch.zeros(20_000_000)  # 80 MB, stored once
    state = {f"w{i}": big for i in range(10)}  # 800 MB of weights claimed
    with pytest.raises(xs.ModelLoadError, match="max_inflation"):
        check_stored(state, 80_000_000 // 50, "f")  # a file 50x smaller than one copy
    check_stored(state, 80_000_000, "f")  # 10 views of what the file holds: within 50x


def test_megabyte_labels_refused(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, labels=["a" * 1001, "b", "c"])
    with pytest.raises(xs.ModelLoadError, match="1,001 characters"):
        xs.load_model(path)
