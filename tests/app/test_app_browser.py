"""The app served by ``streamlit run`` (as ``xaiscope app`` starts it) in headless Chromium:
upload an image, pick two methods, wait for the maps, screenshot; bad uploads get a message
and the server keeps serving.

The screenshot is saved in the test's temporary folder, and under ``$XAISCOPE_ARTIFACTS``
when set (that is how ``docs/images/app.png`` is made). Skipped only where Chromium or its
driver is not installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("streamlit")
pytest.importorskip("selenium")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.app.uploads import bomb_png, not_an_image, pickle_payload, png  # noqa: E402
from tests.browser import chromium, needs_chromium  # noqa: E402

pytestmark = [needs_chromium, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "server.log"
    with log.open("wb") as out:
        # started as a user starts it: `xaiscope app`
        proc = subprocess.Popen(
            [sys.executable, "-m", "xaiscope.cli", "app", "--port", str(port)]
            + ["--host", "127.0.0.1", "--max-upload-mb", "20"],
            env={**os.environ, "MPLBACKEND": "Agg"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while not _healthy(url):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the app did not start in 90 s"
                time.sleep(0.5)
            yield url
            assert proc.poll() is None, "the server died"
        finally:
            proc.terminate()  # `xaiscope app` passes SIGTERM on to the server
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
    deadline = time.monotonic() + 20
    while _healthy(url) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _healthy(url), "the server outlived `xaiscope app`"


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    with chromium(1400, 1000) as driver:
        driver.get(server)
        _wait(driver, 120).until(
            ec.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Explain']]"))
        )
        yield driver


def _wait(driver: Any, seconds: float) -> WebDriverWait:
    return WebDriverWait(driver, seconds, poll_frequency=0.25)


def _upload(driver: Any, path: Path, index: int = 0) -> None:
    inputs = driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
    inputs[index].send_keys(str(path))


def _click(driver: Any, element: Any) -> None:
    # scrolled to the middle and clicked with the pointer: a plain click right after typing
    # in a multiselect only closes its drop-down
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    time.sleep(0.3)
    ActionChains(driver).move_to_element(element).pause(0.2).click().perform()


def _errors(driver: Any) -> list[str]:
    return [
        e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stAlertContentError"]')
    ]


def _wait_for_error(driver: Any, words: str) -> str:
    _wait(driver, 60).until(lambda d: any(words in t for t in _errors(d)))
    message = next(t for t in _errors(driver) if words in t)
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "Traceback" not in body and 'File "' not in body
    return message


def _pick(driver: Any, label: str, option: str) -> None:
    box = driver.find_element(
        By.XPATH, f"//div[@data-testid='stMultiSelect'][.//label//p[text()='{label}']]"
    )
    field = box.find_element(By.TAG_NAME, "input")
    field.click()
    field.send_keys(option)
    field.send_keys(Keys.ENTER)
    field.send_keys(Keys.ESCAPE)
    _wait(driver, 10).until(lambda _d: option in box.text)


def _captions(driver: Any) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stImageCaption"]')]


def test_upload_pick_two_methods_and_see_the_maps(
    page: Any, tmp_path: Path, photos: dict[str, np.ndarray]
) -> None:
    image = tmp_path / "coffee.png"
    image.write_bytes(png(photos["coffee"]))
    _upload(page, image)
    _wait(page, 30).until(lambda d: "coffee.png" in d.find_element(By.TAG_NAME, "body").text)
    _pick(page, "Methods", "saliency")  # gradcam is preselected: two methods
    time.sleep(1.0)  # the rerun that the new method started
    _click(page, page.find_element(By.XPATH, "//button[.//p[text()='Explain']]"))
    # while the run goes on the button is disabled: a second click cannot start another
    running = page.find_elements(By.XPATH, "//button[.//p[text()='Running...']]")
    assert all(not b.is_enabled() for b in running)
    _wait(page, 240).until(
        lambda d: (
            sorted(c for c in _captions(d) if c in ("gradcam", "saliency"))
            == ["gradcam", "gradcam", "saliency", "saliency"]
        )
    )
    assert not _errors(page)
    body = page.find_element(By.TAG_NAME, "body").text
    assert "Top-5 predictions" in body and "Egyptian cat" in body and "coffee.png" in body
    sizes = page.execute_script(
        "return Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img'))"
        ".map(i => [i.complete, i.naturalWidth])"
    )
    assert len(sizes) == 6 and all(done and width > 0 for done, width in sizes)
    # the page scrolls inside Streamlit's own container: a tall window shows all of it
    page.set_window_size(1400, 2100)
    time.sleep(1.5)
    shot = tmp_path / "app.png"
    assert page.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert np.asarray(im.convert("RGB")).std() > 10
    artifacts = os.environ.get("XAISCOPE_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "app_screenshot.png")


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("notes.png", not_an_image(), "not an image"),
        ("huge.png", bomb_png(), "decompression bomb"),
    ],
    ids=["text renamed .png", "decompression bomb"],
)
def test_bad_image_upload_gets_a_message(
    page: Any, server: str, tmp_path: Path, name: str, data: bytes, words: str
) -> None:
    bad = tmp_path / name
    bad.write_bytes(data)
    _upload(page, bad)
    assert name in _wait_for_error(page, words)
    assert _healthy(server)


def test_pickle_renamed_pt_gets_a_message(page: Any, server: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle_payload(marker))
    _click(page, page.find_element(By.XPATH, "//label[.//p[text()='Upload a model file']]"))
    _wait(page, 30).until(
        lambda d: "Pick or upload a model" in d.find_element(By.TAG_NAME, "body").text
    )
    _upload(page, evil)
    assert "model.pt" in _wait_for_error(page, "plain Python pickle")
    assert not marker.exists()
    # and the app keeps serving: a new visitor gets a working page
    assert _healthy(server)
    page.get(server)
    _wait(page, 60).until(
        ec.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Explain']]"))
    )
