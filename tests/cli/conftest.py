"""Small real image files for the CLI tests (64 px, so each explain call stays cheap)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest
from PIL import Image

import xaiscope as xs


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good, corrupt, truncated and non-image files, written once per session."""
    root = tmp_path_factory.mktemp("cli_inputs")
    samples = xs.sample_images(["chelsea", "coffee"])
    cat = root / "cat.png"
    Image.fromarray(samples["chelsea"]).resize((64, 64)).save(cat)
    cup = root / "cup.jpg"
    Image.fromarray(samples["coffee"]).resize((72, 48)).save(cup, quality=90)
    garbage = root / "garbage.png"
    garbage.write_bytes(b"\x00this is not an image\xff" * 20)
    data = cat.read_bytes()
    truncated = root / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    notes = root / "notes.txt"
    notes.write_text("just some text\n")
    twin = root / "other" / "cat.png"  # same stem as cat.png, in another folder
    twin.parent.mkdir()
    twin.write_bytes(data)
    return {
        "cat": cat,
        "cup": cup,
        "garbage": garbage,
        "truncated": truncated,
        "notes": notes,
        "twin": twin,
        "missing": root / "does_not_exist.png",
    }
