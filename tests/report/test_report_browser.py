"""The report opened in headless Chromium renders every image.

Every ``<img>`` must have loaded (``complete`` and ``naturalWidth > 0``), the browser must
have fetched nothing but the page itself, and a full-page screenshot is saved (next to the
report in the test's temporary folder, and under ``$XAISCOPE_ARTIFACTS`` when set).
Skipped only where Chromium or its driver is not installed (``apt-get install chromium
chromium-driver``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import chromium, needs_chromium
from xaiscope.report import Report

pytestmark = needs_chromium


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


def test_chromium_renders_every_image(report: Report, browser, tmp_path: Path) -> None:
    page = report.save(tmp_path / "report.html")
    browser.get(page.resolve().as_uri())
    state = browser.execute_script(
        """
        const imgs = Array.from(document.images);
        return {
          ready: document.readyState,
          images: imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight,
                                 i.getBoundingClientRect().width]),
          resources: performance.getEntriesByType('resource').map(e => e.name),
          height: document.documentElement.scrollHeight,
          title: document.title,
        };
        """
    )
    assert state["ready"] == "complete"
    assert len(state["images"]) == len(report.pictures()) > 0
    for complete, width, height, shown in state["images"]:
        assert complete and width > 0 and height > 0 and shown > 0
    # images are data: URIs; nothing else was requested
    assert all(name.startswith("data:") for name in state["resources"]), state["resources"]
    assert state["title"] == report.title

    browser.set_window_size(1280, min(int(state["height"]) + 100, 16000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        arr = np.asarray(im.convert("RGB"))
    assert arr.shape[0] > 900 and arr.std() > 10  # a long page with pictures, not blank
    artifacts = os.environ.get("XAISCOPE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report_screenshot.png")
        shutil.copy(page, Path(artifacts) / "report.html")
