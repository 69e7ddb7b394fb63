"""``xaiscope app``: the Streamlit web app.

:func:`launch` starts ``streamlit run`` on :data:`PAGE` with the safe settings (XSRF
protection on, an upload size limit, no error details or tracebacks in the page, no usage
statistics). The page's logic lives in :mod:`xaiscope.app.logic`; Streamlit itself is an
optional dependency (``pip install 'xaiscope[app]'``).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from xaiscope.errors import XaiscopeError

#: The Streamlit script.
PAGE = Path(__file__).with_name("page.py")
#: Environment variables through which the launcher passes its options to the page.
ENV_IMAGES = "XAISCOPE_APP_IMAGES"
ENV_MAX_UPLOAD_MB = "XAISCOPE_APP_MAX_UPLOAD_MB"
ENV_MODELS_DIR = "XAISCOPE_APP_MODELS_DIR"


class AppUnavailableError(XaiscopeError):
    """Streamlit is not installed."""


def require_streamlit() -> None:
    if importlib.util.find_spec("streamlit") is None:
        raise AppUnavailableError(
            "the web app needs Streamlit: pip install 'xaiscope[app]' (or pip install streamlit)"
        )


def streamlit_command(
    *,
    port: int = 8501,
    host: str = "localhost",
    max_upload_mb: float = 200,
    headless: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``streamlit run`` command line :func:`launch` runs."""
    if max_upload_mb <= 0:
        raise XaiscopeError(f"the upload limit must be positive, not {max_upload_mb:g} MB")
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PAGE),
        "--server.port",
        str(int(port)),
        "--server.address",
        host,
        # Streamlit's limit is whole megabytes; the page checks the exact limit itself
        "--server.maxUploadSize",
        str(max(1, int(-(-max_upload_mb // 1)))),
        "--server.enableXsrfProtection",
        "true",
        "--server.enableCORS",
        "true",
        "--server.headless",
        "true" if headless else "false",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "minimal",
        "--browser.gatherUsageStats",
        "false",
        *extra,
    ]


def app_environment(
    *,
    images: str | os.PathLike[str] | None = None,
    max_upload_mb: float = 200,
    models_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The environment the page reads its options from (a copy of ``os.environ``)."""
    env = dict(os.environ)
    env[ENV_MAX_UPLOAD_MB] = f"{max_upload_mb:g}"
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise XaiscopeError(f"image folder not found: {folder}")
        env[ENV_IMAGES] = str(folder.resolve())
    if models_dir is not None:
        env[ENV_MODELS_DIR] = str(Path(models_dir).resolve())
    env.setdefault("MPLBACKEND", "Agg")
    return env


def launch(
    *,
    port: int = 8501,
    host: str = "localhost",
    images: str | os.PathLike[str] | None = None,
    max_upload_mb: float = 200,
    models_dir: str | os.PathLike[str] | None = None,
    headless: bool = True,
) -> int:
    """Start the app and serve until interrupted; returns Streamlit's exit code."""
    require_streamlit()
    cmd = streamlit_command(port=port, host=host, max_upload_mb=max_upload_mb, headless=headless)
    env = app_environment(images=images, max_upload_mb=max_upload_mb, models_dir=models_dir)
    proc = subprocess.Popen(cmd, env=env)
    # a SIGTERM to `xaiscope app` must stop the server too, not leave it running orphaned
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: proc.send_signal(signum))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the server too (same process group)
        return proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


__all__ = [
    "ENV_IMAGES",
    "ENV_MAX_UPLOAD_MB",
    "ENV_MODELS_DIR",
    "PAGE",
    "AppUnavailableError",
    "app_environment",
    "launch",
    "require_streamlit",
    "streamlit_command",
]
