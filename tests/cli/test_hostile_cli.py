"""The command line against hostile input: exit 0 or 2 with one line, 1 only for bugs,
labels from model files printed on one line."""

from __future__ import annotations

import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xaiscope as xs
from xaiscope.cli import main
from xaiscope.cli.common import one_line, terminal_safe
from xaiscope.methods.registry import all_methods
from xaiscope.models import registry_store
from xaiscope.train.archs import SmallCNN

HOSTILE_LABELS = ["cat\nsecond line", "\x1b[31mred\x1b[0m", "tab\there", "bidi\u202eevil", "ok"]


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with one 16 px, 5-class small CNN whose labels hold control characters."""
    root = tmp_path_factory.mktemp("models")
    registry_store.save_entry(
        "tiny",
        SmallCNN(num_classes=5, width=4),
        arch="small_cnn",
        labels=HOSTILE_LABELS,
        input_size=(16, 16),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        arch_kwargs={"width": 4},
        models_dir_path=root,
    )
    return root


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "cat.png"
    Image.fromarray(xs.sample_images(["chelsea"])["chelsea"]).resize((20, 16)).save(path)
    return path


def test_terminal_safe_escapes_controls_and_keeps_text() -> None:
    assert terminal_safe("tabby, tabby cat") == "tabby, tabby cat"
    assert terminal_safe("Ägyptische Katze 猫") == "Ägyptische Katze 猫"
    assert terminal_safe("a\nb\x1b[31mc\u202ed\x00") == "a\\nb\\x1b[31mc\\u202ed\\x00"
    assert one_line("x\n  y\x07") == "x y\\x07"


def test_labels_with_control_characters_print_on_one_line(
    tiny_registry: Path,
    tiny_image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XAISCOPE_MODELS", str(tiny_registry))
    code = main(
        [str(tiny_image), "--model", "tiny", "--method", "saliency", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("  ") and "(class " in line]
    assert len(rows) == 5  # one row per class: no label broke the table
    assert "\x1b" not in out and "\u202e" not in out
    assert any("cat\\nsecond line" in row for row in rows)
    assert any("\\x1b[31mred" in row for row in rows)


def test_bug_is_exit_1_with_a_report_request(
    tiny_image: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from xaiscope.cli import explain_cmd

    def broken(specs: list[str]) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(explain_cmd, "load_images", broken)
    assert main([str(tiny_image)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "bug in xaiscope" in line and "report" in line and "XAISCOPE_DEBUG=1" in line


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (OSError(28, "No space left on device", "/out/x.png"), "cannot write /out/x.png"),
        (MemoryError(), "not enough memory"),
    ],
)
def test_machine_limits_are_exit_2(
    tiny_image: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    words: str,
) -> None:
    from xaiscope.cli import explain_cmd

    def fail(specs: list[str]) -> None:
        raise exc

    monkeypatch.setattr(explain_cmd, "load_images", fail)
    assert main([str(tiny_image)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("xaiscope: error: ") and words in line


# ------------------------------------------------------------------- random --param values
_METHODS = sorted(
    i.name for i in all_methods() if not i.needs_attention and i.name != "expected_gradients"
) + ["expected_gradients"]
_PARAM_NAMES = sorted({k for i in all_methods() for k in i.defaults})
_WORDS = ["none", "null", "true", "false", "nan", "inf", "-inf", "black", "blur", "[1, 2]", "{}"]
_values = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(_WORDS),
    st.text(alphabet=string.printable, max_size=12),
    st.lists(st.integers(-3, 40), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v))),
)
_names = st.one_of(
    st.sampled_from(_PARAM_NAMES),
    st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True),
    st.text(alphabet=string.ascii_letters + "._=-", min_size=1, max_size=8),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(_METHODS),
    params=st.lists(st.tuples(_names, _values), min_size=1, max_size=3),
)
def test_random_params_exit_0_or_2_with_one_line(
    tiny_registry: Path,
    tiny_image: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    method: str,
    params: list[tuple[str, str]],
) -> None:
    monkeypatch.setenv("XAISCOPE_MODELS", str(tiny_registry))
    argv = [str(tiny_image), "--model", "tiny", "--method", method, "--quiet"]
    for name, value in params:
        argv += ["--param", f"{name}={value}"]
    # small limits: a huge count is refused at once instead of running for hours
    with tempfile.TemporaryDirectory() as out, xs.config(max_samples=64):
        code = main([*argv, "--out", out])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert code in (0, 2), (argv, captured.err)
    if code == 2:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("xaiscope: error: "), captured.err


# ------------------------------------------------------------------- method names (issue 21)
@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("gradcm", "gradcam"),
        ("smothgrad", "smoothgrad"),
        ("occlusoin", "occlusion"),
        ("integratedgradient", "integrated_gradients"),
        ("limee", "lime"),
    ],
)
def test_a_typo_gets_did_you_mean_and_a_sorted_list(typo: str, meant: str) -> None:
    with pytest.raises(xs.UnknownMethodError) as info:
        xs.get_method(typo)
    text = str(info.value)
    assert f"did you mean {meant}?" in text
    listed = text.split("valid methods: ", 1)[1].split(", ")
    assert listed == sorted(listed) and meant in listed


def test_nothing_close_gets_no_guess() -> None:
    with pytest.raises(xs.UnknownMethodError) as info:
        xs.get_method("xyz")
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize(
    ("spelling", "name"),
    [
        ("Grad-CAM", "gradcam"),
        ("GradCAM", "gradcam"),
        ("Grad-CAM++", "gradcam++"),
        ("Integrated Gradients", "integrated_gradients"),
        ("integrated-gradients", "integrated_gradients"),
    ],
)
def test_other_spellings_resolve(spelling: str, name: str) -> None:
    assert xs.get_method(spelling).name == name


def test_cli_says_which_method_an_alias_ran_as(
    tiny_registry: Path,
    tiny_image: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XAISCOPE_MODELS", str(tiny_registry))
    argv = [str(tiny_image), "--model", "tiny", "--method", "Grad-CAM,saliency,ig"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "method 'Grad-CAM' runs as gradcam" in out
    assert "method 'ig' runs as integrated_gradients" in out
    assert "runs as saliency" not in out  # the name itself: nothing to say
