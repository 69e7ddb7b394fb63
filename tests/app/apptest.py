"""Helpers for driving the page with Streamlit's AppTest."""

from __future__ import annotations

from typing import Any

from streamlit.testing.v1 import AppTest

from xaiscope.app import PAGE


def start_app() -> AppTest:
    """The page after its first run (no exception)."""
    at = AppTest.from_file(str(PAGE), default_timeout=300)
    at.run()
    assert not at.exception
    return at


def uploader(at: AppTest, key: str) -> Any:
    return next(u for u in at.get("file_uploader") if u.key == key)


def captions(at: AppTest) -> list[str]:
    """Captions of every picture shown, in page order."""
    return [c for img in at.image for c in img.captions]
