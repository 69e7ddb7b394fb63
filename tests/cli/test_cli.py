"""End-to-end tests of the ``xaiscope`` command line, in-process and through the entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xaiscope as xs
from xaiscope.cli import main
from xaiscope.cli.common import safe_name
from xaiscope.methods.registry import all_methods


def _run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()


def _files(out: Path, suffix: str) -> list[str]:
    return sorted(p.name for p in out.glob(f"*{suffix}"))


# ---------------------------------------------------------------------------- success
def test_explain_writes_panels_npz_json(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, files["cat"], "--method", "saliency,gradcam", "--out", out)
    assert code == 0, err
    assert "top-5 predictions" in stdout
    assert all(f"  {rank}. " in stdout for rank in range(1, 6))
    assert str(out) in stdout

    pngs = _files(out, ".png")
    assert len(pngs) == 2 and _files(out, ".npz") == ["cat_gradcam.npz", "cat_saliency.npz"]
    assert _files(out, ".json") == ["cat_gradcam.json", "cat_saliency.json"]
    assert not list(out.glob(".*"))  # no temporaries left behind
    for name in pngs:
        assert " " not in name and "," not in name
        _assert_png(out / name)
        assert str(out / name) in stdout

    for method in ("saliency", "gradcam"):
        meta = json.loads((out / f"cat_{method}.json").read_text())
        assert meta["method"] == method and meta["model"] == "efficientnet_lite0"
        assert meta["layer"] == ("bn2" if method == "gradcam" else None)
        assert meta["image_size"] == [64, 64] and meta["maps_shape"] == [1, 64, 64]
        assert len(meta["targets"]) == len(meta["scores"]) == 1
        assert 0.0 < meta["probabilities"][0] <= 1.0
        assert meta["predictions"][0]["index"] == meta["targets"][0]  # top1
        label = safe_name(meta["target_labels"][0], 40)
        assert meta["files"]["panels"] == [f"cat_{method}_{label}.png"]
        exp = xs.Explanation.load(out / f"cat_{method}.npz")
        assert exp.method == method and np.asarray(exp.maps).shape == (1, 64, 64)
        assert exp.targets.tolist() == meta["targets"]
    assert json.loads((out / "cat_saliency.json").read_text())["params"] == {"abs": True}


def test_explain_several_images_top2_and_params(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        "explain",
        files["cat"],
        files["cup"],
        "--method",
        "ig,gradcam",
        "--param",
        "n_steps=8",
        "--param",
        "integrated_gradients.baseline=white",
        "--target",
        "top2",
        "--batch-size",
        "1",
        "--seed",
        "1",
        "-o",
        out,
    )
    assert code == 0, err
    assert "explaining" in err  # progress over images x methods
    assert len(_files(out, ".png")) == 2 * 2 * 2
    assert len(_files(out, ".npz")) == len(_files(out, ".json")) == 2 * 2
    for name in _files(out, ".png"):
        _assert_png(out / name)

    ig = json.loads((out / "cup_integrated_gradients.json").read_text())
    assert ig["params"]["n_steps"] == 8 and ig["params"]["baseline"] == "white"
    assert ig["maps_shape"] == [2, 48, 72]  # top-2 targets of a 72x48 image
    assert len(ig["delta"]) == 2 and len(ig["files"]["panels"]) == 2
    assert [p["index"] for p in ig["predictions"][:2]] == ig["targets"]
    cam = json.loads((out / "cup_gradcam.json").read_text())
    assert cam["params"] == {} and cam["layer"] == "bn2"


@pytest.mark.parametrize(
    ("target", "index", "part"),
    [("tabby, tabby cat", 281, "tabby_tabby_cat"), ("285", 285, "Egyptian_cat")],
)
def test_target_by_label_or_index(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    target: str,
    index: int,
    part: str,
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, files["cat"], "--method", "saliency", "--target", target, "-o", out, "-q"
    )
    assert code == 0, err
    assert _files(out, ".png") == [f"cat_saliency_{part}.png"]
    assert json.loads((out / "cat_saliency.json").read_text())["targets"] == [index]


def test_method_all_selects_every_usable_registered_method() -> None:
    from xaiscope.cli.common import load_model
    from xaiscope.cli.explain_cmd import parse_method_names, select_methods

    model = load_model("efficientnet_lite0")
    assert parse_method_names("all") is None
    assert parse_method_names("saliency, ALL") is None
    chosen = [i.name for i in select_methods(None, model, None)]
    # a torch CNN can run every method but those for vision transformers
    assert chosen == [m.name for m in all_methods() if not m.needs_attention]


def test_method_all_runs_and_fans_out_params(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from xaiscope.cli import explain_cmd

    # a cheap slice of the real registry, so this test stays fast as methods are added
    wanted = {"saliency", "smoothgrad", "gradcam", "integrated_gradients"}
    cheap = [m for m in all_methods() if m.name in wanted]
    monkeypatch.setattr(explain_cmd, "all_methods", lambda: cheap)
    out = tmp_path / "out"
    code, _, err = _run(
        capsys,
        files["cat"],
        "--method",
        "all",
        "--param",
        "n_steps=2",
        "--param",
        "n_samples=2",
        "--seed",
        "0",
        "-o",
        out,
        "-q",
    )
    assert code == 0, err
    assert _files(out, ".npz") == sorted(f"cat_{safe_name(m.name)}.npz" for m in cheap)
    for info in cheap:
        meta = json.loads((out / f"cat_{safe_name(info.name)}.json").read_text())
        assert meta["family"] == info.family
        for key in ("n_steps", "n_samples"):
            if key in info.defaults:
                assert meta["params"][key] == 2
    smooth = json.loads((out / "cat_smoothgrad.json").read_text())
    assert smooth["params"]["seed"] == 0


# ---------------------------------------------------------------------------- bad input
BAD_INPUTS = [
    ("unknown-method", ["{cat}", "--method", "nosuchmethod"], ["unknown method", "gradcam"]),
    ("empty-method", ["{cat}", "--method", ","], ["--method"]),
    ("unknown-layer", ["{cat}", "--method", "gradcam", "--layer", "bn3"], ["bn3", "bn2"]),
    ("target-range", ["{cat}", "--method", "saliency", "--target", "5000"], ["5000", "range"]),
    ("target-top0", ["{cat}", "--method", "saliency", "--target", "top0"], ["top0"]),
    ("unknown-label", ["{cat}", "--method", "saliency", "--target", "no such class"], ["label"]),
    ("corrupt-image", ["{cat}", "{garbage}"], ["garbage.png", "not an image"]),
    ("truncated-image", ["{truncated}"], ["truncated.png", "truncated"]),
    ("missing-image", ["{missing}"], ["does_not_exist.png", "not found"]),
    ("non-image", ["{notes}"], ["notes.txt"]),
    ("unknown-sample", ["sample:unicorn"], ["unicorn", "chelsea"]),
    ("param-syntax", ["{cat}", "--param", "n_steps"], ["key=value"]),
    (
        "param-unknown",
        ["{cat}", "--method", "saliency,gradcam", "--param", "foo=1"],
        ["foo", "abs"],
    ),
    ("param-type", ["{cat}", "--method", "ig", "--param", "n_steps=many"], ["integer"]),
    ("param-unselected", ["{cat}", "--method", "saliency", "--param", "ig.n_steps=4"], ["select"]),
    (
        "param-value",
        ["{cat}", "--method", "ig", "--param", "rule=bogus", "--param", "n_steps=2"],
        ["bogus"],
    ),
    # the seed is a run option: point at it instead of listing method parameters
    ("param-seed", ["{cat}", "--method", "saliency", "--param", "seed=0"], ["seed", "--seed N"]),
    ("unknown-model", ["{cat}", "--model", "no_such_model"], ["no_such_model"]),
    ("bad-device", ["{cat}", "--device", "nonsense"], ["device"]),
    ("batch-size", ["{cat}", "--batch-size", "0"], ["--batch-size"]),
    ("bad-option", ["{cat}", "--frobnicate"], ["--frobnicate"]),
    ("bad-cmap", ["{cat}", "--cmap", "nope"], ["colormap"]),
]


@pytest.mark.parametrize(
    ("args", "expected"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: list[str],
) -> None:
    out = tmp_path / "out"
    argv = ["explain", *(a.format(**files) for a in args), "--out", str(out)]
    code, stdout, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("xaiscope: error: ")
    assert "Traceback" not in err + stdout
    for text in expected:
        assert text in lines[0]
    assert not out.exists()  # validated before anything was written


def test_unknown_method_lists_every_registered_method(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, files["cat"], "--method", "saliency,nosuch")
    assert code == 2
    assert all(m.name in err for m in all_methods())


@pytest.mark.parametrize("argv", [["frobnicate"], ["models", "layers", "no_such_model"]])
def test_bad_command_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("xaiscope: error: ")


def test_out_is_a_file(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, files["cat"], "--out", files["notes"])
    assert code == 2 and "not a folder" in err
    assert files["notes"].read_text() == "just some text\n"


def test_later_bad_image_writes_nothing_and_keeps_earlier_outputs(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    # one image per batch: without validation first, cat's files would be written before
    # the corrupt file is reached
    code, _, err = _run(
        capsys, files["cat"], files["cup"], files["garbage"], "--method", "saliency",
        "--batch-size", "1", "-o", out,
    )  # fmt: skip
    assert code == 2 and "garbage.png" in err
    assert not out.exists()

    code, _, err = _run(capsys, files["cat"], files["twin"], "--method", "saliency", "-o", out)
    assert code == 0, err
    # the second cat.png (another folder) gets its own id instead of overwriting the first
    assert _files(out, ".npz") == ["cat-2_saliency.npz", "cat_saliency.npz"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = _run(capsys, files["cat"], files["truncated"], "--method", "saliency", "-o", out)
    assert code == 2 and "truncated.png" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_image_ids_are_distinct_when_a_stem_looks_like_a_renamed_id(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a/cat.png and b/cat.png become cat and cat-2; a real cat-2.png must not get cat-2 too
    third = tmp_path / "cat-2.png"
    shutil.copy(files["cat"], third)
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "explain", files["cat"], files["twin"], third, "--method", "saliency",
        "-o", out, "-q",
    )  # fmt: skip
    assert code == 0, err
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    ids = {m["image"]: m["image_id"] for m in metas}
    assert len(metas) == 3 and len(set(ids.values())) == 3, ids
    assert ids[str(files["cat"])] == "cat" and ids[str(files["twin"])] == "cat-2"


def test_load_images_ids_unique_ignoring_case(files: dict[str, Path], tmp_path: Path) -> None:
    from xaiscope.cli.explain_cmd import load_images

    upper = tmp_path / "CAT.png"  # same files as cat.png's on macOS and Windows
    shutil.copy(files["cat"], upper)
    renamed = tmp_path / "cat-2.png"
    shutil.copy(files["cat"], renamed)
    specs = [files["cat"], files["twin"], renamed, upper, files["cat"]]
    ids = [it.image_id for it in load_images([str(s) for s in specs])]
    assert len({i.casefold() for i in ids}) == len(ids), ids


@pytest.mark.parametrize(
    "missing", ["{missing}", "no_such_photo.JPG", "no_such_folder/photo", "x.webp"]
)
def test_shortcut_with_missing_image_says_cannot_load(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    # without `explain`: a path-like first argument is an image, not a bad subcommand
    name = missing.format(**files)
    code, stdout, err = _run(capsys, name, "--method", "saliency")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err + stdout
    assert lines[0].startswith(f"xaiscope: error: cannot load image {name}"), lines[0]
    assert "invalid choice" not in err


def test_default_command_routing() -> None:
    from xaiscope.cli.main import _with_default_command

    assert _with_default_command(["cat.PNG"]) == ["explain", "cat.PNG"]
    assert _with_default_command(["pics/cat"]) == ["explain", "pics/cat"]
    assert _with_default_command(["--debug", "a.tiff"]) == ["--debug", "explain", "a.tiff"]
    for argv in (["models", "layers", "x.png"], ["frobnicate"], ["methods"]):
        assert _with_default_command(argv) == argv


# --out that passes os.access (root on /proc) but cannot take files: before any compute
UNWRITABLE = "/proc/xaiscope_no_such_out"
OUT_COMMANDS = [
    ("explain", ["explain", "{cat}", "--method", "saliency", "--out", UNWRITABLE]),
    ("report", ["report", "{cat}", "--method", "saliency", "-q", "--out", UNWRITABLE + "/r.html"]),
    ("compare", ["compare", "{cat}", "--method", "saliency,gradcam", "--out", UNWRITABLE]),
    ("evaluate", ["evaluate", "{cat}", "--method", "saliency", "--out", UNWRITABLE]),
    (
        "train",
        [
            "train",
            "--data",
            "shapes",
            "--n-images",
            "20",
            "--epochs",
            "1",
            "--no-save",
            "--quiet",
            "--out",
            UNWRITABLE,
        ],
    ),  # fmt: skip
]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("argv", [c[1] for c in OUT_COMMANDS], ids=[c[0] for c in OUT_COMMANDS])
def test_unwritable_out_fails_early_exit_2(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, stdout, err = _run(capsys, *(a.format(**files) for a in argv))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("xaiscope: error: --out /proc/xaiscope_no_such_out")
    assert "predictions" not in stdout and "training" not in stdout  # nothing computed


def test_out_probe_leaves_nothing_behind(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xaiscope.cli.explain_cmd import check_out_dir

    nested = tmp_path / "new" / "deeper" / "out"
    check_out_dir(nested)  # creates, probes and removes the folders it made
    assert not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old.json").write_text("{}")
    check_out_dir(kept)
    assert [p.name for p in kept.iterdir()] == ["old.json"]
    # input rejected after the probe still leaves no new folder
    code, _, _ = _run(capsys, files["garbage"], "--method", "saliency", "-o", nested)
    assert code == 2 and not (tmp_path / "new").exists()
    with pytest.raises(xs.errors.ParameterError, match="cannot create files"):
        check_out_dir(files["notes"].parent / "notes.txt" / "sub")


def _tiny_torchscript(path: Path) -> Path:
    import warnings

    import torch
    from torch import nn

    module = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecations of TorchScript
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_torchscript_model_loads_without_deprecation_noise(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """Through the entry point: stderr holds exactly the one error line, no torch warning."""
    model = _tiny_torchscript(tmp_path / "tiny_ts.pt")
    exe = shutil.which("xaiscope")
    cmd = [exe] if exe else [sys.executable, "-m", "xaiscope.cli"]
    argv = [str(files["cat"]), "--model", str(model), "--trust-model"]
    argv += ["--method", "gradcam", "--layer", "nope"]
    out = tmp_path / "out"
    proc = subprocess.run(
        [*cmd, "explain", *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("xaiscope: error: ") and "nope" in lines[0]
    assert not out.exists()


def test_corrupt_torch_file_is_one_safe_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import warnings

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = _run(capsys, "models", "layers", corrupt)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xaiscope: error: "), err
    assert "corrupt.pt" in lines[0] and "not a safe state dict" in lines[0]
    # torch's advice to re-run with weights_only=False runs code from an unknown file
    assert "weights_only" not in lines[0] and "Re-running" not in lines[0]
    assert not [w for w in caught if "torch.jit" in str(w.message)], caught


def test_keyboard_interrupt_exits_130(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xaiscope.cli import explain_cmd

    def interrupted(specs: list[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(explain_cmd, "load_images", interrupted)
    code, _, err = _run(capsys, files["cat"])
    assert code == 130
    assert err.strip().splitlines() == ["xaiscope: interrupted"]


def test_unexpected_error_is_one_line_unless_debug(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xaiscope.cli import explain_cmd

    def broken(specs: list[str]) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(explain_cmd, "load_images", broken)
    code, _, err = _run(capsys, files["cat"])
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "boom second line" in err
    with pytest.raises(RuntimeError):
        main(["--debug", "explain", str(files["cat"])])


# ---------------------------------------------------------------------------- listings
def test_models_lists_specs(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(capsys, "models")
    assert code == 0
    for spec in xs.models.available_models():
        assert spec in stdout
    assert _run(capsys, "models", "list")[1] == stdout


def test_models_layers_marks_default(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(capsys, "models", "layers", "efficientnet_lite0")
    assert code == 0
    lines = stdout.splitlines()
    marked = [line for line in lines if line.endswith("(default)")]
    assert marked == ["bn2  (default)"]
    model = xs.load_model("efficientnet_lite0")
    assert [line.split()[0] for line in lines] == model.layers()


def test_methods_lists_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(capsys, "methods")
    assert code == 0
    for info in all_methods():
        assert f"{info.name}  [{info.family}]" in stdout
        for key, value in info.defaults.items():
            assert f"{key}={value!r}" in stdout
    code, stdout, _ = _run(capsys, "methods", "ig")
    assert code == 0 and stdout.startswith("integrated_gradients")


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = _run(capsys, "--help")
    assert code == 0 and "explain" in stdout and "models" in stdout
    code, stdout, _ = _run(capsys, "explain", "--help")
    assert code == 0 and "--param" in stdout
    code, stdout, _ = _run(capsys, "--version")
    assert code == 0 and xs.__version__ in stdout


# ---------------------------------------------------------------------------- entry point
def test_entry_point_without_arguments(tmp_path: Path) -> None:
    """The installed `xaiscope` script with no arguments explains the sample photo."""
    exe = shutil.which("xaiscope")
    cmd = [exe] if exe else [sys.executable, "-m", "xaiscope.cli"]
    env = {**os.environ, "MPLBACKEND": "TkAgg"}  # the CLI must not need a display anyway
    env.pop("DISPLAY", None)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    out = tmp_path / "xaiscope_out"
    pngs = _files(out, ".png")
    assert len(pngs) >= 1 and all(n.startswith("chelsea_") for n in pngs)
    assert _files(out, ".npz") and len(_files(out, ".npz")) == len(_files(out, ".json"))
    for name in pngs:
        _assert_png(out / name)
    assert "chelsea" in proc.stdout and "xaiscope_out" in proc.stdout


def test_python_dash_m(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xaiscope.cli", "methods"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "gradcam" in proc.stdout
