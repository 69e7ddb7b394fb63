"""``xaiscope app``: options checked before Streamlit starts, one line on bad input."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from xaiscope.cli.main import main


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "0"], "--port must be between 1 and 65535"),
        (["--max-upload-mb", "-1"], "--max-upload-mb must be positive"),
        (["--images", "/no/such/folder"], "image folder not found"),
    ],
)
def test_bad_options_one_line(
    args: list[str], words: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[object] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    assert main(["app", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("xaiscope: error:")
    assert not started  # nothing was launched


def test_launch_passes_the_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[list[str], dict[str, str]]] = []

    class FakeServer:
        def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
            calls.append((cmd, env))

        def wait(self, timeout: float | None = None) -> int:
            return 0

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeServer)
    assert main(["app", "--port", "8611", "--images", str(tmp_path), "--max-upload-mb", "7"]) == 0
    ((cmd, env),) = calls
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("page.py")
    opts = dict(zip(cmd[5::2], cmd[6::2]))
    assert opts["--server.port"] == "8611" and opts["--server.maxUploadSize"] == "7"
    assert opts["--server.enableXsrfProtection"] == "true"
    assert env["XAISCOPE_APP_IMAGES"] == str(tmp_path.resolve())
    assert env["XAISCOPE_APP_MAX_UPLOAD_MB"] == "7"
    assert "http://localhost:8611" in capsys.readouterr().out
