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
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xaiscope.report import Report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="Chromium not installed (apt-get install -y chromium chromium-driver)",
)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="xaiscope-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()  # ends chromedriver and every Chromium process it started
        shutil.rmtree(profile, ignore_errors=True)


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
